import math

import torch

from model.glccl import loss_for, make_config
from model.losses import csc_loss, infonce_loss


def test_csc_loss_equals_its_definition_on_a_hand_worked_example():
    # terms [T=4, B=2, B=2]; per-pair population variances worked by hand:
    # (0,0): 1,2,3,4 -> 1.25   (1,1): 2,2,2,2 -> 0   (0,1): 0,0,4,4 -> 4   (1,0): 1,3,1,3 -> 1
    terms = torch.zeros(4, 2, 2)
    terms[:, 0, 0] = torch.tensor([1.0, 2, 3, 4])
    terms[:, 1, 1] = torch.tensor([2.0, 2, 2, 2])
    terms[:, 0, 1] = torch.tensor([0.0, 0, 4, 4])
    terms[:, 1, 0] = torch.tensor([1.0, 3, 1, 3])
    # mean(diag) = 0.625, mean(off-diagonal) = 2.5
    assert math.isclose(float(csc_loss(terms)), 0.25, rel_tol=1e-6)


def test_csc_loss_falls_when_scores_agree_on_positives_and_disagree_on_negatives():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 6, 6, generator=g)
    agree = noise.clone()
    agree[:, range(6), range(6)] = 1.0  # identical terms on the diagonal
    assert float(csc_loss(agree)) < 1e-6 < float(csc_loss(noise))


def test_infonce_is_symmetric_cross_entropy():
    s = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = -(torch.log_softmax(s, 1)[0, 0] + torch.log_softmax(s, 1)[1, 1]) / 2
    cols = -(torch.log_softmax(s, 0)[0, 0] + torch.log_softmax(s, 0)[1, 1]) / 2
    assert math.isclose(float(infonce_loss(s)), float((rows + cols) / 2), rel_tol=1e-6)


def test_loss_terms_by_head():
    scores = {k: torch.randn(3, 3) for k in ("S", "vs", "vw", "sf", "fw")}
    assert set(loss_for(make_config("glccl", backbone="glccl-test"))(scores)) == {"contrastive_loss", "csc_loss"}
    assert set(loss_for(make_config("glccl_nocsc", backbone="glccl-test"))(scores)) == {"contrastive_loss"}
    assert set(loss_for(make_config("meanP", backbone="glccl-test"))({"S": scores["S"]})) == {"contrastive_loss"}
    glccl = loss_for(make_config("glccl", backbone="glccl-test", csc_weight=0.3))(scores)
    expected = 0.3 * csc_loss(torch.stack([scores[t] for t in ("vs", "vw", "sf", "fw")]))
    torch.testing.assert_close(glccl["csc_loss"], expected)
