"""The HTTP app, assembled: `create_app(settings)` puts together the settings (service/settings.py),
the lifespan (service/lifespan.py), the middleware, the exception-to-status table
(service/errors.py) and the routers (service/routes/), which get what they need through the typed
dependencies of service/routes/deps.py."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from service.errors import add_error_handlers
from service.lifespan import lifespan
from service.metrics import Metrics
from service.middleware import BodyLimit, HeadAsGet, InFlightLimit, RequestContext
from service.settings import Settings
from service.state import ServiceState


def create_app(settings: Settings | None = None, state: ServiceState | None = None) -> FastAPI:
    """The app; `state` may be given ready-made (tests), otherwise it is loaded at start-up."""
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(
        title="GLCCL video search",
        version="0.1.0",
        description="Text-to-video search with GLCCL: two-stage retrieval, batched queries, moment localisation.",
        lifespan=lifespan(settings, metrics, state),
        generate_unique_id_function=lambda route: route.name,  # operation ids (and client functions): search, put_video
        docs_url=None,  # served below from the bundled Swagger UI: /docs works without internet
        redoc_url=None,
    )
    # What the dependencies in service/routes/deps.py hand to the routes.
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    # PUT and DELETE hold it around their catalog write; a hot reload holds it while it moves them.
    app.state.write_lock = asyncio.Lock()
    add_middleware(app, settings, metrics)
    add_error_handlers(app, settings, metrics)

    from service.routes import health, search, videos

    app.include_router(health.router)
    app.include_router(search.router)
    app.include_router(videos.router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(static_dir() / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(static_dir() / "favicon.svg", media_type="image/svg+xml")

    add_docs(app)
    return app


def add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its scripts and styles served by the service (swagger-ui-bundle), not a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
        )


def add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """CORS when configured; body limits, the in-flight limit and the request context (outermost)."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def body_limit(method: str) -> int:
        return settings.max_upload_bytes if method == "PUT" else settings.max_body_bytes

    app.add_middleware(BodyLimit, limit_for=body_limit)
    # Inside RequestContext (so a refusal is logged and counted), before anything reads the body.
    app.add_middleware(
        InFlightLimit, limit=settings.in_flight_limit, metrics=metrics, paths=("/search", "/search/batch")
    )
    app.add_middleware(RequestContext, limit_for=body_limit, metrics=metrics)
    app.add_middleware(HeadAsGet)  # outermost: HEAD answers as GET does, without the body


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
