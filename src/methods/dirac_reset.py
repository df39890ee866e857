"""The resetting intervention of Zilly et al. 2021 (appendix Tables 6-8): before retraining, add
alpha times an identity ("Dirac") tensor to every weight, and add alpha to (`one_d: add`) or set
to `value` (`one_d: set`) every one-dimensional tensor (normalization weights and biases, layer
biases). Identity tensors: `torch.nn.init.dirac_` kernels for convolutions (a zero conv plus
alpha·Dirac maps x to alpha·x where channels match), the rectangular identity for linear layers.

It acts at the start of every phase after the first (a task change), or at the phase indices in
`phases` (`[0]` for a pretrained model fine-tuned in one phase). Table 7's rows also retrain
with another learning rate, decay and weight decay: `lr`, `gamma`, `weight_decay` replace the
phase's values where given. The optimizer state is reset if `reset_optimizer`.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from methods.base import Method
from runner.models.params import slots


def identity_like(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The identity of a weight's shape: Dirac kernels (per group) or a rectangular eye."""
    if weight.dim() == 2:
        return torch.eye(*weight.shape, dtype=weight.dtype, device=weight.device)
    return nn.init.dirac_(torch.empty_like(weight), groups=getattr(module, "groups", 1))


@torch.no_grad()
def add_identity(model: nn.Module, alpha: float, one_d: str = "add", value: float = 1.0,
                 params: str | List[str] = "all") -> None:
    """Effective weights += alpha * identity; 1-D tensors += alpha (`add`) or = value (`set`)."""
    for slot in slots(model, params):
        w = slot.value()
        if w.dim() >= 2:
            slot.assign(w + alpha * identity_like(w, slot.module))
        elif one_d == "add":
            slot.assign(w + alpha)
        else:
            slot.assign(torch.full_like(w, value))


class DiracReset(Method):
    name = "dirac_reset"

    def __init__(self, alpha: float = 0.2, one_d: str = "add", value: float = 1.0,
                 phases: Optional[List[int]] = None, params: str | List[str] = "all",
                 lr: Optional[float] = None, gamma: Optional[float] = None,
                 weight_decay: Optional[float] = None, reset_optimizer: bool = False):
        if one_d not in ("add", "set"):
            raise ValueError(f"dirac_reset one_d={one_d!r}; valid: add, set")
        self.alpha, self.one_d, self.value, self.params = float(alpha), one_d, float(value), params
        self.phases = None if phases is None else set(phases)
        self.lr, self.gamma, self.weight_decay = lr, gamma, weight_decay
        self.reset_optimizer = reset_optimizer

    def acts(self, index: int) -> bool:
        return index > 0 if self.phases is None else index in self.phases

    def on_phase_start(self, ctx) -> None:
        if not self.acts(ctx.phase_index):
            return
        add_identity(ctx.model, self.alpha, self.one_d, self.value, self.params)
        if self.lr is not None:
            ctx.lr = self.lr
        if self.gamma is not None:
            ctx.gamma = self.gamma
        if self.weight_decay is not None:
            ctx.weight_decay = self.weight_decay
        if self.reset_optimizer:
            ctx.reset_optimizer()
