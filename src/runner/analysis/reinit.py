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
import sys
from itertools import permutations
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from runner.analysis.common import (AnalysisError, cli, colours, completed, experiments,  # noqa: E402
                                    figure_path, legend_outside, method_name, method_rank,
                                    options_changed, save, titled, value)
from runner.tables import cell_keys  # noqa: E402

METHODS = ["bl", "welsr", "dsd", "wels", "fc", "lw"]
LETTERS = dict(zip(METHODS, "BRDWFL"))
ARCHS = {"scnn": "scnn", "vgg16_ln": "vgg16", "mobilenet_v1": "mobilenet", "resnet50": "resnet50"}
SETTINGS = {"none": (0, 0.0), "aug": (1, 0.0), "aug_dropout": (1, 0.25)}  # augmentation, dropout
DATASETS = {  # Table 4: training examples, classes
    "oxford_pets": (3680, 37), "stanford_dogs": (12000, 120), "cars196": (8144, 196),
    "caltech101": (3060, 101), "cassava": (5656, 4), "cub200_2010": (3000, 200)}
PAPER_TABLE2 = Path(__file__).parent / "data" / "reinit_table2.csv"
PAPER = "Alabdulmohsin et al. 2021"


# -- Table 2 ------------------------------------------------------------------------------------
def paper_table2() -> pd.DataFrame:
    return pd.read_csv(PAPER_TABLE2, comment="#")


def results_table2(dirs: Iterable) -> pd.DataFrame:
    """Our Table 2 rows from run directories: mean and std [%] over seeds of each cell."""
    runs = completed(dirs, "runs of the reinit_table2_* experiments")
    other = [r for r in runs if value(r, "dataset.name") not in DATASETS
             or value(r, "model") not in ARCHS or value(r, "method") not in METHODS]
    if other:
        raise AnalysisError(f"Table 2 needs runs of the reinit_table2_* experiments (methods "
                            f"{', '.join(METHODS)} on {', '.join(DATASETS)}); {other[0]['_dir']} "
                            f"is a run of {experiments(other)}")
    df = pd.DataFrame([{"setting": value(r, "tuned.setting") or "none",
                        "dataset": value(r, "dataset.name"), "arch": ARCHS[value(r, "model")],
                        "method": value(r, "method"), "acc": 100 * r["summary"]["test_acc"]}
                       for r in runs])
    g = df.groupby(["setting", "dataset", "arch", "method"], sort=False)["acc"]
    return g.agg(acc="mean", std="std").reset_index()


def format_table2(ours: pd.DataFrame, paper: Optional[pd.DataFrame] = None) -> str:
    """Markdown: one row per (setting, dataset, arch), `ours (paper)` per method."""
    paper = paper_table2() if paper is None else paper
    key = ["setting", "dataset", "arch"]
    merged = ours.merge(paper, on=key + ["method"], how="left", suffixes=("", "_paper"))
    lines = ["| setting | dataset | arch | " + " | ".join(METHODS) + " |",
             "|---|---|---|" + "---|" * len(METHODS)]
    for cell, g in merged.groupby(key, sort=False):
        by = g.set_index("method")
        vals = []
        for m in METHODS:
            if m not in by.index:
                vals.append("")
                continue
            row = by.loc[m]
            std = "" if pd.isna(row["std"]) else f" ± {row['std']:.1f}"
            ref = "" if pd.isna(row["acc_paper"]) else f" ({row['acc_paper']:.1f})"
            vals.append(f"{row['acc']:.1f}{std}{ref}")
        lines.append("| " + " | ".join(map(str, cell)) + " | " + " | ".join(vals) + " |")
    return "\n".join(lines)


# -- Table 3: exact binomial (sign) test with Holm's step-down correction -----------------------
def sign_test(row: np.ndarray, col: np.ndarray) -> float:
    """One-sided exact binomial test that `col` beats `row` in matched experiments (ties dropped)."""
    wins, losses = int(np.sum(col > row)), int(np.sum(col < row))
    if wins + losses == 0:
        return 1.0
    return binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue


