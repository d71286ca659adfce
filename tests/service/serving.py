"""A real uvicorn server in a background thread, and a small catalog whose right answers are known."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn

from model.checkpoint import load_checkpoint, save_checkpoint
from model.data import synth_render
from model.glccl import RetrievalModel, make_config
from ops.support.servers import free_port
from service.catalog import StoreSpec, build_catalog
from service.index import IndexParams
from service.stores.base import StoreManifest
from service.stores.local import LocalStore

SHAPES = [s for s in synth_render.SHAPES if s not in ("cross", "diamond")]  # 5 of the synthetic vocabulary's
CAPTIONS = [f"a {c} {s} moves" for c in synth_render.COLORS for s in SHAPES]  # 40 distinct queries
FRAMES, WORDS = 4, 16


class LiveServer:
    """uvicorn serving `app` on a free loopback port until stop()."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 60) -> LiveServer:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=FRAMES, max_words=WORDS)).eval()
    return save_checkpoint(model, path)


@torch.no_grad()
def answer_features(checkpoint: Path, captions: list[str]) -> np.ndarray:
    """Frames [N, F, D] built from each caption's own sentence feature, so caption i finds video i."""
    model = load_checkpoint(checkpoint).eval()
    tokens = model.tokenizer()(captions)
    sentence = model.encode_text(tokens).sentence.numpy()  # [N, D]
    rng = np.random.default_rng(0)
    frames = np.repeat(sentence[:, None, :], FRAMES, axis=1)
    frames[:, 1:] += 0.3 * rng.standard_normal(frames[:, 1:].shape) * np.abs(sentence).mean()
    return frames.astype(np.float32)


def write_features(checkpoint: Path, path: Path, captions: list[str], ids: list[str]) -> Path:
    """A local feature store where video ids[i] answers captions[i] best, at frame 0 (0.0 s)."""
    frames = answer_features(checkpoint, captions)
    n = len(captions)
    source = LocalStore.create(path, StoreManifest.for_checkpoint(checkpoint))
    mask = np.ones((n, FRAMES), bool)
    mask[::3, -1] = False  # some videos are shorter than F frames
    times = np.tile(np.arange(FRAMES, dtype=np.float32) * 0.5, (n, 1))
    source.put_many(ids, frames, mask, times)
    source.close()
    return path


def build_index(checkpoint: Path, root: Path, store: StoreSpec | None = None) -> Path:
    """A catalog of len(CAPTIONS) videos 'vid000'... whose frame 0 is the best match (at 0.0 s)."""
    features = write_features(checkpoint, root / "features", CAPTIONS, [f"vid{i:03d}" for i in range(len(CAPTIONS))])
    build_catalog(LocalStore.open(features), root / "index", IndexParams(kind="flat", shards=2), store or StoreSpec())
    return root / "index"


def build_synthetic_index(model: RetrievalModel, root: Path, videos: int) -> Path:
    """An index of `videos` synthetic videos (SyntheticStore over the model's own event captions),
    flat over segment vectors; returns the index folder."""
    from ops.bench.service_corpus import encode_texts, event_captions
    from ops.support.synthetic import SyntheticStore

    ckpt = save_checkpoint(model, root / "ckpt")
    events = encode_texts(model, event_captions()).sentence.numpy()
    source = SyntheticStore(StoreManifest.for_checkpoint(ckpt), videos, events)
    build_catalog(source, root / "index", IndexParams(kind="flat", vectors="segments"), StoreSpec())
    return root / "index"
