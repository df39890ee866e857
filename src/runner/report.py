"""Result tables: mean ± std over seeds, grouped by what a sweep varied, with the paper's value.

    python -m runner.report DIR [DIR ...] [--metric test_acc] [--out PREFIX]

rebuilds the table of any set of run or sweep directories; at the end of every multirun the same
table is printed and written as `table.md` and `table.csv` in the sweep directory.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
from hydra.experimental.callback import Callback

from runner.results import load_results

LEAD = ("experiment", "method")  # config-group choices shown first in every table
IGNORED = {"seed", "device", "progress", "data_root", "threads", "logger"}  # swept keys that do not define a cell


def _override_pairs(overrides: List[str]) -> Dict[str, str]:
    pairs = {}
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key.split(".")[0] not in IGNORED and not key.startswith("hydra"):
            pairs[key] = value
    return pairs


def table_from_results(results: List[Dict[str, Any]], metric: Optional[str] = None) -> pd.DataFrame:
    """One row per cell (runs that differ only in seed): n, mean, std, paper, statuses."""
    rows = []
    for r in results:
        summary = r.get("summary") or {}
        m = metric or next(iter(summary), "test_acc")
        row = {k: r.get("choices", {}).get(k, "") for k in LEAD}
        row.update(_override_pairs(r.get("overrides", [])))
        row.update(status=r.get("status"), value=summary.get(m), paper=r.get("paper_value"),
                   metric=m)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    keys = [c for c in df.columns if c not in ("status", "value", "paper", "metric")]
    df[keys] = df[keys].fillna("")

    def cell(g: pd.DataFrame) -> pd.Series:
        done = g[g.status == "completed"]["value"].astype(float)
        paper = g["paper"].dropna()
        return pd.Series({
            "metric": g["metric"].iloc[0],
            "n": int(done.notna().sum()),
            "mean": done.mean() if len(done) else math.nan,
            "std": done.std(ddof=1) if len(done) > 1 else math.nan,
            "paper": float(paper.iloc[0]) if len(paper) else math.nan,
            "diverged": int((g.status == "diverged").sum()),
            "failed": int((g.status.isin(["failed", "running"])).sum()),
        })

    return df.groupby(keys, sort=False, dropna=False).apply(cell, include_groups=False).reset_index()


def format_table(df: pd.DataFrame, metric: Optional[str] = None) -> str:
    """Markdown: `mean ± std` per cell, the paper's value beside it where known."""
    if df.empty:
        return "(no results)"
    out = df.drop(columns=["mean", "std", "paper", "metric"]).copy()
    name = metric or df["metric"].iloc[0]
    out.insert(len(out.columns) - 3, name, [
        "—" if math.isnan(m) else (f"{m:.4f}" if math.isnan(s) else f"{m:.4f} ± {s:.4f}")
        for m, s in zip(df["mean"], df["std"])])
    out.insert(len(out.columns) - 2, "paper", ["" if math.isnan(p) else f"{p:.4f}" for p in df["paper"]])
    for col in ("diverged", "failed"):
        if not out[col].any():
            out = out.drop(columns=col)
    return out.to_markdown(index=False)


def write_tables(df: pd.DataFrame, prefix: Path, metric: Optional[str] = None) -> str:
    text = format_table(df, metric)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.md").write_text(text + "\n")
    df.to_csv(f"{prefix}.csv", index=False)
    return text


class AggregateOnMultirunEnd(Callback):
    """Hydra callback: the sweep's table, printed and written next to its runs."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        results = load_results([sweep])
        df = table_from_results(results)
        print(write_tables(df, sweep / "table"))
        print(f"table written to {sweep / 'table.md'} and {sweep / 'table.csv'}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    p.add_argument("--metric", default=None, help="summary metric (default: each run's own)")
    p.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.csv")
    args = p.parse_args(argv)
    missing = [d for d in args.dirs if not Path(d).exists()]
    if missing:
        print(f"error: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    results = load_results(args.dirs)
    if not results:
        print(f"error: no result.json under {', '.join(args.dirs)}", file=sys.stderr)
        return 2
    df = table_from_results(results, args.metric)
    print(write_tables(df, Path(args.out), args.metric) if args.out else format_table(df, args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
