"""All-CNN-C (Springenberg et al. 2015, Table 2), as Zilly et al. 2021 train it on CIFAR-10.

Nine convs, no pooling layers: 3x3 96, 96, 96 (stride 2), 192, 192, 192 (stride 2), 3x3 192
(no padding), 1x1 192, and the head: a 1x1 conv to the classes, then a global average pool.
"""
from typing import Optional, Sequence

from torch import nn

from runner.models.base import Network
from runner.models.init import initialize
from runner.models.layers import conv_block
from runner.targets import register

# (channels, kernel, stride, padding) of the eight feature convs.
ALLCNN_C = ((96, 3, 1, 1), (96, 3, 1, 1), (96, 3, 2, 1), (192, 3, 1, 1), (192, 3, 1, 1),
            (192, 3, 2, 1), (192, 3, 1, 0), (192, 1, 1, 0))


def allcnn(in_shape: Sequence[int], num_classes: int, norm: Optional[str] = "batch",
           dropout: float = 0.0, init: str = "default", zero_bias: bool = False,
           width: float = 1.0) -> Network:
    """Each conv is a block (conv -> norm -> ReLU); `dropout` follows each stride-2 block (the
    original uses 0.5 there and 0.2 on the input; Zilly et al. state no dropout); `width`
    multiplies every layer's channels (1.0: the original)."""
    blocks, c = [], in_shape[0]
    for channels, k, s, p in ALLCNN_C:
        width_ = max(1, round(channels * width))
        block = conv_block(c, width_, k, s, p, norm)
        if s == 2 and dropout:
            block.append(nn.Dropout(dropout))
        blocks.append(block)
        c = width_
    head = nn.Sequential(nn.Conv2d(c, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return initialize(Network(blocks, head), init, zero_bias)


register("model", allcnn)  # config slots of this kind may name them (runner.targets)
