"""Tables in the paper's layout: grid order, `ours ± std (paper)` cells, Δ, denominators of extra
metrics, duplicates, constant columns, LaTeX / CSV output, and the multirun-end table of a real
sweep."""
import json
import math

import pandas as pd
import pytest

from conftest import run_cli
from runner.report import format_latex, format_table, main as report_main, paper_order, \
    table_from_results
from runner.results import load_results

PAPER = {"source": "Someone et al. 2021, Table 1", "by": ["dataset.alpha", "method"],
         "values": {"0.5": {"bl": 0.2, "lw": 0.25}, "2.0": {"bl": 0.9, "lw": 0.99}}}
REPORT = {"metric": "test_acc", "at": None, "extra": [], "rows": ["dataset.alpha"],
          "cols": ["method"], "scale": 100, "digits": 1}


def run(alpha, method, seed, acc, status="completed", experiment="t_1"):
    config = {"seed": seed, "threads": 1, "dataset": {"alpha": float(alpha)}, "report": REPORT,
              "paper": PAPER, "train": {"restore_best": False}}
    return {"choices": {"experiment": experiment, "method": method}, "status": status,
            "overrides": [f"dataset.alpha={alpha}", f"seed={seed}", "threads=1"],
            "summary": {"test_acc": acc} if status == "completed" else {},
            "paper_value": PAPER["values"][alpha][method], "config": config, "phases": [{}]}


@pytest.fixture
def grid_runs():
    """Two seeds of each (alpha, method), in the reverse of the paper's order."""
    accs = {("2.0", "lw"): (0.95, 0.97), ("2.0", "bl"): (0.91, 0.93),
            ("0.5", "lw"): (0.30, 0.30), ("0.5", "bl"): (0.21, 0.23)}
    return [run(a, m, s, acc) for (a, m), pair in accs.items() for s, acc in enumerate(pair)]


