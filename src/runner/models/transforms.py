"""Model transforms: applied to every model the run builds (`model_transforms` in the config),
so the model, its fresh draws (`ctx.build_model`) and `init_state` share one structure.

`filter_basis`: Wimmer's interspace representation (thesis Secs. 5.4.1-5.4.3). Every KxK convolution (K > 1, or K in `kernels`) computes its weight as coefficients
over a trainable filter basis (FB): W[o, i] = sum_b C[o, i, b] F[b], F[b] a KxK filter. The
coefficients are the layer's stored weight (`parametrizations.weight.original`, what pruning
methods mask); the FB is `parametrizations.weight.0.basis`, one `nn.Parameter` that several
layers may share (named once in `named_parameters`, so the optimizer sees it once):

- sharing `coarse`: one FB per kernel size for the whole network; `medium`: one per group of
  consecutive FB layers (`groups`: their sizes, e.g. VGG-16's [2, 2, 3, 3, 3]); `fine`: one per
  layer; `in_nc` / `out_nc`: one per `nc` neighbouring input / output channels of each layer.
  A 7x7 stem never shares with 3x3 layers (its own FB); `kernels: [3]` keeps it spatial
  (ResNet18 on ImageNet, thesis Table A.5). 1x1 convolutions always stay spatial.
- init (thesis Algorithm 5.1, Sec. 5.4.3.2; its line 19 divides by the variance sigma^2, read
  here as the std sigma): `standard` F = the standard basis and
  C = the model's own initial weights, so the network computes exactly what its spatial twin
  computes; `orthonormal` F = Gram-Schmidt (QR) of a Gaussian matrix and C = F^T applied to the
  model's initial weights (again the same function at init; the thesis draws those weights
  Kaiming-normal, here they are the model's configured init); `random` F[b]_ij from a Gaussian,
  standardized over b per position and rescaled to mean 1/n and sum of squares 1, C ~ N(0,
  2 / fan_in) i.i.d. (spatial weights Kaiming-normal in distribution). `n_filters` (n#) other
  than K*K needs `random` (an under- or overcomplete dictionary, thesis Sec. 5.5.4).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from runner.models.params import select
from runner.targets import register

SHARING = ("coarse", "medium", "fine", "in_nc", "out_nc")
INITS = ("standard", "orthonormal", "random")


class FilterBasis(nn.Module):
    """W = C x F over flattened KxK filters; `basis` (G, n, K*K) holds G filter bases, used by
    every layer (G = 1) or by blocks of `nc` output / input channels (`share` = out / in)."""

    def __init__(self, basis: nn.Parameter, kernel: Sequence[int], channels: int = 1,
                 share: str = "layer", nc: int = 1):
        super().__init__()
        self.basis, self.kernel, self.share = basis, tuple(kernel), share
        self.register_buffer("index", torch.arange(channels) // nc, persistent=False)

    def per_channel(self, basis: torch.Tensor) -> torch.Tensor:
        return basis[self.index.to(basis.device)]

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        out, inp, _ = coefficients.shape
        if self.share == "out":
            flat = torch.einsum("oin,onk->oik", coefficients, self.per_channel(self.basis))
        elif self.share == "in":
            flat = torch.einsum("oin,ink->oik", coefficients, self.per_channel(self.basis))
        else:
            flat = coefficients @ self.basis[0]
        return flat.view(out, inp, *self.kernel)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Coefficients of `weight` in the current basis (least squares for n != K*K)."""
        flat = weight.reshape(weight.shape[0], weight.shape[1], -1)
        pinv = torch.linalg.pinv(self.basis.detach().to(weight.dtype))  # (G, K*K, n)
        if self.share == "out":
            return torch.einsum("oik,okn->oin", flat, self.per_channel(pinv))
        if self.share == "in":
            return torch.einsum("oik,ikn->oin", flat, self.per_channel(pinv))
        return flat @ pinv[0]


def new_basis(groups: int, n: int, k2: int, init: str) -> nn.Parameter:
    """G filter bases of n flattened filters of k2 pixels, initialized by `init`."""
    if init == "standard":
        basis = torch.eye(k2).expand(groups, k2, k2).clone()
    elif init == "orthonormal":
        basis = torch.linalg.qr(torch.randn(groups, k2, k2))[0].transpose(1, 2).contiguous()
    else:  # random, Algorithm 5.1 lines 16-19 (divide by the std, not the variance)
        raw = torch.randn(groups, n, k2)
        z = (raw - raw.mean(1, keepdim=True)) / raw.std(1, unbiased=False, keepdim=True)
        basis = math.sqrt(1 / n - 1 / n ** 2) * z + 1 / n
    return nn.Parameter(basis)


