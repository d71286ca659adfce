"""Frozen model configuration, the one thing a checkpoint needs to rebuild its model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip

# Small open_clip architectures shipped with the repo (tests, the demo). Registered with open_clip
# so they are addressed by name like any built-in config; nothing is downloaded.
CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "ViT-B-32"  # open_clip model name (built-in or one of model/configs/*.json)
    head: str = "glccl"  # similarity head, see model.heads.HEADS
    embed_dim: int = 512  # D: joint text/video embedding size, fixed by the backbone
    num_frames: int = 12  # F: frames sampled per video
    max_words: int = 32  # Nw: text tokens kept (SOT and EOT included)
    temporal_layers: int = 4  # seqTransf depth over frame features; 0 means V = V0
    tau_g: float = 5.0  # GLIM softmax temperature over frames, on unnormalised features
    tau_a: float = 0.01  # temperature of the softmax poolings inside the four scores
    csc_weight: float = 0.1  # weight of the Contrastive Score Consistency loss (the authors' final value)
    logit_scale_init: float = 4.6052  # log(100), as CLIP
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # head-specific options, kept verbatim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def differences(self, other: ModelConfig) -> list[str]:
        """Fields that differ, as 'name: mine != other' lines (empty when compatible)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def backbone_embed_dim(backbone: str) -> int:
    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        known = ", ".join(sorted(open_clip.list_models())[:12])
        raise ValueError(f"unknown open_clip backbone {backbone!r}; for example: {known}, ...")
    return int(cfg["embed_dim"])
