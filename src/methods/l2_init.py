"""L2 Init (Kumar et al. 2023): loss + lam/2 * sum ||theta - theta_0||^2 over the selected parameters.

theta_0 is the model at `setup` (its initialization). The paper's public code (Oh et al. 2025)
includes every parameter (biases, normalization); `params` restricts it. No optimizer state is
touched: this is only a loss term.
"""
import torch

from methods.base import Method
from runner.models.params import select


class L2Init(Method):
    name = "l2_init"

    def __init__(self, lam: float = 1e-4, params: str = "all"):
        self.lam, self.params = float(lam), params

    def setup(self, ctx) -> None:
        self.tensors = [p for _, p in select(ctx.model, self.params)]
        self.init = [p.detach().clone() for p in self.tensors]

    def loss_term(self, ctx) -> torch.Tensor:
        return 0.5 * self.lam * sum((p - p0).pow(2).sum() for p, p0 in zip(self.tensors, self.init))
