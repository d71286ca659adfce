from __future__ import annotations

import pytest
import torch

from model.features import TextFeatures, VideoFeatures
from model.glccl import make_config
from model.heads import build_head

D, NW, F = 16, 6, 5


def random_features(nt: int, nv: int, seed: int = 0, dtype=torch.float64) -> tuple[TextFeatures, VideoFeatures]:
    """Random text and video features with padded words and frames at the end."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(nt, NW, D, generator=g, dtype=dtype)
    word_len = torch.randint(3, NW + 1, (nt,), generator=g)
    word_mask = torch.arange(NW)[None] < word_len[:, None]
    word_len[0] = NW  # at least one text without padding
    word_mask[0] = True
    sentence = torch.randn(nt, D, generator=g, dtype=dtype)
    frames = torch.randn(nv, F, D, generator=g, dtype=dtype)
    frame_len = torch.randint(2, F + 1, (nv,), generator=g)
    frame_len[0] = F
    frame_mask = torch.arange(F)[None] < frame_len[:, None]
    frames = frames.masked_fill(~frame_mask[..., None], 0.0)
    return TextFeatures(sentence, words, word_mask), VideoFeatures(frames, frame_mask)


def perturbed_head(name: str, seed: int = 0) -> torch.nn.Module:
    """A head whose identity-initialised parameters are moved off their initial values, in float64."""
    cfg = make_config(name, backbone="glccl-test", num_frames=F, max_words=NW)
    cfg = type(cfg)(**{**cfg.to_dict(), "embed_dim": D})
    head = build_head(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            if p.ndim > 0:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        head.logit_scale.fill_(2.0)
    return head


@pytest.fixture
def features():
    return random_features(5, 7)
