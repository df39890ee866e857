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

from typing import List, Optional, Tuple

import torch
from torch import nn

from methods.base import Method

AFFINE = (nn.Linear, nn.modules.conv._ConvNd)
SCALE_FREE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # g(cx) = g(x), c > 0


def classifier_modules(model: nn.Module, scope: str) -> List[nn.Module]:
    """The 'classifier' of a `Network`: every nn.Linear ('linear'), or the layers of the head
    that own parameters ('head')."""
    if scope == "linear":
        return [m for m in model.modules() if isinstance(m, nn.Linear)]
    if scope == "head":
        return [m for m in model.head.modules() if next(m.parameters(False), None) is not None]
    raise ValueError(f"classifier scope {scope!r}; valid: linear, head")


def rescale_layers(model: nn.Module) -> List[Tuple[nn.Module, bool]]:
    """(module, is_norm) for every affine and normalization layer, in registration order.

    Registration order is the forward order for the sequential networks SWR is defined on.
    """
    return [(m, isinstance(m, SCALE_FREE)) for m in model.modules()
            if isinstance(m, AFFINE + SCALE_FREE)]


def chain_starts(is_norm: List[bool]) -> torch.Tensor:
    """For each layer, the index where its cumulative product starts (the last norm layer <= l)."""
    starts, s = [], 0
    for i, norm in enumerate(is_norm):
        s = i if norm else s
        starts.append(s)
    return torch.tensor(starts)


@torch.no_grad()
def rescale_(weights: List[torch.Tensor], biases: List[Optional[torch.Tensor]], c: torch.Tensor,
             starts: torch.Tensor, proportional: bool = True) -> None:
    """W_l *= c_l, and b_l *= C_l (the chain product from `starts[l]`) or c_l (not proportional)."""
    if proportional:
        cp = torch.cumprod(c, 0)
        before = torch.cat([c.new_ones(1), cp[:-1]])
        big_c = cp / before[starts]
    else:
        big_c = c
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w is not None:
            w.mul_(c[i])
        if b is not None:
            b.mul_(big_c[i])


class SWR(Method):
    name = "swr"

    def __init__(self, lam: float = 1e-3, lambda_f: Optional[float] = None,
                 lambda_c: Optional[float] = None, classifier: str = "linear",
                 rescale_norm: bool = True, reinit: bool = False):
        self.lam_f = float(lam if lambda_f is None else lambda_f)
        self.lam_c = float(lam if lambda_c is None else lambda_c)
        self.classifier, self.rescale_norm, self.reinit = classifier, rescale_norm, reinit

    def setup(self, ctx) -> None:
        layers = rescale_layers(ctx.model)
        head = {id(m) for m in classifier_modules(ctx.model, self.classifier)}
        self.weights = [getattr(m, "weight", None) for m, _ in layers]
        self.biases = [getattr(m, "bias", None) for m, _ in layers]
        is_norm = [norm for _, norm in layers]
        lam = [self.lam_c if id(m) in head else self.lam_f for m, _ in layers]
        # layers left alone (norm layers without rescale_norm) get lam = 0, i.e. c = 1
        lam = [0.0 if norm and not self.rescale_norm else v for v, norm in zip(lam, is_norm)]
        dev = next(ctx.model.parameters()).device
        self.lam = torch.tensor(lam, device=dev)
        self.starts = chain_starts(is_norm).to(dev)
        self.zero = torch.zeros((), device=dev)
        self.n_init = self.norms()
        self.last_lr = None

    def norms(self) -> torch.Tensor:
        """Frobenius norm of every layer's weight (0 for a norm layer without affine scale)."""
        return torch.stack([self.zero if w is None else torch.linalg.vector_norm(w.detach())
                            for w in self.weights])

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
