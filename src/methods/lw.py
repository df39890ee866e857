"""LW: layer-wise reinitialization (Alabdulmohsin et al. 2021, Algorithm 1).

Round r works on block k (k = r // N + 1, each of the K blocks for N rounds, or `schedule[r]`).
At the start of the round: the weights of blocks 1..k are rescaled to their norms at
initialization; a fixed normalization (x - mu) / sigma, with the scalar mean and std of block
k's output on a random training batch, is inserted after block k (or updated when present);
everything above block k is reinitialized with a fresh draw of the configured initializer; then
the whole model trains (or, with `freeze`, everything but blocks 1..k-1).

Blocks are `model.blocks` after the first `stem` (which stay with block 1: ResNet's stem
convolution), the first `blocks` of them when set; `head_as_block` makes the head the last block (the paper's MLP: "Treating every layer as a block, we have K = 3"): its rounds
rescale every layer and reinitialize nothing, and no normalization follows the head. The ablations
of Appendix E are `rescale: false`, `normalize: false`, `freeze: true`; `reinit: false` with
`normalize: false` and all layers as blocks is Appendix B's "rescaling only".
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from methods.base import Method
from methods.reinit_common import Standardize
from runner.models import params


class LW(Method):
    name = "lw"

    def __init__(self, n: int = 1, blocks: Optional[int] = None, stem: int = 0,
                 head_as_block: bool = False, schedule: Optional[List[int]] = None, rescale: bool = True,
                 rescale_params="weights", normalize: bool = True, reinit: bool = True,
                 freeze: bool = False, calib_size: int = 256, reset_optimizer: bool = True):
        self.n, self.blocks, self.stem, self.head_as_block = int(n), blocks, int(stem), head_as_block
        self.schedule = list(schedule) if schedule else None
        self.rescale, self.rescale_params = rescale, rescale_params
        self.normalize, self.reinit, self.freeze = normalize, reinit, freeze
        self.calib_size, self.reset_optimizer = int(calib_size), reset_optimizer
        self.norms: Dict[int, Standardize] = {}
        self.k = 0

    def setup(self, ctx) -> None:
        model = ctx.model
        self.units: List[nn.Module] = list(model.blocks) + [model.head]  # as built, unwrapped
        n_blocks = len(model.blocks) - self.stem if self.blocks is None else int(self.blocks)
        self.K = n_blocks + 1 if self.head_as_block else n_blocks
        if not 1 <= self.K <= len(self.units) - self.stem:
            raise ValueError(f"LW: {self.K} blocks after a stem of {self.stem} requested; the "
                             f"model has {len(model.blocks)} blocks")
        self.init_norms = {}
        for u in self.units[:self.stem + self.K]:
            chosen = params.slots(u, self.rescale_params)
            self.init_norms.update(zip((id(s.stored()[0]) for s in chosen), params.norms(chosen)))

    def state_dict(self):
        return {"k": self.k, "norms": sorted(self.norms), "init_norms": dict(enumerate(
            self.init_norms.values())), "calib_index": getattr(self, "calib_index", None)}

    def load_state_dict(self, state, ctx) -> None:
        """The round's block, the initial norms, and the inserted normalizations (their
        statistics arrive with the model's weights)."""
        self.k = state["k"]
        for i in state["norms"]:
            self.insert_norm(ctx, i)
        saved = state["init_norms"]
        self.init_norms = {key: saved[j].to(ctx.device) for j, key in enumerate(self.init_norms)}
        if state["calib_index"] is not None:
            self.calib_index = state["calib_index"]

    def insert_norm(self, ctx, i: int) -> None:
        """A `Standardize` after model block i (once)."""
        if i not in self.norms:
            self.norms[i] = Standardize().to(ctx.device)
            ctx.model.blocks[i] = nn.Sequential(self.units[i], self.norms[i])

    def block_of_round(self, r: int) -> int:
        if self.schedule:
            return self.schedule[min(r, len(self.schedule) - 1)]
        return min(r // self.n + 1, self.K)

    @torch.no_grad()
    def rescale_(self, kept: int) -> None:
        for unit in self.units[:kept]:
            chosen = params.slots(unit, self.rescale_params)
            if chosen:
                now = params.norms(chosen)
                init = torch.stack([self.init_norms[id(s.stored()[0])] for s in chosen])
                params.scale_(chosen, torch.where(now > 0, init / now.clamp_min(1e-30), 1.0))

    @torch.no_grad()
    def calibrate(self, ctx, kept: int) -> None:
        """Insert or update the normalization after model block `kept` on a random training batch."""
        model, train, i = ctx.model, ctx.data.train, kept - 1
        self.insert_norm(ctx, i)
        self.calib_index = torch.randperm(len(train), generator=ctx.gen)[:self.calib_size]
        idx = self.calib_index.to(train.y.device)
        was_training = model.training
        model.eval()
        z = ctx.pipeline(train.x[idx], False, None)
        for block in model.blocks[:i]:
            z = block(z)
        self.norms[i].calibrate(self.units[i](z))
        model.train(was_training)

    @torch.no_grad()
    def reinit_above(self, ctx, kept: int) -> None:
        fresh = ctx.build_model()
        fresh_units = list(fresh.blocks) + [fresh.head]
        for unit, new in zip(self.units[kept:], fresh_units[kept:]):
            unit.load_state_dict(new.state_dict())

    def on_phase_start(self, ctx) -> None:
        r = ctx.phase.index
        self.k = self.block_of_round(r)
        kept = self.stem + self.k  # model units (blocks, then the head) kept this round
        if self.rescale:
            self.rescale_(kept)
        if self.normalize and kept <= len(ctx.model.blocks):
            self.calibrate(ctx, kept)
        if self.reinit and r > 0:  # at r = 0 the layers above are freshly initialized already
            self.reinit_above(ctx, kept)
        if self.freeze:
            frozen = kept - 1 if self.k > 1 else 0  # blocks 1..k-1 (with the stem)
            for i, unit in enumerate(self.units):
                unit.requires_grad_(i >= frozen)
        if self.reset_optimizer and r > 0:
            ctx.reset_optimizer()

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"lw_block": self.k}
