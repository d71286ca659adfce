"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.metadata import Filter

FILTER_DOC = (
    "only videos whose metadata satisfies this: {field, eq} / {field, in} / {field, gt, gte, lt, lte} "
    "(numbers or ISO 8601 dates), combined with {and: [...]}, {or: [...]}, {not: {...}}"
)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., description="what to look for, in words", examples=["a red circle moves left"])
    top_k: int | None = Field(None, description="results per page (default and maximum are settings)")
    min_score: float | None = Field(None, description="leave out results scoring below this", allow_inf_nan=False)
    filter: Filter | None = Field(
        None,
        description=FILTER_DOC,
        examples=[{"and": [{"field": "tags", "eq": "cats"}, {"field": "year", "gte": 2020}]}],
    )
    page_token: str | None = Field(
        None, description="next_page_token of the previous page (repeat its query, top_k, min_score and filter)"
    )


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[str] = Field(..., description="several queries, answered in order")
    top_k: int | None = None
    min_score: float | None = Field(None, description="leave out results scoring below this", allow_inf_nan=False)
    filter: Filter | None = Field(None, description=FILTER_DOC + "; applies to every query")


class SearchResult(BaseModel):
    video_id: str
    score: float = Field(..., description="GLCCL score S (higher is better)")
    best_frame: int = Field(..., description="index of the sampled frame GLIM weighs most for this query")
    best_time_s: float = Field(..., description="that frame's time in the video, in seconds (ms precision)")
    start_s: float = Field(
        ...,
        description="start of the moment that matched: the contiguous frames around the best one whose GLIM "
        "weight is at least half the best frame's (seconds, ms precision)",
    )
    end_s: float = Field(
        ..., description="end of that moment: where the next sampled frame begins (seconds, ms precision)"
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="the video's metadata ({} when it has none)")


class Timing(BaseModel):
    queue: float
    encode: float
    candidates: float = Field(..., description="the ANN pool (FAISS)")
    frames: float = Field(..., description="reading the pool's frames from the store")
    narrow: float = Field(..., description="exact S_vs + S_vw over the pool, keeping the best candidates")
    rerank: float = Field(..., description="the full score on the candidates")
    exhaustive: float | None = Field(
        None,
        description="the full score over every video when the exhaustive path ran (the two-stage fields are then 0, "
        "and frames is the time to bring the resident copy up to date); null when the two stages ran",
    )
    total: float


class SearchResponse(BaseModel):
    query: str
    results: list[SearchResult] = Field(..., description="best first: by score, then video id")
    timing_ms: Timing
    next_page_token: str | None = Field(
        None, description="send it back as page_token for the next page; null at the end"
    )


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]


class VideoFeaturesIn(BaseModel):
    """Precomputed frame features V (after the temporal transformer) for PUT /videos/{id}."""

    model_config = ConfigDict(extra="forbid")
    frames: list[list[float]] = Field(..., description="[F, D] frame features, at most the model's F frames")
    times: list[float] | None = Field(None, description="[F] seconds of each frame (default 0, 1, 2, ...)")
    metadata: dict[str, Any] | None = Field(
        None, description="a JSON object kept with the video (title, tags, url, any fields), returned in results"
    )


class VideoInfo(BaseModel):
    video_id: str
    frames: int = Field(..., description="real (unpadded) frames stored")
    times: list[float]
    has_media: bool = Field(..., description="whether the video file is available for playback")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the video's metadata ({} when it has none)")


class VideoChanged(BaseModel):
    video_id: str
    status: str = Field(..., description="created, replaced, updated (metadata only) or deleted")
    frames: int | None = None
    metadata: dict[str, Any] | None = Field(None, description="the metadata now stored (not on delete)")


class ErrorBody(BaseModel):
    detail: str
    request_id: str | None = None


class Readiness(BaseModel):
    status: str = Field(..., description="ready, starting or store unavailable")
    videos: int | None = Field(None, description="videos in the catalog (when ready)")
    generation: str | None = Field(None, description="the index generation served (when ready)")
    detail: str | None = Field(None, description="why the store is unavailable")


class Health(BaseModel):
    status: str = Field(..., description="ok: the process is alive")
