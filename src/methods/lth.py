"""LTH, the lottery ticket hypothesis with rewinding (Frankle et al. 2019, 2020; Wimmer's thesis
Sec. 5.5.1, SP-/IP-LTH): the stored parameters are saved after `rewind_step` training steps
(thesis: iteration 500; 0 = the initialization); the run is one phase repeated (train to the
end of the round); at the start of every round after the first, `prune_fraction` (0.2) of the
weights still kept is pruned by magnitude (`scope: global`, as OpenLTH does for VGG, or per
layer), every stored parameter (weights, biases, norm, filter bases: thesis open question,
rewound too) is reset to its saved value and the optimizer restarts. After r rounds the
sparsity is 1 - 0.8^r. Every round's summary holds `sparsity` and `layer_density` (kept share
of each prunable tensor, by stored name: the FLOPs of Fig. 5.8 a, the interspace analysis's `flops`).
"""
from __future__ import annotations

from typing import Dict

import torch

from methods.base import Method
from runner.models.params import select, snapshot
from runner.models.transforms import prunable
from runner.sparse.keep import keep_count
from runner.sparse.training import check, magnitude_masks, set_masks


class LTH(Method):
    name = "lth"

    def __init__(self, prune_fraction: float = 0.2, rewind_step: int = 500, scope: str = "global"):
        check(prune_fraction, scope=scope)
        if rewind_step < 0:
            raise ValueError(f"lth rewind_step={rewind_step}; valid: >= 0")
        self.fraction, self.rewind_step, self.scope = prune_fraction, rewind_step, scope
        self.saved = None
        self.rounds = 0

    def setup(self, ctx) -> None:
        self.named = prunable(ctx.model)
        self.kept = [p.numel() for _, p in self.named]
        if self.rewind_step == 0:
            self.saved = snapshot(ctx.model)

    def after_step(self, ctx) -> None:
        if ctx.step + 1 == self.rewind_step:
            self.saved = snapshot(ctx.model)

    def state_dict(self):
        return {"saved": self.saved, "kept": self.kept, "rounds": self.rounds}

    def load_state_dict(self, state, ctx) -> None:
        saved = state["saved"]
        self.saved = None if saved is None else {n: t.to(ctx.device) for n, t in saved.items()}
        self.kept, self.rounds = state["kept"], state["rounds"]

    @torch.no_grad()
    def on_phase_start(self, ctx) -> None:
        if ctx.phase_index == 0:
            return
        if self.saved is None:
            raise RuntimeError(f"lth: rewind_step={self.rewind_step} was not reached in the first "
                               f"round ({ctx.step} steps); lower it or train longer")
        keep = {n: ctx.masks[n].keep for n, _ in self.named if n in ctx.masks}
        self.kept = [keep_count(k, 1 - self.fraction, "round") for k in self.kept]
        counts = self.kept if self.scope == "layer" else sum(self.kept)
        masks = magnitude_masks(self.named, keep, counts, self.scope)
        for name, p in select(ctx.model):
            p.copy_(self.saved[name])
        set_masks(ctx, masks)
        ctx.reset_optimizer()
        self.rounds += 1

    @torch.no_grad()
    def on_phase_end(self, ctx) -> Dict[str, object]:
        total = sum(p.numel() for _, p in self.named)
        masked = [n for n, _ in self.named if n in ctx.masks]
        kept = dict(zip(masked, torch.stack([ctx.masks[n].keep.sum() for n in masked]).tolist()
                        if masked else []))  # one host read per round
        density = {n: kept.get(n, p.numel()) / p.numel() for n, p in self.named}
        return {"lth_round": self.rounds, "sparsity": 1 - sum(self.kept) / max(total, 1),
                "layer_density": density}
