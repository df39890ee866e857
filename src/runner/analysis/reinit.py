"""Statistics and figures of the reinitialization paper (Alabdulmohsin et al. 2021).

    python -m runner.analysis.reinit table2 DIR [DIR ...]  # Table 2 layout, paper beside ours
    python -m runner.analysis.reinit table3 [DIR ...]      # binomial test + Holm (Table 3)
    python -m runner.analysis.reinit tree [DIR ...]        # Figure 2: DIR/plots/reinit_tree.png
    python -m runner.analysis.reinit budget DIR            # Fig. 3: accuracy vs steps per round
    python -m runner.analysis.reinit margins DIR           # Fig. 4: smallest training margins
    python -m runner.analysis.reinit perturb DIR           # Fig. 5: loss under weight noise
    python -m runner.analysis.reinit ratio DIR             # Fig. 6: weight size / baseline's
    python -m runner.analysis.reinit grid DIR              # Fig. 7: BL vs LW (Appendix F)
    python -m runner.analysis.reinit ablation DIR          # LW variants (Appendix E)

table3 and tree without DIR (or with --paper) use the paper's own Table 2; the tree is then
written to ./plots/reinit_tree_paper.png. Figures go to DIR/plots/reinit_<what>.png unless
`--out FILE`. Table 2 results are rows (setting, dataset, arch, method, acc, std) in percent; the
paper's own are `data/reinit_table2.csv`. Figures 4-6 read what `methods.reinit_probe.ReinitProbe`
stores.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from runner.analysis.common import (AnalysisError, cli, colours, completed, experiments,  # noqa: E402
                                    figure_path, legend_outside, method_name, method_rank,
                                    options_changed, save, titled, value)
from runner.analysis.reinit_stats import (PAPER, format_table2, format_table3, paper_table2,  # noqa: E402
                                           plot_tree, results_table2, table3)
from runner.tables import cell_keys  # noqa: E402



def _probe(r: dict, key: str, what: str):
    """What the ReinitProbe stored in the run's last phase, or one line naming how to get it."""
    if r["phases"][-1].get(key) is None:
        raise AnalysisError(f"{what} needs the ReinitProbe's {key!r} in result.json (e.g. "
                            f"experiment=reinit_sec4_synthetic); {r['_dir']} is a run of "
                            f"{experiments([r])} without it")
    return r["phases"][-1][key]


def _by_method(df: pd.DataFrame):
    """(paper name, colour, rows) per method, in the paper's order, one colour per method."""
    names = sorted(df["method"].unique(), key=method_rank)
    colour = colours(names, True)
    return [(method_name(m), colour[m], df[df.method == m]) for m in names]


def plot_budget(dirs, out, x: str = "train.epochs") -> Path:
    """Figure 3: final test accuracy against the steps (epochs) per round, one line per method."""
    runs = completed(dirs)
    rows = [{"method": r["choices"].get("method"), "x": value(r, x),
             "acc": 100 * r["summary"]["test_acc"]} for r in runs]
    df = pd.DataFrame(rows).groupby(["method", "x"])["acc"].agg(["mean", "std", "size"]).reset_index()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, colour, g in _by_method(df):
        ax.errorbar(g["x"], g["mean"], yerr=g["std"].fillna(0), color=colour, marker="o",
                    capsize=2, label=f"{name} (n={int(g['size'].min())} per point)")
    ax.set_xscale("log")
    ax.set_xticks(sorted(df["x"].unique()), [f"{v:g}" for v in sorted(df["x"].unique())])
    ax.minorticks_off()
    ax.set(xlabel="training steps per round" + ("" if x == "train.epochs" else f" ({x})"),
           ylabel="test accuracy [%]")
    legend_outside(ax)
    titled(fig, f"{PAPER}, Fig. 3: accuracy against the training budget per round", runs)
    return save(fig, out)


def plot_margins(dirs, out) -> Path:
    """Figure 4: the smallest training margins (softmax), mean over seeds, per method."""
    runs = completed(dirs)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    by: Dict[str, List] = {}
    for r in runs:
        by.setdefault(r["choices"].get("method"), []).append(_probe(r, "margins", "margins"))
    colour = colours(list(by), True)
    for m in sorted(by, key=method_rank):
        n = min(len(c) for c in by[m])
        ax.plot(np.arange(1, n + 1), np.mean([c[:n] for c in by[m]], axis=0), color=colour[m],
                label=f"{method_name(m)} (n={len(by[m])})")
    ax.set(yscale="log", xlabel="training example, by rank of its margin",
           ylabel="softmax margin (log scale)")
    legend_outside(ax)
    titled(fig, f"{PAPER}, Fig. 4: the smallest training margins", runs)
    return save(fig, out)


