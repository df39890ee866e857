"""Result tables built from runs' results: one row per cell and metric, with its statistics over
seeds, the paper's value and the runs that did not complete (`runner.report` formats them).

A cell is what the runs resolved, not what was typed: two runs whose resolved configs differ
only in the seed (and execution settings) share a cell, whichever command line produced them.
`cell_keys` names, for each run, the config values that tell its cell apart from the others';
a method's own options appear in its label (`l2 (lambda=0.001)`) when they vary between its
runs or differ from the experiment's `tuned` values."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from runner.identity import IGNORED, deduplicate
from runner.options import LABEL, method_configs
from runner.results import is_dead, sweep_plan

LEAD = ("experiment", "method")  # config-group choices shown first in every table
# config nodes that describe a run or its table rather than what it computes
NOT_CELL = IGNORED | {"name", "description", "report", "paper", "distributed", "target_allowlist"}
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


def swept_order(results: Sequence[Dict[str, Any]]) -> Dict[str, List[str]]:
    """Each swept key's values in the order the runs' experiments declare them (their sweep's
    `hydra.sweeper.params`, which the plan in the sweep directory keeps), merged over the sweeps
    in the order found."""
    out: Dict[str, List[str]] = {}
    for sweep in dict.fromkeys(str(Path(r["_dir"]).parent) for r in results if r.get("_dir")):
        for key, values in (sweep_plan(sweep).get("order") or {}).items():
            merged = out.setdefault(str(key), [])
            merged += [str(v) for v in values if str(v) not in merged]
    return out


def _flatten(out: Dict[str, str], prefix: str, node: Any) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(out, f"{prefix}{k}.", v)
    elif isinstance(node, list) and any(isinstance(v, dict) for v in node):
        for i, v in enumerate(node):
            _flatten(out, f"{prefix}{i}.", v)
    else:
        out[prefix[:-1]] = str(node)


def resolved_values(result: Dict[str, Any]) -> Dict[str, str]:
    """A run's resolved config as `dotted.key: value` strings, without execution settings, the
    table's own nodes and the per-method `tuned` values (its method node holds those it used)."""
    cfg = {k: v for k, v in (result.get("config") or {}).items() if k not in NOT_CELL}
    if isinstance(cfg.get("tuned"), dict):
        cfg["tuned"] = {k: v for k, v in cfg["tuned"].items() if not isinstance(v, dict)}
    out: Dict[str, str] = {}
    _flatten(out, "", cfg)
    return out


def same_value(a: str, b: Any) -> bool:
    """Equal as numbers where both are numbers (`0` and `0.0`), else as strings."""
    x, y = _number(a), _number(b)
    return x == y if not (math.isnan(x) or math.isnan(y)) else a == str(b)


def _scope(result: Dict[str, Any], key: str) -> Tuple[str, ...]:
    """Where a key's value is compared: within the experiment, and for a group's own keys
    (`method.lambda`, `model.hidden`) within the runs of the same group choice."""
    choices = result.get("choices", {})
    group = key.split(".")[0]
    own = (group, str(choices[group])) if group in choices and group != key else ()
    return (str(choices.get("experiment", "")),) + own


def method_options(result: Dict[str, Any], shown: Sequence[str] = ()) -> Dict[str, str]:
    """The run's method options that differ from the experiment's `tuned` values for its
    method, plus the options named in `shown`; its `_target_` where that is not the one of its
    method's YAML (`method._target_=mylab.Mine`)."""
    cfg = result.get("config") or {}
    method = str(result.get("choices", {}).get("method", ""))
    own = cfg.get("method") if isinstance(cfg.get("method"), dict) else {}
    tuned = (cfg.get("tuned") or {}).get(method)
    tuned = tuned if isinstance(tuned, dict) else {}
    default = method_configs().get(method, (None,))[0]  # None: a choice not in conf/method/
    target = {"_target_": str(own["_target_"])} if own.get("_target_") not in (default, None) else {}
    return {**target, **{k: str(v) for k, v in own.items() if k not in ("_target_", LABEL)
                         and not isinstance(v, (dict, list))
                         and (k in shown or (k in tuned and not same_value(str(v), tuned[k])))}}


def method_label(method: str, options: Dict[str, str]) -> str:
    """`l2 (lambda=0.001)`: a method with the options it ran with where they matter."""
    return method + (" (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")" if options else "")


