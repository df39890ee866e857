"""SET, sparse evolutionary training (Mocanu et al. 2018; Wimmer's thesis Sec. 5.5.1, SP-/IP-SET):
a random sparse mask at setup (`sparsity` q of the prunable weights, spread `uniform` or `erk`
over the layers), then every `t_p` steps of a phase, in each layer, the `fraction` of its kept
weights with the smallest magnitude is dropped and as many are regrown at random among the
entries not kept after the drop (regrown entries start at 0 with a cleared optimizer state; a
dropped entry that is regrown keeps its value). The fraction decays with a cosine from
`fraction` to 0 at `stop` (a share of the phase's steps); no updates after it (RigL's schedule,
thesis: "cosine schedule decays the prune/regrow fraction"). The number of kept weights never
changes. An update is top-k on the device with host-known counts: no host sync. A weight that
another stacked method masked after setup keeps that mask's kind, and its kept count is read once.
"""
from __future__ import annotations

from typing import Annotated, Dict

import torch

from methods.base import Method
from runner.models.transforms import prunable
from runner.sparse.keep import keep_count, layer_counts, top_k
from runner.sparse.training import check, cosine_fraction
from runner.ranges import UNIT


class SET(Method):
    name = "set"

    def __init__(self, sparsity: float = 0.9, t_p: int = 1500, fraction: Annotated[float, UNIT] = 0.3,
                 stop: float = 0.75, distribution: str = "erk"):
        check(sparsity, distribution)
        if t_p < 1 or not 0.0 <= fraction <= 1.0 or not 0.0 <= stop <= 1.0:
            raise ValueError(f"{self.name}: t_p={t_p} (>= 1), fraction={fraction} and "
                             f"stop={stop} (in [0, 1])")
        self.sparsity, self.t_p, self.fraction, self.stop = sparsity, t_p, fraction, stop
        self.distribution = distribution
        self.start = self.updates = 0

    def setup(self, ctx) -> None:
        self.named = prunable(ctx.model)
        self.counts = layer_counts([p.shape for _, p in self.named], 1 - self.sparsity,
                                   self.distribution, "round")
        for (name, p), k in zip(self.named, self.counts):
            score = torch.rand(p.shape, generator=ctx.gen).to(p.device)
            ctx.masks.set(name, top_k(score, k))
        self.seen = {name: ctx.masks[name] for name, _ in self.named}

    def on_phase_start(self, ctx) -> None:
        self.start = ctx.step

    def grow_scores(self, ctx, p: torch.Tensor) -> torch.Tensor:
        """Scores of the entries that may grow (the largest win): random for SET."""
        return torch.rand(p.shape, generator=ctx.gen).to(p.device)

    @torch.no_grad()
    def after_step(self, ctx) -> None:
        t = ctx.step + 1 - self.start
        if t % self.t_p:
            return
        frac = cosine_fraction(self.fraction, t, int(self.stop * ctx.total_steps))
        if frac <= 0:
            return
        for i, (name, p) in enumerate(self.named):
            mask = ctx.masks[name]
            if mask is not self.seen[name]:  # another method re-masked it: its count, its kind
                self.counts[i] = int(mask.keep.sum())
            k = self.counts[i]
            n = min(k, keep_count(k, frac, "round"))
            if n == 0 or k == p.numel():
                continue
            keep = mask.keep
            magnitude = torch.where(keep, p.abs(), torch.inf)
            kept = keep & ~top_k(-magnitude, n)  # drop the n smallest kept magnitudes
            grow = torch.where(kept, -torch.inf, self.grow_scores(ctx, p).to(magnitude))
            ctx.masks.set(name, kept | top_k(grow, n), mask.kind)
            self.seen[name] = ctx.masks[name]
        self.updates += 1

    def state_dict(self):
        return {"start": self.start, "updates": self.updates, "counts": self.counts}

    def load_state_dict(self, state, ctx) -> None:
        self.start, self.updates, self.counts = state["start"], state["updates"], state["counts"]

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"mask_updates": self.updates, "density": sum(self.counts) /
                max(1, sum(p.numel() for _, p in self.named))}
