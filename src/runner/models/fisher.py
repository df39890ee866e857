"""The simplified Fisher discriminative score of Zilly et al. 2021 (appendix Sec. 6.6, Fig. 6).

Fisher's criterion of a direction w for two feature distributions (means m1, m2, covariances
S1, S2) is (w.(m2 - m1))^2 / (w'S1w + w'S2w). The paper takes w = m2 - m1 rather than the optimal
(S1 + S2)^-1 (m2 - m1), which is too costly for penultimate-layer features; the score is then
||m2 - m1||^4 / (w'S1w + w'S2w) (population covariances). Which two distributions the paper
compares is not stated; `class_fisher` averages the score over pairs of classes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def fisher_score(a: torch.Tensor, b: torch.Tensor) -> float:
    """The simplified score of two samples of features (rows), w = mean(b) - mean(a)."""
    w = b.mean(0) - a.mean(0)
    spread = ((a - a.mean(0)) @ w).pow(2).mean() + ((b - b.mean(0)) @ w).pow(2).mean()
    return float(w.dot(w).pow(2) / spread)


def class_fisher(features: torch.Tensor, labels: torch.Tensor,
                 max_classes: Optional[int] = None) -> float:
    """Mean simplified Fisher score over all pairs of the (first `max_classes`) classes present."""
    classes = labels.unique()[:max_classes]
    feats = features.double()
    means = torch.stack([feats[labels == c].mean(0) for c in classes])
    i, j = torch.triu_indices(len(classes), len(classes), 1)
    w = means[j] - means[i]  # (pairs, d)
    spread = torch.zeros(len(classes), w.shape[0], dtype=feats.dtype)
    for k, c in enumerate(classes):  # w'S_c w for every pair direction
        spread[k] = ((feats[labels == c] - means[k]) @ w.T).pow(2).mean(0)
    pairs = torch.arange(w.shape[0])
    scores = (w * w).sum(1).pow(2) / (spread[i, pairs] + spread[j, pairs])
    return float(scores.mean())


@torch.no_grad()
def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the head reads (`model.features`), spatially averaged if still maps."""
    f = model.features(x)
    return f.mean((2, 3)) if f.dim() == 4 else f.flatten(1)
