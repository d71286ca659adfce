"""Errors as HTTP answers: which exception is which status, in one table, and the handlers that
answer every error the same way (a JSON `detail` and the request id, counted by kind)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.batcher import BatcherClosed, Overloaded, QueueWaitExceeded
from service.metrics import Metrics
from service.schemas import ErrorBody
from service.settings import Settings
from service.stores.base import StoreUnavailable
from service.stores.local import StoreBusy

log = logging.getLogger("service")


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    kind: str  # the label of glccl_errors_total
    detail: Callable[[Exception, Settings], str]
    retry_after_s: int


def _overloaded(exc: Exception, settings: Settings) -> str:
    return f"overloaded: {exc}; retry shortly"


# Looked up along the exception's class hierarchy (QueueWaitExceeded is an Overloaded).
ANSWERS: dict[type[Exception], ErrorAnswer] = {
    QueueWaitExceeded: ErrorAnswer(429, "overload_queue_wait", _overloaded, 1),
    Overloaded: ErrorAnswer(429, "overload", _overloaded, 1),
    BatcherClosed: ErrorAnswer(503, "shutdown", lambda exc, settings: str(exc), 5),
    StoreUnavailable: ErrorAnswer(503, "store_unavailable", lambda exc, s: f"feature store unavailable: {exc}", 2),
    StoreBusy: ErrorAnswer(
        503,
        "store_busy",
        lambda exc, s: f"this index is being written by another process: {exc}; send changes to that replica",
        5,
    ),
    TimeoutError: ErrorAnswer(503, "timeout", lambda exc, s: f"search timed out after {s.request_timeout_s} s", 1),
}

# What each status means where a route declares it (error_responses): every one has the one error
# body, {"detail", "request_id"}, so a client generated from /openapi.json parses every answer.
ERROR_MEANINGS = {
    401: "missing or wrong API key",
    404: "no such video (or no media file for it)",
    413: "body too large",
    415: "wrong content type",
    422: "invalid input; the detail says what to fix",
    429: "overloaded (searches in progress, queue full or waited too long); retry after Retry-After",
    500: "internal error; the request id finds it in the service log",
    503: "starting, shutting down, store unreachable or timed out; retry after Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route can send, each with the error body's schema."""
    return {status: {"model": ErrorBody, "description": ERROR_MEANINGS[status]} for status in statuses}


HTTP_KINDS = {404: "not_found", 499: "client_disconnected"}  # other statuses count as http_<status>


def first_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else f"request body: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def http_detail(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's and FastAPI's own errors made specific: which endpoint, which byte."""
    if exc.status_code == 404 and "endpoint" not in request.scope:
        return f"no endpoint {request.method} {request.url.path} (a video id cannot hold '/'; see /docs)"
    if exc.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path} (see /docs)"
    if isinstance(exc.__cause__, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte {exc.__cause__.start}): send JSON encoded as UTF-8"
    return str(exc.detail)


def add_error_handlers(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    def answer(request: Request, status: int, detail: str, kind: str, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        body = {"detail": detail, "request_id": getattr(request.state, "request_id", None)}
        return JSONResponse(body, status_code=status, headers=headers)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(request, 422, first_error(exc), "validation")

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI's 400 for a body cut short by a hang-up
            exc = StarletteHTTPException(499, "client closed the request")
        # A client that hung up is counted once, as client_disconnected (its request as status 499).
        kind = HTTP_KINDS.get(exc.status_code, f"http_{exc.status_code}")
        return answer(request, exc.status_code, http_detail(request, exc), kind, getattr(exc, "headers", None))

    async def on_listed(request: Request, exc: Exception) -> JSONResponse:
        rule = next(ANSWERS[t] for t in type(exc).__mro__ if t in ANSWERS)
        headers = {"Retry-After": str(rule.retry_after_s)}
        return answer(request, rule.status, rule.detail(exc, settings), rule.kind, headers)

    async def on_any(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return answer(request, 500, "internal error (see the service log with this request id)", "internal")

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for kind in ANSWERS:
        app.add_exception_handler(kind, on_listed)
    app.add_exception_handler(Exception, on_any)
