"""Result tables by hand: which overrides define a cell, which metric is shown, how statuses are
counted, the markdown layout, the files written, and `python -m runner.report`'s answers."""
import json
import math
import os
import socket
import time

import pandas as pd
import pytest
from omegaconf import OmegaConf

from runner.report import (AggregateOnMultirunEnd, Layout, _tex_escape,
                           deduplicate, format_as, format_latex, format_table, key_value, main,
                           metric_value, not_done, paper_order, table_from_results, write_tables)
from runner.tables import _override_pairs


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
    assert lines[0].startswith("test_acc at each run's last epoch; ours: mean ± std over up to 2 seeds ([n=k]: fewer)")
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


def md(text):
    """Markdown table lines as lists of stripped cells (header and body, no rule lines)."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|:")]


def configured(method, seed=0, report=None, paper=None, train=None, overrides=(), pv=None, **summary):
    """A run with a config (its `report`, `paper` and `train` nodes) and an override per key."""
    config = {"seed": seed, "report": report or {}, "paper": paper or {}, "train": train or {}}
    for o in overrides:
        key, _, value = o.partition("=")
        *groups, name = key.split(".")
        node = config
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = float(value)
    return {"choices": {"experiment": "e", "method": method}, "overrides": [f"seed={seed}", *overrides],
            "status": "completed", "summary": summary, "paper_value": pv, "config": config,
            "phases": [{"totals": {"frozen": 10}}]}


def test_layout_reads_position_scale_digits_and_every_source():
    assert Layout.of([{"summary": {}}]) == Layout()  # no config: the defaults
    one = Layout.of([{"config": {"report": {"at": "best"}}}])
    assert (one.at, one.scale, one.digits, one.caption) == ("best", 1.0, 4, "")
    assert Layout.of([{"config": {"train": {"restore_best": True}}}]).at == "best"
    assert Layout.of([{"config": {"report": {}, "train": {"restore_best": False}}}]).at == "end"
    assert Layout.of([{"config": {"report": {"at": "end"}, "train": {"restore_best": True}}}]).at == "end"
    several = Layout.of([{"config": {"paper": {"source": "A"}}}, {"config": {"paper": {"source": "B"}}},
                         {"config": {"paper": {"source": "A"}}}, {"config": {"seed": 0}}])
    assert several.caption == "A; B"  # each source once, in order; a config without one adds none


def test_paper_order_skips_a_missing_branch():
    paper = {"by": ["dataset", "method"], "values": {"a": {"x": 1, "y": 2}, "b": None, "c": {"z": 3}}}
    assert paper_order(paper, "method") == ["x", "y", "z"]


def test_the_runs_own_report_metric_leads_and_alone_has_the_paper_value():
    rep = {"metric": "test_acc"}
    runs = [configured("a", s, rep, pv=0.9, loss=1.0 + s, test_acc=0.5) for s in (0, 1)]
    df = table_from_results(runs)  # the summary lists loss first; report.metric says test_acc
    assert list(df["metric"]) == ["test_acc", "loss"]
    assert df["paper"].iloc[0] == 0.9 and math.isnan(df["paper"].iloc[1])
    assert format_table(df).splitlines()[0] == (
        "test_acc at each run's last epoch; ours: mean ± std over 2 seeds; "
        "the paper's value in parentheses")


def test_one_run_at_its_best_validation_epoch_keeps_its_own_key_columns():
    r = {"choices": {"method": "m"}, "overrides": ["seed=0"], "status": "completed",
         "summary": {"test_acc": 0.5}, "paper_value": 0.75,
         "config": {"seed": 0, "train": {"restore_best": True}}}
    df = table_from_results([r])
    assert df["paper"].iloc[0] == 0.75 and df["delta"].iloc[0] == -0.25
    text = format_table(df)
    head, grid = text.split("\n\n")  # one grid, no title, no footer
    assert head == ("test_acc at each run's best-validation epoch; ours: one run; "
                    "the paper's value in parentheses")  # the empty experiment is not named
    assert md(grid) == [["method", "test_acc", "Δ"], ["m", "0.5000 (0.7500)", "-0.2500"]]


def test_header_names_what_is_the_same_in_every_run_and_says_when_no_paper_value_exists():
    df = table_from_results([run("a", overrides=["lr=0.1"]), run("b", overrides=["lr=0.1"])])
    assert format_table(df).split("\n\n")[0].splitlines() == [
        "test_acc at each run's last epoch; ours: one run; no paper values",
        "Same in every run: experiment=e, lr=0.1"]
    bare = [{"choices": {"method": m}, "status": "completed", "summary": {"test_acc": 0.5}}
            for m in "ab"]
    assert "Same in every run" not in format_table(table_from_results(bare))  # "" is no value


def test_runs_without_choices_overrides_or_config_are_told_apart_by_their_seed():
    runs = [{"seed": s, "status": "completed", "summary": {"test_acc": 0.25 * s}} for s in (1, 2)]
    df = table_from_results(runs)
    assert (df["experiment"].iloc[0], df["method"].iloc[0], df["n"].iloc[0]) == ("", "", 2)
    assert df.attrs["duplicates"] == 0 and math.isclose(df["mean"].iloc[0], 0.375)


def test_the_same_config_and_seed_is_one_run_whatever_the_command_line_said():
    first = {"choices": {"method": "m"}, "overrides": ["seed=0"], "status": "completed",
             "config": {"seed": 0, "device": "cpu", "lr": 0.1}}
    again = {"choices": {"method": "m"}, "overrides": ["lr=0.1", "seed=0", "device=cuda"],
             "status": "completed", "config": {"lr": 0.1, "device": "cuda", "seed": 0}}
    other_seed = {**again, "config": {"lr": 0.1, "device": "cuda", "seed": 1}}
    assert deduplicate([first, again, other_seed]) == ([again, other_seed], 1)
    plain = {**again, "config": {**again["config"], "method": {"_target_": "m"}}}
    named = {**again, "config": {**again["config"], "method": {"_target_": "m", "label": "M"}}}
    assert deduplicate([plain, named]) == ([named], 1)  # a label names the method, nothing more
    # without a config: the command line less the execution settings, the seed kept
    a = {"overrides": ["seed=0", "device=cpu", "+data_root=/a", "logger.project=p", "lr=1"]}
    b = {"overrides": ["lr=1", "seed=0", "device=cuda", "+data_root=/b", "logger.project=q"]}
    c = {"overrides": ["lr=1", "seed=1", "device=cuda"]}
    assert deduplicate([a, b, c]) == ([b, c], 1)


def test_interrupted_and_still_running_runs_are_counted_apart():
    alive = {"host": "elsewhere", "heartbeat": time.time()}
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}  # this process
    df = table_from_results([run(seed=0), run(seed=1, value=None, status="interrupted"),
                             run(seed=2, value=0.9, status="running") | alive,
                             run(seed=3, value=0.9, status="running") | mine])
    cell = df.iloc[0]
    assert (cell["n"], cell["interrupted"], cell["unfinished"], cell["dead"]) == (1, 1, 2, 0)
    assert not_done(df) == {"interrupted": 1, "unfinished": 2}


def test_paper_layout_in_the_papers_order_with_a_grid_per_extra_metric():
    """Rows and columns in the order of `paper.values` (not sorted), a cell without runs left
    empty, then Δ, then each further metric with its denominator where it has one."""
    rep = {"metric": "test_acc", "rows": ["dataset.alpha"], "cols": ["method"], "scale": 100,
           "digits": 1}
    paper = {"source": "P", "by": ["dataset.alpha", "method"],
             "values": {"2.0": {"lw": 0.9, "bl": 0.8}, "0.5": {"lw": 0.3, "bl": 0.2}}}
    runs = [configured(m, 0, rep, paper, overrides=[f"dataset.alpha={a}"], pv=paper["values"][a][m],
                       test_acc=acc, frozen=f, loss=0.5)
            for a, m, acc, f in (("0.5", "lw", 0.25, 1), ("2.0", "bl", 0.75, 2), ("2.0", "lw", 1.0, 3))]
    chunks = format_table(table_from_results(runs)).split("\n\n")
    assert chunks[0].splitlines() == [
        "P", "test_acc in % at each run's last epoch; ours: one run; the paper's value in parentheses",
        "Same in every run: experiment=e"]
    assert chunks[2::2] == ["Δ = ours − paper (test_acc in %):", "frozen (mean ± std / total):",
                            "loss:"]
    assert len(chunks) == 8  # four grids, no footer
    main_grid, delta, frozen, loss = (md(c) for c in chunks[1::2])
    assert main_grid == [["dataset.alpha", "lw", "bl"], ["2.0", "100.0 (90.0)", "75.0 (80.0)"],
                         ["0.5", "25.0 (30.0)", ""]]
    assert delta == [["dataset.alpha", "lw", "bl"], ["2.0", "+10.0", "-5.0"], ["0.5", "-5.0", ""]]
    assert frozen == [["dataset.alpha", "lw", "bl"], ["2.0", "3 / 10", "2 / 10"], ["0.5", "1 / 10", ""]]
    assert loss == [["dataset.alpha", "lw", "bl"], ["2.0", "0.5", "0.5"], ["0.5", "0.5", ""]]


def test_several_column_keys_are_joined_in_one_header():
    rep = {"cols": ["method", "lr"]}
    runs = [configured(m, 0, rep, overrides=[f"lr={lr}"], test_acc=acc)
            for m, lr, acc in (("a", "0.1", 0.5), ("a", "0.2", 0.25), ("b", "0.1", 0.125))]
    grid = md(format_table(table_from_results(runs)))
    assert grid == [["a / 0.1", "a / 0.2", "b / 0.1"], ["0.5000", "0.2500", "0.1250"]]


def test_rows_only_layout_scales_the_main_column_and_leaves_a_missing_metric_empty():
    rep = {"metric": "test_acc", "rows": ["method"], "scale": 100, "digits": 1}
    runs = [configured("a_1", 0, rep, test_acc=0.5, loss=2.0), configured("b", 0, rep, test_acc=0.25)]
    df = table_from_results(runs)
    head, grid = format_table(df).split("\n\n")
    assert md(grid) == [["method", "test_acc in %", "loss"], ["a_1", "50.0", "2"], ["b", "25.0", ""]]
    tex = format_latex(df)
    assert "\\begin{tabular}{lrr}" in tex and "\\toprule" in tex and "\\centering" in tex
    assert "a\\_1 & 50.0 & 2" in tex  # row keys escaped, numbers as they are
    assert "method & test\\_acc in \\% & loss" in tex  # column names escaped
    assert "\\caption{test\\_acc in \\% at each run's last epoch; ours: one run; no paper values" \
           ". Same in every run: experiment=e.}" in tex


def test_latex_caption_of_each_grid_and_of_no_results():
    rep = {"metric": "test_acc", "rows": ["dataset.alpha"], "cols": ["method"], "scale": 100}
    paper = {"source": "P & Q", "by": ["dataset.alpha", "method"], "values": {"2.0": {"lw": 0.9}}}
    df = table_from_results([configured("lw", 0, rep, paper, overrides=["dataset.alpha=2.0"],
                                        pv=0.9, test_acc=0.5)])
    tex = format_latex(df)
    captions = [line.strip() for line in tex.splitlines() if line.strip().startswith("\\caption")]
    assert captions == [
        "\\caption{P \\& Q. test\\_acc in \\% at each run's last epoch; ours: one run; the "
        "paper's value in parentheses.}",
        "\\caption{$\\Delta$ = ours $-$ paper (test\\_acc in \\%)}"]
    assert tex.count("\\end{table}\n\n\\begin{table}") == 1
    assert format_latex(pd.DataFrame()) == "% no results\n"


def test_tex_escape_covers_latex_specials_and_the_tables_symbols():
    assert _tex_escape("a\\b&c%d$e#f_g{h}i~j^k×l±mΔn−o") == (
        "a\\textbackslash{}b\\&c\\%d\\$e\\#f\\_g\\{h\\}i\\textasciitilde{}j\\^{}k$\\times$l$\\pm$m"
        "$\\Delta$n$-$o")


def test_an_explicit_metric_leads_every_format(tmp_path):
    df = table_from_results([run(loss=2.0)])  # built with test_acc first
    lead = "loss at each run's last epoch"
    for text in (format_table(df, "loss"), format_as(df, "markdown", "loss"),
                 format_latex(df, "loss"), format_as(df, "latex", "loss"),
                 write_tables(df, tmp_path / "t", "loss")):
        assert lead in text and "test_acc at" not in text
    assert lead in (tmp_path / "t.tex").read_text()
    assert format_as(df, "csv").splitlines()[0] == (
        "experiment,method,metric,n,mean,std,paper,delta,total,diverged,failed,interrupted,"
        "unfinished,dead")


def test_a_sweep_with_jobs_that_did_not_complete_exits_1(tmp_path, capsys):
    write_runs(tmp_path / "sweep", [run("a", 0, 0.5, loss=1.0), run("a", 1, None, "failed"),
                                    run("b", 0, 0.1, "diverged", loss=9.0)])  # 2 rows, 1 run
    with pytest.raises(SystemExit) as stop:
        AggregateOnMultirunEnd().on_multirun_end(OmegaConf.create(
            {"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    assert f"table written to {tmp_path / 'sweep'}/table.md, table.csv and table.tex" in out
    assert err == "error: not every job completed (1 diverged, 1 failed); see the table\n"


def test_report_command_refuses_an_unknown_format_and_names_every_missing_directory(tmp_path, capsys):
    write_runs(tmp_path / "runs", [run("a", 0, 0.5, loss=1.5)])
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "runs"), "--format", "xml"])
    assert stop.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
    assert main([str(tmp_path / "runs"), "--metric", "loss"]) == 0
    assert md(capsys.readouterr().out)[0] == ["experiment", "method", "loss", "test_acc"]  # chosen first
    assert main([str(tmp_path / "x"), str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err == f"error: no such directory: {tmp_path / 'x'}, {tmp_path / 'y'}\n"
    (tmp_path / "e1").mkdir(), (tmp_path / "e2").mkdir()
    assert main([str(tmp_path / "e1"), str(tmp_path / "e2")]) == 2
    assert capsys.readouterr().err == f"error: no result.json under {tmp_path / 'e1'}, {tmp_path / 'e2'}\n"
