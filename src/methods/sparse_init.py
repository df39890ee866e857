"""Sparsity at initialization, the three types of Zilly et al. 2021 (appendix Sec. 6.5, Table 1,
Fig. 4 middle and right), applied once at setup:

- `mutual`: every unit (output channel of a conv or linear layer, see runner.models.frozen)
  is chosen with probability p (or, with `units: k`, the first k units of every layer: the
  pairs the probe tracks for Fig. 4); its row, its bias, its normalization weight and bias and its
  columns in every consumer are set to zero (or, with `noise_std > 0`, to zero-mean normal
  values of that std: Fig. 4 right uses 1e-4): mutually frozen pairs;
- `double`: every weight of a conv or linear layer is zeroed with probability p (a binary mask);
- `mono`: `double`, then identity (Dirac) kernels added to every weight and 1.0 to every
  one-dimensional tensor (as the resetting intervention with alpha = 1, `one_d: add`).

The mask is drawn from the run's method generator (`ctx.gen`), so a seed repeats it. The share
of conv / linear weights that are exactly zero afterwards is reported per phase (`init_sparsity`).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from methods.base import Method
from methods.dirac_reset import add_identity
from runner.models.frozen import column, trace_layers
from runner.models.params import slots

KINDS = ("mutual", "double", "mono")


class SparseInit(Method):
    name = "sparse_init"

    def __init__(self, kind: str = "mutual", p: float = 0.2, noise_std: float = 0.0,
                 units: Optional[int] = None):
        if kind not in KINDS:
            raise ValueError(f"sparse_init kind={kind!r}; valid: {', '.join(KINDS)}")
        self.kind, self.p, self.noise_std, self.units = kind, float(p), float(noise_std), units

    def choose(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Which of a layer's n units to silence."""
        if self.units is not None:
            return torch.arange(n) < self.units
        return torch.rand(n, generator=gen) < self.p

    @torch.no_grad()
    def setup(self, ctx) -> None:
        layers = trace_layers(ctx.model)
        # edited copies of the effective tensors, written back through their slots at the end
        self.slots = {(id(s.module), s.local): s for s in slots(ctx.model)}
        self.edited = {}
        if self.kind == "mutual":
            units = [(layer, self.choose(layer.channels, ctx.gen))
                     for layer in layers.values() if layer.countable]
            for layer, chosen in units:
                for i in chosen.nonzero().flatten().tolist():
                    self.silence(layer, i, ctx.gen)
        else:
            for layer in layers.values():
                w = self.tensor(layer.module, "weight")
                keep = torch.rand(w.shape, generator=ctx.gen) >= self.p
                w.mul_(keep.to(w.device, w.dtype))
        for key, value in self.edited.items():
            self.slots[key].assign(value)
        if self.kind == "mono":
            add_identity(ctx.model, 1.0, "add")
        ws = [layer.weight.detach() for layer in layers.values()]
        self.sparsity = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)

    def tensor(self, module, local: str):
        """The editable copy of `module.<local>` (None where the module has no such tensor)."""
        key = (id(module), local)
        if key not in self.slots:
            return None
        if key not in self.edited:
            self.edited[key] = self.slots[key].value().clone()
        return self.edited[key]

    def silence(self, layer, i: int, gen: torch.Generator) -> None:
        """Unit i of `layer`: row, bias, normalization weight and bias, and columns -> ~0."""
        ones = [self.tensor(layer.module, "bias")]
        if layer.norm is not None:
            ones += [self.tensor(layer.norm, "weight"), self.tensor(layer.norm, "bias")]
        tensors = [self.tensor(layer.module, "weight")[i]] + [t[i:i + 1] for t in ones if t is not None]
        tensors += [column(self.tensor(q.module, "weight"), q.module, i, layer.channels)
                    for q in layer.consumers]
        for t in tensors:
            if self.noise_std:
                t.copy_(torch.randn(t.shape, generator=gen).mul_(self.noise_std))
            else:
                t.zero_()

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"init_sparsity": self.sparsity}

    def state_dict(self):
        return {"sparsity": self.sparsity}

    def load_state_dict(self, state, ctx) -> None:
        self.sparsity = state["sparsity"]
