"""Containers run as non-root: every service of docker-compose.yml that runs our image sets a user."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_every_service_running_our_image_runs_as_a_non_root_user():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    ours = {name: s for name, s in services.items() if "glccl" in str(s.get("image", "")) or "build" in s}
    assert {"api", "loadtest"} <= set(ours), sorted(services)
    for name, service in ours.items():
        user = str(service.get("user", ""))
        # "${GLCCL_UID:-10001}:${GLCCL_GID:-10001}": the defaults are what runs without a .env
        defaults = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", user).split(":")
        assert defaults[0].isdigit() and int(defaults[0]) != 0, (name, user)
        assert len(defaults) == 2 and defaults[1].isdigit() and int(defaults[1]) != 0, (name, user)
