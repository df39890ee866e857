"""GMP, gradual magnitude pruning (Zhu & Gupta 2017, setup of Gale et al. 2019; Wimmer's thesis
Eq. 5.16, SP-/IP-GMP): training starts dense; at every step t = k t_p (counted over the run)
the sparsity target is q_t = 0 before t0, q (1 - (1 - (t - t0) / (t1 - t0))^3) from t0 to t1,
and q after t1; the weights are pruned by magnitude to it (per layer, `scope: layer`, as Gale
et al. do, or over all prunable weights, `global`). Pruned weights never return. The thesis'
ImageNet values (batch 256): t_p = 8,000, t0 = 160,000, t1 = 400,000 (q = 0.8) or 304,000
(q = 0.9). No host sync: counts are host numbers, the masks top-k on the device.
"""
from __future__ import annotations

from typing import Dict

import torch

from methods.base import Method
from runner.models.transforms import prunable
from runner.sparse.training import check, density_counts, magnitude_masks, set_masks


def gmp_sparsity(q: float, t: int, t0: int, t1: int) -> float:
    """Eq. (5.16): the sparsity target at step t."""
    if t < t0:
        return 0.0
    if t > t1:
        return q
    return q * (1 - (1 - (t - t0) / (t1 - t0)) ** 3)


class GMP(Method):
    name = "gmp"

    def __init__(self, sparsity: float = 0.9, t_p: int = 8000, t0: int = 160000,
                 t1: int = 304000, scope: str = "layer"):
        check(sparsity, scope=scope)
        if t_p < 1 or not 0 <= t0 < t1:
            raise ValueError(f"gmp: t_p={t_p} (>= 1), t0={t0} < t1={t1}")
        self.sparsity, self.t_p, self.t0, self.t1, self.scope = sparsity, t_p, t0, t1, scope
        self.current = 0.0

    def setup(self, ctx) -> None:
        self.named = prunable(ctx.model)

    @torch.no_grad()
    def after_step(self, ctx) -> None:
        t = ctx.step + 1
        if t % self.t_p:
            return
        q = gmp_sparsity(self.sparsity, t, self.t0, self.t1)
        if q <= self.current:
            return
        keep = {n: ctx.masks[n].keep for n, _ in self.named if n in ctx.masks}
        counts = density_counts(self.named, q, self.scope)
        set_masks(ctx, magnitude_masks(self.named, keep, counts, self.scope))
        self.current = q

    def state_dict(self):
        return {"current": self.current}

    def load_state_dict(self, state, ctx) -> None:
        self.current = state["current"]

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"sparsity": self.current}
