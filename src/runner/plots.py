"""Line plots of per-epoch metrics from run directories, and the gallery of every figure.

    python -m runner.plots DIR [DIR ...] --y test_acc --hue method [--ref NAME=VALUE] [--out FILE]
    python -m runner.plots gallery OUT

The x axis is the epoch counted across all phases of a run, so a task change or a sequence of
continual chunks reads left to right; dotted vertical lines mark phase boundaries. One line per
value of `--hue` (`method`: each method with the options that set its runs apart), mean over its
runs with a shaded standard deviation, `n` the number of runs; every other key that varies
between the runs (`runner.tables.cell_keys`) gets its own panel, so nothing is averaged over a
swept value. Accuracies are in percent where the experiment prints percent. The figure goes to
`DIR/plots/plots_<y>.png` (the first DIR) unless `--out` names a file. `gallery` draws every
figure the project can draw offline into OUT (`runner.analysis.gallery`).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import pandas as pd

from runner.analysis.common import (AnalysisError, cli, colours, completed, figure_path, marker,
                                    key_words, method_name, method_rank, metric_label, metrics, percent, save,
                                    titled, value)
from runner.tables import cell_keys


def hue_labels(runs: Sequence[dict], hue: str) -> List[str]:
    """Each run's line: its method label (with the options that set it apart) for `method`, else
    its value of `hue`; one line `--hue` refuses a key no run has."""
    def of(r: dict):
        v = value(r, hue)
        return r.get(hue) if v is None and hue == "seed" else v
    if not any(hue in r.get("choices", {}) or of(r) is not None for r in runs):
        choices = sorted({k for r in runs for k in r.get("choices", {})})
        raise AnalysisError(f"--hue {hue!r} is neither a group choice nor a config key of these "
                            f"runs; group choices: {', '.join(choices)}; or a dotted config key "
                            "such as optim.lr (python -m runner --cfg job lists them)")
    if hue == "method":
        return [method_name(k["method"]) for k in cell_keys(runs)]
    return [str(of(r)) for r in runs]


def panel_labels(runs: Sequence[dict], hue: str) -> List[str]:
    """Each run's panel: the keys other than `hue` whose values differ between the runs."""
    keys = cell_keys(runs)
    if hue != "method":  # a method option as hue: the panels go by the method alone
        for k in keys:
            k["method"] = method_name(k["method"].partition(" (")[0] if hue.startswith("method.")
                                      else k["method"])
    names = [n for n in dict.fromkeys(n for k in keys for n in k) if n != hue
             and not (hue == "method" and n == "method")]
    varying = [n for n in names if len({k.get(n, "") for k in keys}) > 1]
    return [", ".join(f"{key_words(n)} = {k.get(n, '')}" for n in varying) for k in keys]


def load_curves(runs: Iterable[dict], y: str, hue: str,
                scale: float = 1.0) -> Tuple[pd.DataFrame, List[float]]:
    """Rows (run, hue, panel, x, phase, y) of every evaluated epoch, and the x of the phase
    boundaries.

    x is a row's epoch plus the epochs of the phases before it (each phase's last epoch is
    evaluated, so its last row holds its length); a boundary lies before a phase's first epoch.
    """
    runs = list(runs)
    frames, bounds = [], set()
    for i, (r, h, p) in enumerate(zip(runs, hue_labels(runs, hue), panel_labels(runs, hue))):
        m = metrics(r, y)
        lengths = m.groupby("phase", sort=False)["epoch"].max()
        offsets = lengths.cumsum() - lengths
        m["x"] = m["epoch"] + m["phase"].map(offsets)
        bounds.update(float(o) + 0.5 for o in offsets.iloc[1:])
        m = m[["x", "phase", y]].dropna().rename(columns={y: "y"})
        m["y"] *= scale
        m["run"], m["hue"], m["panel"] = i, h, p
        frames.append(m)
    return pd.concat(frames, ignore_index=True), sorted(bounds)


def _ordered(labels: Iterable[str], methods: bool) -> List[str]:
    labels = list(dict.fromkeys(labels))
    if methods:
        return sorted(labels, key=method_rank)
    try:
        return sorted(labels, key=float)
    except ValueError:
        return labels


