"""What the sparse-training methods share (Wimmer's thesis, Sec. 5.5.1; RigL: Evci et al. 2020):
option checks, magnitude masks and the cosine update fraction; counts and top-k come from
`runner.sparse.keep` (rule "round"). Masks are built on the device with host-known counts
(`top_k`, ties "any"), so a mask update inside a training step makes no host sync. The weights
are `runner.models.transforms.prunable`: every conv and linear weight (an FB layer's
coefficients, never its basis).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from runner.sparse.keep import DISTRIBUTIONS, SCOPES, keep_count, layer_counts, top_k_masks

Named = List[Tuple[str, nn.Parameter]]


def check(sparsity: float, distribution: str = "uniform", scope: str = "layer") -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity}; valid: [0, 1)")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; valid: {', '.join(SCOPES)}")


def magnitude_masks(named: Named, keep: Dict[str, torch.Tensor], counts: Sequence[int] | int,
                    scope: str) -> Dict[str, torch.Tensor]:
    """Keep the largest |w| among entries still kept (`keep`; pruned ones never return):
    `counts` per tensor (scope layer) or one count over all tensors (scope global)."""
    scores = [torch.where(keep[n], p.detach().abs().float(), -1.0) if n in keep
              else p.detach().abs().float() for n, p in named]
    scores = {n: s for (n, _), s in zip(named, scores)}
    return top_k_masks(scores, dict(zip(scores, counts)) if scope == "layer" else counts)


def density_counts(named: Named, q: float, scope: str) -> Sequence[int] | int:
    """The entries kept at sparsity q: one count per tensor (scope layer) or over all (global)."""
    if scope == "global":
        return keep_count(sum(p.numel() for _, p in named), 1 - q, "round")
    return layer_counts([p.shape for _, p in named], 1 - q, "uniform", "round")


def set_masks(ctx, masks: Dict[str, torch.Tensor]) -> None:
    """Put the masks in `ctx.masks`, each keeping its weight's kind (a frozen one stays frozen)."""
    for name, m in masks.items():
        ctx.masks.set(name, m, ctx.masks[name].kind if name in ctx.masks else "pruned")


def cosine_fraction(alpha: float, t: int, end: int, alpha_end: float = 0.0) -> float:
    """The update fraction of DST at step t < end: alpha_end + (alpha - alpha_end) / 2 *
    (1 + cos(pi t / end)) (RigL: alpha_end 0; Liu et al. 2021: 0.005); 0 from `end` on."""
    if t >= end:
        return 0.0
    return alpha_end + (alpha - alpha_end) / 2 * (1 + math.cos(math.pi * t / end))
