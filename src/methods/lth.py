"""LTH, the lottery ticket hypothesis with rewinding (Frankle et al. 2019, 2020; Wimmer's thesis
Sec. 5.5.1, SP-/IP-LTH): the stored parameters and buffers are saved after `rewind_step`
training steps (thesis: iteration 500; 0 = the initialization); the run is one phase repeated
(train to the end of the round); at the start of every round after the first, `prune_fraction`
(0.2) of the weights still kept is pruned by magnitude (`scope: global`, as OpenLTH does for
VGG, or per layer; rounding(fraction x kept) of them), every stored parameter (weights, biases,
norm, filter bases: thesis open question, rewound too) is reset to its saved value and the
optimizer restarts. After r rounds the sparsity of the pruned tensors is about 1 - 0.8^r.
Every round's summary holds `sparsity` (of the pruned tensors) and `layer_density` (kept share
of each prunable tensor, by stored name: the FLOPs of Fig. 5.8 a, the interspace analysis's
`flops`).

Where the thesis is silent, as OpenLTH (facebookresearch/open_lth), the code of the setup its
LTH column follows (Frankle et al. 2020):
- `continue_schedule`: a round after the first trains from the rewind step to the end of the
  schedule, its epochs and learning rates continuing from there (lottery/runner.py lines
  112-120 start training at `train_start_step`; training/train.py line 88 advances the lr
  schedule to it, line 103 skips the batches before it), with a fresh optimizer (train.py
  line 64). false: every round runs the whole schedule from step 0.
- `rewind_buffers`: BatchNorm running statistics are rewound with the weights (OpenLTH saves
  and loads the whole `state_dict()`: models/base.py line 72, lottery/runner.py line 112).
  false: the round keeps the statistics the last round ended with.
- `prune_head: false`: the output layer (`model.head`) is never pruned (models/cifar_vgg.py
  line 117, `pruning_layers_to_ignore='fc.weight'`). true: pruned like every other weight.
- `rounding: ceil`: ceil(0.2 x kept) weights are pruned (pruning/sparse_global.py lines 37-38;
  OpenLTH counts there the remaining weights of the ignored head too, we count the pruned
  tensors only, so that 1 - 0.8^r is their sparsity). `round`: the nearest count.
"""
from __future__ import annotations

from typing import Dict

import torch

from methods.base import Method
from runner.models.params import select, snapshot
from runner.models.transforms import prunable
from runner.sparse.keep import ROUNDINGS, keep_count
from runner.sparse.training import check, magnitude_masks, set_masks


class LTH(Method):
    name = "lth"

    def __init__(self, prune_fraction: float = 0.2, rewind_step: int = 500, scope: str = "global",
                 continue_schedule: bool = True, rewind_buffers: bool = True,
                 prune_head: bool = False, rounding: str = "ceil"):
        check(prune_fraction, scope=scope)
        if rewind_step < 0:
            raise ValueError(f"lth rewind_step={rewind_step}; valid: >= 0")
        if rounding not in ROUNDINGS:
            raise ValueError(f"lth rounding={rounding!r}; valid: {', '.join(ROUNDINGS)}")
        self.fraction, self.rewind_step, self.scope = prune_fraction, rewind_step, scope
        self.continue_schedule, self.rewind_buffers = continue_schedule, rewind_buffers
        self.prune_head, self.rounding = prune_head, rounding
        self.saved = self.buffers = None
        self.rounds = 0

    def setup(self, ctx) -> None:
        self.all_named = prunable(ctx.model)
        head = getattr(ctx.model, "head", None)
        skip = set() if self.prune_head or head is None else {id(p) for p in head.parameters()}
        self.named = [(n, p) for n, p in self.all_named if id(p) not in skip]
        sizes = [p.numel() for _, p in self.named]
        self.kept = sizes if self.scope == "layer" else [sum(sizes)]
        if self.rewind_step == 0:
            self.save(ctx)

    def save(self, ctx) -> None:
        self.saved = snapshot(ctx.model)
        self.buffers = {n: b.detach().clone() for n, b in ctx.model.named_buffers()}

    def after_step(self, ctx) -> None:
        if ctx.step + 1 == self.rewind_step:
            self.save(ctx)

    def state_dict(self):
        return {"saved": self.saved, "buffers": self.buffers, "kept": self.kept,
                "rounds": self.rounds}

    def load_state_dict(self, state, ctx) -> None:
        self.saved, self.buffers = (None if state[k] is None else
                                    {n: t.to(ctx.device) for n, t in state[k].items()}
                                    for k in ("saved", "buffers"))
        self.kept, self.rounds = state["kept"], state["rounds"]

    @torch.no_grad()
    def on_phase_start(self, ctx) -> None:
        if ctx.phase_index == 0:
            return
        if self.saved is None:
            raise RuntimeError(f"lth: rewind_step={self.rewind_step} was not reached in the first "
                               f"round ({ctx.step} steps); lower it or train longer")
        if self.continue_schedule and self.rewind_step >= ctx.total_steps:
            raise RuntimeError(f"lth: rewind_step={self.rewind_step} leaves no step of the "
                               f"round's {ctx.total_steps} to continue from; lower it, train "
                               f"longer or set method.continue_schedule=false")
        keep = {n: ctx.masks[n].keep for n, _ in self.named if n in ctx.masks}
        self.kept = [k - keep_count(k, self.fraction, self.rounding) for k in self.kept]
        counts = self.kept if self.scope == "layer" else self.kept[0]
        masks = magnitude_masks(self.named, keep, counts, self.scope)
        for name, p in select(ctx.model):
            p.copy_(self.saved[name])
        if self.rewind_buffers:
            for name, b in ctx.model.named_buffers():
                b.copy_(self.buffers[name])
        set_masks(ctx, masks)
        ctx.reset_optimizer()
        if self.continue_schedule:
            ctx.phase_start_step = self.rewind_step
        self.rounds += 1

    @torch.no_grad()
    def on_phase_end(self, ctx) -> Dict[str, object]:
        total = sum(p.numel() for _, p in self.named)
        masked = [n for n, _ in self.all_named if n in ctx.masks]
        kept = dict(zip(masked, torch.stack([ctx.masks[n].keep.sum() for n in masked]).tolist()
                        if masked else []))  # one host read per round
        density = {n: kept.get(n, p.numel()) / p.numel() for n, p in self.all_named}
        return {"lth_round": self.rounds, "sparsity": 1 - sum(self.kept) / max(total, 1),
                "layer_density": density}
