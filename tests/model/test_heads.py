from __future__ import annotations

import pytest
import torch

from model.features import TextFeatures, VideoFeatures
from model.glccl import make_config
from model.glim import sentence_guided_video, word_guided_frames
from model.heads import HEADS, build_head
from model.scoring import score_chunked
from tests.model.conftest import NW, D, F, perturbed_head, random_features
from tests.model.reference import naive_scores


def leaf_copies(text: TextFeatures, video: VideoFeatures) -> tuple[TextFeatures, VideoFeatures]:
    t = TextFeatures(text.sentence.clone().requires_grad_(), text.words.clone().requires_grad_(), text.word_mask)
    v = VideoFeatures(video.frames.clone().requires_grad_(), video.frame_mask)
    return t, v


@pytest.mark.parametrize("name", list(HEADS))
def test_chunked_scoring_equals_naive_loop_in_values_and_gradients(name):
    head = perturbed_head(name)
    text, video = random_features(5, 7, seed=1)
    weights = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    t1, v1 = leaf_copies(text, video)
    fast = score_chunked(head, t1, v1, chunk_texts=2, chunk_videos=3)["S"]
    (fast * weights).sum().backward()
    fast_grads = [t1.sentence.grad, t1.words.grad, v1.frames.grad] + [p.grad.clone() for p in head.parameters()]
    head.zero_grad()

    t2, v2 = leaf_copies(text, video)
    slow = naive_scores(head, t2, v2)
    (slow * weights).sum().backward()
    slow_grads = [t2.sentence.grad, t2.words.grad, v2.frames.grad] + [p.grad for p in head.parameters()]

    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(HEADS))
def test_chunking_does_not_change_scores_or_terms(name):
    head = perturbed_head(name)
    text, video = random_features(9, 11, seed=3)
    whole = head(text, video)
    chunked = score_chunked(head, text, video, chunk_texts=4, chunk_videos=5, terms=True)
    for key in ("S", *head.terms):
        torch.testing.assert_close(chunked[key], whole[key])


@pytest.mark.parametrize("name", list(HEADS))
def test_padded_words_and_frames_change_nothing(name):
    head = perturbed_head(name)
    text, video = random_features(4, 5, seed=4)
    base = head(text, video)["S"]
    g = torch.Generator().manual_seed(5)
    # garbage in every padded slot
    words = torch.where(
        text.word_mask[..., None], text.words, 1e3 * torch.randn(text.words.shape, generator=g, dtype=text.words.dtype)
    )
    frames = torch.where(
        video.frame_mask[..., None],
        video.frames,
        1e3 * torch.randn(video.frames.shape, generator=g, dtype=video.frames.dtype),
    )
    noisy = head(TextFeatures(text.sentence, words, text.word_mask), VideoFeatures(frames, video.frame_mask))["S"]
    torch.testing.assert_close(noisy, base)
    # more padding: one extra padded word and frame slot
    pad_w = torch.cat([text.words, torch.randn(4, 1, D, dtype=text.words.dtype, generator=g)], 1)[:, : NW + 1]
    pad_f = torch.cat([video.frames, torch.randn(5, 1, D, dtype=video.frames.dtype, generator=g)], 1)
    longer_text = TextFeatures(text.sentence, pad_w[:, :NW], text.word_mask)  # Nw is capped by the matrices
    longer_video = VideoFeatures(pad_f, torch.cat([video.frame_mask, torch.zeros(5, 1, dtype=torch.bool)], 1))
    if name in ("xclip",):
        return  # X-CLIP's frame-axis matrices are F x F: one more frame slot is a different shape
    torch.testing.assert_close(head(longer_text, longer_video)["S"], base)


@pytest.mark.parametrize("name", ["glccl", "xclip"])
def test_cutting_texts_to_the_longest_query_changes_nothing(name):
    head = perturbed_head(name)
    text, video = random_features(4, 3, seed=6)
    mask = text.word_mask.clone()
    mask[:, 4:] = False  # every text has at most 4 real words
    full = head(TextFeatures(text.sentence, text.words, mask), video)["S"]
    cut = head(TextFeatures(text.sentence, text.words[:, :4], mask[:, :4]), video)["S"]
    torch.testing.assert_close(cut, full)


