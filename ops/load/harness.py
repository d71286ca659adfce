"""What the reliability scripts (and tests) run against: a small corpus, and `glccl serve` as a child process.

Everything here stays on loopback and in one folder, so a fault script can kill and restart the
server, Redis or a build without touching anything else on the machine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ops.support.servers import free_port

if TYPE_CHECKING:
    from service.catalog import StoreSpec
    from service.stores.base import StoreManifest

log = logging.getLogger(__name__)


def make_corpus(
    root: Path,
    videos: int = 2000,
    backbone: str = "glccl-tiny",
    frames: int = 12,
    seed: int = 0,
    store: StoreSpec | None = None,
) -> dict[str, Path]:
    """A randomly initialised checkpoint, `videos` random feature sets and a flat index over them.

    The answers mean nothing; what the scripts measure is the service's behaviour and cost, which
    depend on the shapes (backbone, frames, videos), not on the weights. `store` is a StoreSpec
    (default: the local store inside the index).
    """
    import torch

    from model.checkpoint import save_checkpoint
    from model.glccl import RetrievalModel, make_config
    from service.catalog import StoreSpec, build_catalog
    from service.index import IndexParams
    from service.stores.base import StoreManifest
    from service.stores.local import LocalStore

    root = Path(root)
    torch.manual_seed(seed)
    model = RetrievalModel(make_config("glccl", backbone=backbone, num_frames=frames, max_words=32)).eval()
    checkpoint = save_checkpoint(model, root / "checkpoint")
    manifest = StoreManifest.for_checkpoint(checkpoint)
    features = root / "features"
    write_random_features(features, manifest, [f"v{i:06d}" for i in range(videos)], seed)
    with LocalStore.open(features) as source:
        build_catalog(source, root / "index", IndexParams(kind="flat"), store or StoreSpec())
    return {"checkpoint": checkpoint, "features": features, "index": root / "index"}


def write_random_features(path: Path, manifest: StoreManifest, ids: list[str], seed: int = 0) -> Path:
    """A local store at `path` (created if missing) with random frames for `ids`, written in chunks."""
    from service.stores.local import LocalStore

    rng = np.random.default_rng(seed)
    frames, dim = manifest.frames, manifest.dim
    with LocalStore.open_or_create(path, manifest, durable=False) as store:
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            feats = rng.standard_normal((len(chunk), frames, dim)).astype(np.float32)
            mask = np.ones((len(chunk), frames), bool)
            times = np.tile(np.arange(frames, dtype=np.float32) * 0.5, (len(chunk), 1))
            store.put_many(chunk, feats, mask, times)
    return path


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class ServerProcess:
    """`glccl serve` in a child process on a free loopback port; its log goes to `log_path`."""

    def __init__(
        self,
        checkpoint: Path,
        index: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.ready_timeout_s = ready_timeout_s  # what `with` waits for /readyz (a 1M-video index opens slower)
        self.checkpoint = Path(checkpoint)
        self.index = Path(index)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout_s: float | None = None) -> ServerProcess:
        """Starts the server and waits (default: ready_timeout_s) until /readyz answers 200."""
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        import httpx

        env = {**os.environ, "GLCCL_LOG_JSON": "false", **self.env}
        cmd = [sys.executable, "-m", "ops.commands.cli", "serve", "--checkpoint", str(self.checkpoint)]
        cmd += ["--index", str(self.index), "--port", str(self.port), "--device", "cpu"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"glccl serve exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"glccl serve was not ready within {timeout_s} s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def rss(self) -> int:
        return rss_bytes(self.pid) if self.process is not None else 0

    def terminate(self) -> None:
        """SIGTERM: uvicorn stops accepting, lets requests in flight finish, then exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if self.process is None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
