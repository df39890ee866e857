"""The figures of Zilly et al. 2021 (appendix Figs. 3-7) from run directories, as PNG files.

    python -m runner.analysis.zilly_figures boxplot DIR... --by optim.weight_decay --out fig5.png
    python -m runner.analysis.zilly_figures pareto  DIR... --by experiment --out fig6.png
    python -m runner.analysis.zilly_figures pairs   DIR... --by optim.weight_decay --out fig4.png
    python -m runner.analysis.zilly_figures samples DIR... --x phases.0.subset.n --out fig7.png

- boxplot (Fig. 5): the final value of `--metric` per cell over seeds; a cell is a combination
  of the `--by` keys (config paths or group choices; default: the sweep's overrides).
- pareto (Fig. 6): final test loss against the frozen filters after the first phase (left) and
  the Fisher score at the end (right; needs the probe's `fisher_samples`); the non-dominated runs
  (fewer frozen filters / higher score, lower loss) are joined.
- pairs (Fig. 4): every `pair/<layer>/<unit>` column of metrics.csv (the probe's `pairs`) over
  the epochs, one panel per cell (first seed).
- samples (Fig. 7): the final `--metric` against the config value `--x`, one line per `--hue`.
Fig. 3 (frozen filters per epoch across weight decay) is a line plot of metrics.csv:
    python -m runner.plots DIR... --y frozen_filters --hue optim.weight_decay --out fig3.png
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from runner.report import IGNORED  # noqa: E402
from runner.results import METRICS_FILE, load_results  # noqa: E402


def value(result: dict, key: str):
    """A group choice (`method`) or a dotted config path (`phases.0.subset.n`) of a run."""
    if key in result.get("choices", {}):
        return result["choices"][key]
    node = result.get("config", {})
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def cell(result: dict, by: Optional[Sequence[str]]) -> str:
    """The label of a run's cell: the `by` values, else its overrides other than the seed."""
    if by:
        return ", ".join(f"{k}={value(result, k)}" for k in by)
    pairs = [o for o in result.get("overrides", []) if o.lstrip("+~").split("=")[0].split(".")[0]
             not in IGNORED]
    return ", ".join(pairs) or result.get("name", "run")


def completed(run_dirs) -> List[dict]:
    runs = [r for r in load_results(run_dirs) if r.get("status") == "completed" and r["phases"]]
    if not runs:
        raise ValueError("no completed runs under the given directories")
    return runs


def final(result: dict, metric: str) -> float:
    v = result["phases"][-1]["end"].get(metric, result["phases"][-1].get(metric))
    return float(v) if v is not None else math.nan


def _save(fig, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def boxplot(run_dirs, by=None, metric="test_acc", out="fig5.png", title="") -> Path:
    groups: Dict[str, List[float]] = {}
    for r in completed(run_dirs):
        groups.setdefault(cell(r, by), []).append(final(r, metric))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(groups)), 4))
    ax.boxplot(list(groups.values()))
    ax.set_xticks(range(1, len(groups) + 1), [f"{k}\n(n={len(v)})" for k, v in groups.items()],
                  rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(title)
    return _save(fig, out)


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


def pareto(run_dirs, by=None, out="fig6.png", title="") -> Path:
    runs = completed(run_dirs)
    panels = [("frozen filters after the first task",
               lambda r: r["phases"][0].get("frozen_filters"), False),
              ("Fisher score (w = mu2 - mu1)", lambda r: r["phases"][-1].get("fisher"), True)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (label, get, larger) in zip(axes, panels):
        pts = [(get(r), final(r, "test_loss"), cell(r, by)) for r in runs if get(r) is not None]
        if not pts:
            ax.set_title(f"{label}: not recorded")
            continue
        for i, name in enumerate(dict.fromkeys(p[2] for p in pts)):
            sel = [p for p in pts if p[2] == name]
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], color=f"C{i}", s=14, label=name)
        idx = front([p[0] for p in pts], [p[1] for p in pts], larger)
        ax.plot([pts[i][0] for i in idx], [pts[i][1] for i in idx], "k--", linewidth=1,
                label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("final test loss")
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return _save(fig, out)


def pairs(run_dirs, by=None, out="fig4.png", title="") -> Path:
    first: Dict[str, dict] = {}
    for r in completed(run_dirs):
        first.setdefault(cell(r, by), r)
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 3.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], first.items()):
        m = pd.read_csv(Path(r["_dir"]) / METRICS_FILE)
        cols = [c for c in m.columns if c.startswith("pair/")]
        if not cols:
            raise ValueError(f"{r['_dir']} has no pair/ columns (set the probe's `pairs`)")
        for c in cols:
            ax.plot(range(1, len(m) + 1), m[c], linewidth=0.7, alpha=0.7)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("epoch (all phases)")
        ax.set_ylabel("row norm + column norms")
        ax.set_title(name, fontsize=8)
    fig.suptitle(title)
    return _save(fig, out)


def samples(run_dirs, x="phases.0.subset.n", hue="method", metric="test_acc", out="fig7.png",
            title="") -> Path:
    rows = [{"x": value(r, x), "hue": str(value(r, hue)), "y": final(r, metric)}
            for r in completed(run_dirs)]
    df = pd.DataFrame(rows).dropna(subset=["x"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, g) in enumerate(df.groupby("hue", sort=False)):
        s = g.groupby("x")["y"].agg(["mean", "std"]).fillna({"std": 0.0}).sort_index()
        ax.errorbar(s.index, s["mean"], yerr=s["std"], color=f"C{i}", marker="o", capsize=3,
                    label=name)
    ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, out)


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
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    out = a.out or f"{a.kind}.png"
    try:
        if a.kind == "boxplot":
            path = boxplot(a.dirs, a.by, a.metric, out, a.title)
        elif a.kind == "pareto":
            path = pareto(a.dirs, a.by, out, a.title)
        elif a.kind == "pairs":
            path = pairs(a.dirs, a.by, out, a.title)
        else:
            path = samples(a.dirs, a.x, a.hue, a.metric, out, a.title)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
