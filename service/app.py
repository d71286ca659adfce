"""The HTTP app: `create_app(settings)` with a lifespan that loads the model and the catalog."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.batcher import Batcher, BatcherClosed, Overloaded, QueueWaitExceeded
from service.metrics import Metrics
from service.middleware import BodyLimit, InFlightLimit, RequestContext
from service.reload import IndexWatcher
from service.settings import Settings
from service.state import ServiceState
from service.stores.base import StoreUnavailable
from service.stores.local import StoreBusy

log = logging.getLogger("service")


def _first_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else f"request body: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def _http_detail(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's and FastAPI's own errors made specific: which endpoint, which byte."""
    if exc.status_code == 404 and "endpoint" not in request.scope:
        return f"no endpoint {request.method} {request.url.path} (a video id cannot hold '/'; see /docs)"
    if exc.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path} (see /docs)"
    if isinstance(exc.__cause__, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte {exc.__cause__.start}): send JSON encoded as UTF-8"
    return str(exc.detail)


async def watch_loop_lag(metrics: Metrics, every_s: float = 0.25) -> None:
    """Records how late a sleep wakes up: under CPU or GIL starvation requests are read that late."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(every_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - before - every_s))


def create_app(settings: Settings | None = None, state: ServiceState | None = None) -> FastAPI:
    """The app; `state` may be given ready-made (tests), otherwise it is loaded at start-up."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ready = False
        loaded = state
        if loaded is None:
            loaded = await asyncio.to_thread(ServiceState.load, settings)
        app.state.service = loaded
        engine = loaded.engine
        batcher: Batcher = Batcher(
            [engine.encode_batch, engine.score_batch] if settings.pipeline else engine.search,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=lambda info: metrics.batch_size.observe(info.size),
            max_queue_wait_s=settings.queue_wait_limit_s,
        )
        await batcher.start()
        app.state.batcher = batcher
        await asyncio.to_thread(loaded.engine.warmup)
        metrics.videos.set(len(loaded.catalog))
        watcher = IndexWatcher(app, settings)
        watching = asyncio.create_task(watcher.run()) if settings.reload_interval_s > 0 else None
        lag = asyncio.create_task(watch_loop_lag(metrics))
        app.state.ready = True
        metrics.ready.set(1)
        log.info("ready: %d videos, device %s", len(loaded.catalog), loaded.engine.device)
        try:
            yield
        finally:
            app.state.ready = False
            metrics.ready.set(0)
            lag.cancel()
            if watching is not None:
                watching.cancel()
            await asyncio.gather(lag, *([watching] if watching is not None else []), return_exceptions=True)
            await batcher.stop()
            watcher.close()
            if state is None:
                app.state.service.close()

    app = FastAPI(
        title="GLCCL video search",
        version="0.1.0",
        description="Text-to-video search with GLCCL: two-stage retrieval, batched queries, moment localisation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    # PUT and DELETE hold it around their catalog write; a hot reload holds it while it moves them.
    app.state.write_lock = asyncio.Lock()

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def body_limit(method: str) -> int:
        return settings.max_upload_bytes if method == "PUT" else settings.max_body_bytes

    app.add_middleware(BodyLimit, limit_for=body_limit)
    # Inside RequestContext (so a refusal is logged and counted), before anything reads the body.
    app.add_middleware(
        InFlightLimit, limit=settings.in_flight_limit, metrics=metrics, paths=("/search", "/search/batch")
    )
    app.add_middleware(RequestContext, limit_for=body_limit, metrics=metrics)  # outermost

    def error(request: Request, status: int, detail: str, kind: str, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        body = {"detail": detail, "request_id": getattr(request.state, "request_id", None)}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return error(request, 422, _first_error(exc), "validation")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI's 400 for a body cut short by a hang-up
            exc = StarletteHTTPException(499, "client closed the request")
        # A client that hung up is counted once, as client_disconnected (its request as status 499).
        kinds = {404: "not_found", 499: "client_disconnected"}
        kind = kinds.get(exc.status_code, f"http_{exc.status_code}")
        return error(request, exc.status_code, _http_detail(request, exc), kind, getattr(exc, "headers", None))

    @app.exception_handler(Overloaded)
    async def on_overloaded(request: Request, exc: Overloaded):
        kind = "overload_queue_wait" if isinstance(exc, QueueWaitExceeded) else "overload"
        return error(request, 429, f"overloaded: {exc}; retry shortly", kind, {"Retry-After": "1"})

    @app.exception_handler(BatcherClosed)
    async def on_closed(request: Request, exc: BatcherClosed):
        return error(request, 503, str(exc), "shutdown", {"Retry-After": "5"})

    @app.exception_handler(StoreUnavailable)
    async def on_store(request: Request, exc: StoreUnavailable):
        return error(request, 503, f"feature store unavailable: {exc}", "store_unavailable", {"Retry-After": "2"})

    @app.exception_handler(StoreBusy)
    async def on_busy(request: Request, exc: StoreBusy):
        detail = f"this index is being written by another process: {exc}; send changes to that replica"
        return error(request, 503, detail, "store_busy", {"Retry-After": "5"})

    @app.exception_handler(TimeoutError)
    async def on_timeout(request: Request, exc: TimeoutError):
        detail = f"search timed out after {settings.request_timeout_s} s"
        return error(request, 503, detail, "timeout", {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def on_any(request: Request, exc: Exception):
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return error(request, 500, "internal error (see the service log with this request id)", "internal")

    from service.routes import health, search, videos

    app.include_router(health.router)
    app.include_router(search.router)
    app.include_router(videos.router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(static_dir() / "index.html", media_type="text/html")

    return app


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed with `extra=` are kept."""

    RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in self.RESERVED})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(json_logs: bool = True, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def static_dir() -> Path:
    return Path(__file__).parent / "web"
