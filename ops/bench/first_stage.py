"""How deep a first stage must reach to hold the full score's top-10, for the proxies a first stage
could index, and for the exact terms of S (`glccl bench exactness --first-stage`).

For every query: the exhaustive top-10 by S, then for each proxy score the rank of the worst of
those ten when every video is ordered by the proxy (the pool a first stage ranking by it would need).
Computed over every video with the frames in memory, so for corpora up to ~20,000 videos.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.features import TextFeatures, VideoFeatures
from model.glim import project_query, projected_coarse
from model.heads import GLCCLHead, Head
from model.scoring import score_chunked
from service.index import segment_weights
from service.projected import principal_basis

MAX_VIDEOS = 20_000


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def proxies(head: Head, text: TextFeatures, video: VideoFeatures) -> tuple[Tensor, dict[str, Tensor]]:
    """S [Q, N] and each proxy [Q, N]: what an index over frames, segments or one vector per video
    can rank by, and (for comparison) the four exact terms of S and the narrowing's coarse score."""
    frames, mask = video.frames.float(), video.frame_mask
    with torch.inference_mode():
        out = score_chunked(head, text, VideoFeatures(frames, mask), len(text), chunk_videos=512, terms=True)
    s_hat, w_hat, words = _unit(text.sentence), _unit(text.words), text.word_mask  # [Q, D], [Q, Nw, D], [Q, Nw]
    f_hat = _unit(frames)  # [N, F, D]
    low = torch.finfo(torch.float32).min
    cos = torch.einsum("qd,nfd->qnf", s_hat, f_hat).masked_fill(~mask[None], low)  # [Q, N, F]
    raw = torch.einsum("qd,nfd->qnf", text.sentence, frames).masked_fill(~mask[None], low)
    mean = _unit((frames * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1))  # [N, D]
    seg = torch.from_numpy(segment_weights(f_hat.numpy(), mask.numpy(), 4))  # [N, 4, F]
    seg_vec = _unit(torch.einsum("nkf,nfd->nkd", seg, frames))
    word_best = torch.einsum("qid,nfd->qnif", w_hat, f_hat).masked_fill(~mask[None, :, None], low).amax(-1)
    found: dict[str, Tensor] = {
        "sentence . best normalised frame (the index today)": cos.amax(-1),
        "sentence . best raw frame": raw.amax(-1),
        "sentence . best of 4 segment means": torch.einsum("qd,nkd->qnk", s_hat, seg_vec).amax(-1),
        "sentence . mean frame (one vector per video)": s_hat @ mean.T,
        "best word . best frame (per-word ANN)": word_best.masked_fill(~words[:, None], low).amax(-1),
        "mean over words of best frame (MaxSim)": (word_best * words[:, None]).sum(-1) / words.sum(-1, keepdim=True),
        "top-2 frames' mean cosine": cos.topk(min(2, cos.shape[-1]), -1).values.mean(-1),
    }
    found.update({f"S_{t} (exact, every frame)": out[t] for t in head.terms})
    if "vs" in out and "vw" in out:
        found["(S_vs + S_vw) / 2 (the narrowing)"] = (out["vs"] + out["vw"]) / 2
        # The projected first stage's score (service/projected.py) on frames kept in k principal
        # directions: what a compressed copy of every frame, scored exhaustively, ranks by.
        for k in (8, 16, 32) if isinstance(head, GLCCLHead) else ():
            if k >= frames.shape[-1]:
                continue
            basis = principal_basis(frames.numpy(), mask.numpy(), k)  # [D, k]
            with torch.inference_mode():
                query = project_query(text.sentence, text.words, basis, head.global_mix)
                coarse = projected_coarse(
                    query, text.word_mask, frames @ basis, mask, head.mix["vw"], head.config.tau_g, head.config.tau_a
                )
                found[f"(S_vs + S_vw) / 2 on frames in {k} principal directions"] = head.scale() * coarse
    return out["S"], found


def depths(head: Head, text: TextFeatures, video: VideoFeatures, k: int = 10) -> dict[str, Any]:
    """Per proxy: median and p90 depth needed for the exhaustive top-k, and the share of queries
    whose top-k lies within the first 1%, 4% and 10% of the corpus."""
    scores, found = proxies(head, text, video)
    n = scores.shape[1]
    top = scores.topk(min(k, n), dim=1).indices  # [Q, k]
    table = {}
    for name, proxy in found.items():
        order = proxy.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n).expand_as(order))
        depth = (rank.gather(1, top).amax(1) + 1).numpy()  # [Q]
        table[name] = {
            "median_depth": int(np.median(depth)),
            "p90_depth": int(np.quantile(depth, 0.9)),
            **{f"within_{p}%": round(float(np.mean(depth <= n * p / 100)), 2) for p in (1, 4, 10)},
        }
    return {"videos": n, "queries": len(text), "top_k": k, "proxies": table}
