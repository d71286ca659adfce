"""The app's middleware, as plain ASGI: Starlette's BaseHTTPMiddleware would hide the client's
disconnect from the endpoints, which drop a search whose client has gone.

RequestContext refuses a declared Content-Length over the limit before reading anything; a chunked
body declares none, so BodyLimit counts the bytes as the app reads them and fails the read with
413 once they pass the limit, before the rest is buffered. Either way the rest of a refused body is
read and dropped (up to DRAIN_BYTES, DRAIN_SECONDS) before the 413 goes out: a server that closes
while the client still writes resets the connection, and the client sees a broken pipe instead of
the answer that says what to fix (nginx's lingering close does the same). InFlightLimit answers 429 to a search
beyond the per-process cap on searches in progress, before its body is read or anything is routed,
so excess load is refused for the price of parsing its headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger("service")


DRAIN_BYTES = 16 << 20  # of a refused body, read and dropped at most (a client may send 10x the limit)
DRAIN_SECONDS = 2.0  # and for at most this long: a slow sender is not waited on


async def drain(receive: Receive) -> None:
    """Reads and drops what is left of the request body, within DRAIN_BYTES and DRAIN_SECONDS."""
    budget, deadline = DRAIN_BYTES, time.monotonic() + DRAIN_SECONDS
    while budget > 0:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit} bytes")


class BodyLimit:
    """ASGI middleware: `limit_for(method)` bytes at most in a request body."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"])
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message: dict[str, Any] = await receive()  # type: ignore[assignment]
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if message.get("more_body", False):
                        await drain(receive)
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


class InFlightLimit:
    """ASGI middleware: at most `limit` requests to `paths` in progress at once; the next answers 429
    with Retry-After at once, its body unread. Counts `kind="overload_in_flight"` in the errors."""

    def __init__(
        self, app: ASGIApp, limit: int, metrics: Metrics, paths: tuple[str, ...], retry_after_s: int = 1
    ) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.paths = frozenset(paths)
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.metrics.errors.labels("overload_in_flight").inc()
            scope["glccl.route"] = scope["path"]  # for the request counter: no route was matched
            detail = (
                f"overloaded: {self.in_flight} searches in progress, the limit of this process "
                f"(GLCCL_MAX_IN_FLIGHT) is {self.limit}; retry after {self.retry_after_s} s"
            )
            request_id = scope.get("state", {}).get("request_id")
            headers = {"Retry-After": str(self.retry_after_s)}
            await JSONResponse({"detail": detail, "request_id": request_id}, 429, headers)(scope, receive, send)
            return
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)


class RequestContext:
    """A request id (X-Request-ID, kept from the client's or made), the declared-length check, the
    request counter by route and status, and one access log line per request."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], metrics: Metrics) -> None:
        self.app = app
        self.limit_for = limit_for
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500  # what an exception that escapes everything becomes

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        length = headers.get("content-length")
        limit = self.limit_for(scope["method"])
        try:
            if length is not None and (not length.isdigit() or int(length) > limit):
                body = {"detail": f"request body too large: the limit is {limit} bytes", "request_id": request_id}
                await drain(receive)
                await JSONResponse(body, status_code=413)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            path = getattr(scope.get("route"), "path", None) or scope.get("glccl.route", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "ms": round((time.perf_counter() - start) * 1000, 2),
                },
            )


class HeadAsGet:
    """HEAD is answered wherever GET is (RFC 9110): routed as GET, sent with GET's status and headers
    (Content-Length included) and no body. FastAPI routes declare GET only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
