"""Result tables in the paper's layout: ours (mean ± std over seeds) beside the paper's value.

    python -m runner.report DIR [DIR ...] [--metric test_acc] [--format markdown|csv|latex]
                            [--out PREFIX]

rebuilds the table of any set of run or sweep directories; at the end of every multirun the same
table is printed and written as `table.md`, `table.csv` and `table.tex` in the sweep directory.

An experiment declares its layout under `report:`: `rows` and `cols` are config keys or group
choices (Reinitialization Table 1: rows [dataset.alpha], cols [method]). Their values come in the
order the experiment's sweep declares them (`runner.tables.swept_order`), then in the order of
`paper.values` where the key indexes it, then in the order of the runs, whatever the command's
order; a method under its
YAML's `label` (the CSV keeps ids). Each cell reads
`ours ± std (paper)`, and a grid of Δ = ours − paper follows (not for test-level runs, which
the header names). Cells come from each run's resolved config (`runner.tables.cell_keys`): keys
outside the layout whose resolved values vary between runs become further rows, a method's
options that vary or leave the experiment's `tuned` values stand beside its name, and keys with
the same value in every run are named once above the table instead of filling a column. Without `cols` the table has one row per cell and one
column per metric (`report.metric`, then `report.extra`); an extra metric shows its denominator
where the run recorded one (`totals` of its last phase: frozen filters out of the filters that
can freeze).

Each (config, seed) counts once: a second run of the same config and seed, as when two sweeps
share a directory tree, is skipped, and the table says how many were.
"""
from __future__ import annotations

import argparse
import atexit
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from runner.results import RESULT_FILE, load_results
from runner.identity import IGNORED, deduplicate, run_identity  # noqa: F401
from runner.tables import (LEAD, NOT_DONE, STATS, Layout, base_method,  # noqa: F401
                           cell_keys, group_runs, key_value, metric_value, not_done,
                           paper_order, same_value, table_from_results)
from runner.targets import register

FORMATS = ("markdown", "csv", "latex")


# -- formatting ---------------------------------------------------------------------------------
def _fmt(x: float, main: bool, lay: Layout) -> str:
    return f"{x * lay.scale:.{lay.digits}f}" if main else f"{x:.4g}"


def _cell_text(row: pd.Series, main: bool, lay: Layout, n_max: int, pm: str) -> str:
    if math.isnan(row["mean"]):
        text = "—"
    else:
        text = _fmt(row["mean"], main, lay)
        if not math.isnan(row["std"]):
            text += pm + _fmt(row["std"], main, lay)
    if not math.isnan(row["total"]):
        text += f" / {row['total']:g}"
    if main and not math.isnan(row["paper"]):
        text += f" ({_fmt(row['paper'], True, lay)})"
    if 0 < row["n"] < n_max:
        text += f" [n={row['n']}]"
    for what in NOT_DONE:
        if row[what]:
            text += f" [{row[what]} {what}]"
    return text


def _delta_text(row: pd.Series, lay: Layout) -> str:
    d = row["delta"]
    return "" if math.isnan(d) else f"{d * lay.scale:+.{lay.digits}f}"


@dataclass
class Grid:
    title: str
    frame: pd.DataFrame  # row-key columns, then one column per cell column (strings)
    keys: List[str]  # the row-key columns


def _positions(values: List[str], order: List[str]) -> Dict[str, Tuple[int, int]]:
    """Each value's place: its method's (or its own) in `order` (`0.0` is `0`'s place), then
    first appearance."""
    values = list(dict.fromkeys(values))
    bases = list(order)

    def place(base: str) -> int:
        found = next((i for i, o in enumerate(bases) if same_value(base, o)), None)
        if found is None:
            bases.append(base)
        return len(bases) - 1 if found is None else found
    return {v: (place(base_method(v)), i) for i, v in enumerate(values)}


