"""Head reset (Nikishin et al. 2022), applied when the training data change (every phase after the first).

Resets the classifier's parameters and buffers: every nn.Linear (`layers: linear`, the paper's
"fully connected layers" of the CNNs and VGG-16) or the `Network` head only (`layers: head`, the
paper's MLP). `source: init` copies back the values at setup (what the public code does);
`source: fresh` draws a newly initialized model. The optimizer state is kept unless
`reset_optimizer` (SWR's code keeps Adam's moments).
"""
import copy

import torch

from methods.base import Method
from methods.swr import classifier_modules


class HeadReset(Method):
    name = "head_reset"

    def __init__(self, layers: str = "linear", source: str = "init", reset_optimizer: bool = False):
        if source not in ("init", "fresh"):
            raise ValueError(f"head_reset source {source!r}; valid: init, fresh")
        self.layers, self.source, self.reset_optimizer = layers, source, reset_optimizer

    def setup(self, ctx) -> None:
        names = {id(m): n for n, m in ctx.model.named_modules()}
        self.names = [names[id(m)] for m in classifier_modules(ctx.model, self.layers)]
        self.init = {n: copy.deepcopy(m.state_dict()) for n, m in ctx.model.named_modules()
                     if n in self.names}

    def state_dict(self):
        return {"init": self.init}

    def load_state_dict(self, state, ctx) -> None:
        self.init = {n: {k: t.to(ctx.device) for k, t in sd.items()} for n, sd in state["init"].items()}

    @torch.no_grad()
    def on_phase_start(self, ctx) -> None:
        if ctx.phase_index == 0:
            return
        modules = dict(ctx.model.named_modules())
        fresh = dict(ctx.build_model().named_modules()) if self.source == "fresh" else None
        for name in self.names:
            state = self.init[name] if fresh is None else fresh[name].state_dict()
            modules[name].load_state_dict(state)
        if self.reset_optimizer:
            ctx.reset_optimizer()
