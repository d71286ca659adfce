"""Dependencies shared by the routers: the API key check and access to the running state."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.state import ServiceState


def require_api_key(request: Request) -> None:
    """Bearer token check (constant-time); `?key=` is accepted for media the browser loads itself."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("key", "")
    if not secrets.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise HTTPException(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
        )


def require_json(request: Request) -> None:
    """Bodies of the search endpoints are JSON; anything else is refused before it is parsed."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(
            415, f"send the body as JSON with 'Content-Type: application/json' (got {content_type or 'none'!r})"
        )


def service_state(request: Request) -> ServiceState:
    if not request.app.state.ready:
        raise HTTPException(503, "the service is starting up: retry shortly", {"Retry-After": "2"})
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_state)]
