"""The fused seeds' batched model (`Stacked`) and what can be fused (`check_fusable`).

Every trained parameter of K same-shaped models is stacked into one leaf tensor [K, ...] that the
members' parameters alias; the forward pass runs on the stacked tensors (a Linear as one batched
matmul; LW's normalization with per-member scalars; other modules vmapped).
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.reinit_common import Standardize
from runner.errors import RunnerError
from runner.models.base import Network

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Identity)
STEP_HOOKS = ("loss_term", "before_step", "after_step")


def refuse(why: str) -> None:
    raise RunnerError(f"train.fused_seeds: {why}; run the seeds separately (train.fused_seeds=1)")


class Stacked:
    """The members' trained parameters as leaves [K, ...] (which the members' parameters
    alias), their buffers stacked, and the batched forward pass over member 0's modules."""

    def __init__(self, models: List[nn.Module]):
        self.models = models
        named = [dict(m.named_parameters()) for m in models]
        self.leaf: Dict[int, torch.Tensor] = {}  # id(member 0's parameter) -> its stacked leaf
        with torch.no_grad():
            for name, p0 in named[0].items():
                leaf = torch.stack([n[name].detach() for n in named]).requires_grad_(True)
                for k, n in enumerate(named):
                    n[name].data = leaf.detach()[k]
                self.leaf[id(p0)] = leaf
        self.buffers: Dict[int, Dict[str, torch.Tensor]] = {}
        self.steps: List[Callable[[torch.Tensor], torch.Tensor]] = []

    def covers(self, model: nn.Module) -> bool:
        return {id(p) for p in model.parameters()} == set(self.leaf)

    def stack_buffers(self) -> None:
        """Each module's buffers over the members (at a phase start: methods may reset them)."""
        mods = [dict(m.named_modules()) for m in self.models]
        self.buffers = {}
        for name, mod in mods[0].items():
            own = dict(mod.named_buffers(recurse=False))
            if own:
                self.buffers[id(mod)] = {b: torch.stack([dict(m[name].named_buffers(recurse=False))[b]
                                                         for m in mods]) for b in own}

    def plan(self) -> None:
        """The batched forward pass as a flat list of steps, built at a phase start after
        `stack_buffers` (a training step walks no modules)."""
        self.steps = self.compile(self.models[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The planned model applied to a batch per member, x [K, B, ...]."""
        for step in self.steps:
            x = step(x)
        return x

    def compile(self, module: nn.Module) -> List[Callable[[torch.Tensor], torch.Tensor]]:
        if isinstance(module, Network):
            return [s for block in module.blocks for s in self.compile(block)] + self.compile(module.head)
        if isinstance(module, nn.Sequential):
            return [s for m in module for s in self.compile(m)]
        if isinstance(module, nn.Linear):
            w = self.leaf[id(module.weight)]
            if module.bias is None:
                return [lambda x: torch.bmm(x, w.transpose(1, 2))]
            b = self.leaf[id(module.bias)]
            return [lambda x: torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))]
        if isinstance(module, nn.Flatten):
            end = module.end_dim if module.end_dim < 0 else module.end_dim + 1
            return [lambda x: x.flatten(module.start_dim + 1, end)]
        if isinstance(module, ELEMENTWISE):
            return [module]
        if isinstance(module, Standardize):  # LW's inserted normalization: scalars per member
            b = self.buffers[id(module)]
            return [lambda x: (x - b["mean"].view((-1,) + (1,) * (x.dim() - 1)))
                    / b["std"].view((-1,) + (1,) * (x.dim() - 1))]
        params = {n: self.leaf[id(p)] for n, p in module.named_parameters()}
        buffers = dict(self.buffers.get(id(module), {}))
        if any(b for m in module.modules() if m is not module for b in m.buffers(recurse=False)):
            refuse(f"{type(module).__name__} holds modules with buffers, which are not fused")
        from torch.func import functional_call, vmap  # imported on first use: seconds
        batched = vmap(lambda p, b, xi: functional_call(module, {**p, **b}, (xi,)))
        return [lambda x: batched(params, buffers, x)]


def fused_penalty(m) -> bool:
    """A loss term that is a sum over the parameters it reads (L2's `penalty` over `tensors`):
    over the stacked leaves it is the sum of the members' terms."""
    return callable(getattr(m, "penalty", None)) and isinstance(getattr(m, "tensors", None), list)


def check_fusable(trainer, where: str) -> None:
    """A member that a fused step would train differently from its separate run is refused."""
    for hook in STEP_HOOKS:
        for m in trainer.parts.methods.by_hook[hook]:
            if not (hook == "loss_term" and fused_penalty(m)):
                refuse(f"method {m.name} acts in every training step ({hook}) and cannot be fused")
    if trainer.ctx.phase_start_step:
        refuse(f"a phase starting at step {trainer.ctx.phase_start_step} is not fused")
    if len(trainer.ctx.masks):
        refuse(f"masks ({', '.join(trainer.ctx.masks.names())}) are not fused ({where})")
    for name, mod in trainer.ctx.model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            refuse(f"batch norm ({name}) keeps running statistics, which are not fused")
        if parametrize.is_parametrized(mod):
            refuse(f"parametrized weights ({name}) are not fused")
        if isinstance(mod, nn.Dropout) and mod.p > 0:
            refuse(f"dropout ({name}) draws from the global generator, which is not fused")
