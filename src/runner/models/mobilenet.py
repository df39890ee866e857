"""MobileNetV1 (Howard et al. 2017, Table 1), with the paper's "shallow" variant (Table 6).

Blocks: the first full conv, then each depthwise-separable block (3x3 depthwise -> norm -> ReLU
-> 1x1 pointwise -> norm -> ReLU), then the pooling; the head is the Linear classifier.
"""
from typing import Optional, Sequence

from torch import nn

from runner.models.base import Network
from runner.models.init import initialize
from runner.models.layers import conv_block
from runner.targets import register

# (output channels, stride) of the 13 depthwise-separable blocks.
SEPARABLE = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
             (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def separable_block(c_in: int, c_out: int, stride: int, norm: Optional[str]) -> nn.Sequential:
    return nn.Sequential(*conv_block(c_in, c_in, 3, stride, 1, norm, groups=c_in),
                         *conv_block(c_in, c_out, 1, 1, 0, norm))


def mobilenet_v1(in_shape: Sequence[int], num_classes: int, width: float = 1.0,
                 shallow: bool = False, norm: Optional[str] = "batch", dropout: float = 0.0,
                 init: str = "default", zero_bias: bool = False) -> Network:
    """`width` is the width multiplier alpha; `shallow` drops the five 512-channel stride-1
    separable blocks (Howard et al. 2017, Sec. 4.2)."""
    spec = [s for i, s in enumerate(SEPARABLE) if not (shallow and 6 <= i <= 10)]
    c = int(32 * width)
    blocks = [conv_block(in_shape[0], c, 3, 2, 1, norm)]
    for ch, stride in spec:
        blocks.append(separable_block(c, int(ch * width), stride, norm))
        c = int(ch * width)
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] + ([nn.Dropout(dropout)] if dropout else [])
    blocks.append(nn.Sequential(*pool))
    return initialize(Network(blocks, nn.Linear(c, num_classes)), init, zero_bias)


register("model", mobilenet_v1)  # config slots of this kind may name them (runner.targets)
