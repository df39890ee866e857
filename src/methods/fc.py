"""FC: reinitialize the classifier head (and optionally the last `blocks` blocks) at each round.

Alabdulmohsin et al. 2021, Sec. 1: "Only the last fully-connected layers are reinitialized"
(Li et al. 2020; Zhao et al. 2018 reset the classifier head only). In the zoo's models the
dense layers before the classifier belong to `model.head`.
"""
from typing import Optional

import torch

from runner.models.params import select
from methods.reinit_common import MaskedReinit


class FC(MaskedReinit):
    name = "fc"

    def __init__(self, blocks: int = 0, params="all", eta: str = "fresh",
                 eta_init: Optional[str] = None, eta_scale: float = 1.0, reset_optimizer: bool = True):
        super().__init__(fraction=1.0, params=params, eta=eta, eta_init=eta_init,
                         eta_scale=eta_scale, reset_optimizer=reset_optimizer)
        self.blocks = int(blocks)

    def candidates(self, ctx):
        model = ctx.model
        top = [model.head] + (list(model.blocks[-self.blocks:]) if self.blocks else [])
        ids = {id(p) for m in top for p in m.parameters()}
        return [(n, p) for n, p in select(model, self.params) if id(p) in ids]

    def masks(self, ctx, params):
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params}
