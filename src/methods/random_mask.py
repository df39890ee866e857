"""Random masks at initialization (Wimmer's thesis, Ch. 3: the random pruning baseline and the
random-mask FreezeNet): in every weight tensor, exactly round(density * n) entries, drawn
uniformly from the run's method generator, keep training; the rest are `pruned` (0), `frozen`
at their initial values, or `frozen_wd` (moved by weight decay alone). The runner enforces the
mask under every optimizer (runner.sparse.masks). Reports the share of weights that train.
"""
from __future__ import annotations

from typing import Annotated, Dict

import torch

from methods.base import Method
from runner.models.params import select
from runner.models.transforms import prunable
from runner.sparse.keep import keep_count
from runner.ranges import UNIT


class RandomMask(Method):
    name = "random_mask"

    def __init__(self, density: Annotated[float, UNIT] = 0.1, kind: str = "pruned", params: str = "weights"):
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"random_mask density={density}; valid: [0, 1]")
        self.density, self.kind, self.params = float(density), kind, params

    def setup(self, ctx) -> None:
        kept = total = 0
        chosen = prunable(ctx.model) if self.params == "weights" else select(ctx.model, self.params)
        for name, p in chosen:  # filter bases are never masked
            keep = torch.zeros(p.numel(), dtype=torch.bool)
            k = keep_count(p.numel(), self.density, "round")
            keep[torch.randperm(p.numel(), generator=ctx.gen)[:k]] = True
            ctx.masks.set(name, keep.view(p.shape), self.kind)
            kept, total = kept + k, total + p.numel()
        self.share = kept / max(total, 1)

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"trained_share": self.share}

    def state_dict(self):
        return {"share": self.share}

    def load_state_dict(self, state, ctx) -> None:
        self.share = state["share"]
