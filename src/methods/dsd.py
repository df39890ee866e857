"""DSD extended to rounds: the smallest-magnitude parameters are reinitialized at each round.

Alabdulmohsin et al. 2021, Sec. 1: "The smallest parameters in terms of their absolute
magnitudes are reinitialized at each round" (Han et al. 2017 do it once, with eta = 0). Per
tensor (`scope: layer`, as DSD prunes layer by layer) or over all selected tensors (`global`).
"""
from methods.reinit_common import MaskedReinit, smallest_masks


class DSD(MaskedReinit):
    name = "dsd"

    def __init__(self, scope: str = "layer", **kwargs):
        super().__init__(**kwargs)
        self.scope = scope

    def masks(self, ctx, params):
        return smallest_masks(params, self.fraction, self.scope)
