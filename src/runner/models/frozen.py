"""Mutually frozen weights (Zilly et al. 2021, appendix Sec. 6.2 and 6.5): which units of a
network are frozen and how many weights they hold.

A *unit* is output channel i of a weight layer P (conv or linear). Its *row* is P.weight[i]; its
*columns* are, in every *consumer* Q of P, the slice of Q.weight that reads channel i
(Q.weight[:, i] for a conv, the block of channel i's positions for a linear layer after a
flatten). Consumers come from tracing the model (torch.fx): channels pass unchanged through
normalization, activations, pooling, dropout, reshapes and residual additions, so in a ResNet
the consumers of a block are all layers reading the residual stream it joins. A unit whose
channels reach the output or an untracked operation (concatenation, indexing, ...) is never
counted.

With the appendix's cutoff c = 1e-2 on L2 norms:
- double-frozen unit: its row and all its columns have norm < c; they are double-frozen weights;
- triple-frozen (the appendix's step list read literally, UNVERIFIED: the authors' script is not
  public): a double-frozen unit i of P and a consumer Q whose own consumers all have column i
  below c; those columns, the row and Q's column are triple-frozen weights;
- frozen filter (Sec. 6.5): the unit's normalization weight |gamma_i| (the row's norm where no
  normalization follows P) and all its columns are below c.
A weight shared by several frozen units is counted once.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.fx
from torch import nn

from runner.models.params import NORM_TYPES

CUTOFF = 1e-2
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
# torch.nn submodules whose modules keep channel i at channel i (normalization, activations, ...)
PASSING_MODULES = {"activation", "pooling", "dropout", "flatten", "batchnorm", "normalization",
                   "instancenorm"}
PASSING_CALLS = {operator.add, operator.iadd, operator.mul, torch.add, torch.mul, torch.relu,
                 torch.flatten, nn.functional.relu, nn.functional.adaptive_avg_pool2d,
                 nn.functional.avg_pool2d, nn.functional.max_pool2d, nn.functional.dropout}
PASSING_METHODS = {"add", "add_", "mul", "relu", "relu_", "flatten", "view", "reshape", "mean",
                   "contiguous", "size"}


@dataclass
class Layer:
    """A conv or linear layer, the normalization right after it, and the layers reading it."""

    name: str
    module: nn.Module
    norm: Optional[nn.Module] = None
    consumers: List["Layer"] = field(default_factory=list)
    open: bool = False  # its channels reach the output or an untracked op: never frozen

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def channels(self) -> int:
        return self.module.weight.shape[0]

    @property
    def countable(self) -> bool:
        return bool(self.consumers) and not self.open


def column(t: torch.Tensor, module: nn.Module, i: int, c: int) -> torch.Tensor:
    """The slice of `t` (module's weight or a tensor of its shape) reading channel i of c inputs."""
    if isinstance(module, nn.Linear):
        return t.view(t.shape[0], c, -1)[:, i]
    per_in, per_out = t.shape[1], t.shape[0] // module.groups
    group, local = divmod(i, per_in)
    return t[group * per_out:(group + 1) * per_out, local]


def column_norms(module: nn.Module, c: int) -> torch.Tensor:
    """L2 norm of each of the c input-channel columns of a layer's weight."""
    sq = module.weight.detach().square()
    if isinstance(module, nn.Linear):
        return sq.view(sq.shape[0], c, -1).sum((0, 2)).sqrt()
    if module.groups == 1:
        return sq.sum([d for d in range(sq.dim()) if d != 1]).sqrt()
    return torch.stack([column(sq, module, i, c).sum() for i in range(c)]).sqrt()


def row_norms(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().square().flatten(1).sum(1).sqrt()


def _reads(module: nn.Module, c: int) -> bool:
    """Whether `module` can read a c-channel input channel by channel."""
    if isinstance(module, nn.Linear):
        return module.in_features % c == 0
    return module.in_channels == c


def _passes(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        mod = modules[node.target]
        return isinstance(mod, nn.Identity) or \
            type(mod).__module__.rsplit(".", 1)[-1] in PASSING_MODULES
    if node.op == "call_function":
        return node.target in PASSING_CALLS
    return node.op == "call_method" and node.target in PASSING_METHODS


def trace_layers(model: nn.Module) -> Dict[str, Layer]:
    """The model's conv and linear layers (module order) with their normalization and consumers."""
    modules = dict(model.named_modules())
    layers = {n: Layer(n, m) for n, m in modules.items() if isinstance(m, WEIGHT_TYPES)}
    graph = torch.fx.symbolic_trace(model).graph
    sources: Dict[torch.fx.Node, frozenset] = {}
    for node in graph.nodes:
        inputs = frozenset().union(*(sources.get(a, frozenset()) for a in node.all_input_nodes))
        if node.op == "call_module" and node.target in layers:
            layer = layers[node.target]
            for p in inputs:
                if _reads(layer.module, layers[p].channels):
                    layers[p].consumers.append(layer)
                else:
                    layers[p].open = True
            sources[node] = frozenset({node.target})
        elif node.op in ("placeholder", "get_attr"):
            sources[node] = frozenset()
        elif _passes(node, modules):
            mod = modules.get(node.target) if node.op == "call_module" else None
            if isinstance(mod, NORM_TYPES) and len(inputs) == 1:
                producer = layers[next(iter(inputs))]
                weight = getattr(mod, "weight", None)
                if producer.norm is None and weight is not None \
                        and weight.numel() == producer.channels:
                    producer.norm = mod
            sources[node] = inputs
        else:  # the output, or an operation that may move channels
            for p in inputs:
                layers[p].open = True
            sources[node] = frozenset()
    return layers


def _small_columns(layer: Layer, c: int, cutoff: float) -> torch.Tensor:
    """Per unit of a c-channel producer: whether its column in every consumer is below cutoff."""
    return torch.stack([column_norms(q.module, c) < cutoff for q in layer.consumers]).all(0)


@torch.no_grad()
def count_frozen(model: nn.Module | Dict[str, Layer], cutoff: float = CUTOFF) -> Dict:
    """Double- and triple-frozen weights, double-frozen units and frozen filters of a model (or
    of its `trace_layers`), per layer (`layers`: name -> counts) and in total, with their
    denominators: `weights` (all weights of the conv and linear layers) and `countable_units`
    (the units that can freeze: output channels of layers some traced layer reads)."""
    layers = model if isinstance(model, dict) else trace_layers(model)
    double: Dict[str, torch.Tensor] = {}  # masks of frozen weights, made where needed
    triple: Dict[str, torch.Tensor] = {}

    def mask(masks: Dict[str, torch.Tensor], layer: Layer) -> torch.Tensor:
        if layer.name not in masks:
            masks[layer.name] = torch.zeros_like(layer.weight, dtype=torch.bool)
        return masks[layer.name]

    units, filters = dict.fromkeys(layers, 0), dict.fromkeys(layers, 0)
    small = {n: _small_columns(l, l.channels, cutoff) for n, l in layers.items() if l.countable}
    for name, p in layers.items():
        if not p.countable:
            continue
        c, cols, rows = p.channels, small[name], row_norms(p.module)
        frozen = (rows < cutoff) & cols
        scale = rows if p.norm is None else p.norm.weight.detach().abs()
        filters[name] = int(((scale < cutoff) & cols).sum())
        units[name] = int(frozen.sum())
        for i in frozen.nonzero().flatten().tolist():
            mask(double, p)[i] = True
            for q in p.consumers:
                column(mask(double, q), q.module, i, c).fill_(True)
                if q.countable and i < q.channels and small[q.name][i]:
                    mask(triple, p)[i] = True
                    column(mask(triple, q), q.module, i, c).fill_(True)
                    for r in q.consumers:
                        column(mask(triple, r), r.module, i, q.channels).fill_(True)

    def n_set(masks, name):
        return int(masks[name].count_nonzero()) if name in masks else 0

    per = {n: {"weights": l.weight.numel(), "countable_units": l.channels if l.countable else 0,
               "double": n_set(double, n), "triple": n_set(triple, n), "units": units[n],
               "filters": filters[n]}
           for n, l in layers.items()}
    total = {k: sum(v[k] for v in per.values())
             for k in ("weights", "countable_units", "double", "triple", "units", "filters")}
    return {**total, "layers": per}


@torch.no_grad()
def pair_norms(layers: Dict[str, Layer]) -> Dict[str, torch.Tensor]:
    """Per countable layer and unit: row norm plus the norms of its columns (Fig. 4's pair sums)."""
    out = {}
    for name, p in layers.items():
        if p.countable:
            out[name] = row_norms(p.module) + sum(column_norms(q.module, p.channels)
                                                  for q in p.consumers)
    return out
