"""Service settings: environment variables GLCCL_* (and an optional .env file), read once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLCCL_", env_file=".env", extra="ignore", frozen=True)

    # what to serve
    checkpoint: Path = Field(Path("demo/checkpoint/best"), description="model checkpoint folder")
    index: Path = Field(Path("demo/index"), description="index folder made by `glccl index build`")
    redis_url: str | None = Field(None, description="Redis URL when the index keeps its frames in Redis")
    redis_prefix: str | None = Field(None, description="Redis key prefix (default: the one the index records)")
    redis_cluster: bool | None = Field(None, description="talk to Redis Cluster (default: as the index records)")
    media_dirs: list[Path] = Field(
        default_factory=list, description="folders holding the video files (<id>.mp4, ...) for thumbnails and playback"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # compute
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per worker (default: the cores this process may use less one, halved "
        "when pipelined)",
    )
    preload: bool = Field(
        True,
        description="fault a local store's frame files into memory and read the FAISS index into memory "
        "(not mapped) at start and on reload, so that early queries do not pay page faults (resident memory "
        "grows by the store's and the index's size)",
    )
    pipeline: bool = Field(
        True, description="encode the next batch while the last one is scored (two worker threads, not one)"
    )

    # search
    pool: int = Field(
        1000, ge=1, description="videos fetched from the ANN index per query, re-scored exactly with S_vs and S_vw"
    )
    candidates: int = Field(200, ge=1, description="best of the pool by S_vs + S_vw, re-ranked with the full score")
    first_stage: Literal["index", "projected"] = Field(
        "index",
        description="where the pool comes from: index, the FAISS index (sentence against frames); projected, "
        "GLCCL's coarse score over every video's frames kept in first_stage_dims principal directions "
        "(service/projected.py: ranks like S, costs a pass over all videos)",
    )
    first_stage_dims: int = Field(32, ge=1, description="principal directions kept per frame by the projected stage")
    exhaustive: Literal["auto", "always", "never"] = Field(
        "auto",
        description="score every video with the full score, exact by construction (frames resident on the device): "
        "auto where that is cheap (a catalog no larger than the pool, or a GPU whose free memory holds the frames); "
        "true/false mean always/never",
    )
    text_backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="the text encoder's runtime on a CPU: torch, or ONNX Runtime (the same tower exported to ONNX; "
        "2.1x faster for one short query on our CPUs, 1.1-1.5x for batches); auto: ONNX Runtime when the exported "
        "tower is there (GLCCL_TEXT_ONNX, or CHECKPOINT/text.onnx from `glccl export-text`); a GPU always uses torch",
    )
    text_onnx: Path | None = Field(
        None, description="the exported text tower (default: CHECKPOINT/text.onnx, else exported at start-up)"
    )
    encode_cache: int = Field(
        4096,
        ge=0,
        description="query encodings kept (normalised text -> features; 0: off); hits and misses in /metrics",
    )
    context: Literal["trim", "full"] = Field(
        "trim", description="trim: tokens cut to the batch's longest query; full: the backbone's whole context (77)"
    )
    default_top_k: int = Field(10, ge=1)
    max_top_k: int = Field(100, ge=1, description="most results per page")
    max_page_depth: int = Field(1000, ge=1, description="how deep pages of one query go (offset + top_k)")
    max_query_chars: int = Field(1000, ge=1)
    max_batch_queries: int = Field(64, ge=1, description="most queries in one POST /search/batch")

    # batching and overload
    max_batch: int = Field(32, ge=1, description="most queries encoded and scored together")
    max_batch_ms: float | None = Field(
        250.0,
        gt=0,
        description="a batch holds at most the queries its slowest stage does in about this time, from each "
        "stage's running mean per query (unset: up to max_batch)",
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="longest a batch waits for more queries once the encoder is free (0: none; batches form "
        "while it is busy)",
    )
    max_queue: int = Field(64, ge=1, description="queued queries before 429")
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="search requests in progress per process before 429, checked before the body is read "
        "(default: max_queue + max_batch)",
    )
    max_queue_wait_s: float | None = Field(
        None,
        gt=0,
        description="a query that waited longer than this for its batch answers 429 without being computed "
        "(default: request_timeout_s / 4)",
    )
    request_timeout_s: float = Field(10.0, gt=0)
    reload_interval_s: float = Field(
        2.0, ge=0, description="seconds between checks for a new index generation and other replicas' changes (0: off)"
    )

    # limits and access
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest JSON body")
    max_metadata_bytes: int = Field(16384, ge=64, description="largest metadata object of a video, as compact JSON")
    max_upload_bytes: int = Field(256 << 20, ge=1024, description="largest uploaded video file")
    api_key: SecretStr | None = Field(None, description="bearer token required on all but health and metrics")
    cors_origins: list[str] = Field(default_factory=list)
    log_json: bool = True

    @property
    def in_flight_limit(self) -> int:
        return self.max_in_flight or self.max_queue + self.max_batch

    @property
    def queue_wait_limit_s(self) -> float:
        return self.max_queue_wait_s or self.request_timeout_s / 4

    @field_validator("exhaustive", mode="before")
    @classmethod
    def _exhaustive_words(cls, value: object) -> object:
        """GLCCL_EXHAUSTIVE=true/false (its earlier boolean form) still works."""
        words = {"true": "always", "1": "always", "yes": "always", "false": "never", "0": "never", "no": "never"}
        if isinstance(value, bool):
            return "always" if value else "never"
        return words.get(str(value).lower(), value)

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None
