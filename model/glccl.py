"""The retrieval model: open_clip encoders plus a similarity head, built from a ModelConfig."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import Tensor, nn

from model.config import ModelConfig, backbone_embed_dim
from model.encoders import TextEncoder, VideoEncoder, create_clip
from model.features import TextFeatures, VideoFeatures
from model.heads import build_head, head_spec
from model.losses import RetrievalLoss


def make_config(head: str = "glccl", backbone: str = "ViT-B-32", **overrides: object) -> ModelConfig:
    """A config with the head's published defaults (temporal layers, CSC weight) and the backbone's D."""
    spec = head_spec(head)
    fields: dict[str, object] = {
        "head": head,
        "backbone": backbone,
        "embed_dim": backbone_embed_dim(backbone),
        "temporal_layers": spec.temporal_layers,
        "csc_weight": spec.csc_weight,
    }
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


class RetrievalModel(nn.Module):
    """Returns features and scores; the loss is a separate module (see `loss_for`)."""

    def __init__(self, config: ModelConfig, clip_weights: Path | str | None = None) -> None:
        super().__init__()
        if config.embed_dim != backbone_embed_dim(config.backbone):
            raise ValueError(
                f"embed_dim {config.embed_dim} does not match backbone {config.backbone!r} "
                f"({backbone_embed_dim(config.backbone)})"
            )
        head_spec(config.head)  # fail early, with the list of known heads
        self.config = config
        clip = create_clip(config.backbone, clip_weights)
        self.text = TextEncoder(clip)
        self.video = VideoEncoder(clip, config.embed_dim, config.num_frames, config.temporal_layers)
        self.head = build_head(config)
        self.image_size = int(open_clip.get_model_config(config.backbone)["vision_cfg"]["image_size"])

    def tokenizer(self) -> open_clip.tokenizer.SimpleTokenizer:
        return open_clip.get_tokenizer(self.config.backbone, context_length=self.config.max_words)

    def full_tokenizer(self) -> open_clip.tokenizer.SimpleTokenizer:
        """The backbone's own context length (77 for CLIP), as open_clip's encode_text uses it."""
        length = int(open_clip.get_model_config(self.config.backbone)["text_cfg"].get("context_length", 77))
        return open_clip.get_tokenizer(self.config.backbone, context_length=length)

    def clip_parameters(self) -> list[nn.Parameter]:
        return [*self.text.parameters(), *self.video.visual.parameters()]

    def new_parameters(self) -> list[nn.Parameter]:
        clip_ids = {id(p) for p in self.clip_parameters()}
        return [p for p in self.parameters() if id(p) not in clip_ids]

    def encode_text(self, tokens: Tensor) -> TextFeatures:
        return self.text(tokens)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> VideoFeatures:
        return self.video(frames, frame_mask)

    def forward(self, tokens: Tensor, frames: Tensor, frame_mask: Tensor) -> dict[str, Tensor]:
        """Every text of the batch against every video: {"S", *terms} each [B, B]."""
        return self.head(self.encode_text(tokens), self.encode_video(frames, frame_mask))


def export_clip(model: RetrievalModel, path: Path) -> Path:
    """Writes the model's CLIP towers as an open_clip state dict, loadable with `clip_weights=path`.

    Used to stand in for pretrained CLIP weights: a backbone trained on one task (for example
    meanP on a corpus) becomes the common starting point every head is then fine-tuned from.
    """
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("text."):
            state[key.removeprefix("text.")] = value
        elif key.startswith("video.visual."):
            state[key.removeprefix("video.")] = value
    state["logit_scale"] = model.head.logit_scale.detach().clone()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return Path(path)


def loss_for(config: ModelConfig) -> RetrievalLoss:
    return RetrievalLoss(csc_weight=config.csc_weight, terms=head_spec(config.head).cls.terms)
