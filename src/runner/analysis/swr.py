"""Analyses and figures of the SWR paper (Oh et al. 2025): balancedness (Fig. 5), scaling with and
without proportionality (Fig. 1), warm-start curves with reference lines (Fig. 2).

    python -m runner.analysis.swr warm SWEEP_DIR --scratch SCRATCH_DIR   # SWEEP_DIR/plots/swr_warm.png
    python -m runner.analysis.swr balance SWEEP_DIR                      # .../swr_balance.png
    python -m runner.analysis.swr scaling SWEEP_DIR                      # .../swr_scaling.png

`--out FILE` writes elsewhere. Figures 3 and 4 (continual learning) are plain curves:
`python -m runner.plots DIR`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from methods.base import Method  # noqa: E402
from methods.swr import chain_starts, layer_slots, rescale_, rescale_layers  # noqa: E402
from runner.analysis.common import (AnalysisError, cli, completed, experiments,  # noqa: E402
                                    figure_path, legend_outside, metrics, percent, save, titled,
                                    value)
from runner.plots import draw  # noqa: E402


# -- balancedness (Appendix C.1) ---------------------------------------------------------------
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


# -- Figure 1: one rescaling with and without proportionality ------------------------------------
class ScaleOnce(Method):
    """At the start of phase `at_phase`, every layer's weight is multiplied by `factor`; biases by
    the cumulative product (Theorem 1, `proportional`) or by `factor` alone (not proportional).
    Records the test accuracy right after scaling as `test_acc_after_scaling` of that phase."""

    name = "scale_once"

    def __init__(self, factor: float = 0.5, proportional: bool = True, at_phase: int = 1):
        self.factor, self.proportional, self.at_phase = float(factor), proportional, at_phase
        self.after = None

    @torch.no_grad()
    def on_phase_start(self, ctx) -> None:
        if ctx.phase_index != self.at_phase:
            return
        layers = rescale_layers(ctx.model)
        c = torch.full((len(layers),), self.factor, device=ctx.device)
        starts = chain_starts([norm for _, norm in layers]).to(ctx.device)
        rescale_(*layer_slots(ctx.model, layers), c, starts, self.proportional)
        self.after = test_accuracy(ctx)

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {"test_acc_after_scaling": self.after} if ctx.phase_index == self.at_phase else {}

    def state_dict(self):
        return {"after": self.after}

    def load_state_dict(self, state, ctx) -> None:
        self.after = state["after"]


@torch.no_grad()
def test_accuracy(ctx) -> float:
    return float(ctx.evaluate(ctx.data.test)[1])


# -- figures -------------------------------------------------------------------------------------
PAPER = "Oh et al. 2025"


def _phase_metric(run: dict, phase: int, y: str = "test_acc") -> pd.Series:
    m = metrics(run, y)
    return m.loc[m.phase == phase, y].dropna()


def is_warm_start(run: dict) -> bool:
    """Two or more phases, the first on a part of the training set."""
    first = value(run, "phases.0.subset") or {}
    return len(run["phases"]) > 1 and (first.get("fraction") is not None or first.get("n") is not None)


def warm_start_figure(dirs, scratch_dirs=(), out: Optional[str] = None, title: str = "") -> Path:
    """Fig. 2: test accuracy per method, dashed lines at the final accuracy of vanilla with warm
    start and of vanilla trained from scratch on all data (runs of the generalization experiment
    with `train.epochs=100`)."""
    runs = completed(dirs, "warm-start runs")
    plain = [r for r in runs if not is_warm_start(r)]
    if plain:
        raise AnalysisError(f"swr warm needs warm-start runs (a first phase on part of the data, "
                            f"e.g. experiment=swr_warm_mnist_mlp); {plain[0]['_dir']} is a run of "
                            f"{experiments(plain)} with {len(plain[0]['phases'])} phase(s)")
    scratch = completed(scratch_dirs, "from-scratch runs") if scratch_dirs else []
    odd = [r for r in scratch if len(r["phases"]) > 1 or is_warm_start(r)]
    if odd:
        raise AnalysisError(f"--scratch needs runs trained from scratch in one phase on all the data "
                            f"(e.g. experiment=swr_gen_mnist_mlp method=vanilla train.epochs=100); "
                            f"{odd[0]['_dir']} has {len(odd[0]['phases'])} phases")
    refs = {"vanilla, warm start": [r["summary"]["test_acc"] for r in runs
                                    if r["choices"].get("method") == "vanilla"],
            "vanilla, from scratch": [r["summary"]["test_acc"] for r in scratch]}
    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax, runs, "test_acc", "method")
    scale = 100.0 if percent(runs, "test_acc") else 1.0
    for (label, values), color in zip(refs.items(), ("red", "black")):
        if values:
            ax.axhline(scale * sum(values) / len(values), linestyle="--", color=color,
                       linewidth=1, label=f"{label} (final, n={len(values)})")
    legend_outside(ax)
    titled(fig, title or f"{PAPER}, Fig. 2: warm start (first phase on part of the data)",
           runs + scratch)
    return save(fig, figure_path(out, list(dirs), "swr_warm"))


def balance_figure(dirs, out: Optional[str] = None, title: str = "") -> Path:
    """Fig. 5: balancedness (left) and test accuracy (right) per method over epochs."""
    runs = completed(dirs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    draw(left, runs, "balancedness", "method")
    draw(right, runs, "test_acc", "method")
    legend_outside(right)
    titled(fig, title or f"{PAPER}, Fig. 5: balancedness (left) and test accuracy (right)", runs)
    return save(fig, figure_path(out, list(dirs), "swr_balance"))


def scaling_table(dirs) -> pd.DataFrame:
    """Per run: factor, proportional, pre-training best, right after scaling, best afterwards."""
    rows = []
    for r in completed(dirs, "runs of experiment=swr_fig1_cifar10_cnn"):
        if len(r["phases"]) < 2 or "test_acc_after_scaling" not in r["phases"][1]:
            raise AnalysisError(f"swr scaling needs runs of experiment=swr_fig1_cifar10_cnn (its "
                                f"ScaleOnce method records test_acc_after_scaling); {r['_dir']} is "
                                f"a run of {experiments([r])}")
        method = r["config"]["method"]
        rows.append({"factor": method["factor"], "proportional": method["proportional"],
                     "pretrained_best": _phase_metric(r, 0).max(),
                     "after_scaling": r["phases"][1]["test_acc_after_scaling"],
                     "best_after": _phase_metric(r, 1).max()})
    return pd.DataFrame(rows)


def scaling_figure(dirs, out: Optional[str] = None, title: str = "") -> Path:
    """Fig. 1: accuracy right after scaling (dashed) and best after further training (solid)
    against the scaling factor, without (left) and with (right) proportionality; black: the
    best accuracy before scaling."""
    df = scaling_table(dirs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, prop in zip(axes, (False, True)):
        g = df[df.proportional == prop].groupby("factor").mean(numeric_only=True).sort_index()
        ax.axhline(df.pretrained_best.mean(), color="black", label="best before scaling")
        ax.plot(g.index, g.after_scaling, "--o", color="C3", label="right after scaling")
        ax.plot(g.index, g.best_after, "-o", color="C0", label="best after further training")
        ax.set_xlabel("scaling factor per layer")
        ax.set_title("proportional scaling" if prop else "not proportional", fontsize=9)
    axes[0].set_ylabel("test accuracy")
    legend_outside(axes[1])
    titled(fig, title or f"{PAPER}, Fig. 1: test accuracy after scaling the weights",
           completed(dirs))
    return save(fig, figure_path(out, list(dirs), "swr_scaling"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.analysis.swr", description=__doc__.split("\n")[0])
    p.add_argument("figure", choices=("warm", "balance", "scaling"))
    p.add_argument("dirs", nargs="+")
    p.add_argument("--scratch", nargs="*", default=[], help="warm: from-scratch run directories")
    p.add_argument("--title", default="")
    p.add_argument("--out", default=None, help="figure file (default: DIR/plots/swr_<figure>.png)")
    a = p.parse_args(argv)
    if a.figure == "warm":
        return cli(lambda: warm_start_figure(a.dirs, a.scratch, a.out, a.title))
    figure = balance_figure if a.figure == "balance" else scaling_figure
    return cli(lambda: figure(a.dirs, a.out, a.title))


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
