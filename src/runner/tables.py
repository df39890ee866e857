"""Result tables built from runs' results: one row per cell and metric, with its statistics over
seeds, the paper's value and the runs that did not complete (`runner.report` formats them)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from runner.results import is_dead

LEAD = ("experiment", "method")  # config-group choices shown first in every table
IGNORED = {"seed", "device", "progress", "data_root", "threads", "logger", "resume"}  # swept keys that do not define a cell
NOT_DONE = ["diverged", "failed", "interrupted", "unfinished", "dead"]  # counted per cell
STATS = ["metric", "n", "mean", "std", "paper", "delta", "total"] + NOT_DONE
COUNTS = ["n"] + NOT_DONE


def _override_pairs(overrides: List[str]) -> Dict[str, str]:
    pairs = {}
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key.split(".")[0] not in IGNORED and not key.startswith("hydra"):
            pairs[key] = value
    return pairs


def _select(node: Any, key: str) -> Any:
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def key_value(result: Dict[str, Any], key: str) -> str:
    """A run's value of a layout key: its group choice, else its resolved config value, else the
    value its command line gave."""
    if key in result.get("choices", {}):
        return str(result["choices"][key])
    value = _select(result.get("config") or {}, key)
    if value is not None:
        return str(value)
    return _override_pairs(result.get("overrides", [])).get(key, "")


def paper_order(paper: Dict[str, Any], key: str) -> List[str]:
    """The values of `key` in the order the paper's table lists them (`paper.values` nests by
    `paper.by`); empty when the paper is not indexed by `key`."""
    by = list(paper.get("by") or [])
    if key not in by:
        return []
    level = [paper.get("values") or {}]
    for _ in range(by.index(key)):
        level = [v for node in level if isinstance(node, dict) for v in node.values()]
    order: List[str] = []
    for node in level:
        for k in node if isinstance(node, dict) else ():
            if str(k) not in order:
                order.append(str(k))
    return order


@dataclass
class Layout:
    """How a set of runs is tabulated: read from the `report` and `paper` nodes of their configs."""

    rows: List[str] = field(default_factory=list)
    cols: List[str] = field(default_factory=list)
    scale: float = 1.0
    digits: int = 4
    at: str = "end"
    caption: str = ""
    orders: Dict[str, List[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, results: List[Dict[str, Any]]) -> "Layout":
        configs = [r["config"] for r in results if r.get("config")]
        if not configs:
            return cls()
        cfg = configs[0]
        report, paper = cfg.get("report") or {}, cfg.get("paper") or {}
        rows, cols = list(report.get("rows") or []), list(report.get("cols") or [])
        at = report.get("at") or ("best" if (cfg.get("train") or {}).get("restore_best") else "end")
        sources = list(dict.fromkeys(c.get("paper", {}).get("source", "") for c in configs))
        return cls(rows, cols, float(report.get("scale", 1.0)), int(report.get("digits", 4)), at,
                   "; ".join(s for s in sources if s),
                   {k: paper_order(paper, k) for k in rows + cols})

    @property
    def keys(self) -> List[str]:
        return self.rows + self.cols


def _without_root(value: Any, root: Any) -> Any:
    """`value` with the data directory `root` at the start of its paths written as `${data_root}`."""
    if isinstance(value, dict):
        return {k: _without_root(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_root(v, root) for v in value]
    if isinstance(root, str) and root and isinstance(value, str) and \
            (value == root or value.startswith(root.rstrip("/") + "/")):
        return "${data_root}" + value[len(root.rstrip("/")):]
    return value


def run_identity(result: Dict[str, Any]) -> str:
    """What makes two runs the same run: the group choices and the resolved config (seed
    included) without the execution settings (nor the data directory inside paths), or, without
    a config, the command line."""
    cfg = result.get("config")
    choices = {k: v for k, v in (result.get("choices") or {}).items() if k not in IGNORED}
    if cfg:
        kept = {k: v for k, v in cfg.items() if k not in IGNORED - {"seed"}}
        return json.dumps([choices, _without_root(kept, cfg.get("data_root"))],
                          sort_keys=True, default=str)
    overrides = sorted(o for o in result.get("overrides", [])
                       if o.lstrip("+~").split("=")[0].split(".")[0] not in IGNORED - {"seed"})
    return json.dumps([choices, overrides, result.get("seed")], default=str)


def deduplicate(results: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], int]:
    """One result per (config, seed): a completed run over any other, else the later one."""
    chosen: Dict[str, Dict[str, Any]] = {}
    for r in results:
        key = run_identity(r)
        old = chosen.get(key)
        if old is None or not (old.get("status") == "completed" and r.get("status") != "completed"):
            chosen[key] = r
    return list(chosen.values()), len(results) - len(chosen)


def metric_value(result: Dict[str, Any], metric: str) -> Optional[float]:
    """The run's summary value of `metric`, else its last phase's at the report position."""
    summary = result.get("summary") or {}
    if metric in summary:
        return summary[metric]
    phases = result.get("phases") or []
    if not phases:
        return None
    report = (result.get("config") or {}).get("report") or {}
    restore = ((result.get("config") or {}).get("train") or {}).get("restore_best")
    at = report.get("at") or ("best" if restore else "end")
    last = phases[-1]
    return (last.get(at) or {}).get(metric, last.get(metric))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def table_from_results(results: List[Dict[str, Any]], metric: Optional[str] = None) -> pd.DataFrame:
    """One row per cell (runs that differ only in seed) and metric: n, mean, std, paper, Δ,
    the metric's total where known, and counts of diverged / failed runs. `df.attrs` holds the
    layout and the number of duplicate runs skipped."""
    results, skipped = deduplicate(results)
    layout = Layout.of(results)
    rows = []
    for r in results:
        summary = r.get("summary") or {}
        report = (r.get("config") or {}).get("report") or {}
        main = metric or report.get("metric") or next(iter(summary), "test_acc")
        metrics = [main] + [m for m in summary if m != main]
        keys = {k: r.get("choices", {}).get(k, "") for k in LEAD}
        keys.update(_override_pairs(r.get("overrides", [])))
        keys.update({k: key_value(r, k) for k in layout.keys})
        totals = ((r.get("phases") or [{}])[-1] or {}).get("totals") or {}
        own = report.get("metric") or next(iter(summary), None)
        status = "dead" if is_dead(r) else r.get("status")
        for m in metrics:
            rows.append({**keys, "metric": m, "status": status,
                         "value": metric_value(r, m), "total": totals.get(m),
                         "paper": r.get("paper_value") if m == (own or m) else None})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    keys = [c for c in df.columns if c not in ("metric", "status", "value", "paper", "total")]
    df[keys] = df[keys].fillna("").astype(str)

    def cell(g: pd.DataFrame) -> pd.Series:
        done = g[g.status == "completed"]["value"].map(_number).dropna()
        paper = g["paper"].map(_number).dropna()
        total = g["total"].map(_number).dropna().unique()
        mean = done.mean() if len(done) else math.nan
        p = float(paper.iloc[0]) if len(paper) else math.nan
        return pd.Series({
            "n": int(len(done)), "mean": mean,
            "std": done.std(ddof=1) if len(done) > 1 else math.nan,
            "paper": p, "delta": mean - p, "total": total[0] if len(total) == 1 else math.nan,
            "diverged": int((g.status == "diverged").sum()),
            "failed": int((g.status == "failed").sum()),
            "interrupted": int((g.status == "interrupted").sum()),
            "unfinished": int((g.status == "running").sum()),  # still running
            "dead": int((g.status == "dead").sum()),  # marked running, its process gone
        })

    out = df.groupby(keys + ["metric"], sort=False, dropna=False).apply(
        cell, include_groups=False).reset_index()
    out[COUNTS] = out[COUNTS].astype(int)
    out.attrs.update(layout=layout, duplicates=skipped)
    return out


def not_done(df: pd.DataFrame) -> Dict[str, int]:
    """Runs of the table that did not complete, by status (each run counted once)."""
    if df.empty:
        return {}
    main = df.drop_duplicates([c for c in df.columns if c not in STATS])
    return {what: int(main[what].sum()) for what in NOT_DONE if main[what].sum()}
