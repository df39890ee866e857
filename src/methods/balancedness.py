"""Balancedness of an MLP (Oh et al. 2025, Appendix C.1): its entry-wise l_p norm over the
smallest l_p norm of a function-preserving per-unit rescaling (1 = balanced), and a probe that
records it every epoch (`extra_methods=[{_target_:methods.balancedness.BalancednessProbe}]`;
figures: `python -m runner.analysis.swr balance DIR`)."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from methods.base import Method


def linear_chain(model: nn.Module) -> List[nn.Linear]:
    """The Linear layers of an MLP in order; other parametrized layers are not supported."""
    layers = [m for m in model.modules() if next(m.parameters(False), None) is not None]
    if not all(isinstance(m, nn.Linear) for m in layers):
        raise ValueError("balancedness is defined here for MLPs of Linear layers (with ReLU)")
    return layers


def _mass(w: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    return w.abs().pow(p).sum(dim)


@torch.no_grad()
def balance(model: nn.Module, p: float = 2.0, iters: int = 1000, tol: float = 1e-10
            ) -> List[Dict[str, torch.Tensor]]:
    """The MLP's parameters rescaled per hidden unit to the minimal entry-wise l_p norm.

    Multiplying a ReLU unit's incoming weights and bias by a > 0 and its outgoing weights by 1/a
    keeps the function. The sum of |theta|^p is convex in log a; block coordinate descent (one
    layer of units at a time, each in closed form a^(2p) = out / in, the multiplicative update
    of Saul 2023 for p = q) reaches the global minimum. Returns copies; the model is unchanged.
    """
    layers = [{"w": m.weight.detach().double().clone(),
               "b": None if m.bias is None else m.bias.detach().double().clone()}
              for m in linear_chain(model)]
    prev = total(layers, p)
    for _ in range(iters):
        for cur, nxt in zip(layers[:-1], layers[1:]):
            inc = _mass(cur["w"], p, 1) + (0 if cur["b"] is None else cur["b"].abs().pow(p))
            out = _mass(nxt["w"], p, 0)
            a = torch.where((inc > 0) & (out > 0), (out / inc).pow(1 / (2 * p)),
                            torch.ones_like(inc))
            cur["w"] *= a[:, None]
            if cur["b"] is not None:
                cur["b"] *= a
            nxt["w"] /= a[None, :]
        now = total(layers, p)
        if prev - now <= tol * prev:
            break
        prev = now
    return layers


def total(layers: List[Dict[str, torch.Tensor]], p: float) -> float:
    """Sum of |theta|^p over weights and biases."""
    return float(sum(_mass(l["w"].flatten(), p, 0) + (0 if l["b"] is None else _mass(l["b"], p, 0))
                     for l in layers))


@torch.no_grad()
def balancedness(model: nn.Module, p: float = 2.0) -> float:
    """||theta||_p / min over function-preserving unit rescalings of ||theta||_p (>= 1; 1 = balanced)."""
    current = [{"w": m.weight.double(), "b": None if m.bias is None else m.bias.double()}
               for m in linear_chain(model)]
    return (total(current, p) / total(balance(model, p), p)) ** (1 / p)


class BalancednessProbe(Method):
    """Adds `balancedness` to every epoch's row of metrics.csv (stack it as an extra method)."""

    name = "balancedness"

    def __init__(self, p: float = 2.0):
        self.p = float(p)

    def on_epoch_end(self, ctx) -> Dict[str, float]:
        return {"balancedness": balancedness(ctx.model, self.p)}
