"""Model transforms: applied to every model the run builds (`model_transforms` in the config),
so the model, its fresh draws (`ctx.build_model`) and `init_state` share one structure.

`filter_basis`: every KxK convolution (K > 1) computes its weight as coefficients over a
trainable basis of K*K filters, W[o, i] = sum_b C[o, i, b] * F[b] (Wimmer's interspace
representation, one basis per layer). A two-tensor `torch.nn.utils.parametrize`
parametrization: `parametrizations.weight.original0` holds C, `original1` the basis F,
initialized to the standard basis (F = identity), so the network computes what it computed.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize


class FilterBasis(nn.Module):
    """W = C @ F over flattened KxK filters; `right_inverse` keeps the current basis F."""

    def __init__(self, kernel: Tuple[int, int]):
        super().__init__()
        self.kernel = tuple(kernel)
        self.basis = None  # the current basis, for right_inverse of later assignments

    def forward(self, coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        self.basis = basis
        out, inp, _ = coefficients.shape
        return (coefficients @ basis).view(out, inp, *self.kernel)

    def right_inverse(self, weight: torch.Tensor):
        k = weight.shape[2] * weight.shape[3]
        flat = weight.reshape(weight.shape[0], weight.shape[1], k)
        if self.basis is None:
            return flat.clone(), torch.eye(k, dtype=weight.dtype, device=weight.device)
        basis = self.basis.detach()
        return flat @ torch.linalg.pinv(basis), basis.clone()


def filter_basis(min_kernel: int = 2):
    """The transform: a filter basis on every convolution with a kernel of at least `min_kernel`."""
    def apply(model: nn.Module) -> nn.Module:
        for module in list(model.modules()):
            if isinstance(module, nn.Conv2d) and min(module.kernel_size) >= min_kernel \
                    and not parametrize.is_parametrized(module, "weight"):
                parametrize.register_parametrization(module, "weight",
                                                     FilterBasis(module.kernel_size),
                                                     unsafe=True)
        return model
    return apply
