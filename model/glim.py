"""GLCCL math as plain functions: GLIM pooling, softmax pooling with a mixing matrix, the four scores.

Shapes: Nt texts, Nv videos, F frames, Nw words, K items pooled on the "frame" axis of the
frame-word matrix (K = F for X-CLIP's raw frames, K = Nw for GLCCL's word-guided frames), D dims.
Masks are bool, True where the entry is real; padding never changes a result.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-12
EXP_FLOOR = -80.0  # see masked_softmax


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over `dim` where masked-out entries get exactly zero weight."""
    logits = logits.masked_fill(~mask, float("-inf"))
    if logits.requires_grad or logits.device.type != "cpu":
        return torch.softmax(logits, dim=dim)
    # torch's CPU softmax is slow on short rows (GLIM's 12 frames, a query's words): ~21 ns per
    # element on one core against ~6 for these three passes, and it was half of the full score's
    # time. Same result up to float rounding (max difference 1.2e-7 on [1, 1000, 9, 9]).
    # The clamp: exp of arguments below about -87 (denormal or zero results) runs 10-40x slower on
    # this CPU, and with untrained features the word softmax at tau_a = 0.01 puts most of its entries
    # there (the projected pass on random features: 75 -> 54 ms); e^-80 < 2e-35 leaves every sum and
    # weight unchanged in fp32. Masked entries are then put back to exactly 0.
    e = (logits - logits.amax(dim, keepdim=True)).clamp_min_(EXP_FLOOR).exp_()
    if not bool(mask.all()):
        e.masked_fill_(~mask, 0.0)
    return e.div_(e.sum(dim, keepdim=True))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the second-to-last axis of x [..., N, D] where mask [..., N] is True."""
    weights = mask.to(x.dtype)
    total = (x * weights.unsqueeze(-1)).sum(-2)
    return total / weights.sum(-1, keepdim=True).clamp_min(1.0)


# --- GLIM: parameter-free, query-guided pooling of frames --------------------------------------


def sentence_guided_video(sentence: Tensor, frames: Tensor, frame_mask: Tensor, tau_g: float) -> tuple[Tensor, Tensor]:
    """vbar[a, b] = sum_t softmax_t(s_a . V_bt / tau_g) V_bt, on unnormalised features.

    sentence [Nt, D], frames [Nv, F, D], frame_mask [Nv, F] -> vbar [Nt, Nv, D], alpha [Nt, Nv, F]
    """
    logits = torch.einsum("ad,btd->abt", sentence, frames) / tau_g  # [Nt, Nv, F]
    alpha = masked_softmax(logits, frame_mask.unsqueeze(0))
    vbar = torch.einsum("abt,btd->abd", alpha, frames)  # [Nt, Nv, D]
    return vbar, alpha


def word_guided_frames(words: Tensor, frames: Tensor, frame_mask: Tensor, tau_g: float) -> tuple[Tensor, Tensor]:
    """f[a, b, i] = sum_t softmax_t(w_ai . V_bt / tau_g) V_bt.

    words [Nt, Nw, D], frames [Nv, F, D] -> f [Nt, Nv, Nw, D], beta [Nt, Nv, Nw, F]
    """
    logits = torch.einsum("aid,btd->abit", words, frames) / tau_g  # [Nt, Nv, Nw, F]
    beta = masked_softmax(logits, frame_mask[None, :, None, :])
    f = torch.einsum("abit,btd->abid", beta, frames)  # [Nt, Nv, Nw, D]
    return f, beta


# --- the four scores ----------------------------------------------------------------------------


def softpool(x: Tensor, mask: Tensor, mix: Tensor, tau: float) -> Tensor:
    """sum_i x_i [softmax(x / tau) A]_i over the last axis, padded entries excluded.

    x [..., N]; mask broadcastable to x; mix [Nmax, Nmax] with Nmax >= N, used as mix[:N, :N] so that
    a batch cut to its longest query gives the same result as one padded to Nmax.
    """
    n = x.shape[-1]
    p = masked_softmax(x / tau, mask)  # [..., N]
    q = p @ mix[:n, :n]  # [..., N]
    return (x * q).masked_fill(~mask, 0.0).sum(-1)


def four_scores(
    g: Tensor,
    u: Tensor,
    r: Tensor,
    m: Tensor,
    word_mask: Tensor,
    item_mask: Tensor,
    mats: dict[str, Tensor],
    tau_a: float,
) -> dict[str, Tensor]:
    """The four multi-grained scores (before the logit scale) from cosine similarities.

    g [Nt, Nv]         (s^ A_g) . vbar^                  video-sentence
    u [Nt, Nv, Nw]     vbar^ . w^_i                      video-word
    r [Nt, Nv, K]      s^ . f^_k                         sentence-frame
    m [Nt, Nv, Nw, K]  (w^_i A_l) . f^_k                 frame-word
    word_mask [Nt, 1, Nw], item_mask broadcastable to [Nt, Nv, K].
    mats: word-axis matrices "vw", "fw_word", "fw_word2" and item-axis "sf", "fw_item", "fw_item2".
    """
    s_vw = softpool(u, word_mask, mats["vw"], tau_a)
    s_sf = softpool(r, item_mask, mats["sf"], tau_a)
    # Frame-word: pool each word over the items, then the words; and each item over the words,
    # then the items; the two directions are averaged.
    per_word = softpool(m, item_mask.unsqueeze(-2), mats["fw_item"], tau_a)  # [Nt, Nv, Nw]
    word_to_item = softpool(per_word, word_mask, mats["fw_word2"], tau_a)  # [Nt, Nv]
    per_item = softpool(m.transpose(-1, -2), word_mask.unsqueeze(-2), mats["fw_word"], tau_a)  # [Nt, Nv, K]
    item_to_word = softpool(per_item, item_mask, mats["fw_item2"], tau_a)  # [Nt, Nv]
    return {"vs": g, "vw": s_vw, "sf": s_sf, "fw": (word_to_item + item_to_word) / 2}


BLAS_PRODUCTS = True  # False: torch's own matmul everywhere (the benchmark's before/after switch)


def frame_products(flat: Tensor, queries: Tensor) -> Tensor:
    """flat [M, D] @ queries.T [D, n] for tall, thin products (M frames, n query vectors).

    On the CPU, outside autograd, numpy's OpenBLAS does it: on the AMD cores we serve on, torch's MKL
    runs this shape ~2.5x slower (48,000 x 512 x 14 on one thread: 45 ms vs 18 ms; square products
    are as fast in both). Same result up to float rounding."""
    cpu = flat.device.type == "cpu" and flat.dtype == torch.float32
    if BLAS_PRODUCTS and cpu and not (flat.requires_grad or queries.requires_grad):
        return torch.from_numpy(np.matmul(flat.numpy(), queries.numpy().T))
    return flat @ queries.T


class FrameProducts:
    """Dot products of query vectors with every frame, the pieces GLIM's convex combinations are made of.

    Every GLIM feature is a convex combination of frames, so its dot product with any vector is
    the same combination of that vector's per-frame dot products, and its norm is sqrt(x^T G x)
    with G = V V^T [Nv, F, F] (query independent, can be stored). That keeps the cost at one GEMM
    instead of materialising vbar [Nt, Nv, D] or f [Nt, Nv, Nw, D].
    """

    def __init__(
        self,
        sentence: Tensor,
        words: Tensor,
        frames: Tensor,
        global_mix: Tensor,
        local_mix: Tensor | None = None,
        gram: Tensor | None = None,
    ) -> None:
        self.nt, self.nw, self.d = words.shape
        self.nv, self.f, _ = frames.shape
        self.frames, self._gram = frames, gram
        self.s_len = sentence.norm(dim=-1).clamp_min(EPS)  # [Nt]
        self.w_len = words.norm(dim=-1).clamp_min(EPS)  # [Nt, Nw]
        # Every query vector against every frame in one GEMM (one pass over the frames, which are
        # the large operand): s, s^ A_g, the words and, for the word-guided frames, w^ A_l.
        blocks = [sentence.unsqueeze(1), ((sentence / self.s_len.unsqueeze(-1)) @ global_mix).unsqueeze(1), words]
        if local_mix is not None:
            blocks.append((words / self.w_len.unsqueeze(-1)) @ local_mix)
        queries = torch.cat(blocks, dim=1)  # [Nt, n, D]
        n = queries.shape[1]
        flat = frames.reshape(self.nv * self.f, self.d)  # [Nv*F, D]
        products = frame_products(flat, queries.reshape(self.nt * n, self.d)).view(self.nv, self.f, self.nt, n)
        products = products.permute(2, 0, 3, 1)  # [Nt, Nv, n, F]
        self.s_v = products[:, :, 0]  # [Nt, Nv, F]        s . V_t
        self.g_v = products[:, :, 1]  # [Nt, Nv, F]        (s^ A_g) . V_t
        self.w_v = products[:, :, 2 : 2 + self.nw]  # [Nt, Nv, Nw, F]   w_i . V_t
        self.wl_v = products[:, :, 2 + self.nw :] if local_mix is not None else None  # (w^_i A_l) . V_t

    def norms(self, weights: Tensor) -> Tensor:
        """|sum_t w_t V_t| for convex weights [Nt, Nv, ..., F], batched over videos.

        Fewer than F combinations per video: build them (Nv x rows x F x D); more: sqrt(w^T G w)
        with the Gram matrices (Nv x F x F x D once, then F x F per combination).
        """
        nt, nv, f = weights.shape[0], weights.shape[1], weights.shape[-1]
        rows = weights.transpose(0, 1).reshape(nv, -1, f)  # [Nv, Nt*..., F]
        if self._gram is None and rows.shape[1] < f:
            lengths = (rows @ self.frames).norm(dim=-1).clamp_min(EPS)  # [Nv, rows]
            return lengths.view(nv, nt, *weights.shape[2:-1]).transpose(0, 1)
        if self._gram is None:
            self._gram = self.frames @ self.frames.transpose(1, 2)  # [Nv, F, F]
        wg = (rows @ self._gram).view(nv, nt, *weights.shape[2:]).transpose(0, 1)  # [Nt, Nv, ..., F]
        return (wg * weights).sum(-1).clamp_min(EPS).sqrt()


def video_similarities(p: FrameProducts, frame_mask: Tensor, tau_g: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The sentence-guided video's similarities: g = (s^ A_g) . vbar^ [Nt, Nv], u_i = vbar^ . w^_i
    [Nt, Nv, Nw], with alpha [Nt, Nv, F] and |vbar| [Nt, Nv]. Cheap: no word-guided frames."""
    alpha = masked_softmax(p.s_v / tau_g, frame_mask.unsqueeze(0))  # [Nt, Nv, F]
    v_len = p.norms(alpha)  # [Nt, Nv]
    g = (alpha * p.g_v).sum(-1) / v_len  # [Nt, Nv]
    u = (alpha.unsqueeze(2) * p.w_v).sum(-1) / (p.w_len.unsqueeze(1) * v_len.unsqueeze(-1))  # [Nt, Nv, Nw]
    return g, u, alpha, v_len


