"""What the routers get from the app, as typed dependencies: the settings, the metrics, the batcher,
the write lock and the running state; and the API key and content-type checks."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.batcher import Batcher
from service.metrics import Metrics
from service.settings import Settings
from service.state import ServiceState

STARTING = "the service is starting up: retry shortly"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_write_lock(request: Request) -> asyncio.Lock:
    """PUT and DELETE hold it around their catalog write; a hot reload holds it while it moves them."""
    return request.app.state.write_lock


def started_batcher(request: Request) -> Batcher | None:
    """The batcher once the lifespan has started it, else None."""
    return getattr(request.app.state, "batcher", None)


def get_batcher(batcher: Annotated[Batcher | None, Depends(started_batcher)]) -> Batcher:
    if batcher is None:
        raise HTTPException(503, STARTING, {"Retry-After": "2"})
    return batcher


def ready_state(request: Request) -> ServiceState | None:
    """The running state once the service is ready, else None."""
    return request.app.state.service if request.app.state.ready else None


def service_state(state: Annotated[ServiceState | None, Depends(ready_state)]) -> ServiceState:
    if state is None:
        raise HTTPException(503, STARTING, {"Retry-After": "2"})
    return state


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WriteLock = Annotated[asyncio.Lock, Depends(get_write_lock)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
MaybeBatcher = Annotated[Batcher | None, Depends(started_batcher)]
State = Annotated[ServiceState, Depends(service_state)]
MaybeState = Annotated[ServiceState | None, Depends(ready_state)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Bearer token check (constant-time); `?key=` is accepted for media the browser loads itself."""
    key = settings.api_key
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
