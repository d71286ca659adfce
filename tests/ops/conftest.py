from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model.data.synth import SynthConfig, generate_corpus


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A tiny synthetic MSR-VTT-layout corpus (real mp4 files), made once per session."""
    root = tmp_path_factory.mktemp("corpus") / "synth"
    generate_corpus(root, SynthConfig(videos=24, seed=1, size=32, frames_per_event=4), progress=False)
    return root


@pytest.fixture
def corpus_copy(small_corpus, tmp_path) -> Path:
    """A private copy a test may damage."""
    dst = tmp_path / "corpus"
    shutil.copytree(small_corpus, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst
