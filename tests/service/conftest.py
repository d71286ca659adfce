from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings
from tests.service.serving import LiveServer, build_index, make_checkpoint


@pytest.fixture(scope="session")
def service_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("service")
    checkpoint = make_checkpoint(root / "checkpoint")
    return {"checkpoint": checkpoint, "index": build_index(checkpoint, root)}


@pytest.fixture
def index_copy(service_files, tmp_path) -> Path:
    """A private copy of the index for tests that change it."""
    dst = tmp_path / "index"
    shutil.copytree(service_files["index"], dst)
    return dst


@pytest.fixture
def serve(service_files, index_copy, tmp_path):
    """serve(**settings) -> a started LiveServer; every server is stopped after the test."""
    servers: list[LiveServer] = []

    def start(**overrides) -> LiveServer:
        fields = {
            "checkpoint": service_files["checkpoint"],
            "index": index_copy,
            "candidates": 40,
            "log_json": False,
            "max_wait_ms": 10.0,
            **overrides,
        }
        server = LiveServer(create_app(Settings(**fields))).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