def holm(pvalues: List[float], alpha: float = 0.05) -> List[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level alpha."""
    order = np.argsort(pvalues, kind="stable")
    m, reject = len(pvalues), [False] * len(pvalues)
    for i, j in enumerate(order):
        if pvalues[j] > alpha / (m - i):
            break
        reject[j] = True
    return reject


def table3(df: pd.DataFrame, alpha: float = 0.05, family: str = "arch") -> pd.DataFrame:
    """p-values and marks of "column method beats row method", per architecture.

    Matched experiments are (setting, dataset) pairs. Mark '*' for p < alpha (the paper's star),
    'o' where the test survives Holm's correction (the paper's circle) over the ordered pairs
    of one architecture (`family='arch'`) or of all architectures (`'all'`).
    """
    wide = df.pivot_table(index=["arch", "setting", "dataset"], columns="method", values="acc")
    rows = []
    present = wide.index.get_level_values(0).unique()
    for arch in [a for a in ARCHS.values() if a in present] + [a for a in present
                                                                 if a not in ARCHS.values()]:
        w = wide.loc[arch]
        for r, c in permutations([m for m in METHODS if m in w.columns], 2):
            ok = w[[r, c]].dropna()
            rows.append({"arch": arch, "row": r, "col": c, "n": len(ok),
                         "p": sign_test(ok[r].to_numpy(), ok[c].to_numpy())})
    out = pd.DataFrame(rows)
    groups = out.groupby("arch").groups if family == "arch" else {"all": out.index}
    out["holm"] = False
    for idx in groups.values():
        out.loc[idx, "holm"] = holm(out.loc[idx, "p"].tolist(), alpha)
    out["mark"] = np.where(out["holm"], "o", np.where(out["p"] < alpha, "*", ""))
    out.attrs.update(alpha=alpha, family=family)
    return out


def format_table3(t3: pd.DataFrame, source: str = "the paper's Table 2") -> str:
    """Markdown in the paper's layout, with a title and a legend of the marks and letters."""
    alpha, family = t3.attrs.get("alpha", 0.05), t3.attrs.get("family", "arch")
    archs = list(dict.fromkeys(t3["arch"]))
    head = "| | " + " | ".join(f"{a} {LETTERS[m]}" for a in archs for m in METHODS) + " |"
    lines = [f"Table 3 (Alabdulmohsin et al. 2021): does the column method beat the row method? "
             f"Sign test over the matched (setting, dataset) cells of {source}.", "",
             head, "|---|" + "---|" * (len(archs) * len(METHODS))]
    marks = {(a, r, c): k for a, r, c, k in t3[["arch", "row", "col", "mark"]].itertuples(False)}
    for r in METHODS:
        cells = [marks.get((a, r, c), "") for a in archs for c in METHODS]
        lines.append(f"| {LETTERS[r]} | " + " | ".join(cells) + " |")
    scope = "within each architecture" if family == "arch" else "over all architectures"
    lines += ["", f"*: p < {alpha} (one-sided exact binomial test; ties dropped)",
              f"o: also significant after Holm's step-down correction over the ordered pairs "
              f"{scope} (family-wise level {alpha})",
              "letters: " + ", ".join(f"{LETTERS[m]} = {m.upper()}" for m in METHODS)]
    return "\n".join(lines)


# -- Figure 2: which method wins, as a decision tree ----------------------------------------------
def best_methods(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, dataset, arch) with its design features and best method."""
    idx = df.groupby(["setting", "dataset", "arch"], sort=False)["acc"].idxmax()
    best = df.loc[idx, ["setting", "dataset", "arch", "method"]].reset_index(drop=True)
    best["train_size"] = [DATASETS[d][0] for d in best["dataset"]]
    best["classes"] = [DATASETS[d][1] for d in best["dataset"]]
    best["augmentation"] = [SETTINGS[s][0] for s in best["setting"]]
    best["dropout"] = [SETTINGS[s][1] for s in best["setting"]]
    return best


def decision_tree(df: pd.DataFrame, max_depth: int = 4, min_leaf: int = 7, seed: int = 0):
    """The paper's tree (Sec. 3.2): features -> best method; returns (tree, feature names)."""
    from sklearn.tree import DecisionTreeClassifier

    best = best_methods(df)
    x = pd.concat([best[["train_size", "classes", "augmentation", "dropout"]],
                   pd.get_dummies(best["arch"], prefix="arch", dtype=float)], axis=1)
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=min_leaf, random_state=seed)
    return tree.fit(x.to_numpy(dtype=float), best["method"]), list(x.columns)


def node_labels(tree, names: List[str]) -> List[str]:
    """Per node of a fitted tree: its split as a condition (true: left), or, at a leaf, the best
    method and how many cells each method won there."""
    t, labels = tree.tree_, []
    for i in range(t.node_count):
        counts = dict(zip(tree.classes_, t.value[i][0] * t.n_node_samples[i]))
        won = sorted(((-int(round(n)), m) for m, n in counts.items() if round(n)))
        tally = ", ".join(f"{m.upper()} {-n}" for n, m in won)
        if t.children_left[i] == -1:  # the tree's prediction: the majority, ties to the first
            labels.append(f"best: {tree.classes_[np.argmax(t.value[i][0])].upper()}\n({tally})")
            continue
        name, cut = names[t.feature[i]], t.threshold[i]
        cond = f"arch \u2260 {name[5:]}" if name.startswith("arch_") else f"{name} \u2264 {cut:g}"
        labels.append(f"{cond}?\n{t.n_node_samples[i]} cells: {tally}")
    return labels


def plot_tree(df: pd.DataFrame, out, source: str = "the paper's Table 2") -> Path:
    """Figure 2: the decision tree, each leaf naming the methods that won its cells."""
    from sklearn.tree import plot_tree as sk_plot

    tree, names = decision_tree(df)
    fig, ax = plt.subplots(figsize=(16, 8))
    labels = node_labels(tree, names)
    for text in sk_plot(tree, feature_names=names, filled=True, ax=ax, impurity=False,
                        node_ids=True, label="none", fontsize=8):
        node = text.get_text().split("#")[1].split()[0] if "#" in text.get_text() else None
        if node is not None:
            text.set_text(labels[int(node)])
    ax.set_title(f"{PAPER}, Fig. 2: the best method per cell of {source}; "
                 f"left branch: condition true", fontsize=10)
    return save(fig, out)


# -- Figures 3-7 and the ablations ----------------------------------------------------------------
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