class _Table:
    """A tidy table split into what varies (row and column keys) and what does not."""

    def __init__(self, df: pd.DataFrame, metric: Optional[str], pm: str):
        self.df, self.pm = df, pm
        self.lay: Layout = df.attrs.get("layout") or Layout()
        keys = [c for c in df.columns if c not in STATS]
        self.metrics = list(dict.fromkeys(df["metric"]))
        self.main = metric if metric in self.metrics else self.metrics[0]
        self.cells = df[keys].drop_duplicates()
        single = len(self.cells) == 1
        self.constant = [k for k in keys if k not in self.lay.keys and self.cells[k].nunique() == 1
                         and (not single or self.cells[k].iloc[0] == "")]
        self.row_keys = [k for k in keys if k not in self.constant and k not in self.lay.keys] + \
            [k for k in self.lay.rows if k in keys]
        self.col_keys = [k for k in self.lay.cols if k in keys]
        self.pos = {k: _positions(df[k].tolist(), self.lay.orders.get(k, []))
                    for k in self.row_keys + self.col_keys}
        main_rows = df[df.metric == self.main]
        self.n_max = int(main_rows["n"].max())
        self.has_paper = main_rows["paper"].notna().any()
        self.has_delta = self.has_paper and not self.lay.level
        self.n_all = bool(len(main_rows)) and bool((main_rows["n"] == self.n_max).all())
        self.what = self.main + (" in %" if self.lay.scale == 100
                                 else f" × {self.lay.scale:g}" if self.lay.scale != 1 else "")

    def header(self) -> List[str]:
        at = "best-validation" if self.lay.at == "best" else "last"
        ours = ("one run" if self.n_max == 1 and self.n_all else
                f"mean ± std over {self.n_max} seeds" if self.n_all else
                f"mean ± std over up to {self.n_max} seeds ([n=k]: fewer)")
        head = [self.lay.caption] if self.lay.caption else []
        paper = "; no paper values"
        if self.has_paper:
            paper = ("; the paper's value in parentheses" if not self.lay.level else
                     "; the paper's value in parentheses for reference only")
        head.append(f"{self.what} at each run's {at} epoch; ours: {ours}{paper}")
        if self.lay.level:
            head.append(f"Test level ci={self.lay.level}: shrunk runs that check the code, not "
                        "the paper's numbers; no Δ against the paper")
        same = [f"{k}={self.shown(k, self.cells[k].iloc[0])}" for k in self.constant
                if self.cells[k].iloc[0] != ""]
        if same:
            head.append("Same in every run: " + ", ".join(same))
        if self.lay.tuned:
            head.append("Methods at the experiment's tuned values unless their label says "
                        "otherwise: " + "; ".join(self.lay.tuned))
        return head

    def shown(self, key: str, value: str) -> str:
        """A value as printed: a method under its label (`BL`, `L2 (lambda=0.001)`)."""
        base = base_method(value) if key == "method" else ""
        return self.lay.labels[base] + value[len(base):] if base in self.lay.labels else value

    def shown_all(self, keys: List[str], values: Tuple[str, ...]) -> List[str]:
        return [self.shown(k, v) for k, v in zip(keys, values)]

    def ordered(self, keys: List[str]) -> List[Tuple[str, ...]]:
        """The distinct values of `keys`: in the paper's order where a layout is declared."""
        if not keys:  # (pandas < 3 iterates no tuples over no columns)
            return [()] if len(self.df) else []
        tuples = list(dict.fromkeys(self.df[keys].itertuples(index=False, name=None)))
        if not self.lay.keys:
            return tuples
        return sorted(tuples, key=lambda t: [self.pos[k][v] for k, v in zip(keys, t)])

    def scaled(self, metric: str) -> bool:
        """The main metric and every accuracy are printed at the table's scale and digits."""
        return metric == self.main or metric.endswith("_acc")

    def label(self, metric: str) -> str:
        total = self.df.loc[self.df.metric == metric, "total"].notna().any()
        unit = " in %" if self.scaled(metric) and self.lay.scale == 100 else ""
        return metric + unit + (" (mean ± std / total)" if total else "")

    def text(self, row: pd.Series, metric: str) -> str:
        return _cell_text(row, self.scaled(metric), self.lay, self.n_max, self.pm)

    def cells_of(self, metric: str, fn) -> Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], str]:
        sub = self.df[self.df.metric == metric]
        return {(tuple(r[k] for k in self.row_keys), tuple(r[k] for k in self.col_keys)): fn(r)
                for _, r in sub.iterrows()}

    def pivoted(self) -> List[Grid]:
        """With `cols`: one grid per metric (and Δ), row keys down, column keys across."""
        rows_t, cols_t = self.ordered(self.row_keys), self.ordered(self.col_keys)
        blocks = [("", self.main, lambda r: self.text(r, self.main))]
        if self.has_delta:
            blocks.append((f"Δ = ours − paper ({self.what})", self.main,
                           lambda r: _delta_text(r, self.lay)))
        for m in (m for m in self.metrics if m != self.main):
            blocks.append((self.label(m), m, lambda r, m=m: self.text(r, m)))
        out = []
        for title, m, fn in blocks:
            cells = self.cells_of(m, fn)
            heads = [" / ".join(self.shown_all(self.col_keys, ct)) for ct in cols_t]
            frame = pd.DataFrame([self.shown_all(self.row_keys, rt) + [cells.get((rt, ct), "")
                                                                       for ct in cols_t]
                                  for rt in rows_t], columns=self.row_keys + heads)
            out.append(Grid(title, frame, self.row_keys))
        return out

    def long(self) -> Grid:
        """Without `cols`: one row per cell, one column per metric (and Δ beside the main one)."""
        columns: Dict[str, Dict] = {}
        for m in self.metrics:
            label = self.what if m == self.main else self.label(m)
            columns[label] = self.cells_of(m, lambda r, m=m: self.text(r, m))
            if m == self.main and self.has_delta:
                columns["Δ"] = self.cells_of(m, lambda r: _delta_text(r, self.lay))
        rows_t = self.ordered(self.row_keys)
        frame = pd.DataFrame([self.shown_all(self.row_keys, rt) + [c.get((rt, ()), "")
                                                                   for c in columns.values()]
                              for rt in rows_t],
                             columns=self.row_keys + list(columns))
        return Grid("", frame, self.row_keys)