def draw(ax, runs: List[dict], y: str = "test_acc", hue: str = "method",
         refs: Optional[Dict[str, float]] = None, title: str = "",
         colors: Optional[Dict[str, str]] = None, df: Optional[pd.DataFrame] = None,
         bounds: Sequence[float] = ()) -> None:
    """`y` against the cumulative epoch on `ax`, one line per value of `hue` (mean over its runs,
    shaded std, `n` runs)."""
    pct = percent(runs, y)
    if df is None:
        df, bounds = load_curves(runs, y, hue, 100.0 if pct else 1.0)
    order = _ordered(df["hue"], hue == "method")
    colors = colors or colours(order, hue == "method")
    for name in order:
        g = df[df.hue == name]
        stats = g.groupby("x")["y"].agg(["mean", "std"]).fillna({"std": 0.0})
        ax.plot(stats.index, stats["mean"], color=colors[name], marker=marker(len(stats)),
                markersize=3, label=f"{name} (n={g['run'].nunique()})")
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=colors[name], alpha=0.2, linewidth=0)
    for j, (name, v) in enumerate((refs or {}).items()):
        ax.axhline(v * (100.0 if pct else 1.0), linestyle="--",
                   color=colors.get(name, f"C{(len(colors) + j) % 10}"), linewidth=1,
                   label=f"{name} (paper)")
    for x in bounds:
        ax.axvline(x, linestyle=":", color="grey", linewidth=0.8)
    ax.set_xlabel("epoch (counted across phases)")
    ax.set_ylabel(metric_label(y, pct))
    ax.set_title(title, fontsize=9)


def default_title(runs: Sequence[dict]) -> str:
    """The runs' source (paper, table or figure), else their experiments' descriptions."""
    sources = list(dict.fromkeys(str(value(r, "paper.source") or value(r, "description") or
                                     r.get("choices", {}).get("experiment", "runs")) for r in runs))
    return "; ".join(sources[:2]) + (f" and {len(sources) - 2} more" if len(sources) > 2 else "")


def curves(run_dirs, y: str = "test_acc", hue: str = "method",
           refs: Optional[Dict[str, float]] = None, out: Optional[str] = None,
           title: str = ""):
    """Plot `y` of the completed runs under `run_dirs`, one panel per combination of the other
    keys that vary; save to `out` (default: DIR/plots/)."""
    run_dirs = list(run_dirs)
    runs = completed(run_dirs)
    pct = percent(runs, y)
    df, bounds = load_curves(runs, y, hue, 100.0 if pct else 1.0)
    panels = list(dict.fromkeys(df["panel"]))
    colors = colours(_ordered(df["hue"], hue == "method"), hue == "method")
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False,
                             sharey=True)
    for ax, panel in zip(axes.flat, panels):
        sub = df[df.panel == panel]
        draw(ax, runs, y, hue, refs, panel, colors, sub, bounds)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles: Dict[str, list] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label.split(" (n=")[0], [h, set()])[1].add(label)
    labels = [next(iter(ls)) if len(ls) == 1 else f"{name} (n per panel)"
              for name, (_, ls) in handles.items()]
    if len(panels) > 1:  # the same n in every panel: "each"
        labels = [lb.replace(")", " each)") if "(n=" in lb else lb for lb in labels]
    fig.legend([h for h, _ in handles.values()], labels, loc="upper left",
               bbox_to_anchor=(1.0, 0.92), fontsize=8,
               title=key_words(hue) if hue != "method" else None)
    titled(fig, title or default_title(runs), runs)
    name = f"plots_{y}" + ("" if hue == "method" else f"_by_{hue}")
    return save(fig, figure_path(out, run_dirs, name))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gallery"]:
        from runner.analysis.gallery import main as gallery
        return gallery(argv[1:])
    p = argparse.ArgumentParser(prog="python -m runner.plots", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories (or: gallery OUT)")
    p.add_argument("--y", default="test_acc", help="a column of metrics.csv")
    p.add_argument("--hue", default="method", help="config group or config key separating lines")
    p.add_argument("--ref", action="append", default=[],
                   help="NAME=VALUE dashed reference line, VALUE in the units of metrics.csv")
    p.add_argument("--title", default="", help="the figure's title (default: the runs' source)")
    p.add_argument("--out", default=None, help="figure file (default: DIR/plots/plots_<y>.png)")
    a = p.parse_args(argv)
    refs = {k: float(v) for k, _, v in (r.partition("=") for r in a.ref)}
    return cli(lambda: curves(a.dirs, a.y, a.hue, refs, a.out, a.title))


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
