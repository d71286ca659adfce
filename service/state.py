"""What a running service holds: the model, the catalog, the search engine and the media files."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.data.datasets import VIDEO_EXTENSIONS
from model.device import resolve_device
from model.glccl import RetrievalModel
from service.catalog import Catalog, LiveCatalog
from service.engine import SearchEngine, fit_threads
from service.settings import Settings
from service.stores.base import StoreManifest
from service.text_backend import ONNX_FILE, onnx_encoder

log = logging.getLogger(__name__)


class MediaLibrary:
    """Finds a video's file for thumbnails and playback: uploads first, then the configured folders."""

    def __init__(self, upload_dir: Path, folders: list[Path]) -> None:
        self.upload_dir = upload_dir
        self.folders = [upload_dir, *folders]

    def find(self, video_id: str) -> Path | None:
        for folder in self.folders:
            for ext in VIDEO_EXTENSIONS:
                path = folder / f"{video_id}{ext}"
                if path.is_file():
                    return path
        return None

    def upload_path(self, video_id: str, suffix: str) -> Path:
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        return self.upload_dir / f"{video_id}{suffix}"


def open_catalog(settings: Settings, index_dir: Path | None = None) -> Catalog:
    """The one way the service opens a catalog, at start-up and on a hot reload: the live generation
    of `index_dir` (default: settings.index), checked against the served checkpoint, preloaded as
    the settings say."""
    expected = StoreManifest.for_checkpoint(settings.checkpoint) if settings.checkpoint.exists() else None
    # preloading reads the FAISS shards into memory too: mapped, a query faults in the lists it
    # probes (a cold 1M-video index added ~100 ms to the p90 of the first queries)
    catalog = Catalog.open(
        index_dir or settings.index, expected=expected, redis_url=settings.redis_url, mmap=not settings.preload
    )
    if settings.preload:
        started = time.perf_counter()
        touched = catalog.preload()
        if touched:
            log.info("preloaded %.1f MiB of frames in %.1f s", touched / 2**20, time.perf_counter() - started)
    return catalog


@dataclass
class ServiceState:
    settings: Settings
    model: RetrievalModel
    live: LiveCatalog  # the one owner of the generation served; the engine reads the same one
    engine: SearchEngine
    media: MediaLibrary

    @property
    def catalog(self) -> Catalog:
        """The generation being served now (take it once per request: a hot reload may swap it)."""
        return self.live.current

    @classmethod
    def load(cls, settings: Settings) -> ServiceState:
        threads = fit_threads(settings.threads, settings.pipeline)
        device = resolve_device(settings.device)
        model = load_checkpoint(settings.checkpoint)
        live = LiveCatalog(open_catalog(settings))
        text_encoder = None
        backend = settings.text_backend
        if backend == "auto":
            exported = settings.text_onnx or Path(settings.checkpoint) / ONNX_FILE
            backend = "onnxruntime" if device.type == "cpu" and exported.exists() else "torch"
        if backend == "onnxruntime":
            if device.type == "cpu":
                text_encoder = onnx_encoder(model, settings.checkpoint, threads, settings.text_onnx)
            else:
                log.warning("GLCCL_TEXT_BACKEND=onnxruntime is for CPUs: encoding with torch on %s", device)
        engine = SearchEngine(
            model,
            live,
            settings.candidates,
            {"always": True, "never": False}.get(settings.exhaustive),  # auto: None, the engine chooses
            device,
            settings.context,
            pool=settings.pool,
            encode_cache=settings.encode_cache,
            text_encoder=text_encoder,
            first_stage=settings.first_stage,
            first_stage_dims=settings.first_stage_dims,
        )
        media = MediaLibrary(Path(settings.index) / "media", list(settings.media_dirs))
        log.info(
            "loaded %s (%s) on %s with %d threads, text encoder %s",
            settings.checkpoint,
            model.config.head,
            device,
            threads,
            "onnxruntime" if text_encoder is not None else "torch",
        )
        return cls(settings, model, live, engine, media)

    def close(self) -> None:
        self.catalog.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
