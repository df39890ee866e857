"""What the reinitialization methods share (Alabdulmohsin et al. 2021, Eq. 1).

A round applies w <- (1 - s) * w + s * eta to the selected parameters, at the start of every
phase but the first (K x N rounds are one phase with `repeat`; the baseline is the same phase
without a method). eta is a fresh draw of the configured initializer (`eta: fresh`, the paper's
"random initialization of the model parameters"), the run's own initial weights (`init`), or
zeros (`zeros`, DSD's original re-densification); `eta_scale` multiplies it.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Optional, Tuple

import torch
from torch import nn

from methods.base import Method
from runner.models.init import initialize
from runner.models.params import select
from runner.sparse.keep import SCOPES, keep_count, top_k_masks
from runner.ranges import UNIT

ETA_SOURCES = ("fresh", "init", "zeros")
Masks = Dict[str, torch.Tensor]


def count(numel: int, fraction: float) -> int:
    return keep_count(numel, fraction, "round")


def random_masks(params: List[Tuple[str, nn.Parameter]], fraction: float,
                 gen: torch.Generator) -> Masks:
    """Exactly round(fraction * n) entries of each tensor, uniformly at random."""
    masks = {}
    for name, p in params:
        flat = torch.zeros(p.numel(), dtype=torch.bool)
        flat[torch.randperm(p.numel(), generator=gen)[:count(p.numel(), fraction)]] = True
        masks[name] = flat.view(p.shape).to(p.device)
    return masks


def smallest_masks(params: List[Tuple[str, nn.Parameter]], fraction: float,
                   scope: str = "layer") -> Masks:
    """The round(fraction * n) smallest |w| of each tensor (`layer`) or of all of them (`global`)."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; valid: {', '.join(SCOPES)}")
    mags = {name: p.detach().abs() for name, p in params}
    counts = ({n: count(m.numel(), fraction) for n, m in mags.items()} if scope == "layer"
              else count(sum(m.numel() for m in mags.values()), fraction))
    return top_k_masks(mags, counts, largest=False, ties="first")


def eta_for(ctx, names: List[str], source: str, init: Optional[str] = None, scale: float = 1.0
            ) -> Optional[Dict[str, torch.Tensor]]:
    """eta for the named parameters, times `scale`; None means zeros. `init` redraws a fresh
    model's weights with another scheme of `runner.models.init` (default: the model's own)."""
    eta = _eta(ctx, names, source, init)
    return eta if eta is None or scale == 1.0 else {n: scale * t for n, t in eta.items()}


def _eta(ctx, names: List[str], source: str, init: Optional[str]) -> Optional[Dict[str, torch.Tensor]]:
    if source == "fresh":
        model = ctx.build_model()
        if init is not None:
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=ctx.gen)))
                initialize(model, init)
        fresh = dict(select(model, "all"))
        return {n: fresh[n].detach() for n in names}
    if source == "init":
        return {n: ctx.init_state[n] for n in names}
    if source == "zeros":
        return None
    raise ValueError(f"eta={source!r}; valid: {', '.join(ETA_SOURCES)}")


@torch.no_grad()
def reinitialize(params: List[Tuple[str, nn.Parameter]], masks: Masks,
                 eta: Optional[Dict[str, torch.Tensor]]) -> None:
    """w <- (1 - s) * w + s * eta in place (eta None: zeros)."""
    for name, p in params:
        s = masks[name]
        p.copy_(torch.where(s, torch.zeros_like(p) if eta is None else eta[name].to(p.device), p))


class MaskedReinit(Method):
    """Base of WELSR, DSD, WELS and FC: at each round, reinitialize the parameters `masks` picks."""

    def __init__(self, fraction: Annotated[float, UNIT] = 0.2, params="all", eta: str = "fresh",
                 eta_init: Optional[str] = None, eta_scale: float = 1.0, reset_optimizer: bool = True):
        if eta not in ETA_SOURCES:
            raise ValueError(f"eta={eta!r}; valid: {', '.join(ETA_SOURCES)}")
        self.fraction, self.params, self.eta, self.eta_init = float(fraction), params, eta, eta_init
        self.eta_scale = float(eta_scale)
        self.reset_optimizer = reset_optimizer
        self.rounds = 0

    def candidates(self, ctx) -> List[Tuple[str, nn.Parameter]]:
        """The parameters a mask may cover."""
        return select(ctx.model, self.params)

    def masks(self, ctx, params: List[Tuple[str, nn.Parameter]]) -> Masks:
        raise NotImplementedError

    def on_phase_start(self, ctx) -> None:
        if ctx.phase.index == 0:
            return
        params = self.candidates(ctx)
        masks = self.masks(ctx, params)
        eta = eta_for(ctx, [n for n, _ in params], self.eta, self.eta_init, self.eta_scale)
        reinitialize(params, masks, eta)
        self.rounds += 1
        if self.reset_optimizer:
            ctx.reset_optimizer()

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"reinit_rounds": self.rounds}

    def state_dict(self):
        return {"rounds": self.rounds}

    def load_state_dict(self, state, ctx) -> None:
        self.rounds = state["rounds"]


class Standardize(nn.Module):
    """x -> (x - mean) / std with fixed (non-trainable) statistics, LW's inserted layer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def calibrate(self, z: torch.Tensor, eps: float = 1e-8) -> None:
        self.mean = z.mean().to(self.mean)
        self.std = z.std(unbiased=False).clamp_min(eps).to(self.std)