def md_rows(text):
    """Markdown table lines as lists of stripped cells (header and body, no rule lines)."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|:")]


def test_paper_order_reads_the_nesting_of_paper_values():
    assert paper_order(PAPER, "dataset.alpha") == ["0.5", "2.0"]
    assert paper_order(PAPER, "method") == ["bl", "lw"]
    assert paper_order(PAPER, "optim.lr") == []


def test_grid_in_the_papers_order_with_paper_values_and_delta(grid_runs):
    text = format_table(table_from_results(grid_runs))
    main, delta = text.split("Δ = ours − paper")
    assert md_rows(main) == [["dataset.alpha", "bl", "lw"],
                             ["0.5", "22.0 ± 1.4 (20.0)", "30.0 ± 0.0 (25.0)"],
                             ["2.0", "92.0 ± 1.4 (90.0)", "96.0 ± 1.4 (99.0)"]]
    assert md_rows(delta) == [["dataset.alpha", "bl", "lw"], ["0.5", "+2.0", "+5.0"],
                              ["2.0", "+2.0", "-3.0"]]
    assert text.startswith("Someone et al. 2021, Table 1\ntest_acc in % at each run's last epoch")
    assert "Same in every run: experiment=t_1" in text  # not a column


def test_each_config_and_seed_counts_once(grid_runs):
    again = json.loads(json.dumps(grid_runs[-1]))  # the same config and seed, run a second time
    failed = {**json.loads(json.dumps(grid_runs[0])), "status": "failed", "summary": {}}
    df = table_from_results(grid_runs + [again, failed])
    assert set(df["n"]) == {2} and df["failed"].sum() == 0  # a failed rerun does not replace
    assert "2 duplicate run(s) of the same config and seed skipped" in format_table(df)
    other_seed = run("0.5", "bl", 7, 0.25)
    df = table_from_results(grid_runs + [other_seed])
    cell = df[(df["dataset.alpha"] == "0.5") & (df["method"] == "bl")].iloc[0]
    assert cell["n"] == 3 and math.isclose(cell["mean"], (0.21 + 0.23 + 0.25) / 3)


def test_a_missing_seed_and_a_failed_run_are_marked(grid_runs):
    runs = grid_runs[:-1] + [run("0.5", "bl", 1, None, status="failed")]
    rows = md_rows(format_table(table_from_results(runs)).split("Δ")[0])
    assert rows[1][1] == "21.0 (20.0) [n=1] [1 failed]"


def test_extra_metrics_with_their_totals_beside_accuracy():
    runs = []
    for method, frozen in (("vanilla", (2, 4)), ("dirac_reset", (0, 0))):
        for seed, f in enumerate(frozen):
            runs.append({"choices": {"experiment": "blur", "method": method},
                         "overrides": [f"seed={seed}"], "status": "completed",
                         "summary": {"test_acc": 0.8, "frozen_filters": f},
                         "phases": [{}, {"totals": {"frozen_filters": 48}}]})
    rows = md_rows(format_table(table_from_results(runs)))
    assert rows[0] == ["method", "test_acc", "frozen_filters (mean ± std / total)"]
    assert rows[1] == ["vanilla", "0.8000 ± 0.0000", "3 ± 1.414 / 48"]
    assert rows[2] == ["dirac_reset", "0.8000 ± 0.0000", "0 ± 0 / 48"]


def test_latex_and_csv(grid_runs, tmp_path, capsys):
    tex = format_latex(table_from_results(grid_runs))
    assert tex.startswith("\\begin{table}") and "\\caption{Someone et al. 2021, Table 1." in tex
    assert "22.0 $\\pm$ 1.4 (20.0)" in tex and "experiment=t\\_1" in tex
    for i, r in enumerate(grid_runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "result.json").write_text(json.dumps(r))
    assert report_main([str(tmp_path), "--out", str(tmp_path / "t")]) == 0
    csv = pd.read_csv(tmp_path / "t.csv")
    cell = csv[(csv["dataset.alpha"] == 2.0) & (csv["method"] == "lw")].iloc[0]
    assert cell["n"] == 2 and cell["paper"] == 0.99 and cell["delta"] == pytest.approx(0.96 - 0.99)
    assert (tmp_path / "t.tex").read_text() == tex
    capsys.readouterr()
    assert report_main([str(tmp_path), "--format", "latex"]) == 0  # the README's command
    assert capsys.readouterr().out.strip() == tex.strip()


@pytest.mark.sizes  # a 4-job sweep in a subprocess (about 8 s): CI's second stage
def test_reinit_table1_sweep_prints_the_papers_layout(tmp_path):
    """The README's Table 1 command, shrunk by ci=smoke: alpha down, methods across in the
    paper's order whatever the command's order, each cell `ours ± std (paper)`, no Δ."""
    out = run_cli("-m", "experiment=reinit_table1", "method=lw,bl", "dataset.alpha=2.0,0.5",
                  "seed=0,1", "ci=smoke", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    text = (tmp_path / "sweep" / "table.md").read_text()
    assert "Test level ci=smoke" in text and "Δ = ours − paper" not in text  # no Δ at a test level
    rows = md_rows(text)
    assert rows[0] == ["dataset.alpha", "BL", "LW"]  # the methods' labels
    assert [r[0] for r in rows[1:]] == ["0.5", "2.0"]
    assert rows[1][1].endswith(" (20.3)") and " ± " in rows[1][1]
    assert rows[2][2].endswith(" (99.8)")
    assert {p.name for p in (tmp_path / "sweep").glob("table.*")} == {"table.md", "table.csv", "table.tex"}


def test_blur_to_sharp_table_shows_frozen_filters_of_their_total(run_cfg, tmp_path):
    """fmnist_blur_to_sharp's point is the frozen-filter count: it sits beside accuracy, per
    method, out of the 132 units of the CNN-BN that can freeze (2 x 16 conv + 100 dense)."""
    for method in ("vanilla", "dirac_reset"):
        run_cfg(["experiment=fmnist_blur_to_sharp", f"method={method}", "ci=smoke",
                 "ci.width=1", "device=cpu"])  # the full-width CNN-BN
    rows = md_rows(format_table(table_from_results(load_results([tmp_path]))))
    assert rows[0] == ["method", "test_acc", "start_frozen_filters (mean ± std / total)",
                       "frozen_filters (mean ± std / total)"]
    assert [r[0] for r in rows[1:]] == ["Vanilla", "dirac_reset"]  # vanilla.yaml's label
    assert all(r[2].endswith(" / 132") and r[3].endswith(" / 132") for r in rows[1:])
