"""The shape every model in the zoo has: ordered blocks, then a classifier head.

Methods that work block by block (layer-wise reinitialization, head reset, SWR's classifier /
feature split, pruning) rely on `model.blocks` (an `nn.ModuleList`, applied in order) and
`model.head` (the classifier, applied last).
"""
from typing import Iterable

import torch
from torch import nn


class Network(nn.Module):
    def __init__(self, blocks: Iterable[nn.Module], head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def flat_size(module: nn.Module, in_shape) -> int:
    """Number of features `module` produces for one input of `in_shape` (a dry forward)."""
    return module(torch.zeros(1, *in_shape)).flatten(1).shape[1]


def norm_layer(kind, channels: int, dim: int = 2) -> nn.Module:
    """'batch' | 'layer' | 'group' | None -> a normalization module (or identity)."""
    if kind in (None, "none"):
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dim == 2 else nn.BatchNorm1d(channels)
    if kind == "layer":  # over all of (C, H, W) per sample, as the reinitialization paper uses
        return nn.GroupNorm(1, channels) if dim == 2 else nn.LayerNorm(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; valid: batch, layer, group, none")
