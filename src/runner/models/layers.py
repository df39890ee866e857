"""Building blocks shared by the zoo: conv and dense blocks with a configurable normalization."""
from typing import Optional

from torch import nn

from runner.models.base import norm_layer


def conv_block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1,
               norm: Optional[str] = None, bias: Optional[bool] = None, pool: int = 0,
               groups: int = 1) -> nn.Sequential:
    """Conv -> norm -> ReLU (-> max-pool); `bias=None` means a bias only without normalization."""
    bias = norm in (None, "none") if bias is None else bias
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=bias),
              norm_layer(norm, c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(pool))
    return nn.Sequential(*layers)


def dense_block(d_in: int, d_out: int, norm: Optional[str] = None, bias: bool = True,
                dropout: float = 0.0, order: str = "norm_act") -> nn.Sequential:
    """Linear -> norm -> ReLU (`order="act_norm"`: Linear -> ReLU -> norm) (-> dropout)."""
    norm_act = [norm_layer(norm, d_out, dim=1), nn.ReLU()]
    if order == "act_norm":
        norm_act.reverse()
    elif order != "norm_act":
        raise ValueError(f"unknown order {order!r}; valid: norm_act, act_norm")
    layers = [nn.Linear(d_in, d_out, bias=bias), *norm_act]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def with_flatten(block: nn.Sequential, pool: Optional[nn.Module] = None) -> nn.Sequential:
    """`block` followed by an optional pooling and a flatten: the last feature block of a CNN."""
    return nn.Sequential(*block, *([pool] if pool is not None else []), nn.Flatten())
