"""Small CNNs: SWR's CNN / CNN-BN, LeNet-5-Caffe (thesis) and the reinitialization paper's scnn."""
from typing import Optional, Sequence

from torch import nn

from runner.models.base import Network, flat_size
from runner.models.init import initialize
from runner.models.layers import conv_block, dense_block, with_flatten
from runner.targets import register


def _convs_then_dense(in_shape, num_classes, convs, hidden: Sequence[int], fc_norm, dropout,
                      init, zero_bias) -> Network:
    """Conv blocks (the last one flattens), dense blocks of `hidden` widths, a Linear head."""
    convs[-1] = with_flatten(convs[-1])
    width = flat_size(nn.Sequential(*convs), in_shape)
    blocks = list(convs)
    for h in hidden:
        blocks.append(dense_block(width, h, fc_norm, dropout=dropout))
        width = h
    return initialize(Network(blocks, nn.Linear(width, num_classes)), init, zero_bias)


def swr_cnn(in_shape: Sequence[int], num_classes: int, channels: int = 16, kernel: int = 5,
            padding: int = 1, hidden: int = 100, norm: Optional[str] = None,
            bias: Optional[bool] = None, init: str = "default", zero_bias: bool = False) -> Network:
    """SWR's CNN (Oh et al. 2025, App. D.1): two 5x5 convs of 16 channels, each followed by a
    2x2 max-pool, then FC `hidden` and the head. `norm="batch"` is CNN-BN (bias-free convs)."""
    c = in_shape[0]
    convs = [conv_block(c, channels, kernel, 1, padding, norm, bias, pool=2),
             conv_block(channels, channels, kernel, 1, padding, norm, bias, pool=2)]
    return _convs_then_dense(in_shape, num_classes, convs, [hidden], None, 0.0, init, zero_bias)


def lenet5_caffe(in_shape: Sequence[int], num_classes: int, init: str = "default",
                 zero_bias: bool = False) -> Network:
    """LeNet-5-Caffe (thesis Table A.2): conv 20 (5x5) - pool - conv 50 (5x5) - pool - FC 500."""
    convs = [conv_block(in_shape[0], 20, 5, 1, 0, pool=2), conv_block(20, 50, 5, 1, 0, pool=2)]
    return _convs_then_dense(in_shape, num_classes, convs, [500], None, 0.0, init, zero_bias)


def scnn(in_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (32, 32, 64, 64),
         kernel: int = 3, padding: int = 0, hidden: int = 512, norm: Optional[str] = "layer",
         dropout: float = 0.0, init: str = "he_normal", zero_bias: bool = False) -> Network:
    """The reinitialization paper's simple CNN (Alabdulmohsin et al. 2021, App. C): four conv
    blocks (conv -> norm -> ReLU, a 2x2 max-pool after the 2nd and 4th), then a dense block of
    `hidden` units with the same normalization, dropout, and the head."""
    convs, c = [], in_shape[0]
    for i, w in enumerate(widths):
        convs.append(conv_block(c, w, kernel, 1, padding, norm, pool=2 if i % 2 else 0))
        c = w
    return _convs_then_dense(in_shape, num_classes, convs, [hidden], norm, dropout, init, zero_bias)


register("model", swr_cnn, scnn, lenet5_caffe)  # config slots of this kind may name them (runner.targets)
