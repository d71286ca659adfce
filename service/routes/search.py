"""POST /search and POST /search/batch: queries go through the batcher to the search engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from service.batcher import Batcher
from service.catalog import Catalog
from service.engine import Outcome, Query
from service.errors import error_responses
from service.metadata import Filter
from service.metrics import Metrics
from service.pages import BadPageToken, PageRequest
from service.routes.deps import (
    BatcherDep,
    MetricsDep,
    SettingsDep,
    State,
    require_api_key,
    require_json,
    service_state,
)
from service.schemas import BatchSearchRequest, BatchSearchResponse, SearchRequest, SearchResponse
from service.settings import Settings

router = APIRouter(
    tags=["search"], dependencies=[Depends(require_api_key), Depends(require_json), Depends(service_state)]
)

ERRORS = error_responses(401, 413, 415, 422, 429, 500, 503)


def _validated(settings: Settings, text: str, top_k: int | None, where: Filter | None = None) -> Query:
    if where is not None:
        try:
            where.size()
        except ValueError as exc:
            raise HTTPException(422, f"filter: {exc}") from None
    if not text.strip():
        raise HTTPException(422, "query must contain some words")
    if len(text) > settings.max_query_chars:
        raise HTTPException(422, f"query is {len(text)} characters long; the limit is {settings.max_query_chars}")
    k = settings.default_top_k if top_k is None else top_k
    if not 1 <= k <= settings.max_top_k:
        raise HTTPException(422, f"top_k must be between 1 and {settings.max_top_k}, got {k}")
    return Query(text.strip(), k, where)


async def _until_disconnect(request: Request) -> None:
    """Returns when the client hangs up. The body has been read, so the next receive() waits for that."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _hang_up(request: Request) -> asyncio.Future:
    """One watcher per request (a batch request's queries share it), instead of polling each query."""
    watch = getattr(request.state, "hang_up", None)
    if watch is None:
        watch = request.state.hang_up = asyncio.ensure_future(_until_disconnect(request))
    return watch


def _stop_watching(request: Request) -> None:
    watch = getattr(request.state, "hang_up", None)
    if watch is not None:
        watch.cancel()


def _submit(batcher: Batcher, settings: Settings, queries: list[Query]) -> list[Coroutine[Any, Any, Outcome]]:
    """Queues a request's queries together or refuses them together (QueueFull -> 429)."""
    return batcher.submit_many(queries, settings.request_timeout_s)


async def _run(
    request: Request,
    metrics: Metrics,
    query: Query,
    waiter: Coroutine[Any, Any, Outcome],
    page: PageRequest,
    catalog: Catalog,
) -> SearchResponse:
    """Waits for one submitted query (`waiter`, from Batcher.submit_many); drops it if the client goes away."""
    submitted = time.perf_counter()
    task = asyncio.ensure_future(waiter)
    gone = False
    try:
        await asyncio.wait({task, _hang_up(request)}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():  # the client hung up (or this request was cancelled)
            task.cancel()  # its future is cancelled too, so the batcher skips it
            gone = True
    if gone:
        raise HTTPException(499, "client closed the request")
    outcome: Outcome = task.result()
    total = (time.perf_counter() - submitted) * 1000
    timing = {**outcome.timing_ms, "queue": max(0.0, (outcome.started - submitted) * 1000), "total": total}
    metrics.observe_timing(timing)
    hits, next_token = page.page(outcome.hits)
    metadata = catalog.get_metadata([h.video_id for h in hits])
    return SearchResponse.model_validate(
        {
            "query": query.text,
            "results": [h.__dict__ | {"metadata": m} for h, m in zip(hits, metadata, strict=True)],
            "timing_ms": {k: round(v, 3) for k, v in timing.items()},
            "next_page_token": next_token,
        }
    )


def _paged(settings: Settings, query: Query, min_score: float | None, token: str | None) -> tuple[Query, PageRequest]:
    """The engine's query (deep enough for the page) and the page it is cut to."""
    page = PageRequest(query.text, query.top_k, min_score, where=None if query.where is None else query.where.key())
    if token is not None:
        try:
            page = page.resume(token)
        except BadPageToken as exc:
            raise HTTPException(422, str(exc)) from None
    if page.offset + page.size > settings.max_page_depth:
        raise HTTPException(422, f"pages go {settings.max_page_depth} results deep (GLCCL_MAX_PAGE_DEPTH)")
    return Query(query.text, page.depth, query.where), page


@router.post("/search", response_model=SearchResponse, responses=ERRORS, summary="ranked videos for a text query")
async def search(
    body: SearchRequest,
    request: Request,
    settings: SettingsDep,
    batcher: BatcherDep,
    metrics: MetricsDep,
    state: State,
) -> SearchResponse:
    try:
        query = _validated(settings, body.query, body.top_k, body.filter)
        query, page = _paged(settings, query, body.min_score, body.page_token)
        (waiter,) = _submit(batcher, settings, [query])
        return await _run(request, metrics, query, waiter, page, state.catalog)
    finally:
        _stop_watching(request)


@router.post(
    "/search/batch", response_model=BatchSearchResponse, responses=ERRORS, summary="several queries, answered in order"
)
async def search_batch(
    body: BatchSearchRequest,
    request: Request,
    settings: SettingsDep,
    batcher: BatcherDep,
    metrics: MetricsDep,
    state: State,
) -> BatchSearchResponse:
    if not body.queries:
        raise HTTPException(422, "queries must hold at least one query")
    if len(body.queries) > settings.max_batch_queries:
        raise HTTPException(422, f"{len(body.queries)} queries; the limit is {settings.max_batch_queries} per request")
    paged = [
        _paged(settings, _validated(settings, q, body.top_k, body.filter), body.min_score, None) for q in body.queries
    ]
    queries = [q for q, _ in paged]
    waiters = _submit(batcher, settings, queries)
    runs = [
        asyncio.ensure_future(_run(request, metrics, q, w, page, state.catalog))
        for (q, page), w in zip(paged, waiters, strict=True)
    ]
    try:
        results = await asyncio.gather(*runs)
    except BaseException:
        for run in runs:  # one query failed (or the client left): the others' answers would go nowhere
            run.cancel()
        raise
    finally:
        _stop_watching(request)
    return BatchSearchResponse(results=list(results))
