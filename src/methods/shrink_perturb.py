"""Shrink & Perturb, applied when the training data change (the start of every phase after the first).

variant 'init' (Oh et al. 2025 after Lee et al. 2024; the default): theta <- (1 - lam) theta + lam theta_0,
    with theta_0 the model at setup: lam = 1 restores the initialization, lam = 0 does nothing.
variant 'fresh' (Ash & Adams 2020): theta <- (1 - lam) theta + perturb * theta_fresh, with
    theta_fresh a newly initialized model drawn from the run's method generator.

Touches the `params` kinds (default all, as both public codes); buffers (BN running statistics)
are kept. The optimizer state is kept unless `reset_optimizer` (SWR's code keeps Adam's moments;
Ash & Adams build a new optimizer every round).
"""
from typing import Annotated

import torch

from methods.base import Method
from runner.models.params import select
from runner.ranges import NON_NEGATIVE


class ShrinkPerturb(Method):
    name = "shrink_perturb"

    def __init__(self, lam: Annotated[float, NON_NEGATIVE] = 0.4, variant: str = "init", perturb: float = 0.1,
                 params: str = "all", reset_optimizer: bool = False):
        if variant not in ("init", "fresh"):
            raise ValueError(f"shrink_perturb variant {variant!r}; valid: init, fresh")
        self.lam, self.variant, self.perturb = float(lam), variant, float(perturb)
        self.params, self.reset_optimizer = params, reset_optimizer

    def setup(self, ctx) -> None:
        self.names = [n for n, _ in select(ctx.model, self.params)]
        self.init = [p.detach().clone() for _, p in select(ctx.model, self.params)]

    def state_dict(self):
        return {"init": self.init}

    def load_state_dict(self, state, ctx) -> None:
        self.init = [t.to(ctx.device) for t in state["init"]]

    @torch.no_grad()
    def on_phase_start(self, ctx) -> None:
        if ctx.phase_index == 0:
            return
        current = [p for _, p in select(ctx.model, self.params)]
        if self.variant == "init":
            for p, p0 in zip(current, self.init):
                p.mul_(1 - self.lam).add_(p0, alpha=self.lam)
        else:
            fresh = dict(select(ctx.build_model(), self.params))
            for name, p in zip(self.names, current):
                p.mul_(1 - self.lam).add_(fresh[name], alpha=self.perturb)
        if self.reset_optimizer:
            ctx.reset_optimizer()
