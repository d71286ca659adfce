"""Fixtures shared across test packages: real Redis servers (single and cluster), tiny videos and checkpoints."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from model.data import video
from ops.support.servers import RedisClusterServers, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server on a free port (append-only file on), for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A 3-node Redis Cluster (slots split three ways, no replicas), for the whole session."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), nodes=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of its own for each test, so tests sharing a server never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}:"


def write_mp4(path: Path, frames: int = 8, size: int = 32, fps: int = 8, seed: int = 0) -> Path:
    """A small real H.264 mp4 of random frames."""
    images = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    return video.write_mp4(path, images, fps)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved glccl-test model: 4 frames, 8 words, D=32."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.glccl import RetrievalModel, make_config

    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=8)).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny")
