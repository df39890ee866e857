"""WELSR (Taha et al. 2021, randomized weight-level splitting): a fresh random subset each round.

Alabdulmohsin et al. 2021, Sec. 1: "A random subset of the parameters of a fixed size is chosen
uniformly at random in each round ... about 20% of the parameters".
"""
from methods.reinit_common import MaskedReinit, random_masks


class WELSR(MaskedReinit):
    name = "welsr"

    def masks(self, ctx, params):
        return random_masks(params, self.fraction, ctx.gen)
