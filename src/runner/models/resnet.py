"""ResNets with a 3x3 stem for small images: ResNet18 (CIFAR), the thesis' ResNet18 / ResNet34
for Tiny ImageNet (Tables A.4, A.6) and Wide-ResNet18-2 (Table A.8).

Blocks: the stem, every residual block, the pooling; the head is the Linear classifier.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from runner.models.base import Network, norm_layer
from runner.models.init import initialize
from runner.targets import register


class BasicBlock(nn.Module):
    """3x3 conv -> norm -> ReLU -> 3x3 conv -> norm, plus the shortcut, then ReLU (thesis Fig.
    A.1a). The shortcut is a 1x1 conv + norm when the stride or the width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: Optional[str] = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          norm_layer(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(in_shape: Sequence[int], num_classes: int, depths: Sequence[int] = (2, 2, 2, 2),
           widths: Sequence[int] = (64, 128, 256, 512), first_stride: int = 1,
           norm: Optional[str] = "batch", init: str = "default", zero_bias: bool = False
           ) -> Network:
    """3x3 stem (stride 1, width `widths[0]`), stages of `depths` BasicBlocks (stride
    `first_stride` in the first stage, 2 after), global average pool, Linear head."""
    stem = nn.Sequential(nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=False),
                         norm_layer(norm, widths[0]), nn.ReLU())
    blocks, c = [stem], widths[0]
    for stage, (n, w) in enumerate(zip(depths, widths)):
        for i in range(n):
            stride = (first_stride if stage == 0 else 2) if i == 0 else 1
            blocks.append(BasicBlock(c, w, stride, norm))
            c = w
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    return initialize(Network(blocks, nn.Linear(c, num_classes)), init, zero_bias)


register("model", resnet)  # config slots of this kind may name them (runner.targets)
