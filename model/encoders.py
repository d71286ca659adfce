"""Text and video encoders on an open_clip CLIP model."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
from torch import Tensor, nn

from model.features import TextFeatures, VideoFeatures

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """Pretrained CLIP weights that are missing or do not fit the backbone."""


def create_clip(backbone: str, pretrained: Path | str | None = None) -> open_clip.CLIP:
    """An open_clip CLIP for `backbone`, randomly initialised or loaded from a local checkpoint file.

    Nothing is downloaded: `pretrained` must be a path to one of open_clip's checkpoint formats
    (a state dict in .pt/.bin/.safetensors, or a training checkpoint with a "state_dict").
    """
    if open_clip.get_model_config(backbone) is None:
        raise ValueError(f"unknown open_clip backbone {backbone!r}")
    model = open_clip.create_model(backbone, pretrained=None)
    if pretrained is not None:
        path = Path(pretrained)
        if not path.is_file():
            raise WeightsError(f"CLIP weights file not found: {path}")
        try:
            open_clip.load_checkpoint(model, str(path))
        except Exception as exc:  # open_clip raises RuntimeError/KeyError/pickle errors; say which file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"CLIP weights in {path} do not fit backbone {backbone!r}: {first}") from exc
        log.info("loaded CLIP weights for %s from %s", backbone, path)
    return model


def trim_tokens(tokens: Tensor) -> Tensor:
    """Cut padded token ids [N, L] to the batch's longest sequence.

    The text transformer is causal, so every kept position (the EOT included) sees exactly what it
    would see in the full context: the features are identical and the cost falls with L.
    """
    longest = int((tokens != 0).sum(dim=1).max().item()) if tokens.numel() else 1
    return tokens[:, : max(longest, 1)]


class TextEncoder(nn.Module):
    """Sentence (EOT) feature and per-token features from CLIP's text tower."""

    def __init__(self, clip: open_clip.CLIP) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, tokens: Tensor) -> TextFeatures:
        """tokens [Nt, L] (L <= context length; 0 is padding) -> TextFeatures with Nw = L."""
        n, length = tokens.shape
        cast = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast) + self.positional_embedding[:length].to(cast)  # [Nt, L, W]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        proj = self.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [Nt, L, D]
        eot = tokens.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        sentence = x[torch.arange(n, device=x.device), eot]  # [Nt, D]
        return TextFeatures(sentence=sentence, words=x, word_mask=word_mask(tokens))


def word_mask(tokens: Tensor) -> Tensor:
    """[Nt, L] True at the tokens that are words: not padding (0), and not SOT, which under the causal
    mask sees only itself, so its feature is the same for every query and would let word-level
    scores ignore the text."""
    mask = tokens != 0
    mask[:, 0] = False
    return mask


class TemporalTransformer(nn.Module):
    """seqTransf: V = Transf(V0 + P) + V0 over the frames of each video, padding masked."""

    def __init__(self, dim: int, num_frames: int, layers: int) -> None:
        super().__init__()
        self.position = nn.Embedding(num_frames, dim)
        layer = nn.TransformerEncoderLayer(
            dim, max(1, dim // 64), 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        nn.init.normal_(self.position.weight, std=0.01)
        # Each layer's residual branches start at zero, so the stack starts as the identity and frames
        # keep their own content: a randomly initialised stack mixes every event of a video into every
        # frame, which local (frame- and word-level) alignment then has to undo. CLIP4Clip avoids this
        # by starting from CLIP's text transformer; from scratch, this is the equivalent.
        for block in self.transformer.layers:
            nn.init.zeros_(block.self_attn.out_proj.weight)
            nn.init.zeros_(block.self_attn.out_proj.bias)
            nn.init.zeros_(block.linear2.weight)
            nn.init.zeros_(block.linear2.bias)

    def forward(self, frames: Tensor, mask: Tensor) -> Tensor:
        """frames [Nv, F, D], mask [Nv, F] -> [Nv, F, D]"""
        f = frames.shape[1]
        positions = self.position(torch.arange(f, device=frames.device))  # [F, D]
        out = self.transformer(frames + positions, src_key_padding_mask=~mask) + frames
        return out.masked_fill(~mask.unsqueeze(-1), 0.0)


class VideoEncoder(nn.Module):
    """CLIP image features per frame, then the optional temporal transformer."""

    def __init__(self, clip: open_clip.CLIP, dim: int, num_frames: int, temporal_layers: int) -> None:
        super().__init__()
        self.visual = clip.visual
        self.temporal = TemporalTransformer(dim, num_frames, temporal_layers) if temporal_layers > 0 else None

    def encode_frames(self, frames: Tensor, mask: Tensor) -> Tensor:
        """frames [Nv, F, 3, H, W] -> V0 [Nv, F, D]; padded frames are not encoded and stay zero."""
        nv, f = mask.shape
        features = self.visual(frames[mask])  # [n_real, D]
        out = features.new_zeros(nv, f, features.shape[-1])
        out[mask] = features
        return out

    def contextualize(self, v0: Tensor, mask: Tensor) -> VideoFeatures:
        """V0 [Nv, F, D] -> V, the per-frame features the stores keep."""
        v = self.temporal(v0, mask) if self.temporal is not None else v0
        return VideoFeatures(frames=v, frame_mask=mask)

    def forward(self, frames: Tensor, mask: Tensor) -> VideoFeatures:
        return self.contextualize(self.encode_frames(frames, mask), mask)