def plot_perturb(dirs, out, key: str = "loss") -> Path:
    """Figure 5: training loss (or accuracy) under Gaussian weight noise of std sigma."""
    runs = completed(dirs)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    rows = [{"method": r["choices"].get("method"), "sigma": float(s), "v": v[key]}
            for r in runs for s, v in _probe(r, "perturb", "perturb").items()]
    df = pd.DataFrame(rows).groupby(["method", "sigma"])["v"].agg(["mean", "size"]).reset_index()
    for name, colour, g in _by_method(df):
        ax.plot(g["sigma"], g["mean"], marker="o", color=colour,
                label=f"{name} (n={int(g['size'].min())})")
    ax.set(xlabel="std σ of the Gaussian noise added to every weight",
           ylabel="training loss (cross-entropy)" if key == "loss" else f"training {key}")
    legend_outside(ax)
    titled(fig, f"{PAPER}, Fig. 5: robustness to weight perturbations", runs)
    return save(fig, out)


def weight_ratios(dirs) -> pd.DataFrame:
    """Appendix D: each run's weight size over the baseline's with the same seed and cell."""
    rows = []
    runs = completed(dirs)
    for r, cell in zip(runs, _cells_without_method(runs)):  # matched on resolved values
        rows.append({"cell": cell, "seed": r["seed"], "method": r["choices"].get("method"),
                     "size": _probe(r, "weight_size", "ratio")})
    df = pd.DataFrame(rows)
    if not (df.method == "bl").any() or (df.method == "bl").all():
        raise AnalysisError("ratio needs runs of method=bl (the baseline) beside those of other "
                            "methods, with the same seeds, e.g. method=bl,welsr,dsd,wels,fc,lw")
    base = df[df.method == "bl"].set_index(["cell", "seed"])["size"]
    df = df[df.method != "bl"].join(base.rename("bl_size"), on=["cell", "seed"])
    return df.assign(ratio=df["size"] / df["bl_size"]).dropna(subset=["ratio"])


