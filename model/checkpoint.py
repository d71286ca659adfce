"""Checkpoints: weights in safetensors plus a JSON config, written atomically.

A checkpoint is a folder holding `model.safetensors` and `config.json`; the config carries the
backbone, head, dimensions, frames, words, temperatures and the format version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from model.config import FORMAT_VERSION, ModelConfig
from model.glccl import RetrievalModel
from model.io import atomic_write

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not fit what is asked of it."""


def save_checkpoint(model: RetrievalModel, out_dir: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Writes weights then config (config last: a folder with a config is complete)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(out_dir / WEIGHTS, lambda p: save_file(state, str(p), metadata=meta))
    atomic_write(out_dir / CONFIG, model.config.save)
    return out_dir


def read_config(ckpt_dir: Path) -> ModelConfig:
    path = Path(ckpt_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"not a checkpoint: {path} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, this code reads {FORMAT_VERSION}")
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_checkpoint(ckpt_dir: Path, expect: ModelConfig | None = None, map_location: str = "cpu") -> RetrievalModel:
    """Rebuilds the model from its config and loads its weights.

    With `expect`, a checkpoint whose config differs is refused, naming every differing field.
    """
    ckpt_dir = Path(ckpt_dir)
    config = read_config(ckpt_dir)
    if expect is not None:
        diffs = expect.differences(config)
        if diffs:
            raise CheckpointError(f"checkpoint {ckpt_dir} does not match: " + "; ".join(diffs))
    weights = ckpt_dir / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {WEIGHTS}")
    model = RetrievalModel(config)
    try:
        state = load_file(str(weights), device=map_location)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:3]))
        raise CheckpointError(f"weights in {weights} do not fit its config: " + "; ".join(parts))
    model.load_state_dict(state)
    return model.to(map_location)


def checkpoint_metadata(ckpt_dir: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(Path(ckpt_dir) / WEIGHTS), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def checkpoint_hash(ckpt_dir: Path) -> str:
    """sha256 of the weights and config, so feature stores can tell which model made them."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with open(Path(ckpt_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
