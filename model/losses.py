"""Training losses, kept apart from the model: each returns named `*_loss` terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def infonce_loss(scores: Tensor) -> Tensor:
    """Symmetric InfoNCE over a [B, B] score matrix whose diagonal holds the positive pairs."""
    target = torch.arange(scores.shape[0], device=scores.device)
    return (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)) / 2


def csc_loss(terms: Tensor) -> Tensor:
    """Contrastive Score Consistency over stacked score terms [T, B, B].

    Var [B, B] is the variance of each pair's T scores; the loss is the mean variance of the
    positive pairs over the mean variance of the B(B-1) negative pairs, so it falls when the
    scores agree on positives and disagree on negatives.
    """
    var = terms.var(dim=0, unbiased=False)  # [B, B]
    b = var.shape[0]
    diag = torch.diagonal(var)
    off_mean = (var.sum() - diag.sum()) / (b * (b - 1))
    return diag.mean() / off_mean.clamp_min(1e-8)


class RetrievalLoss(nn.Module):
    """InfoNCE on S plus, for heads with several score terms, w_csc times the CSC loss."""

    def __init__(self, csc_weight: float = 0.0, terms: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.csc_weight = csc_weight
        self.terms = terms

    def forward(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {"contrastive_loss": infonce_loss(scores["S"])}
        if self.csc_weight > 0 and len(self.terms) > 1:
            stacked = torch.stack([scores[t] for t in self.terms])  # [T, B, B]
            out["csc_loss"] = self.csc_weight * csc_loss(stacked)
        return out
