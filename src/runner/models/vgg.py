"""VGG-16 in each paper's variant: one builder, the variants differ in config only.

Every conv layer is one block (conv -> norm -> ReLU, with the following max-pool), so the 13
convs are the 13 blocks the reinitialization paper's LW walks through; the last conv block also
flattens. Hidden classifier layers are further blocks; the last Linear is the head.
"""
from typing import Optional, Sequence, Union

from torch import nn

from runner.models.base import Network, flat_size
from runner.models.init import initialize
from runner.models.layers import conv_block, dense_block, with_flatten
from runner.targets import register

# Simonyan & Zisserman 2015, Table 1, configuration D; "M" is a 2x2 max-pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg(in_shape: Sequence[int], num_classes: int, layers: Sequence[Union[int, str]] = VGG16,
        norm: Optional[str] = "batch", bias: bool = True, classifier: Sequence[int] = (512, 512),
        fc_norm: Optional[str] = None, fc_order: str = "norm_act", dropout: float = 0.0,
        avgpool: Optional[int] = None, init: str = "default", zero_bias: bool = False,
        width: float = 1.0) -> Network:
    """VGG features of `layers` (conv widths times `width`), optionally an adaptive average pool
    to `avgpool`x`avgpool`, hidden Linear blocks of the `classifier` widths (with `fc_norm`,
    `dropout`), a Linear head."""
    pools = sum(1 for v in layers if v == "M")
    if min(in_shape[1:]) < 2 ** pools:
        raise ValueError(f"vgg with {pools} max-pools needs inputs of at least {2 ** pools}x"
                         f"{2 ** pools}, got {list(in_shape)}; pair it with a larger dataset "
                         f"or a Resize transform")
    convs, c = [], in_shape[0]
    for v in layers:
        if v == "M":
            convs[-1].append(nn.MaxPool2d(2))
        else:
            w = max(1, round(int(v) * width))
            convs.append(conv_block(c, w, 3, 1, 1, norm, bias))
            c = w
    convs[-1] = with_flatten(convs[-1], nn.AdaptiveAvgPool2d(avgpool) if avgpool else None)
    width = flat_size(nn.Sequential(*convs), in_shape)
    blocks = list(convs)
    for h in classifier:
        blocks.append(dense_block(width, h, fc_norm, dropout=dropout, order=fc_order))
        width = h
    return initialize(Network(blocks, nn.Linear(width, num_classes)), init, zero_bias)


register("model", vgg)  # config slots of this kind may name them (runner.targets)
