"""RigL, rigging the lottery (Evci et al. 2020; Wimmer's thesis Sec. 5.5.1, SP-/IP-RigL in the
setup of Liu et al. 2021): SET's schedule and drop, but the regrown entries are those with the
largest gradient magnitude (the step's dense gradient, `p.grad` after backward), per layer as
many as were dropped. Thesis: t_p = 4,000 on ImageNet; the drop fraction, its schedule and the
drop count's rounding follow Liu et al.'s code (RigL-ITOP, the setup Table A.11 names; the
thesis does not state them), ERK densities on the spatial shapes: see methods.set.
"""
from __future__ import annotations

import torch

from methods.set import SET


class RigL(SET):
    name = "rigl"

    def grow_scores(self, ctx, p: torch.Tensor) -> torch.Tensor:
        if p.grad is None:
            raise RuntimeError("rigl: a prunable weight has no gradient at a mask update")
        return p.grad.abs()
