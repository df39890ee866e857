"""RigL, rigging the lottery (Evci et al. 2020; Wimmer's thesis Sec. 5.5.1, SP-/IP-RigL in the
setup of Liu et al. 2021): SET's schedule and drop, but the regrown entries are those with the
largest gradient magnitude (the step's dense gradient, `p.grad` after backward), per layer as
many as were dropped. Thesis: t_p = 4,000 on ImageNet; fraction 0.3 and stop 0.75 are RigL's
defaults (the thesis does not state them); ERK densities (RigL / ITOP default).
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
