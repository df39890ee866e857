"""torchvision's ResNets (18/34/50/...), optionally with ImageNet weights, split into blocks.

Blocks: the stem (conv, norm, ReLU, max-pool), every residual block, the pooling (average pool +
flatten); the head is `fc`. Normalization is configurable (only `batch` with pretrained weights).
"""
from functools import partial
from typing import Optional, Sequence

import torchvision
from torch import nn

from runner.models.base import Network, norm_layer
from runner.models.init import initialize
from runner.targets import register


def _stride_on_1x1(model: nn.Module) -> None:
    """ResNet v1 (He et al. 2016; thesis Table A.7; Keras): a bottleneck downsamples in its first
    1x1 conv instead of its 3x3 conv (torchvision's v1.5). Parameter count is unchanged."""
    for m in model.modules():
        if isinstance(m, torchvision.models.resnet.Bottleneck) and m.conv2.stride != (1, 1):
            m.conv1.stride, m.conv2.stride = m.conv2.stride, (1, 1)


def torchvision_resnet(in_shape: Sequence[int], num_classes: int, arch: str = "resnet50",
                       weights: Optional[str] = None, norm: Optional[str] = "batch",
                       stride_on: str = "3x3", init: str = "default", zero_bias: bool = False
                       ) -> Network:
    """`torchvision.models.<arch>`; `weights` e.g. "IMAGENET1K_V1" (downloads into TORCH_HOME).

    A pretrained model keeps its weights except the head, which is replaced when `num_classes`
    is not 1000. `stride_on="1x1"` gives ResNet v1 bottlenecks.
    """
    if weights and (norm != "batch" or init != "default" or in_shape[0] != 3):
        raise ValueError("pretrained weights need norm=batch, init=default and 3 input channels")
    if stride_on not in ("3x3", "1x1"):
        raise ValueError(f"stride_on={stride_on!r}; valid: 3x3, 1x1")
    m = torchvision.models.get_model(arch, weights=weights, norm_layer=partial(norm_layer, norm),
                                     **({} if weights else {"num_classes": num_classes}))
    if in_shape[0] != 3:
        m.conv1 = nn.Conv2d(in_shape[0], 64, 7, 2, 3, bias=False)
    if m.fc.out_features != num_classes:
        m.fc = nn.Linear(m.fc.in_features, num_classes)
    if stride_on == "1x1":
        _stride_on_1x1(m)
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    residual = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
    net = Network([stem, *residual, nn.Sequential(m.avgpool, nn.Flatten())], m.fc)
    return net if weights else initialize(net, init, zero_bias)


register("model", torchvision_resnet)  # config slots of this kind may name them (runner.targets)