def method_labels(results: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """{method: its name in tables}: the `label` of its YAML (conf/method/), where it has one."""
    out = {}
    for r in results:
        node = (r.get("config") or {}).get("method")
        if isinstance(node, dict) and node.get(LABEL):
            out.setdefault(str(r.get("choices", {}).get("method", "")), str(node[LABEL]))
    return out


def base_method(label: str) -> str:
    """The method of a label (`l2 (lambda=0.001)` -> `l2`)."""
    return label.split(" (", 1)[0]


def cell_keys(results: Sequence[Dict[str, Any]], layout_keys: Sequence[str] = ()) -> List[Dict[str, str]]:
    """For each run, the values that tell its cell apart: the group choices and resolved config
    values that vary between runs of the same experiment (a group's own keys: of the same
    choice), `method` as a label with its options (see `method_options`), and `layout_keys`.
    A run without a resolved config is described by its command line instead."""
    flats = [resolved_values(r) if r.get("config") else {} for r in results]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    # keys that follow the seed (`dataset.reader.seed: ${seed}`) are not part of a cell
    keys = [k for k in keys if not all(f.get(k, "") == str(r.get("config", {}).get("seed"))
                                       for r, f in zip(results, flats) if k in f)]
    varying = set()
    for k in keys:
        seen: Dict[Tuple[str, ...], set] = {}
        for r, f in zip(results, flats):
            if r.get("config"):
                seen.setdefault(_scope(r, k), set()).add(f.get(k, ""))
        varying.update((scope, k) for scope, values in seen.items() if len(values) > 1)
    columns = {k for _, k in varying if not k.startswith("method.") and k not in layout_keys}
    picked: Dict[Tuple[str, str], set] = {}
    for r in results:
        choices = r.get("choices", {})
        for g, v in choices.items():
            picked.setdefault((str(choices.get("experiment", "")), g), set()).add(str(v))
    choice_keys = list(dict.fromkeys(g for (_, g), vs in picked.items() if len(vs) > 1))
    # keys typed on any command line: each run's resolved value (the same in every run: the
    # header names it once), whichever command line typed it
    typed = [k for k in dict.fromkeys(k for r in results if r.get("config")
                                      for k in _override_pairs(r.get("overrides", [])))
             if k.split(".")[0] not in ("method", "hydra")]
    out = []
    for r, f in zip(results, flats):
        choices = r.get("choices", {})
        row = {k: str(choices.get(k, "")) for k in LEAD}
        if r.get("config"):
            row.update({g: str(choices.get(g, "")) for g in choice_keys if g not in LEAD})
            shown = [k.split(".", 1)[1] for k in keys if k.startswith("method.")
                     and (_scope(r, k), k) in varying and k not in layout_keys]
            row["method"] = method_label(row["method"], method_options(r, shown))
            row.update({k: f.get(k, "") for k in keys if k in columns})
            row.update({k: key_value(r, k) for k in typed if k not in row})
        else:
            row.update(_override_pairs(r.get("overrides", [])))
        row.update({k: key_value(r, k) for k in layout_keys if k not in row})
        out.append(row)
    shown = set(LEAD) | set(layout_keys) | set(choice_keys) | {
        k for r in results for k in _override_pairs(r.get("overrides", []))}
    return _without_copies(_without_derived(out, shown), layout_keys)


def _without_derived(rows: List[Dict[str, str]], shown: set) -> List[Dict[str, str]]:
    """Drop a column nobody typed whose value follows from the shown keys (the layout's, the
    group choices, the typed ones): `model.dropout` from `tuned.setting`, `model.num_classes`
    from the dataset. A column that tells apart runs the shown keys do not stays."""
    base = [tuple((k, r.get(k, "")) for k in sorted(shown)) for r in rows]
    drop = set()
    for k in {k for r in rows for k in r} - shown:
        follows: Dict[tuple, str] = {}
        if all(follows.setdefault(b, r.get(k, "")) == r.get(k, "") for b, r in zip(base, rows)):
            drop.add(k)
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def _without_copies(rows: List[Dict[str, str]], first: Sequence[str]) -> List[Dict[str, str]]:
    """Drop a column whose values repeat another's in every run (`dataset.reader.alpha:
    ${dataset.alpha}`), keeping the layout's keys, then the shorter path."""
    names = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in LEAD]
    names.sort(key=lambda k: (k not in first, k.count(".")))
    kept: Dict[Tuple[str, ...], str] = {}
    drop = set()
    for k in names:
        values = tuple(r.get(k, "") for r in rows)
        if len(set(values)) > 1 and kept.setdefault(values, k) != k:
            drop.add(k)
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


