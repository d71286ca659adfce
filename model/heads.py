"""Similarity heads: text and video features in, named score terms [Nt, Nv] out.

Every head returns a dict whose "S" entry is the retrieval score (already multiplied by the logit
scale); the four-score heads also return the terms "vs", "vw", "sf", "fw" that S is the mean of,
which the CSC loss needs. Heads are chosen by name through HEADS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig
from model.features import TextFeatures, VideoFeatures
from model.glim import (
    EPS,
    four_scores,
    glccl_similarities,
    masked_mean,
    masked_softmax,
    sentence_guided_video,
    softpool,
    xclip_similarities,
)

MAX_LOGIT_SCALE = 100.0


class Head(nn.Module):
    terms: tuple[str, ...] = ()  # the score terms S is the mean of, when there are several

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, text: TextFeatures, video: VideoFeatures) -> dict[str, Tensor]:
        raise NotImplementedError

    def coarse(self, text: TextFeatures, video: VideoFeatures) -> Tensor | None:
        """A cheaper score [Nt, Nv] that ranks like S, for narrowing a wide candidate pool; None when
        the head has none (S itself is then the only score)."""
        return None

    def frame_weights(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """How much each frame counts for each text [Nt, Nv, F]; uniform unless the head pools by query."""
        weights = video.frame_mask.to(video.frames.dtype)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1.0)
        return weights.unsqueeze(0).expand(len(text), -1, -1)


class MeanPoolHead(Head):
    """CLIP4Clip meanP / seqTransf: cosine of the sentence with the mean of the frames."""

    def forward(self, text: TextFeatures, video: VideoFeatures) -> dict[str, Tensor]:
        s_hat = F.normalize(text.sentence, dim=-1)  # [Nt, D]
        v_hat = F.normalize(masked_mean(video.frames, video.frame_mask), dim=-1)  # [Nv, D]
        return {"S": self.scale() * s_hat @ v_hat.T}


class XPoolHead(Head):
    """X-Pool: the sentence attends over the frames (scaled dot-product, learned projections)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d = config.embed_dim
        self.norm_in = nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.norm_attn = nn.LayerNorm(d)
        self.linear = nn.Linear(d, d)
        self.norm_out = nn.LayerNorm(d)
        # Identity-initialised projections, as X-Pool does, so training starts from plain attention.
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.linear):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _attention(self, text: TextFeatures, video: VideoFeatures) -> tuple[Tensor, Tensor]:
        d = video.frames.shape[-1]
        q = self.q_proj(self.norm_in(text.sentence))  # [Nt, D]
        frames = self.norm_in(video.frames)  # [Nv, F, D]
        k, v = self.k_proj(frames), self.v_proj(frames)  # [Nv, F, D]
        logits = torch.einsum("ad,btd->abt", q, k) / math.sqrt(d)  # [Nt, Nv, F]
        weights = torch.softmax(logits.masked_fill(~video.frame_mask.unsqueeze(0), float("-inf")), -1)
        return weights, torch.einsum("abt,btd->abd", weights, v)  # [Nt, Nv, F], [Nt, Nv, D]

    def forward(self, text: TextFeatures, video: VideoFeatures) -> dict[str, Tensor]:
        _, pooled = self._attention(text, video)
        pooled = self.norm_attn(self.out_proj(pooled))
        pooled = self.norm_out(pooled + self.linear(pooled))  # [Nt, Nv, D]
        s_hat = F.normalize(text.sentence, dim=-1)
        return {"S": self.scale() * torch.einsum("ad,abd->ab", s_hat, F.normalize(pooled, dim=-1))}

    def frame_weights(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        return self._attention(text, video)[0]


class FourScoreHead(Head):
    """Shared parts of X-CLIP and GLCCL: the identity-initialised matrices and the score mean."""

    terms = ("vs", "vw", "sf", "fw")

    def __init__(self, config: ModelConfig, items: int) -> None:
        super().__init__(config)
        d, nw = config.embed_dim, config.max_words
        self.global_mix = nn.Parameter(torch.eye(d))  # A_g
        self.local_mix = nn.Parameter(torch.eye(d))  # A_l
        sizes = {"vw": nw, "fw_word": nw, "fw_word2": nw, "sf": items, "fw_item": items, "fw_item2": items}
        self.mix = nn.ParameterDict({name: nn.Parameter(torch.eye(n)) for name, n in sizes.items()})

    def combine(self, sims: dict[str, Tensor], word_mask: Tensor, item_mask: Tensor) -> dict[str, Tensor]:
        raw = four_scores(
            sims["g"], sims["u"], sims["r"], sims["m"], word_mask, item_mask, dict(self.mix), self.config.tau_a
        )
        lam = self.scale()
        out = {name: lam * value for name, value in raw.items()}
        out["S"] = torch.stack([out[t] for t in self.terms]).mean(0)
        return out


class XCLIPHead(FourScoreHead):
    """X-CLIP: the four scores on the mean-pooled video and the raw frames (no GLIM)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, items=config.num_frames)

    def forward(self, text: TextFeatures, video: VideoFeatures) -> dict[str, Tensor]:
        sims = xclip_similarities(
            text.sentence, text.words, video.frames, video.frame_mask, self.global_mix, self.local_mix
        )
        return self.combine(sims, text.word_mask.unsqueeze(1), video.frame_mask.unsqueeze(0))


class GLCCLHead(FourScoreHead):
    """GLCCL: GLIM's sentence-guided video and word-guided frames feed the four scores."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, items=config.max_words)

    def forward(self, text: TextFeatures, video: VideoFeatures, gram: Tensor | None = None) -> dict[str, Tensor]:
        sims, _ = glccl_similarities(
            text.sentence,
            text.words,
            text.word_mask,
            video.frames,
            video.frame_mask,
            self.global_mix,
            self.local_mix,
            self.config.tau_g,
            gram,
        )
        word_mask = text.word_mask.unsqueeze(1)  # [Nt, 1, Nw]
        # The items are the word-guided frames, one per word, so padded words mask them too.
        return self.combine(sims, word_mask, word_mask)

    def coarse(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """(S_vs + S_vw) / 2, exactly as in S: the sentence-guided video's two scores, without the
        word-guided frames that make S_sf and S_fw the expensive half (no beta, no Nw x Nw matrix).

        vbar is built outright ([Nt, Nv, D]; the narrowing scores one query at a time): one pass over
        the frames for alpha and one to pool them, then every dot product on vbar, ~F times fewer
        multiplications than each query vector against every frame (FrameProducts)."""
        vbar, _ = sentence_guided_video(text.sentence, video.frames, video.frame_mask, self.config.tau_g)
        v_len = vbar.norm(dim=-1).clamp_min(EPS)  # [Nt, Nv]
        s_hat = text.sentence / text.sentence.norm(dim=-1, keepdim=True).clamp_min(EPS)
        g = torch.einsum("abd,ad->ab", vbar, s_hat @ self.global_mix) / v_len  # [Nt, Nv]
        w_hat = text.words / text.words.norm(dim=-1, keepdim=True).clamp_min(EPS)  # [Nt, Nw, D]
        u = (vbar @ w_hat.transpose(1, 2)) / v_len.unsqueeze(-1)  # [Nt, Nv, Nw]
        s_vw = softpool(u, text.word_mask.unsqueeze(1), self.mix["vw"], self.config.tau_a)
        return self.scale() * (g + s_vw) / 2

    def frame_weights(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        logits = torch.einsum("ad,btd->abt", text.sentence, video.frames) / self.config.tau_g
        return masked_softmax(logits, video.frame_mask.unsqueeze(0))


@dataclass(frozen=True)
class HeadSpec:
    cls: type[Head]
    temporal_layers: int  # seqTransf depth the head is published with (0: raw CLIP frames)
    csc_weight: float  # CSC loss weight it trains with (only four-score heads have terms for it)
    description: str


HEADS: dict[str, HeadSpec] = {
    "meanP": HeadSpec(MeanPoolHead, 0, 0.0, "CLIP4Clip mean pooling of raw CLIP frames"),
    "seqTransf": HeadSpec(MeanPoolHead, 4, 0.0, "CLIP4Clip mean pooling after the temporal transformer"),
    "xpool": HeadSpec(XPoolHead, 0, 0.0, "X-Pool text-conditioned cross-attention pooling"),
    "xclip": HeadSpec(XCLIPHead, 4, 0.0, "X-CLIP four scores on mean-pooled video and frames"),
    "glccl_nocsc": HeadSpec(GLCCLHead, 4, 0.0, "GLCCL (GLIM + four scores) without the CSC loss"),
    # CSC at 0.1: the authors' final runs (scripts/Experience/main_experience.sh) after their 0.1-0.9 sweep
    "glccl": HeadSpec(GLCCLHead, 4, 0.1, "GLCCL: GLIM + four scores + CSC loss"),
}


def head_spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}")
    return HEADS[name]


def build_head(config: ModelConfig) -> Head:
    return head_spec(config.head).cls(config)