def grids(df: pd.DataFrame, metric: Optional[str] = None, pm: str = " ± ") -> Tuple[List[str], List[Grid]]:
    """The header lines and the grids of a table (see the module docstring)."""
    t = _Table(df, metric, pm)
    return t.header(), (t.pivoted() if t.col_keys else [t.long()])


def _footer(df: pd.DataFrame) -> List[str]:
    k = df.attrs.get("duplicates", 0)
    return [f"{k} duplicate run(s) of the same config and seed skipped"] if k else []


def format_table(df: pd.DataFrame, metric: Optional[str] = None) -> str:
    """Markdown: the header lines, then each grid with its title."""
    if df.empty:
        return "(no results)"
    head, gs = grids(df, metric)
    parts = ["\n".join(head)]
    for g in gs:
        parts.append((g.title + ":\n\n" if g.title else "")
                     + g.frame.to_markdown(index=False, disable_numparse=True))
    return "\n\n".join(parts + _footer(df))


def _tex_escape(s: str) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
             "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
             "×": r"$\times$", "±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$"}
    return "".join(table.get(c, c) for c in s)


def format_latex(df: pd.DataFrame, metric: Optional[str] = None) -> str:
    """LaTeX (pandas Styler): one table per grid, the first captioned with the source."""
    if df.empty:
        return "% no results\n"
    head, gs = grids(df, metric, pm=r" $\pm$ ")
    out = []
    for i, g in enumerate(gs):
        caption = ". ".join(head) + "." if i == 0 else g.title
        st = g.frame.style.hide(axis="index").format_index(escape="latex", axis=1)
        if g.keys:
            st = st.format(escape="latex", subset=g.keys)
        out.append(st.to_latex(caption=_tex_escape(caption), hrules=True, position_float="centering",
                               column_format="l" * len(g.keys) + "r" * (g.frame.shape[1] - len(g.keys))))
    return "\n".join(out)


def format_as(df: pd.DataFrame, fmt: str, metric: Optional[str] = None) -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    return format_latex(df, metric) if fmt == "latex" else format_table(df, metric)


def write_tables(df: pd.DataFrame, prefix: Path, metric: Optional[str] = None) -> str:
    """PREFIX.md, PREFIX.csv (every number, unscaled) and PREFIX.tex; returns the markdown."""
    text = format_table(df, metric)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.md").write_text(text + "\n")
    Path(f"{prefix}.csv").write_text(format_as(df, "csv"))
    Path(f"{prefix}.tex").write_text(format_latex(df, metric))
    return text


