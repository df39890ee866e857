"""WELS (Taha et al. 2021, weight-level splitting): one random subset, fixed before training.

Alabdulmohsin et al. 2021, Sec. 1: "A subset is chosen at random prior to training and is fixed
afterwards." The mask is drawn in `setup` and reused at every round.
"""
from runner.models.params import select
from methods.reinit_common import MaskedReinit, random_masks


class WELS(MaskedReinit):
    name = "wels"

    def setup(self, ctx) -> None:
        self.fixed = random_masks(select(ctx.model, self.params), self.fraction, ctx.gen)

    def masks(self, ctx, params):
        return self.fixed
