"""How many entries a sparse network keeps and which: the one keep count, the per-tensor budgets
and the one top-k that every sparse method and analysis uses.

- `keep_count(n, density, rounding)`: rule(density * n), the rule explicit ("floor", "round" or
  "ceil"; Python's round: halves to even). A float density multiplies as a float (what the
  sparse-training methods compute); a `Fraction` exactly: `exact_density(q)` reads the sparsity q
  as the decimal it prints as, so floor((1 - q) D) is exact (q = 0.9 of 430,500 keeps 43,050; the
  float product would give 43,049). Who uses which rule: floor (exact): pruning at init, COPS,
  FreezeNet (d = floor((1 - q) D), Wimmer's thesis Ch. 3, 4); round (float): `layer_counts`
  (SET, RigL), GMP, FT, LTH's rounds, SET's drop count, random masks, the reinitialization
  methods' masks, SynFlow's intermediate rounds.
- `layer_counts(shapes, density, distribution, rounding)`: entries kept per tensor, `density` of
  each (uniform) or Erdos-Renyi-kernel densities (Evci et al. 2020).
- `split_count(sizes, d)`: one count d split over tensors in proportion to their sizes, largest
  remainders first (pruning's `scope: layer`).
- `top_k(score, k, largest, ties)`: a bool tensor of `score`'s shape, True at exactly k entries,
  the largest (or smallest). `ties="any"`: torch.topk's choice, built on the device with a host
  count and no host sync (the DST methods' updates inside a step); `ties="first"`: ties go to the
  earlier entry (row-major), deterministic (pruning's masks, the reinitialization methods'
  smallest magnitudes); both build the mask on the scores' device without a host sync.
- `top_k_masks(scores, counts, largest, ties)`: `top_k` over named tensors, one count over all of
  them (an int: global) or one per tensor (a mapping: per layer).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Dict, List, Mapping, Sequence, Union

import torch

SCOPES = ("global", "layer")
ROUNDINGS = {"floor": math.floor, "round": round, "ceil": math.ceil}
TIES = ("any", "first")
DISTRIBUTIONS = ("uniform", "erk")


def exact_density(q: float) -> Fraction:
    """1 - q, q read as the decimal it prints as (no float round-down)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"compression rate q={q}; valid: [0, 1]")
    return 1 - Fraction(repr(float(q)))


def keep_count(n: int, density: Union[float, Fraction], rounding: str) -> int:
    """Entries kept of n at `density`: rounding(density * n), in the density's arithmetic."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r}; valid: {', '.join(ROUNDINGS)}")
    return int(ROUNDINGS[rounding](density * n))


def layer_counts(shapes: Sequence[torch.Size], density: float, distribution: str,
                 rounding: str) -> List[int]:
    """Entries kept per tensor: `density` of each (uniform), or Erdos-Renyi-kernel densities
    eps * sum(shape) / prod(shape) (Evci et al. 2020), layers that would exceed 1 kept dense."""
    sizes = [math.prod(s) for s in shapes]
    if distribution == "uniform":
        return [keep_count(n, density, rounding) for n in sizes]
    if distribution != "erk":
        raise ValueError(f"distribution={distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    raw = [sum(s) / n for s, n in zip(shapes, sizes)]
    dense: set = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
        over = {i for i in range(len(sizes)) if i not in dense and eps * raw[i] > 1}
        if not over:
            break
        dense |= over
    return [n if i in dense else keep_count(n, eps * raw[i], rounding)
            for i, n in enumerate(sizes)]


def split_count(sizes: Mapping[str, int], d: int) -> Dict[str, int]:
    """d split over tensors in proportion to their sizes: floors, then the largest remainders
    (earlier tensor first on ties) get one more."""
    total = sum(sizes.values())
    exact = {n: Fraction(d * s, max(total, 1)) for n, s in sizes.items()}
    counts = {n: math.floor(e) for n, e in exact.items()}
    rest = d - sum(counts.values())
    order = sorted(sizes, key=lambda n: -(exact[n] - counts[n]))  # sorted() is stable
    for n in order[:rest]:
        counts[n] += 1
    return counts


def top_k(score: torch.Tensor, k: int, largest: bool = True, ties: str = "any") -> torch.Tensor:
    """A bool tensor of `score`'s shape, True at its k largest (`largest`) or smallest entries,
    exactly k; ties as `ties` says (module docstring)."""
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}; valid: {', '.join(TIES)}")
    v = score.flatten()
    if ties == "any":
        flat = torch.zeros(v.numel(), dtype=torch.bool, device=v.device)
        if k > 0:
            flat.scatter_(0, torch.topk(v, k, largest=largest, sorted=False).indices, True)
        return flat.view(score.shape)
    n = v.numel()
    if k in (0, n):
        return torch.full((n,), k == n, dtype=torch.bool, device=v.device).view(score.shape)
    if largest:
        threshold = torch.kthvalue(v, n - k + 1).values  # the k-th highest score
        keep = v > threshold
    else:
        threshold = torch.kthvalue(v, k).values  # the k-th lowest score
        keep = v < threshold
    tied = v == threshold  # the first k - |keep| of them join: no host read
    keep |= tied & (tied.cumsum(0) <= k - keep.sum())
    return keep.view(score.shape)


def top_k_masks(scores: Mapping[str, torch.Tensor], counts: Union[int, Mapping[str, int]],
                largest: bool = True, ties: str = "any") -> Dict[str, torch.Tensor]:
    """`top_k` of named tensors: per tensor (`counts` a mapping name -> k) or over all of them
    together (`counts` one int; the concatenation in the mapping's order)."""
    if isinstance(counts, Mapping):
        return {n: top_k(s, counts[n], largest, ties) for n, s in scores.items()}
    flat = top_k(torch.cat([s.flatten() for s in scores.values()]), counts, largest, ties)
    return {n: m.view(s.shape) for (n, s), m in
            zip(scores.items(), flat.split([s.numel() for s in scores.values()]))}