def sweep_table(sweep: Path, jobs: Optional[int]) -> bool:
    """Print and write the sweep's table with what did not complete; True when every job of the
    sweep completed (and at least one ran)."""
    results = load_results([sweep]) if sweep.is_dir() else []
    df = table_from_results(results)
    if results:
        print(write_tables(df, sweep / "table"))
        print(f"table written to {sweep}/table.md, table.csv and table.tex")
    bad = not_done(df)
    missing = max(0, (jobs or 0) - len(results))  # refused before recording, or never started
    if missing:
        bad["without a result"] = missing
    if bad or not results:
        counts = ", ".join(f"{n} {what}" for what, n in bad.items()) or "no job recorded a result"
        print(f"error: not every job completed ({counts}); see the table", file=sys.stderr)
        return False
    return True


class AggregateOnMultirunEnd(Callback):
    """Hydra callback: the sweep's table, printed and written next to its runs, also when the
    sweep is interrupted or a worker dies (then at the process's exit); the sweep exits with
    status 1 when a job did not complete or none recorded a result (the table counts them)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep = Path(config.hydra.sweep.dir)
        self.ended = True  # until it starts
        if self.sweep.is_dir() and next(self.sweep.rglob(RESULT_FILE), None) is not None:
            print(f"error: {self.sweep} already holds runs; a new sweep needs a new directory "
                  f"(add resume=auto to reuse their results)", file=sys.stderr)
            raise SystemExit(2)
        self.config = config  # the sweeper records its plan in it (hydra.sweeper.plan)
        self.ended = False
        atexit.register(self._at_exit)

    def planned(self) -> Optional[int]:
        """How many jobs the sweeper's plan makes (the experiments' declared sweeps merged with
        the command line's), None before it planned or with another sweeper."""
        config = getattr(self, "config", None)
        return OmegaConf.select(config, "hydra.sweeper.plan.jobs", default=None) if config else None

    def _at_exit(self) -> None:
        if not self.ended and self.sweep.is_dir() and \
                next(self.sweep.rglob(RESULT_FILE), None) is not None:
            self.ended = True  # the sweep stopped early: the table of what ran all the same
            sweep_table(self.sweep, self.planned())

    def on_multirun_end(self, config, **kwargs) -> None:
        self.ended = True
        if OmegaConf.select(config, "hydra.sweeper.dry", default=False):  # dry: nothing ran
            return
        if not sweep_table(Path(config.hydra.sweep.dir), self.planned()):
            raise SystemExit(1)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    p.add_argument("--metric", default=None, help="summary metric (default: each run's own)")
    p.add_argument("--format", default="markdown", choices=FORMATS, help="what to print")
    p.add_argument("--out", default=None, help="also write PREFIX.md, PREFIX.csv and PREFIX.tex")
    args = p.parse_args(argv)
    missing = [d for d in args.dirs if not Path(d).exists()]
    if missing:
        print(f"error: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    results = load_results(args.dirs)
    if not results:
        print(f"error: no result.json under {', '.join(args.dirs)}", file=sys.stderr)
        return 2
    groups = by_experiment(results)
    if args.format == "csv" or len(groups) == 1:  # the CSV keeps every row, named by experiment
        groups = {"": results}
    texts = []
    for label, group in groups.items():
        df = table_from_results(group, args.metric)
        if args.out:
            write_tables(df, Path(f"{args.out}-{label}" if label else args.out), args.metric)
        heading = (f"% {label}" if args.format == "latex" else f"## {label}") if label else ""
        texts.append("\n\n".join(filter(None, [heading, format_as(df, args.format, args.metric)])))
    print("\n\n".join(texts))
    return 0


def by_experiment(results: List[dict]) -> Dict[str, List[dict]]:
    """The runs grouped into one table per experiment; experiments swept together (runs in one
    sweep directory, e.g. the datasets of a table's columns) share a table. Keys: the names
    joined by `+`, in the order first found."""
    parent: Dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    sweeps: Dict[str, str] = {}
    for r in results:
        name, sweep = str(r.get("name")), str(Path(r["_dir"]).parent)
        parent[root(name)] = root(sweeps.setdefault(sweep, name))
    names = list(dict.fromkeys(str(r.get("name")) for r in results))
    labels = {n: "+".join(m for m in names if root(m) == root(n)) for n in names}
    groups: Dict[str, List[dict]] = {}
    for r in results:
        groups.setdefault(labels[str(r.get("name"))], []).append(r)
    return groups


register("callback", AggregateOnMultirunEnd)  # config slots of this kind may name them (runner.targets)


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
