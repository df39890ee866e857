"""L2 Init (Kumar et al. 2023): lam * sum ||theta - theta_0||^2 over the selected parameters.

theta_0 is the model at `setup` (its initialization). `convention` as in `methods.l2`: `code`
(default, no 1/2) is what the SWR authors' public code adds (`l2_init_regularization`, used as
`loss += args.coef * l2_init_loss` in `src/generalizaiton/run_l2_init.py`), which produced the
tuned lambdas of Oh et al. 2025, Tables 2-4; `text` is lam/2 * ||theta - theta_0||^2 as their
App. D.2 and Kumar et al.'s own code write it. Their code includes every parameter (biases,
normalization); `params` restricts it. No optimizer state is touched: this is only a loss term.
"""
from typing import Annotated

import torch

from methods.base import Method
from methods.l2 import convention_factor, squared_norm
from runner.models.params import select
from runner.ranges import NON_NEGATIVE


class L2Init(Method):
    name = "l2_init"

    def __init__(self, lam: Annotated[float, NON_NEGATIVE] = 1e-4, params: str = "all", convention: str = "code"):
        self.lam, self.params = float(lam), params
        self.coef = convention_factor(convention) * self.lam

    def setup(self, ctx) -> None:
        self.tensors = [p for _, p in select(ctx.model, self.params)]
        self.init = [p.detach().clone() for p in self.tensors]

    def state_dict(self):
        return {"init": self.init}

    def load_state_dict(self, state, ctx) -> None:
        self.init = [t.to(p) for t, p in zip(state["init"], self.tensors, strict=True)]

    def loss_term(self, ctx) -> torch.Tensor:
        return self.coef * squared_norm(torch._foreach_sub(self.tensors, self.init))
