"""FT, dense training then one-shot magnitude pruning and fine-tuning (Renda et al. 2020;
Wimmer's thesis Sec. 5.5.1, SP-/IP-FT): at the start of phase `at_phase` (the fine-tuning
phase, which repeats the dense training's learning-rate schedule: "learning-rate rewinding"),
the weights are pruned by magnitude to `sparsity` (`scope: global`, or per layer) and the
survivors (and, in the interspace, the filter bases) train on.
"""
from __future__ import annotations

from typing import Dict

import torch

from methods.base import Method
from runner.models.transforms import prunable
from runner.sparse.training import check, density_counts, magnitude_masks, set_masks


class FineTune(Method):
    name = "finetune"

    def __init__(self, sparsity: float = 0.9, at_phase: int = 1, scope: str = "global"):
        check(sparsity, scope=scope)
        self.sparsity, self.at_phase, self.scope = sparsity, at_phase, scope
        self.pruned = False

    @torch.no_grad()
    def on_phase_start(self, ctx) -> None:
        if ctx.phase_index != self.at_phase:
            return
        named = prunable(ctx.model)
        counts = density_counts(named, self.sparsity, self.scope)
        set_masks(ctx, magnitude_masks(named, {}, counts, self.scope))
        self.pruned = True

    def state_dict(self):
        return {"pruned": self.pruned}

    def load_state_dict(self, state, ctx) -> None:
        self.pruned = state["pruned"]

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"sparsity": self.sparsity if self.pruned else 0.0}
