"""Result tables by hand: which overrides define a cell, which metric is shown, how statuses are
counted, the markdown layout, the files written, and `python -m runner.report`'s answers."""
import json
import math

import pandas as pd
from omegaconf import OmegaConf

from runner.report import (AggregateOnMultirunEnd, _override_pairs, deduplicate, format_table,
                           key_value, main, metric_value, table_from_results, write_tables)


def run(method="m", seed=0, value=0.5, status="completed", overrides=(), paper=None, **summary):
    return {"choices": {"experiment": "e", "method": method},
            "overrides": [f"seed={seed}", *overrides], "status": status,
            "summary": {"test_acc": value, **summary} if value is not None else {},
            "paper_value": paper}


def test_override_pairs_keep_what_defines_a_cell():
    pairs = _override_pairs(["+a.b=1", "~c=2", "++d=x=y", "seed=3", "device=cpu", "progress=true",
                             "data_root=/d", "threads=1", "hydra.launcher.n_jobs=2", "lr=0.1",
                             "logger.project=p"])
    assert pairs == {"a.b": "1", "c": "2", "d": "x=y", "lr": "0.1"}


def test_a_layout_key_is_the_group_choice_else_the_config_value_else_the_command_line():
    r = {"choices": {"method": "lw"}, "config": {"method": {"eta": 0.5}, "dataset": {"alpha": 2.0}},
         "overrides": ["dataset.alpha=9", "tuned.x=3"]}
    assert key_value(r, "method") == "lw"
    assert key_value(r, "dataset.alpha") == "2.0"  # the resolved value over the command line's
    assert key_value(r, "method.eta") == "0.5"
    assert key_value(r, "tuned.x") == "3"  # not in the config: the command line's
    assert key_value(r, "method.eta.deeper") == key_value(r, "tuned.y") == ""
    assert key_value({"overrides": ["a=1"]}, "a") == "1"  # no choices, no config
    assert key_value({}, "a") == ""


def test_a_metric_missing_from_the_summary_is_read_at_the_report_position():
    last = {"end": {"acc": 0.1}, "best": {"acc": 0.3}, "acc": 0.2, "frozen": 5}

    def r(cfg):
        return {"summary": {"loss": 1.0}, "phases": [{"end": {"acc": 9.0}}, last], "config": cfg}
    assert metric_value(r({}), "acc") == 0.1  # the last phase, at its end by default
    assert metric_value(r({"train": {"restore_best": True}}), "acc") == 0.3
    assert metric_value(r({"report": {"at": "best"}}), "acc") == 0.3
    assert metric_value(r({"report": {"at": "end"}, "train": {"restore_best": True}}), "acc") == 0.1
    assert metric_value(r({}), "frozen") == 5  # not at the position: the phase's own value
    assert metric_value(r({}), "loss") == 1.0 and metric_value(r({}), "none") is None
    assert metric_value({"summary": {}}, "acc") is None


def test_a_completed_run_wins_over_a_rerun_that_did_not_complete_else_the_later_one():
    done, failed, again = run(value=0.5), run(value=None, status="failed"), run(value=0.7)
    assert deduplicate([done, failed]) == ([done], 1)
    assert deduplicate([failed, done]) == ([done], 1)
    assert deduplicate([done, again]) == ([again], 1)


def test_table_groups_cells_and_counts_statuses():
    results = [run("a", 0, 0.2, paper=0.9), run("a", 1, 0.4, paper=0.9),
               run("a", 2, None, "diverged"), run("a", 3, None, "failed"),
               run("a", 4, 0.9, "running"), run("b", 0, 0.7)]
    df = table_from_results(results)
    assert list(df["method"]) == ["a", "b"] and list(df["experiment"]) == ["e", "e"]
    a, b = df.iloc[0], df.iloc[1]
    # "running" without a heartbeat or a live process: dead, counted apart from failures
    assert (a["n"], a["diverged"], a["failed"], a["unfinished"], a["dead"]) == (2, 1, 1, 0, 1)
    assert math.isclose(a["mean"], 0.3) and math.isclose(a["std"], math.sqrt(0.02))
    assert a["paper"] == 0.9 and math.isnan(b["paper"])
    assert b["n"] == 1 and b["mean"] == 0.7 and math.isnan(b["std"])
    assert set(df["metric"]) == {"test_acc"}


