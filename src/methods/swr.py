"""Soft Weight Rescaling (Oh et al. 2025, Algorithm 1), optionally with re-init on lr decay.

After every optimizer step each layer l (linear, convolution, or normalization scale/shift) gets

    c_l = (lam * n_l_init + (1 - lam) * ||W_l||) / ||W_l||,    W_l <- c_l * W_l,    b_l <- C_l * b_l

with C_l the product of the c's along the chain that feeds layer l. The chain restarts at every
normalization layer (its output does not depend on the scale of its input), so the network stays
proportional to itself (Theorem 1): the logits are multiplied by C_L > 0 and the argmax is
unchanged. On the paper's networks this is Algorithm 1 with k = the last normalization layer;
it differs from the printed algorithm and the public code only at that layer's shift, which they
also multiply by the preceding convolution's c (that breaks proportionality; we do not).

Touches the weights and biases of linear and convolution layers and, with `rescale_norm`, the
scale and shift of normalization layers. The optimizer state is never reset (nor in the public
code). With `reinit`, the reference norms n_init are reset to the current norms whenever the
learning rate decreases ("SWR + re-init", Appendix E).
"""
from __future__ import annotations

from typing import Annotated, List, Optional, Tuple

import torch
from torch import nn

from methods.base import Method
from runner.models import params
from runner.models.params import Slot
from runner.ranges import NON_NEGATIVE

AFFINE = (nn.Linear, nn.modules.conv._ConvNd)
SCALE_FREE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # g(cx) = g(x), c > 0


def classifier_modules(model: nn.Module, scope: str) -> List[nn.Module]:
    """The 'classifier' of a `Network`: every nn.Linear ('linear'), or the layers of the head
    that own parameters ('head')."""
    if scope == "linear":
        return [m for m in model.modules() if isinstance(m, nn.Linear)]
    if scope == "head":
        return list({id(s.module): s.module for s in params.slots(model.head)}.values())
    raise ValueError(f"classifier scope {scope!r}; valid: linear, head")


def rescale_layers(model: nn.Module) -> List[Tuple[nn.Module, bool]]:
    """(module, is_norm) for every affine and normalization layer, in registration order.

    Registration order is the forward order for the sequential networks SWR is defined on.
    """
    return [(m, isinstance(m, SCALE_FREE)) for n, m in model.named_modules()
            if isinstance(m, AFFINE + SCALE_FREE) and "parametrizations" not in n.split(".")]


def layer_slots(model: nn.Module, layers) -> Tuple[List[Optional[Slot]], List[Optional[Slot]]]:
    """The weight and bias slot of each layer (None where it has none)."""
    found = {(id(s.module), s.local): s for s in params.slots(model)}
    return ([found.get((id(m), "weight")) for m, _ in layers],
            [found.get((id(m), "bias")) for m, _ in layers])


def chain_starts(is_norm: List[bool]) -> torch.Tensor:
    """For each layer, the index where its cumulative product starts (the last norm layer <= l)."""
    starts, s = [], 0
    for i, norm in enumerate(is_norm):
        s = i if norm else s
        starts.append(s)
    return torch.tensor(starts)


@torch.no_grad()
def rescale_(weights: List[Optional[Slot]], biases: List[Optional[Slot]], c: torch.Tensor,
             starts: torch.Tensor, proportional: bool = True) -> None:
    """W_l *= c_l, and b_l *= C_l (the chain product from `starts[l]`) or c_l (not proportional),
    as two foreach multiplications (no host sync)."""
    if proportional:
        cp = torch.cumprod(c, 0)
        before = torch.cat([c.new_ones(1), cp[:-1]])
        big_c = cp / before[starts]
    else:
        big_c = c
    for slots, factors in ((weights, c.unbind()), (biases, big_c.unbind())):
        have = [i for i, s in enumerate(slots) if s is not None]
        if have:
            params.scale_([slots[i] for i in have], [factors[i] for i in have])


class SWR(Method):
    name = "swr"

    def __init__(self, lam: Annotated[float, NON_NEGATIVE] = 1e-3,
                 lambda_f: Annotated[Optional[float], NON_NEGATIVE] = None,
                 lambda_c: Annotated[Optional[float], NON_NEGATIVE] = None, classifier: str = "linear",
                 rescale_norm: bool = True, reinit: bool = False):
        self.lam_f = float(lam if lambda_f is None else lambda_f)
        self.lam_c = float(lam if lambda_c is None else lambda_c)
        self.classifier, self.rescale_norm, self.reinit = classifier, rescale_norm, reinit

    def setup(self, ctx) -> None:
        layers = rescale_layers(ctx.model)
        head = {id(m) for m in classifier_modules(ctx.model, self.classifier)}
        self.weights, self.biases = layer_slots(ctx.model, layers)
        self.has_weight = [i for i, w in enumerate(self.weights) if w is not None]
        is_norm = [norm for _, norm in layers]
        lam = [self.lam_c if id(m) in head else self.lam_f for m, _ in layers]
        # layers left alone (norm layers without rescale_norm) get lam = 0, i.e. c = 1
        lam = [0.0 if norm and not self.rescale_norm else v for v, norm in zip(lam, is_norm)]
        dev = ctx.device
        self.lam = torch.tensor(lam, device=dev)
        self.starts = chain_starts(is_norm).to(dev)
        self.index = torch.tensor(self.has_weight, device=dev, dtype=torch.long)
        self.n_init = self.norms()
        self.last_lr = None

    def norms(self) -> torch.Tensor:
        """Frobenius norm of every layer's weight (0 for a norm layer without affine scale)."""
        out = torch.zeros(len(self.weights), device=self.lam.device)
        if self.has_weight:
            out[self.index] = params.norms([self.weights[i] for i in self.has_weight])
        return out

    def state_dict(self):
        return {"n_init": self.n_init, "last_lr": self.last_lr}

    def load_state_dict(self, state, ctx) -> None:
        self.n_init, self.last_lr = state["n_init"].to(ctx.device), state["last_lr"]

    def after_step(self, ctx) -> None:
        lr = ctx.optimizer.param_groups[0]["lr"]
        n = self.norms()
        if self.reinit and self.last_lr is not None and lr < self.last_lr:
            self.n_init = n.clone()
        self.last_lr = lr
        safe = torch.where(n > 0, n, torch.ones_like(n))
        c = torch.where(n > 0, (self.lam * self.n_init + (1 - self.lam) * n) / safe,
                        torch.ones_like(n))
        rescale_(self.weights, self.biases, c, self.starts)