def glccl_similarities(
    sentence: Tensor,
    words: Tensor,
    word_mask: Tensor,
    frames: Tensor,
    frame_mask: Tensor,
    global_mix: Tensor,
    local_mix: Tensor,
    tau_g: float,
    gram: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """GLIM plus the cosine similarities four_scores needs, without building vbar or f (FrameProducts).

    sentence [Nt, D], words [Nt, Nw, D], word_mask [Nt, Nw], frames [Nv, F, D], frame_mask [Nv, F],
    global_mix, local_mix [D, D] -> ({"g", "u", "r", "m"}, alpha [Nt, Nv, F])
    """
    p = FrameProducts(sentence, words, frames, global_mix, local_mix, gram)
    g, u, alpha, _ = video_similarities(p, frame_mask, tau_g)
    beta = masked_softmax(p.w_v / tau_g, frame_mask[None, :, None, :])  # [Nt, Nv, Nw, F]
    f_len = p.norms(beta)  # [Nt, Nv, Nw]
    r = (beta * p.s_v.unsqueeze(2)).sum(-1) / (p.s_len[:, None, None] * f_len)  # [Nt, Nv, Nw]
    m = (p.wl_v @ beta.transpose(-1, -2)) / f_len.unsqueeze(-2)  # [Nt, Nv, Nw, Nw]
    return {"g": g, "u": u, "r": r, "m": m}, alpha


def xclip_similarities(
    sentence: Tensor,
    words: Tensor,
    frames: Tensor,
    frame_mask: Tensor,
    global_mix: Tensor,
    local_mix: Tensor,
) -> dict[str, Tensor]:
    """X-CLIP's similarities: the video is the mean of its frames, the items are the raw frames."""
    s_hat = F.normalize(sentence, dim=-1)  # [Nt, D]
    w_hat = F.normalize(words, dim=-1)  # [Nt, Nw, D]
    video = F.normalize(masked_mean(frames, frame_mask), dim=-1)  # [Nv, D]
    f_hat = F.normalize(frames, dim=-1)  # [Nv, F, D]
    g = (s_hat @ global_mix) @ video.T  # [Nt, Nv]
    u = torch.einsum("bd,aid->abi", video, w_hat)  # [Nt, Nv, Nw]
    r = torch.einsum("ad,btd->abt", s_hat, f_hat)  # [Nt, Nv, F]
    m = torch.einsum("aid,btd->abit", w_hat @ local_mix, f_hat)  # [Nt, Nv, Nw, F]
    return {"g": g, "u": u, "r": r, "m": m}


def project_query(sentence: Tensor, words: Tensor, basis: Tensor, global_mix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The query vectors the coarse score dots frames with, in `basis` [D, k]: s (GLIM's logits),
    s^ A_g (S_vs) and w^_i (S_vw). sentence [Nt, D], words [Nt, Nw, D] -> [Nt, k], [Nt, k], [Nt, Nw, k]"""
    s_hat = sentence / sentence.norm(dim=-1, keepdim=True).clamp_min(EPS)
    w_hat = words / words.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return sentence @ basis, (s_hat @ global_mix) @ basis, w_hat @ basis


def projected_coarse(
    query: tuple[Tensor, Tensor, Tensor],
    word_mask: Tensor,
    coords: Tensor,
    frame_mask: Tensor,
    vw_mix: Tensor,
    tau_g: float,
    tau_a: float,
) -> Tensor:
    """GLCCL's coarse score (S_vs + S_vw) / 2 before the logit scale, from frames kept only as their
    coordinates in a basis with orthonormal columns (`query` from project_query in the same basis):
    every dot product of a frame, and of GLIM's sentence-guided video, is taken in that subspace.
    Equal to GLCCLHead.coarse when the basis spans the frames; a cheap first stage that pools frames
    the way S does when the basis holds most of them.

    word_mask [Nt, Nw], coords [Nv, F, k] (frames @ basis), frame_mask [Nv, F] -> [Nt, Nv]
    """
    s_k, g_k, w_k = query
    nv, f, k = coords.shape
    logits = (coords.reshape(nv * f, k) @ s_k.T).view(nv, f, -1).permute(2, 0, 1) / tau_g  # [Nt, Nv, F]
    alpha = masked_softmax(logits, frame_mask.unsqueeze(0))
    # vbar in the subspace [Nt, Nv, k], accumulated frame by frame: torch's einsum makes this Nv tiny
    # matrix products (~2.5x slower on the CPU), and a broadcast product allocates [Nv, F, k] anew
    pooled = torch.zeros(alpha.shape[0], nv, k, dtype=coords.dtype, device=coords.device)
    for t in range(f):
        pooled.addcmul_(alpha[:, :, t : t + 1], coords[:, t].unsqueeze(0))
    length = pooled.norm(dim=-1).clamp_min(EPS)  # [Nt, Nv]
    g = (pooled @ g_k.unsqueeze(-1)).squeeze(-1) / length  # [Nt, Nv]
    u = (pooled @ w_k.transpose(1, 2)) / length.unsqueeze(-1)  # [Nt, Nv, Nw]
    return (g + softpool(u, word_mask.unsqueeze(1), vw_mix, tau_a)) / 2