def test_table_metric_choice_and_cells_by_override():
    results = [run(overrides=["lr=0.1"], value=0.1, loss=2.0),
               run(overrides=["lr=0.2"], value=0.2, loss=1.0), run(value=0.3, loss=0.5)]
    df = table_from_results(results, metric="loss")  # every summary metric, the chosen one first
    loss = df[df["metric"] == "loss"]
    assert list(loss["lr"]) == ["0.1", "0.2", ""]  # a run without the key: its own cell
    assert list(loss["mean"]) == [2.0, 1.0, 0.5] and df["metric"].iloc[0] == "loss"
    acc = table_from_results(results)
    assert acc["metric"].iloc[0] == "test_acc"  # by default the run's first metric
    assert list(acc[acc["metric"] == "test_acc"]["mean"]) == [0.1, 0.2, 0.3]
    assert table_from_results([]).empty


def test_format_table_layout():
    df = table_from_results([run("a", 0, 0.25, paper=0.5), run("a", 1, 0.75, paper=0.5),
                             run("b", 0, 0.125), run("c", 0, None, "diverged")])
    lines = format_table(df).splitlines()
    assert lines[0].startswith("test_acc at each run's last epoch; ours: mean ± std over 2 seeds")
    assert lines[1] == "Same in every run: experiment=e"  # constant columns leave the table
    table = [line for line in lines if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head == ["method", "test_acc", "Δ"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert cells[0] == ["a", "0.5000 ± 0.3536 (0.5000)", "+0.0000"]  # ours ± std (paper), Δ
    assert cells[1] == ["b", "0.1250 [n=1]", ""]  # fewer seeds than the rest: said so
    assert cells[2] == ["c", "— [1 diverged]", ""]  # no finished run: its statuses instead
    assert "loss" in format_table(table_from_results([run(loss=2.0)]), metric="loss")
    assert format_table(pd.DataFrame()) == "(no results)"


def write_runs(root, results):
    for i, r in enumerate(results):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "result.json").write_text(json.dumps(r))


def test_write_tables_and_the_multirun_callback(tmp_path, capsys):
    write_runs(tmp_path / "sweep", [run("a", 0, 0.5), run("a", 1, 0.7)])
    AggregateOnMultirunEnd().on_multirun_end(OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    text = (tmp_path / "sweep" / "table.md").read_text()
    assert "0.6000 ± 0.1414" in text and text.endswith("\n")
    assert text.strip() in capsys.readouterr().out
    csv = pd.read_csv(tmp_path / "sweep" / "table.csv")
    assert list(csv["n"]) == [2] and math.isclose(csv["mean"][0], 0.6)
    written = write_tables(table_from_results([run()]), tmp_path / "new" / "dir" / "t")
    assert (tmp_path / "new" / "dir" / "t.md").read_text() == written + "\n"


def test_report_command(tmp_path, capsys):
    write_runs(tmp_path / "runs", [run("a", 0, 0.5, loss=1.5), run("b", 0, 0.25, loss=2.5)])
    assert main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| ")]
    assert rows == [["method", "test_acc", "loss"], ["a", "0.5000", "1.5"], ["b", "0.2500", "2.5"]]
    assert main([str(tmp_path / "runs"), "--metric", "loss", "--out", str(tmp_path / "t")]) == 0
    assert "2.5" in (tmp_path / "t.md").read_text() and (tmp_path / "t.csv").exists()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "error: no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "error: no result.json under" in capsys.readouterr().err
