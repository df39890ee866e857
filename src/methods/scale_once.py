"""One rescaling of an MLP's or CNN's layers (Oh et al. 2025, Figure 1; not a training method):
at the start of phase `at_phase`, every layer's weight is multiplied by `factor`; biases by the
cumulative product (Theorem 1, proportional=true) or by `factor` alone (proportional=false). Used
by swr_fig1_cifar10_cnn; figures: `python -m runner.analysis.swr scaling DIR`."""
from __future__ import annotations

from typing import Dict

import torch

from methods.base import Method
from methods.swr import chain_starts, layer_slots, rescale_, rescale_layers


class ScaleOnce(Method):
    """At the start of phase `at_phase`, every layer's weight is multiplied by `factor`; biases by
    the cumulative product (Theorem 1, `proportional`) or by `factor` alone (not proportional).
    Records the test accuracy right after scaling as `test_acc_after_scaling` of that phase."""

    name = "scale_once"

    def __init__(self, factor: float = 0.5, proportional: bool = True, at_phase: int = 1):
        self.factor, self.proportional, self.at_phase = float(factor), proportional, at_phase
        self.after = None

    @torch.no_grad()
    def on_phase_start(self, ctx) -> None:
        if ctx.phase_index != self.at_phase:
            return
        layers = rescale_layers(ctx.model)
        c = torch.full((len(layers),), self.factor, device=ctx.device)
        starts = chain_starts([norm for _, norm in layers]).to(ctx.device)
        rescale_(*layer_slots(ctx.model, layers), c, starts, self.proportional)
        self.after = float(ctx.evaluate(ctx.data.test)[1])

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"test_acc_after_scaling": self.after} if ctx.phase_index == self.at_phase else {}

    def state_dict(self):
        return {"after": self.after}

    def load_state_dict(self, state, ctx) -> None:
        self.after = state["after"]

