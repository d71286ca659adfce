"""The fused coarse-score kernel of the projected first stage against its reference, model.glim.projected_coarse."""

import numpy as np
import pytest
import torch

from model.glim import project_query, projected_coarse
from service.coarse_kernel import coarse_scores

NT, NV, F, NW, D, K = 3, 50, 6, 7, 24, 8


def case(scale: float, seed: int = 0):
    """Random projected frames and queries, with padded frames and words, and a mix off the identity."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, K, generator=g))[0]  # orthonormal columns
    frames = scale * torch.randn(NV, F, D, generator=g)
    frame_mask = torch.arange(F)[None] < torch.randint(1, F + 1, (NV,), generator=g)[:, None]
    frames = frames.masked_fill(~frame_mask[..., None], 0.0)
    sentence, words = scale * torch.randn(NT, D, generator=g), torch.randn(NT, NW, D, generator=g)
    word_mask = torch.arange(NW)[None] < torch.tensor([NW, 3, 5])[:, None]
    global_mix = torch.eye(D) + 0.1 * torch.randn(D, D, generator=g)
    mix = torch.eye(NW) + 0.1 * torch.randn(NW, NW, generator=g)
    query = project_query(sentence, words, basis, global_mix)
    return query, word_mask, frames @ basis, frame_mask, mix


def kernel(query, word_mask, coords, frame_mask, mix, tau_g, tau_a) -> np.ndarray:
    out = np.full((len(word_mask), len(coords)), np.nan, np.float32)
    s, g, w = (x.contiguous().numpy() for x in query)
    coarse_scores(coords.numpy(), frame_mask.numpy(), s, g, w, word_mask.numpy(), mix.numpy(), tau_g, tau_a, out)
    return out


@pytest.mark.parametrize("scale, tau_g, tau_a", [(1.0, 5.0, 0.01), (1.0, 0.5, 1.0), (8.0, 0.05, 0.01)])
def test_the_kernel_is_the_reference_coarse_score(scale, tau_g, tau_a):
    # the last case puts most softmax arguments far below the kernel's exp floor
    query, word_mask, coords, frame_mask, mix = case(scale)
    reference = projected_coarse(query, word_mask, coords, frame_mask, mix, tau_g, tau_a)
    got = kernel(query, word_mask, coords, frame_mask, mix, tau_g, tau_a)
    np.testing.assert_allclose(got, reference.numpy(), rtol=1e-5, atol=2e-6)
    assert (np.argsort(-got, axis=1)[:, :10] == torch.topk(reference, 10).indices.numpy()).all()


def test_padding_never_changes_a_score_and_a_video_without_frames_is_never_chosen():
    query, word_mask, coords, frame_mask, mix = case(1.0)
    base = kernel(query, word_mask, coords, frame_mask, mix, 5.0, 0.01)
    noisy = coords.clone()
    noisy[~frame_mask] = 100.0  # garbage in padded frames
    s, g, w = query
    w = w.clone()
    w[~word_mask] = 100.0  # and in padded words
    np.testing.assert_array_equal(kernel((s, g, w), word_mask, noisy, frame_mask, mix, 5.0, 0.01), base)
    empty = frame_mask.clone()
    empty[4] = False
    assert (kernel(query, word_mask, coords, empty, mix, 5.0, 0.01)[:, 4] == -np.inf).all()


def test_the_scan_split_over_threads_returns_the_single_threads_pools(monkeypatch):
    import service.projected as projected
    from model.features import TextFeatures
    from model.glccl import RetrievalModel, make_config

    model = RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=F, max_words=16)).eval()
    _, word_mask, coords, frame_mask, _ = case(1.0)
    g = torch.Generator().manual_seed(1)
    text = TextFeatures(torch.randn(NT, 32, generator=g), torch.randn(NT, NW, 32, generator=g), word_mask)

    def pools(threads: int) -> list[list[str]]:
        stage = projected.ProjectedFrames(K, threads=threads)
        stage.basis = torch.linalg.qr(torch.randn(32, K, generator=torch.Generator().manual_seed(2)))[0]
        stage.frames, stage.mask = coords.contiguous(), frame_mask
        stage.alive, stage.rows = torch.ones(NV, dtype=torch.bool), NV
        stage.ids = [f"v{i:02d}" for i in range(NV)]
        return stage.pools(model.head, text, 20)

    monkeypatch.setattr(projected, "MIN_PART", 8)  # 50 rows into 3 parts
    assert pools(3) == pools(1)
    assert len(pools(3)[0]) == 20
