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
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from runner.analysis.common import (AnalysisError, cli, completed, experiments,  # noqa: E402
                                    figure_path, legend_outside, metrics, percent, save, titled,
                                    value)
from runner.plots import draw  # noqa: E402


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
