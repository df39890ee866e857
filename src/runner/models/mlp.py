"""Multilayer perceptrons (SWR's 3-layer MLP, the reinitialization paper's 128-32-32-8, LeNet-300-100)."""
import math
from typing import Optional, Sequence

from torch import nn

from runner.models.base import Network
from runner.models.init import initialize
from runner.targets import register

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (100, 100),
        activation: str = "relu", norm: Optional[str] = None, bias: bool = True,
        init: str = "default", zero_bias: bool = False) -> Network:
    """Blocks of Linear (-> norm) -> activation, one per hidden width; a Linear head."""
    blocks, width = [], math.prod(in_shape)
    for i, h in enumerate(hidden):
        layers = [nn.Flatten()] if i == 0 else []
        layers.append(nn.Linear(width, h, bias=bias))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(ACTIVATIONS[activation]())
        blocks.append(nn.Sequential(*layers))
        width = h
    head = nn.Linear(width, num_classes, bias=bias)
    if not hidden:
        head = nn.Sequential(nn.Flatten(), head)
    return initialize(Network(blocks, head), init, zero_bias)


register("model", mlp)  # config slots of this kind may name them (runner.targets)