def plot_ratio(dirs, out, min_density: int = 5) -> Path:
    """Figure 6: Gaussian approximation of the density of the weight-size ratio to BL; with
    fewer than `min_density` runs of a method, its ratios themselves (no density from a few
    points)."""
    df = weight_ratios(dirs)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    grid = np.linspace(0, max(2.0, df["ratio"].max() * 1.2), 400)
    for name, colour, g in _by_method(df):
        mu, sd = g["ratio"].mean(), max(g["ratio"].std(ddof=0), 1e-3)
        if len(g) >= min_density:
            ax.plot(grid, np.exp(-0.5 * ((grid - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
                    color=colour, label=f"{name} (n={len(g)})")
        else:
            ax.plot(g["ratio"], np.zeros(len(g)), "|", markersize=20, color=colour,
                    label=f"{name}: the ratios (n={len(g)}, too few for a density)")
    ax.axvline(1.0, color="k", lw=0.5)
    ax.set(xlim=(grid[0], grid[-1]), xlabel="weight norm / the baseline's (same seed)",
           ylabel="density (Gaussian fit)")
    if all(len(g) < min_density for _, _, g in _by_method(df)):
        ax.set(ylabel="single runs (too few for a density)", yticks=[])
    legend_outside(ax)
    titled(fig, f"{PAPER}, Fig. 6: weight size relative to BL", completed(dirs))
    return save(fig, out)


def _cells_without_method(runs: List[dict]) -> List[str]:
    """Each run's cell by its resolved values, the method and its options left out."""
    return [" ".join(f"{k}={v}" for k, v in sorted(keys.items()) if k != "method")
            for keys in cell_keys(runs)]


def paired(dirs, a: str = "bl", b: str = "lw") -> pd.DataFrame:
    """Runs of methods a and b matched on everything but the method (mean over seeds)."""
    runs = completed(dirs)
    rows = [{"cell": c, "method": r["choices"].get("method"), "acc": 100 * r["summary"]["test_acc"]}
            for r, c in zip(runs, _cells_without_method(runs))]
    df = pd.DataFrame(rows).groupby(["cell", "method"])["acc"].mean().unstack()
    if a not in df or b not in df:
        raise AnalysisError(f"grid needs runs of method={a},{b} over the same grid "
                            f"(experiment=reinit_appf_cifar); found methods {', '.join(df.columns)}")
    return df[[a, b]].dropna()


def plot_grid(dirs, out) -> Path:
    """Figure 7: test accuracy of BL (x) against LW (y) over a hyperparameter grid."""
    df = paired(dirs)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(df["bl"], df["lw"], color=colours(["lw"], True)["lw"], label="one grid cell")
    lim = [min(df.min()) - 1, max(df.max()) + 1]
    ax.plot(lim, lim, "k--", lw=0.7, label="equal accuracy")
    ax.set(xlim=lim, ylim=lim, xlabel="BL test accuracy [%]", ylabel="LW test accuracy [%]")
    legend_outside(ax)
    titled(fig, f"{PAPER}, Fig. 7: BL against LW over a hyperparameter grid", completed(dirs))
    return save(fig, out)


def ablation(dirs) -> pd.DataFrame:
    """Appendix E: share of cells in which full LW beats each ablated variant. A run's variant
    is the LW options it ran with that differ from the experiment's (`options_changed`);
    runs of other methods are left out."""
    runs = [r for r in completed(dirs) if r.get("choices", {}).get("method") == "lw"]
    if not runs:
        raise AnalysisError(f"ablation needs runs of method=lw (experiment=reinit_ablation); "
                            f"found {experiments(completed(dirs))}")
    rows = []
    for r, c in zip(runs, _cells_without_method(runs)):
        changed = options_changed(r)
        rows.append({"cell": c, "acc": r["summary"]["test_acc"],
                     "variant": " ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "lw"})
    wide = pd.DataFrame(rows).groupby(["cell", "variant"])["acc"].mean().unstack()
    if "lw" not in wide or len(wide.columns) < 2:
        raise AnalysisError("ablation needs runs of full LW (the experiment's own options) beside "
                            "variants with other options, e.g. method.rescale=true,false; found "
                            + ", ".join(map(str, wide.columns)))
    pairs = {v: wide[["lw", v]].dropna() for v in wide.columns if v != "lw"}
    return pd.DataFrame([{"variant": v, "cells": len(d), "P(LW better)": float((d["lw"] > d[v]).mean())}
                         for v, d in pairs.items()])


# -- command line ---------------------------------------------------------------------------------
FIGURES = {"budget": plot_budget, "margins": plot_margins, "perturb": plot_perturb,
           "ratio": plot_ratio, "grid": plot_grid}


def command(a) -> None:
    """One command of `main`; raises AnalysisError on input it cannot use."""
    if a.what in ("table2", "table3", "tree"):
        paper = a.paper or not a.dirs
        if paper and a.what == "table2":
            raise AnalysisError("table2 puts runs beside the paper's Table 2: give the sweep "
                                "directories of the reinit_table2_* runs")
        df = paper_table2() if paper else results_table2(a.dirs)
        source = "the paper's Table 2" if paper else f"the runs under {', '.join(a.dirs)}"
        if a.what == "table2":
            print(format_table2(df))
        elif a.what == "table3":
            print(format_table3(table3(df), source))
        else:
            plot_tree(df, figure_path(a.out, a.dirs, "reinit_tree" + ("_paper" if paper else "")),
                      source)
        return
    if not a.dirs:
        raise AnalysisError(f"{a.what} needs run or sweep directories")
    if a.what == "ablation":
        print(ablation(a.dirs).to_markdown(index=False))
        return
    FIGURES[a.what](a.dirs, figure_path(a.out, a.dirs, f"reinit_{a.what}"))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.analysis.reinit",
                                description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["table2", "table3", "tree", *FIGURES, "ablation"])
    p.add_argument("dirs", nargs="*", help="run or sweep directories")
    p.add_argument("--paper", action="store_true",
                   help="table3 / tree: the paper's Table 2 numbers (the default without DIR)")
    p.add_argument("--out", default=None, help="figure file (default: DIR/plots/reinit_<what>.png)")
    a = p.parse_args(argv)
    return cli(lambda: command(a))


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
