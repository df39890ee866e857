"""Line plots of per-epoch metrics from run directories (mean over seeds, shaded std).

    python -m runner.plots DIR [DIR ...] --y test_acc --hue method --out fig.png [--ref NAME=VALUE]

The x axis is the epoch counted across all phases of a run, so a task change or a sequence of
continual chunks reads left to right; dotted vertical lines mark phase boundaries.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from runner.results import METRICS_FILE, load_results  # noqa: E402


def _label(result: dict, key: str) -> str:
    if key in result.get("choices", {}):
        return result["choices"][key]
    node = result.get("config", {})
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(node)


def load_curves(run_dirs: Iterable, y: str, hue: str) -> pd.DataFrame:
    """One row per (run, epoch) with a finite `y`: columns hue, seed, x, phase, y."""
    frames = []
    for r in load_results(run_dirs):
        path = Path(r["_dir"]) / METRICS_FILE
        if r.get("status") != "completed" or not path.exists():
            continue
        m = pd.read_csv(path)
        m["x"] = range(1, len(m) + 1)
        m = m[["x", "phase", y]].dropna().rename(columns={y: "y"})
        m["hue"], m["seed"] = _label(r, hue), r.get("seed")
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves(run_dirs: Iterable, y: str = "test_acc", hue: str = "method",
           refs: Optional[Dict[str, float]] = None, out: str = "fig.png", title: str = "",
           ax=None) -> Path:
    """Plot `y` against the cumulative epoch, one line per value of `hue`; save to `out`."""
    df = load_curves(run_dirs, y, hue)
    if df.empty:
        raise ValueError(f"no completed runs with metric {y!r} under the given directories")
    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(6, 4))
    colors = {}
    for i, (name, g) in enumerate(df.groupby("hue", sort=False)):
        stats = g.groupby("x")["y"].agg(["mean", "std"]).fillna({"std": 0.0})
        color = colors[name] = f"C{i}"
        ax.plot(stats.index, stats["mean"], color=color, label=f"{name} (n={g.seed.nunique()})")
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=color, alpha=0.2, linewidth=0)
    for j, (name, value) in enumerate((refs or {}).items()):
        ax.axhline(value, linestyle="--", color=colors.get(name, f"C{len(colors) + j}"),
                   linewidth=1, label=f"{name} (paper)")
    first = df.groupby("phase")["x"].min().sort_index()
    for x in first.iloc[1:]:
        ax.axvline(x - 0.5, linestyle=":", color="grey", linewidth=0.8)
    ax.set_xlabel("epoch (all phases)")
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend(fontsize=7)
    out_path = Path(out)
    if own:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.tight_layout()
        ax.figure.savefig(out_path, dpi=120)
        plt.close(ax.figure)
    return out_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.plots", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--y", default="test_acc")
    p.add_argument("--hue", default="method", help="config group or config key separating lines")
    p.add_argument("--ref", action="append", default=[], help="NAME=VALUE dashed reference line")
    p.add_argument("--title", default="")
    p.add_argument("--out", default="fig.png")
    a = p.parse_args(argv)
    refs = {k: float(v) for k, _, v in (r.partition("=") for r in a.ref)}
    try:
        print(curves(a.dirs, a.y, a.hue, refs, a.out, a.title))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
