"""What the sparse-training methods share (Wimmer's thesis, Sec. 5.5.1; ERK densities: Evci et
al. 2020, RigL): layer densities (uniform or Erdos-Renyi-kernel), exact top-k masks and the cosine update
fraction. Masks are built on the device with host-known counts (topk), so a mask update inside
a training step makes no host sync. The weights are `runner.models.transforms.prunable`: every
conv and linear weight (an FB layer's coefficients, never its basis).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

DISTRIBUTIONS = ("uniform", "erk")
SCOPES = ("layer", "global")
Named = List[Tuple[str, nn.Parameter]]


def check(sparsity: float, distribution: str = "uniform", scope: str = "layer") -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity}; valid: [0, 1)")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; valid: {', '.join(SCOPES)}")


def layer_counts(shapes: Sequence[torch.Size], density: float, distribution: str) -> List[int]:
    """Entries kept per tensor: `density` of each (uniform), or Erdos-Renyi-kernel densities
    eps * sum(shape) / prod(shape) (Evci et al. 2020), layers that would exceed 1 kept dense."""
    sizes = [math.prod(s) for s in shapes]
    if distribution == "uniform":
        return [int(round(density * n)) for n in sizes]
    raw = [sum(s) / n for s, n in zip(shapes, sizes)]
    dense: set = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
        over = {i for i in range(len(sizes)) if i not in dense and eps * raw[i] > 1}
        if not over:
            break
        dense |= over
    return [n if i in dense else int(round(eps * raw[i] * n)) for i, n in enumerate(sizes)]


def top_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """A bool tensor of `score`'s shape, True at its k largest entries (exactly k)."""
    flat = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        flat.scatter_(0, torch.topk(score.flatten(), k, sorted=False).indices, True)
    return flat.view(score.shape)


def magnitude_masks(named: Named, keep: Dict[str, torch.Tensor], counts: Sequence[int] | int,
                    scope: str) -> Dict[str, torch.Tensor]:
    """Keep the largest |w| among entries still kept (`keep`; pruned ones never return):
    `counts` per tensor (scope layer) or one count over all tensors (scope global)."""
    scores = [torch.where(keep[n], p.detach().abs().float(), -1.0) if n in keep
              else p.detach().abs().float() for n, p in named]
    if scope == "layer":
        return {n: top_k(s, k) for (n, _), s, k in zip(named, scores, counts)}
    flat = top_k(torch.cat([s.flatten() for s in scores]), counts)
    return {n: m.view(p.shape) for (n, p), m in
            zip(named, flat.split([p.numel() for _, p in named]))}


def density_counts(named: Named, q: float, scope: str) -> Sequence[int] | int:
    """The entries kept at sparsity q: one count per tensor (scope layer) or over all (global)."""
    if scope == "global":
        return int(round((1 - q) * sum(p.numel() for _, p in named)))
    return [int(round((1 - q) * p.numel())) for _, p in named]


def set_masks(ctx, masks: Dict[str, torch.Tensor]) -> None:
    """Put the masks in `ctx.masks`, each keeping its weight's kind (a frozen one stays frozen)."""
    for name, m in masks.items():
        ctx.masks.set(name, m, ctx.masks[name].kind if name in ctx.masks else "pruned")


def cosine_fraction(alpha: float, t: int, end: int) -> float:
    """The update fraction of DST at step t: alpha / 2 * (1 + cos(pi t / end)) (RigL)."""
    return alpha / 2 * (1 + math.cos(math.pi * t / end)) if t < end else 0.0
