"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers use them)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.routes.deps import MaybeBatcher, MaybeState, MetricsDep
from service.schemas import Health, Readiness
from service.stores.base import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="the process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "starting, or the store is unreachable"}},
    summary="model and stores are loaded and reachable (503 otherwise)",
)
async def readyz(state: MaybeState) -> JSONResponse:
    if state is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        await asyncio.wait_for(asyncio.to_thread(state.catalog.ping), timeout=2.0)
    except (StoreUnavailable, TimeoutError) as exc:
        return JSONResponse({"status": "store unavailable", "detail": str(exc) or "ping timed out"}, status_code=503)
    catalog = state.catalog
    return JSONResponse({"status": "ready", "videos": len(catalog), "generation": catalog.generation})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "the text exposition format"}},
)
async def metrics(m: MetricsDep, batcher: MaybeBatcher) -> Response:
    m.queue_depth.set(batcher.depth if batcher else 0)
    m.batch_limit.set(batcher.batch_limit if batcher else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
