"""L2 penalty in the loss over the selected parameters, in one of two conventions.

- `code` (default): lam * sum ||theta||^2. The SWR authors' public code adds the sum of squares
  of all parameters times the coefficient, with no 1/2 (CILAB-RL-TEAM/soft-weight-rescaling,
  `src/common/interventions.py` `l2_regularization`, used as `loss += args.coef * l2_loss` in
  `src/generalizaiton/run_l2.py`). The tuned lambdas of
  Oh et al. 2025 (Tables 2-4) were found with that code, so they mean this penalty.
- `text`: lam/2 * sum ||theta||^2, as Oh et al. 2025 write it (App. D.2); gradient lam * theta.

The penalty is computed for all tensors at once (torch._foreach_norm), without a host sync.
"""
from typing import Annotated, List

import torch

from methods.base import Method
from runner.models.params import select
from runner.ranges import NON_NEGATIVE

CONVENTIONS = {"code": 1.0, "text": 0.5}  # factor in front of lam * sum ||.||^2


def convention_factor(convention: str) -> float:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}; valid: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[convention]


def squared_norm(tensors: List[torch.Tensor]) -> torch.Tensor:
    """sum_i ||t_i||^2 in a few kernels whatever the number of tensors; differentiable."""
    return torch.stack(torch._foreach_norm(tensors)).square().sum()


class L2(Method):
    name = "l2"

    def __init__(self, lam: Annotated[float, NON_NEGATIVE] = 1e-4, params: str = "all", convention: str = "code"):
        self.lam, self.params = float(lam), params
        self.coef = convention_factor(convention) * self.lam

    def setup(self, ctx) -> None:
        self.tensors = [p for _, p in select(ctx.model, self.params)]

    def loss_term(self, ctx) -> torch.Tensor:
        return self.penalty(self.tensors)

    def penalty(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        """The term over `tensors`: the selected parameters, or fused seeds' stacks of them
        (runner.training.fused), whose term is the sum of the seeds' terms."""
        return self.coef * squared_norm(tensors)