def test_glim_tends_to_max_pooling_as_tau_falls_and_mean_pooling_as_it_grows():
    text, video = random_features(3, 4, seed=7)
    s, v, mask = text.sentence, video.frames, video.frame_mask
    sharp, _ = sentence_guided_video(s, v, mask, tau_g=1e-4)
    logits = torch.einsum("ad,btd->abt", s, v).masked_fill(~mask[None], float("-inf"))
    best = logits.argmax(-1)  # [Nt, Nv]
    expected = v[torch.arange(4)[None, :].expand(3, -1), best]  # the frame the sentence matches most
    torch.testing.assert_close(sharp, expected)
    flat, alpha = sentence_guided_video(s, v, mask, tau_g=1e8)
    mean = (v * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(flat, mean.unsqueeze(0).expand(3, -1, -1))
    assert torch.all(alpha[:, ~mask] == 0)

    w_sharp, _ = word_guided_frames(text.words, v, mask, tau_g=1e-4)
    w_logits = torch.einsum("aid,btd->abit", text.words, v).masked_fill(~mask[None, :, None], float("-inf"))
    idx = w_logits.argmax(-1)  # [Nt, Nv, Nw]
    gathered = v[torch.arange(4)[None, :, None].expand_as(idx), idx]
    torch.testing.assert_close(w_sharp, gathered)


def test_glccl_frame_weights_are_glim_alpha():
    head = perturbed_head("glccl")
    text, video = random_features(3, 4, seed=8)
    _, alpha = sentence_guided_video(text.sentence, video.frames, video.frame_mask, head.config.tau_g)
    torch.testing.assert_close(head.frame_weights(text, video), alpha)


def test_four_score_matrices_start_as_identity_and_glim_has_no_parameters():
    cfg = make_config("glccl", backbone="glccl-test", num_frames=F, max_words=NW)
    head = build_head(cfg)
    for p in [head.global_mix, head.local_mix, *head.mix.values()]:
        torch.testing.assert_close(p.detach(), torch.eye(p.shape[0]))
    names = {n for n, _ in head.named_parameters()}
    assert names == {"logit_scale", "global_mix", "local_mix"} | {f"mix.{k}" for k in head.mix}


def test_unknown_head_is_a_clear_error_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_config("nope", backbone="glccl-test")
    for name in HEADS:
        assert name in str(err.value)


def test_frame_products_through_numpy_equal_torch_and_keep_gradients_on_the_torch_path():
    from model.glim import frame_products

    torch.manual_seed(0)
    flat, queries = torch.randn(300, 16), torch.randn(5, 16)
    with torch.inference_mode():
        fast = frame_products(flat, queries)  # numpy's BLAS
    torch.testing.assert_close(fast, flat @ queries.T, rtol=1e-5, atol=1e-5)
    flat.requires_grad_(True)
    out = frame_products(flat, queries)  # autograd needs torch
    out.sum().backward()
    torch.testing.assert_close(flat.grad, queries.sum(0).expand(300, 16))


@pytest.mark.parametrize("scale, share_masked", [(20, 0.3), (200, 0.3), (200, 0.0)])
def test_masked_softmax_fast_path_equals_torch_softmax(scale: float, share_masked: float):
    from model.glim import masked_softmax

    g = torch.Generator().manual_seed(3)
    # large logits: the max must be subtracted; at 200 (cosines over tau_a = 0.01) most entries fall
    # below the fast path's exp floor, and with nothing masked its masked_fill is skipped
    logits = scale * torch.randn(4, 7, 9, 12, generator=g)
    mask = torch.rand(4, 7, 9, 12, generator=g) >= share_masked
    mask[..., 0] = True
    fast = masked_softmax(logits, mask)  # no grad, CPU: the three-pass path
    reference = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-7)
    assert (fast[~mask] == 0).all()
    with_grad = masked_softmax(logits.clone().requires_grad_(), mask)  # autograd keeps torch's kernel
    torch.testing.assert_close(with_grad.detach(), reference)


def test_projected_coarse_is_the_coarse_score_in_a_spanning_basis_and_close_in_a_principal_one():
    from model.glim import project_query, projected_coarse

    head = perturbed_head("glccl")
    text, video = random_features(3, 7)
    cfg = head.config

    def projected(basis: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        query = project_query(text.sentence, text.words, basis, head.global_mix)
        coarse = projected_coarse(
            query, text.word_mask, frames @ basis, video.frame_mask, head.mix["vw"], cfg.tau_g, cfg.tau_a
        )
        return head.scale() * coarse

    gen = torch.Generator().manual_seed(1)
    rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    assert torch.allclose(projected(rotation, video.frames), head.coarse(text, video), atol=1e-10)  # every direction
    # frames that lie in a k-dimensional subspace: its basis alone gives the same score
    basis = rotation[:, :4]
    low = VideoFeatures(video.frames @ basis @ basis.T, video.frame_mask)
    assert torch.allclose(projected(basis, low.frames), head.coarse(text, low), atol=1e-10)
    assert not torch.allclose(projected(basis, video.frames), head.coarse(text, video), atol=1e-3)  # frames outside
