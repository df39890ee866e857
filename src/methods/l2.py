"""L2 penalty in the loss: loss + lam/2 * sum ||theta||^2 over the selected parameters."""
import torch

from methods.base import Method
from runner.models.params import select


class L2(Method):
    name = "l2"

    def __init__(self, lam: float = 1e-4, params: str = "all"):
        self.lam, self.params = float(lam), params

    def setup(self, ctx) -> None:
        self.tensors = [p for _, p in select(ctx.model, self.params)]

    def loss_term(self, ctx) -> torch.Tensor:
        return 0.5 * self.lam * sum(p.pow(2).sum() for p in self.tensors)
