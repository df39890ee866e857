"""Line plots of per-epoch metrics from run directories (mean over seeds, shaded std).

    python -m runner.plots DIR [DIR ...] --y test_acc --hue method [--ref NAME=VALUE] [--out FILE]

The x axis is the epoch counted across all phases of a run, so a task change or a sequence of
continual chunks reads left to right; dotted vertical lines mark phase boundaries. The figure
goes to `DIR/plots/plots_<y>.png` (the first DIR) unless `--out` names a file.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, Iterable, List, Optional, Tuple

import matplotlib.pyplot as plt
import pandas as pd

from runner.analysis.common import cli, completed, figure_path, metrics, save, value


def load_curves(runs: Iterable[dict], y: str, hue: str) -> Tuple[pd.DataFrame, List[float]]:
    """Rows (hue, seed, x, phase, y) of every evaluated epoch, and the x of the phase boundaries.

    Boundaries come from all epochs, evaluated or not: with `train.eval_every` > 1 the first
    evaluated epoch of a phase is not its first epoch.
    """
    frames, bounds = [], set()
    for r in runs:
        m = metrics(r, y)
        m["x"] = range(1, len(m) + 1)
        bounds.update(float(x) - 0.5 for x in m.groupby("phase")["x"].min().iloc[1:])
        m = m[["x", "phase", y]].dropna().rename(columns={y: "y"})
        m["hue"], m["seed"] = str(value(r, hue)), r.get("seed")
        frames.append(m)
    return pd.concat(frames, ignore_index=True), sorted(bounds)


def draw(ax, runs: List[dict], y: str = "test_acc", hue: str = "method",
         refs: Optional[Dict[str, float]] = None, title: str = "") -> None:
    """`y` against the cumulative epoch on `ax`, one line per value of `hue`."""
    df, bounds = load_curves(runs, y, hue)
    colors = {}
    for i, (name, g) in enumerate(df.groupby("hue", sort=False)):
        stats = g.groupby("x")["y"].agg(["mean", "std"]).fillna({"std": 0.0})
        color = colors[name] = f"C{i}"
        ax.plot(stats.index, stats["mean"], color=color, label=f"{name} (n={g.seed.nunique()})")
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=color, alpha=0.2, linewidth=0)
    for j, (name, v) in enumerate((refs or {}).items()):
        ax.axhline(v, linestyle="--", color=colors.get(name, f"C{len(colors) + j}"),
                   linewidth=1, label=f"{name} (paper)")
    for x in bounds:
        ax.axvline(x, linestyle=":", color="grey", linewidth=0.8)
    ax.set_xlabel("epoch (all phases)")
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend(fontsize=7)


def curves(run_dirs, y: str = "test_acc", hue: str = "method",
           refs: Optional[Dict[str, float]] = None, out: Optional[str] = None,
           title: str = ""):
    """Plot `y` of the completed runs under `run_dirs`; save to `out` (default: DIR/plots/)."""
    run_dirs = list(run_dirs)
    runs = completed(run_dirs)
    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax, runs, y, hue, refs, title)
    name = f"plots_{y}" + ("" if hue == "method" else f"_by_{hue}")
    return save(fig, figure_path(out, run_dirs, name))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.plots", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--y", default="test_acc", help="a column of metrics.csv")
    p.add_argument("--hue", default="method", help="config group or config key separating lines")
    p.add_argument("--ref", action="append", default=[], help="NAME=VALUE dashed reference line")
    p.add_argument("--title", default="")
    p.add_argument("--out", default=None, help="figure file (default: DIR/plots/plots_<y>.png)")
    a = p.parse_args(argv)
    refs = {k: float(v) for k, _, v in (r.partition("=") for r in a.ref)}
    return cli(lambda: curves(a.dirs, a.y, a.hue, refs, a.out, a.title))


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