Cell = Tuple[Tuple[str, str], ...]  # a cell's (key, value) pairs


def group_runs(results: Sequence[Dict[str, Any]]) -> Dict[str, Dict[Cell, List[Dict[str, Any]]]]:
    """Runs by experiment, then by cell (`cell_keys` within the experiment): the runs that
    differ only in their seed share a cell."""
    by_exp: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        by_exp.setdefault(str(r.get("choices", {}).get("experiment", "")), []).append(r)
    out = {}
    for exp, runs in by_exp.items():
        cells: Dict[Cell, List[Dict[str, Any]]] = {}
        for r, keys in zip(runs, cell_keys(runs)):
            cells.setdefault(tuple(sorted(keys.items())), []).append(r)
        out[exp] = cells
    return out


def run_level(result: Dict[str, Any]) -> str:
    """The run's test level (`smoke`, `sizes`), or "" for a run of the experiment as written."""
    from runner.ci import level_of  # the one place that knows test levels (imports torch)
    return level_of(result.get("config"))


def tuned_values(results: Sequence[Dict[str, Any]]) -> List[str]:
    """`l2 lambda=1e-05` for each method of the runs that its experiment tunes (its `tuned`
    entry), prefixed by the experiments where they tune it differently."""
    found: Dict[str, Dict[str, List[str]]] = {}
    for r in results:
        method = str(r.get("choices", {}).get("method", ""))
        tuned = ((r.get("config") or {}).get("tuned") or {}).get(method)
        if not isinstance(tuned, dict) or not tuned:
            continue
        name = method_labels([r]).get(method, method)
        text = name + " " + ", ".join(f"{k}={v}" for k, v in tuned.items())
        exps = found.setdefault(method, {}).setdefault(text, [])
        exp = str(r.get("choices", {}).get("experiment", ""))
        if exp not in exps:
            exps.append(exp)
    out = []
    for texts in found.values():
        out += [t if len(texts) == 1 else f"{t} ({', '.join(e)})" for t, e in texts.items()]
    return out


@dataclass
class Layout:
    """How a set of runs is tabulated: read from the `report` and `paper` nodes of their configs."""

    rows: List[str] = field(default_factory=list)
    cols: List[str] = field(default_factory=list)
    scale: float = 1.0
    digits: int = 4
    at: str = "end"
    caption: str = ""
    orders: Dict[str, List[str]] = field(default_factory=dict)  # the sweep's, then the paper's
    level: str = ""  # the runs' test levels (ci=smoke, ci=sizes), "" for real runs
    tuned: List[str] = field(default_factory=list)  # `method option=value` of the tuned methods
    labels: Dict[str, str] = field(default_factory=dict)  # method: its name in tables

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
        levels = ", ".join(dict.fromkeys(lv for lv in map(run_level, results) if lv))
        swept = swept_order(results)
        orders = {k: swept.get(k, []) + [v for v in paper_order(paper, k)
                                         if v not in swept.get(k, [])] for k in rows + cols}
        return cls(rows, cols, float(report.get("scale", 1.0)), int(report.get("digits", 4)), at,
                   "; ".join(s for s in sources if s), orders, levels, tuned_values(results),
                   method_labels(results))

    @property
    def keys(self) -> List[str]:
        return self.rows + self.cols


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
    for r, keys in zip(results, cell_keys(results, layout.keys)):
        summary = r.get("summary") or {}
        report = (r.get("config") or {}).get("report") or {}
        main = metric or report.get("metric") or next(iter(summary), "test_acc")
        metrics = [main] + [m for m in summary if m != main]
        totals = ((r.get("phases") or [{}])[-1] or {}).get("totals") or {}
        own = report.get("metric") or next(iter(summary), None)
        status = "dead" if is_dead(r) else r.get("status")
        # the paper's value belongs to the paper's setting: not to a method run off its tuned values
        paper = None if method_options(r) else r.get("paper_value")
        for m in metrics:
            rows.append({**keys, "metric": m, "status": status,
                         "value": metric_value(r, m), "total": totals.get(m),
                         "paper": paper if m == (own or m) else None})
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
            "paper": p, "delta": math.nan if layout.level else mean - p,  # no Δ at a test level
            "total": total[0] if len(total) == 1 else math.nan,
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
