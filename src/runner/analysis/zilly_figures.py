"""The figures of Zilly et al. 2021 (appendix Figs. 3-7) from run directories, as PNG files.

    python -m runner.analysis.zilly_figures boxplot DIR... --by optim.weight_decay
    python -m runner.analysis.zilly_figures pareto  DIR... --by experiment
    python -m runner.analysis.zilly_figures pairs   DIR... --by optim.weight_decay
    python -m runner.analysis.zilly_figures samples DIR... --x phases.0.subset.n

Each writes `DIR/plots/zilly_<kind>[_<metric>].png` (the first DIR), or `--out FILE`.

- boxplot (Fig. 5): the final value of `--metric` per cell over seeds; a cell is a combination
  of the `--by` keys (config paths or group choices; default: the sweep's overrides).
- pareto (Fig. 6): final test loss against the frozen filters after the first phase (left) and
  the Fisher score at the end (right; needs the probe's `fisher_samples`); the non-dominated runs
  (fewer frozen filters / higher score, lower loss) are joined.
- pairs (Fig. 4): every `pair/<layer>/<unit>` column of metrics.csv (the probe's `pairs`) over
  the epochs, one panel per cell (first seed).
- samples (Fig. 7): the final `--metric` against the config value `--x`, one line per `--hue`.
Fig. 3 (frozen filters per epoch across weight decay) is a line plot of metrics.csv:
    python -m runner.plots DIR... --y frozen_filters --hue optim.weight_decay
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from runner.analysis.common import (AnalysisError, cell_pairs, cells, cli, colours,  # noqa: E402
                                    completed, figure_path, final, how_to_record, key_words,
                                    legend_outside, marker, method_name, method_rank, metric_label,
                                    metrics, save, titled, value)


PAPER = "Zilly et al. 2021"


def _words(pair: str) -> str:
    """`method=dirac_reset` -> `Dirac reset`; `optim.weight_decay=0.001` -> `weight decay = 0.001`."""
    key, _, v = pair.partition("=")
    return method_name(v) if key == "method" else f"{key_words(key)} = {v}"


def boxplot_figure(groups: Dict[Tuple[str, ...], List[float]], metric: str, title: str = "",
                   runs: Sequence[dict] = (), min_box: int = 5):
    """One box per cell (its runs as points where fewer than `min_box`). Tick labels name what
    differs between cells, one `key = value` a line; what all cells share goes into the title."""
    shared = set.intersection(*map(set, groups))
    first = next(iter(groups))
    labels = ["\n".join([_words(p) for p in k if p not in shared] or ["(all)"]) + f"\n(n={len(v)})"
              for k, v in groups.items()]
    width = sum(0.3 + 0.07 * max(map(len, label.split("\n"))) for label in labels)
    fig, ax = plt.subplots(figsize=(max(4.0, width), 4))
    for i, values in enumerate(groups.values(), start=1):
        if len(values) >= min_box:
            ax.boxplot([values], positions=[i], widths=0.5)
        else:  # too few runs for quartiles: the runs themselves and their mean
            ax.plot([i] * len(values), values, "o", color="C0", markersize=4)
            ax.plot([i - 0.2, i + 0.2], [sum(values) / len(values)] * 2, color="C1")
    ax.set_xticks(range(1, len(groups) + 1), labels, fontsize=7)
    ax.set_xlim(0.5, len(groups) + 0.5)
    ax.set_xlabel("cell (its runs differ only in the seed)")
    ax.set_ylabel(metric_label(metric) + " at the end")
    ax.set_title(", ".join(_words(p) for p in first if p in shared), fontsize=8)
    few = any(len(v) < min_box for v in groups.values())
    titled(fig, (title or f"{PAPER}, Fig. 5: final {metric_label(metric)} per cell")
           + (f" (points: cells of fewer than {min_box} runs, bar: their mean)" if few else ""),
           runs)
    return fig


def boxplot(run_dirs, by=None, metric="test_acc", out=None, title="") -> Path:
    groups: Dict[Tuple[str, ...], List[float]] = {}
    runs = completed(run_dirs)
    for r, pairs in zip(runs, cell_pairs(runs, by)):
        groups.setdefault(tuple(pairs), []).append(final(r, metric))
    fig = boxplot_figure(groups, metric, title, runs)
    return save(fig, figure_path(out, run_dirs, f"zilly_boxplot_{metric}"))


def front(xs: Sequence[float], ys: Sequence[float], larger_x: bool) -> List[int]:
    """Indices of the non-dominated points (lower y; smaller x, or larger with `larger_x`),
    ordered by x."""
    order = sorted(range(len(xs)), key=lambda i: (-xs[i] if larger_x else xs[i], ys[i]))
    keep, best = [], math.inf
    for i in order:
        if ys[i] < best:
            keep.append(i)
            best = ys[i]
    return sorted(keep, key=lambda i: xs[i])


def pareto(run_dirs, by=None, out=None, title="") -> Path:
    runs = completed(run_dirs)
    panels = [("frozen filters after the first task",
               lambda r: r["phases"][0].get("frozen_filters"), False),
              ("Fisher score (w = mu2 - mu1)", lambda r: r["phases"][-1].get("fisher"), True)]
    if not any(get(r) is not None for _, get, _ in panels for r in runs):
        raise AnalysisError(f"pareto needs frozen filters or Fisher scores in result.json, recorded "
                            f"by the FrozenProbe: {how_to_record('frozen_filters', runs[0])}, or "
                            f"set its fisher_samples (e.g. experiment=zilly_warm_start)")
    panels = [p for p in panels if any(p[1](r) is not None for r in runs)]  # what was recorded
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    names = [", ".join(_words(p) for p in c.split(", ")) for c in cells(runs, by)]
    colour = colours(names, False)
    for ax, (label, get, larger) in zip(axes[0], panels):
        pts = [(get(r), final(r, "test_loss"), c) for r, c in zip(runs, names) if get(r) is not None]
        for name in dict.fromkeys(p[2] for p in pts):
            sel = [p for p in pts if p[2] == name]
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], color=colour[name], s=14,
                       label=name)
        idx = front([p[0] for p in pts], [p[1] for p in pts], larger)
        ax.plot([pts[i][0] for i in idx], [pts[i][1] for i in idx], "k--", linewidth=1,
                label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("final test loss (cross-entropy)")
    legend_outside(axes[0][-1])
    titled(fig, title or f"{PAPER}, Fig. 6: final test loss against frozen filters / Fisher score",
           runs)
    return save(fig, figure_path(out, run_dirs, "zilly_pareto"))


def pairs(run_dirs, by=None, out=None, title="") -> Path:
    first: Dict[str, dict] = {}
    runs = completed(run_dirs)
    for r, c in zip(runs, cells(runs, by)):
        first.setdefault(c, r)
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 3.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], first.items()):
        m = metrics(r)
        cols = [c for c in m.columns if c.startswith("pair/")]
        if not cols:
            raise AnalysisError(f"{r['_dir']} has no pair/ columns in metrics.csv "
                                f"({how_to_record('pair/', r)})")
        for c in cols:
            ax.plot(range(1, len(m) + 1), m[c], linewidth=0.7, alpha=0.7, marker=marker(len(m)),
                    markersize=3)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("epoch (counted across phases)")
        ax.set_ylabel("row norm + column norms (symlog)")
        ax.set_title(", ".join(_words(p) for p in name.split(", ")) + f" (seed {r.get('seed')})",
                     fontsize=8)
    titled(fig, title or f"{PAPER}, Fig. 4: norms of weight pairs over training, one line a pair",
           list(first.values()))
    return save(fig, figure_path(out, run_dirs, "zilly_pairs"))


def samples(run_dirs, x="phases.0.subset.n", hue="method", metric="test_acc", out=None,
            title="") -> Path:
    runs = completed(run_dirs)
    rows = [{"x": value(r, x), "hue": str(value(r, hue)), "y": final(r, metric)} for r in runs]
    df = pd.DataFrame(rows).dropna(subset=["x"])
    if df.empty:
        raise AnalysisError(f"no run under {', '.join(map(str, run_dirs))} sets {x} (--x names the "
                            f"config key on the x axis, e.g. experiment=zilly_sample_size's "
                            f"phases.0.subset.n)")
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = hue == "method"
    names = sorted(df["hue"].unique(), key=method_rank) if methods else list(df["hue"].unique())
    colour = colours(names, methods)
    for name in names:
        g = df[df.hue == name]
        s = g.groupby("x")["y"].agg(["mean", "std", "size"]).fillna({"std": 0.0}).sort_index()
        ax.errorbar(s.index, s["mean"], yerr=s["std"], color=colour[name], marker="o", capsize=3,
                    label=(method_name(name) if methods else f"{key_words(hue)} = {name}")
                    + f" (n={int(s['size'].min())} per point)")
    ax.set_xscale("log")
    ticks = sorted(df["x"].unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(key_words(x) + " (log scale)")
    ax.set_ylabel(metric_label(metric) + " at the end")
    legend_outside(ax)
    titled(fig, title or f"{PAPER}, Fig. 7: {metric_label(metric)} against the sample size", runs)
    return save(fig, figure_path(out, run_dirs, f"zilly_samples_{metric}"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.analysis.zilly_figures",
                                description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["boxplot", "pareto", "pairs", "samples"])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--by", nargs="*", default=None, help="keys defining a cell")
    p.add_argument("--metric", default="test_acc")
    p.add_argument("--x", default="phases.0.subset.n", help="samples: the x-axis config key")
    p.add_argument("--hue", default="method", help="samples: the key separating lines")
    p.add_argument("--title", default="")
    p.add_argument("--out", default=None, help="figure file (default: DIR/plots/zilly_<kind>...png)")
    a = p.parse_args(argv)
    if a.kind == "boxplot":
        return cli(lambda: boxplot(a.dirs, a.by, a.metric, a.out, a.title))
    if a.kind == "pareto":
        return cli(lambda: pareto(a.dirs, a.by, a.out, a.title))
    if a.kind == "pairs":
        return cli(lambda: pairs(a.dirs, a.by, a.out, a.title))
    return cli(lambda: samples(a.dirs, a.x, a.hue, a.metric, a.out, a.title))


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
