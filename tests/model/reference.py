"""Naive per-pair reference implementations of every head, written for clarity, not speed.

Each pair (text a, video b) is scored on its own with explicit loops, using only the real words
and frames (padding is at the end, so position-indexed matrices line up with [:n, :n]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.features import TextFeatures, VideoFeatures
from model.heads import GLCCLHead, Head, MeanPoolHead, XCLIPHead, XPoolHead


def unit(x: Tensor) -> Tensor:
    return x / x.norm().clamp_min(1e-12)


def pool(x: Tensor, mix: Tensor, tau: float) -> Tensor:
    """sum_i x_i [softmax(x / tau) A]_i for one vector x [n]."""
    n = x.shape[0]
    p = torch.softmax(x / tau, dim=0)
    total = x.new_zeros(())
    for i in range(n):
        total = total + x[i] * sum(p[k] * mix[k, i] for k in range(n))
    return total


def four(head: Head, s: Tensor, w: Tensor, vbar: Tensor, items: Tensor) -> dict[str, Tensor]:
    """s [D], w [n, D], vbar [D], items [K, D], all already unit length."""
    tau, mix = head.config.tau_a, head.mix
    g = (s @ head.global_mix) @ vbar
    u = torch.stack([vbar @ w[i] for i in range(len(w))])
    r = torch.stack([s @ items[k] for k in range(len(items))])
    m = torch.stack(
        [torch.stack([(w[i] @ head.local_mix) @ items[k] for k in range(len(items))]) for i in range(len(w))]
    )
    per_word = torch.stack([pool(m[i], mix["fw_item"], tau) for i in range(len(w))])
    per_item = torch.stack([pool(m[:, k], mix["fw_word"], tau) for k in range(len(items))])
    fw = (pool(per_word, mix["fw_word2"], tau) + pool(per_item, mix["fw_item2"], tau)) / 2
    return {"vs": g, "vw": pool(u, mix["vw"], tau), "sf": pool(r, mix["sf"], tau), "fw": fw}


def pair_score(head: Head, s: Tensor, w: Tensor, v: Tensor) -> Tensor:
    """One pair: s [D], w [n_words, D], v [n_frames, D] (real entries only) -> scalar S."""
    lam = head.logit_scale.exp().clamp(max=100.0)
    if isinstance(head, MeanPoolHead):
        return lam * unit(s) @ unit(v.mean(0))
    if isinstance(head, XPoolHead):
        q = head.q_proj(head.norm_in(s))
        frames = head.norm_in(v)
        k, val = head.k_proj(frames), head.v_proj(frames)
        weights = torch.softmax(torch.stack([q @ k[t] for t in range(len(v))]) / math.sqrt(len(s)), 0)
        pooled = sum(weights[t] * val[t] for t in range(len(v)))
        pooled = head.norm_attn(head.out_proj(pooled))
        pooled = head.norm_out(pooled + head.linear(pooled))
        return lam * unit(s) @ unit(pooled)
    if isinstance(head, XCLIPHead):
        terms = four(
            head, unit(s), torch.stack([unit(x) for x in w]), unit(v.mean(0)), torch.stack([unit(x) for x in v])
        )
        return lam * sum(terms.values()) / 4
    if isinstance(head, GLCCLHead):
        tau_g = head.config.tau_g
        alpha = torch.softmax(torch.stack([s @ v[t] for t in range(len(v))]) / tau_g, 0)
        vbar = sum(alpha[t] * v[t] for t in range(len(v)))
        f = []
        for i in range(len(w)):
            beta = torch.softmax(torch.stack([w[i] @ v[t] for t in range(len(v))]) / tau_g, 0)
            f.append(unit(sum(beta[t] * v[t] for t in range(len(v)))))
        terms = four(head, unit(s), torch.stack([unit(x) for x in w]), unit(vbar), torch.stack(f))
        return lam * sum(terms.values()) / 4
    raise TypeError(f"no reference for {type(head).__name__}")


def naive_scores(head: Head, text: TextFeatures, video: VideoFeatures) -> Tensor:
    rows = []
    for a in range(len(text)):
        w = text.words[a][text.word_mask[a]]
        row = []
        for b in range(len(video)):
            v = video.frames[b][video.frame_mask[b]]
            row.append(pair_score(head, text.sentence[a], w, v))
        rows.append(torch.stack(row))
    return torch.stack(rows)
