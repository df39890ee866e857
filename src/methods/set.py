"""SET, sparse evolutionary training (Mocanu et al. 2018; Wimmer's thesis Sec. 5.5.1, SP-/IP-SET):
a random sparse mask at setup (`sparsity` q of the prunable weights, spread `uniform` or `erk`
over the layers; kept count per layer round(density * n)), then every `t_p` steps of a phase, in
each layer, `rounding`(f k) of its k kept weights with the smallest magnitude are dropped and as
many are regrown at random among the entries not kept after the drop (regrown entries start at 0
with a cleared optimizer state; a dropped entry that is regrown keeps its value). The fraction f
decays with a cosine from `fraction` to `fraction_end` at `stop` (a share of the phase's steps);
no updates from `stop` on. The number of kept weights never changes. An update is top-k on the
device with host-known counts: no host sync. A weight that another stacked method masked after
setup keeps that mask's kind, and its kept count is read once.

Defaults: the code of Liu et al. 2021 ("In-Time Over-Parameterization"), whose setup the thesis's
SET and RigL runs follow (t_p values, Table A.11) and which the thesis leaves otherwise unstated
(Shiweiliuiiiiiii/In-Time-Over-Parameterization): drop fraction 0.5 (sparselearning/core.py
line 18, `--death-rate`; ImageNet/core.py line 15, `--prune-rate`), decayed by a cosine over the
whole run to 0.005 and never stopped (core.py line 23, `CosineDecay(..., eta_min=0.005)`, stepped
every step, line 215, with T_max = all training steps, main.py line 270; ImageNet/main.py line
225), drop count ceil(f k) (core.py line 391; ImageNet/core.py line 564). RigL's own schedule
(google-research/rigl: fraction 0.3, rigl_tf2/configs/rigl.gin line 27; cosine to 0 with the
updates ending at 0.75 of training, Evci et al. 2020, Sec. 4; drop count floor(f k),
rigl_tf2/mask_updaters.py lines 104-105) is `fraction=0.3 fraction_end=0 stop=0.75
rounding=floor` (`rounding=round`: the nearest count).

ERK under the interspace (`erk_shapes`): `spatial` (default) computes the Erdos-Renyi-kernel
densities from the shapes of the spatial weights that each FB layer's coefficients compute
(out, in, K, K), so SP and IP runs keep the same share of every layer and differ only in the
representation (the thesis's SP vs IP comparison); `stored` computes them from the stored
tensors' shapes, (out, in, n) for coefficients, which gives IP other budgets (a 7x7 stem keeps
43 % more entries under fine sharing: ResNet50).
"""
from __future__ import annotations

import math
from typing import Annotated, Dict

import torch

from methods.base import Method
from runner.models.transforms import prunable, spatial_shapes
from runner.sparse.keep import ROUNDINGS, keep_count, layer_counts, top_k
from runner.sparse.training import check, cosine_fraction
from runner.ranges import UNIT


class SET(Method):
    name = "set"

    def __init__(self, sparsity: float = 0.9, t_p: int = 1500,
                 fraction: Annotated[float, UNIT] = 0.5,
                 fraction_end: Annotated[float, UNIT] = 0.005, stop: float = 1.0,
                 rounding: str = "ceil", distribution: str = "erk", erk_shapes: str = "spatial"):
        check(sparsity, distribution)
        if t_p < 1 or not all(0.0 <= v <= 1.0 for v in (fraction, fraction_end, stop)):
            raise ValueError(f"{self.name}: t_p={t_p} (>= 1), fraction={fraction}, "
                             f"fraction_end={fraction_end} and stop={stop} (in [0, 1])")
        if rounding not in ROUNDINGS:
            raise ValueError(f"{self.name}: rounding={rounding!r}; valid: {', '.join(ROUNDINGS)}")
        if erk_shapes not in ("spatial", "stored"):
            raise ValueError(f"{self.name}: erk_shapes={erk_shapes!r}; valid: spatial, stored")
        self.sparsity, self.t_p, self.fraction, self.stop = sparsity, t_p, fraction, stop
        self.fraction_end, self.rounding = fraction_end, rounding
        self.distribution, self.erk_shapes = distribution, erk_shapes
        self.start = self.updates = 0

    def setup(self, ctx) -> None:
        self.named = prunable(ctx.model)
        self.counts = self.layer_counts(ctx.model)
        for (name, p), k in zip(self.named, self.counts):
            score = torch.rand(p.shape, generator=ctx.gen).to(p.device)
            ctx.masks.set(name, top_k(score, k))
        self.seen = {name: ctx.masks[name] for name, _ in self.named}

    def layer_counts(self, model) -> list:
        """Kept entries per prunable tensor at setup (ERK on the shapes `erk_shapes` names)."""
        spatial = spatial_shapes(model) if self.erk_shapes == "spatial" else {}
        shapes = [spatial.get(id(p), p.shape) for _, p in self.named]
        counts = layer_counts(shapes, 1 - self.sparsity, self.distribution, "round")
        return [c if p.numel() == math.prod(s) else keep_count(p.numel(), c / math.prod(s), "round")
                for (_, p), s, c in zip(self.named, shapes, counts)]

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
        frac = cosine_fraction(self.fraction, t, int(self.stop * ctx.total_steps),
                               self.fraction_end)
        if frac <= 0:
            return
        for i, (name, p) in enumerate(self.named):
            mask = ctx.masks[name]
            if mask is not self.seen[name]:  # another method re-masked it: its count, its kind
                self.counts[i] = int(mask.keep.sum())
            k = self.counts[i]
            n = min(k, keep_count(k, frac, self.rounding))
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