def fb_convs(model: nn.Module, kernels: Optional[Sequence[int]]) -> List[nn.Conv2d]:
    """The convolutions that get a filter basis, in module order."""
    def wanted(m: nn.Conv2d) -> bool:
        k = m.kernel_size
        return k[0] == k[1] and (k[0] > 1 if kernels is None else k[0] in kernels)
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and wanted(m)
            and not parametrize.is_parametrized(m, "weight")]


def check_options(sharing: str, init: str, n_filters: Optional[int], nc: int,
                  groups: Optional[Sequence[int]], count: int) -> None:
    if sharing not in SHARING:
        raise ValueError(f"filter_basis sharing={sharing!r}; valid: {', '.join(SHARING)}")
    if init not in INITS:
        raise ValueError(f"filter_basis init={init!r}; valid: {', '.join(INITS)}")
    if n_filters is not None and init != "random":
        raise ValueError(f"filter_basis n_filters={n_filters} needs init=random (standard and "
                         f"orthonormal bases have K*K filters)")
    if n_filters is not None and n_filters < 1:
        raise ValueError(f"filter_basis n_filters={n_filters}; valid: >= 1")
    if nc < 1:
        raise ValueError(f"filter_basis nc={nc}; valid: >= 1")
    if sharing == "medium" and (groups is None or sum(groups) != count):
        raise ValueError(f"filter_basis sharing=medium needs `groups`, the sizes of consecutive "
                         f"groups of the {count} FB convolutions (got {groups})")


def filter_basis(sharing: str = "fine", init: str = "standard",
                 n_filters: Optional[int] = None, nc: int = 1,
                 groups: Optional[Sequence[int]] = None,
                 kernels: Optional[Sequence[int]] = None):
    """The transform: a filter basis on every square KxK convolution, K > 1 (or K in
    `kernels`), shared as `sharing` says (see the module's docstring)."""
    def apply(model: nn.Module) -> nn.Module:
        convs = fb_convs(model, kernels)
        check_options(sharing, init, n_filters, nc, groups, len(convs))
        group_of = list(range(len(convs)))  # fine: every layer its own
        if sharing == "coarse":
            group_of = [0] * len(convs)
        elif sharing == "medium":
            group_of = [g for g, size in enumerate(groups) for _ in range(size)]
        bases: Dict[tuple, nn.Parameter] = {}
        for i, conv in enumerate(convs):
            k = conv.kernel_size[0]
            n = k * k if n_filters is None else n_filters
            share, channels = "layer", 1
            if sharing in ("in_nc", "out_nc"):
                share = sharing[:-3]
                channels = conv.in_channels // conv.groups if share == "in" else conv.out_channels
            key = (group_of[i], k)
            if key not in bases:
                bases[key] = new_basis(-(-channels // nc), n, k * k, init)
            fb = FilterBasis(bases[key], conv.kernel_size, channels, share, nc)
            parametrize.register_parametrization(conv, "weight", fb, unsafe=True)
            if init == "random":
                coef = conv.parametrizations.weight.original
                fan_in = coef.shape[1] * k * k
                with torch.no_grad():
                    coef.normal_(0.0, math.sqrt(2.0 / fan_in))
        return model
    return apply


def filter_bases(model: nn.Module) -> List[nn.Parameter]:
    """Every filter basis of the model, once each (FBs train but are never pruned)."""
    seen: Dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, FilterBasis):
            seen.setdefault(id(m.basis), m.basis)
    return list(seen.values())


def spatial_shapes(model: nn.Module) -> Dict[int, torch.Size]:
    """id(coefficients) -> the shape (out, in, K, K) of the spatial weight that the FB layer's
    coefficients compute, for every FB layer."""
    out: Dict[int, torch.Size] = {}
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            fb = m.parametrizations.weight[0]
            if isinstance(fb, FilterBasis):
                coef = m.parametrizations.weight.original
                out[id(coef)] = torch.Size((*coef.shape[:2], *fb.kernel))
    return out


def prunable(model: nn.Module) -> List[tuple]:
    """(stored name, tensor) of the weights a pruning method masks: every weight (spatial, or
    the coefficients of an FB layer) except the filter bases."""
    bases = {id(b) for b in filter_bases(model)}
    return [(n, p) for n, p in select(model, "weights") if id(p) not in bases]


register("model_transform", filter_basis)  # config slots of this kind may name them (runner.targets)
