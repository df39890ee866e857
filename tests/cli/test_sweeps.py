"""A paper table is one command: the experiment declares its sweep, the command line narrows or
extends it, the count (and the experiment's cost estimate) is printed first, and outputs are
found by experiment."""
import json

import pytest

from runner.options import method_configs
from runner.report import by_experiment
from runner.report import main as report_main

SMOKE = ["ci=smoke", "threads=1", "device=cpu"]


def test_reinit_table1_declares_its_180_runs(hydra_cli, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("-m", "experiment=reinit_table1", "ci=smoke", "hydra.sweeper.dry=true") == 0
    assert capsys.readouterr().out == "sweep of 180 runs (reinit_table1: 180 runs, test level ci=smoke)\n"
    assert not (tmp_path / "outputs").exists()  # a dry sweep runs and writes nothing
    assert hydra_cli("-m", "seed=0,1", "ci=smoke", "hydra.sweeper.dry=true") == 0
    assert capsys.readouterr().out.startswith("sweep of 2 runs (reinit_table1: 2 runs")  # unnamed
    assert hydra_cli("-m", "experiment=reinit_table1", "seed=0,1", "method=lw,bl,fc,dsd",
                     "train.epochs=1,2", "hydra.sweeper.dry=true") == 0
    out = capsys.readouterr().out  # 2 seeds x 4 methods x 3 alphas x 2 epoch counts
    assert out.startswith("sweep of 48 runs (reinit_table1: 48 runs, estimated 2 s a run on one "
                          "CPU thread") and out.endswith(", 1 min in all)\n")


def test_each_experiment_of_a_sweep_brings_its_own(hydra_cli, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("-m", "experiment=reinit_table1,reinit_table5,fmnist_mlp", *SMOKE,
                     "hydra.sweeper.dry=true") == 0
    assert capsys.readouterr().out == (  # Table 5: 3 methods x 6 weight decays x 100 seeds
        "sweep of 1981 runs (reinit_table1: 180 runs, test level ci=smoke; reinit_table5: 1800 "
        "runs, test level ci=smoke; fmnist_mlp: 1 runs, test level ci=smoke)\n")


@pytest.mark.sizes  # nine smoke runs through the app (about 10 s): CI's second stage
def test_a_narrowed_table_runs_what_it_counted(hydra_cli, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("-m", "experiment=reinit_table1", *SMOKE, "seed=0", "dataset.alpha=1.0") == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep of 6 runs (reinit_table1: 6 runs")
    [sweep] = (tmp_path / "outputs" / "multirun" / "reinit_table1").iterdir()
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    assert sorted(r["choices"]["method"] for r in results) == ["bl", "dsd", "fc", "lw", "wels",
                                                               "welsr"]
    assert any(line.startswith("| 1.0 ") for line in (sweep / "table.md").read_text().splitlines())
    assert hydra_cli("-m", "experiment=reinit_table1,reinit_table1_fitted", *SMOKE, "seed=0",
                     "dataset.alpha=1.0", "method=lw") == 0
    [both] = (tmp_path / "outputs" / "multirun" / "reinit_table1+reinit_table1_fitted").iterdir()
    assert sorted(p.parent.name for p in both.glob("*/result.json")) == ["0", "1"]
    assert hydra_cli("experiment=fmnist_mlp", *SMOKE) == 0
    assert len(list((tmp_path / "outputs" / "runs" / "fmnist_mlp").glob("*/result.json"))) == 1


def fake_result(d, name, seed=0):
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({
        "status": "completed", "name": name, "seed": seed,
        "choices": {"experiment": name, "method": "vanilla"}, "overrides": [f"seed={seed}"],
        "summary": {"test_acc": 0.5}, "phases": []}))


def test_report_over_many_sweeps_prints_one_table_per_experiment(tmp_path, capsys):
    root = tmp_path / "multirun"
    fake_result(root / "a" / "t1" / "0", "a")
    fake_result(root / "a" / "t2" / "0", "a", seed=1)
    fake_result(root / "b" / "t3" / "0", "b")
    fake_result(root / "c+d" / "t4" / "0", "c")
    fake_result(root / "c+d" / "t4" / "1", "d")
    from runner.results import load_results
    groups = by_experiment(load_results([root]))
    assert {k: len(v) for k, v in groups.items()} == {"a": 2, "b": 1, "c+d": 2}
    assert report_main([str(root)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("## ")] == ["## a", "## b",
                                                                            "## c+d"]
    assert report_main([str(root), "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert len(csv.strip().splitlines()) == 5 and "## " not in csv  # one header, four cells


def test_a_table_follows_the_sweeps_order_under_the_methods_labels(tmp_path, capsys):
    """Columns and rows in the order the sweep's plan declares them (not the runs' directories',
    not alphabetical; `0.0` takes `0`'s place), methods under their YAML's label; the CSV keeps
    ids."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    order = {"method": ["bl", "rescale", "lw"], "optim.weight_decay": ["0.1", "0"]}
    (sweep / "multirun.yaml").write_text(json.dumps({"hydra": {"sweeper": {"plan": {
        "jobs": 6, "order": order}}}}))  # JSON is YAML
    runs = [(m, wd) for m in ("lw", "bl", "rescale") for wd in (0.0, 0.1)]
    for i, (method, wd) in enumerate(runs):
        label = {"lw": {"label": "LW"}, "bl": {"label": "BL"}}.get(method, {})
        (sweep / str(i)).mkdir()
        (sweep / str(i) / "result.json").write_text(json.dumps({
            "status": "completed", "name": "t", "seed": 0, "overrides": [],
            "choices": {"experiment": "t", "method": method}, "summary": {"test_acc": i / 10},
            "config": {"seed": 0, "optim": {"weight_decay": wd},
                       "method": {"_target_": method_configs()[method][0], **label},
                       "report": {"rows": ["optim.weight_decay"], "cols": ["method"]}}}))
    assert report_main([str(sweep)]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows == [["optim.weight_decay", "BL", "rescale", "LW"],
                    ["0.1", "0.3000", "0.5000", "0.1000"], ["0.0", "0.2000", "0.4000", "0.0000"]]
    assert report_main([str(sweep), "--format", "csv"]) == 0
    csv = capsys.readouterr().out.strip().splitlines()
    assert csv[0].startswith("experiment,method,") and [line.split(",")[1] for line in csv[1:]] == \
        ["lw", "lw", "bl", "bl", "rescale", "rescale"]


@pytest.mark.sizes  # three smoke runs through the app: CI's second stage
def test_reinit_table5_prints_the_papers_columns(hydra_cli, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("-m", "experiment=reinit_table5", *SMOKE, "seed=0", "optim.weight_decay=0",
                     "method=lw,bl,rescale", "hydra.sweep.dir=sweep") == 0  # declared: bl,rescale,lw
    header = next(line for line in (tmp_path / "sweep" / "table.md").read_text().splitlines()
                  if line.startswith("| "))
    assert [c.strip() for c in header.strip("|").split("|")] == ["optim.weight_decay", "BL",
                                                                   "Rescaling", "LW"]


@pytest.mark.sizes
def test_an_interrupted_sweep_counts_the_jobs_of_its_declared_plan(tmp_path):
    """Ctrl-C in the third of 36 jobs: Table 5's declared methods and weight decays (3 x 6) for the
    command line's two seeds; every job of the plan without a result is counted."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from conftest import interrupt_when
    from runner.results import load_results
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "runner", "-m", "experiment=reinit_table5",
                             *SMOKE, "seed=0,1", "progress=false", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # as at a terminal, also where the tests run as a background job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out, err = interrupt_when(proc, sweep / "2" / "result.json")
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    missing = re.search(r"(\d+) without a result", err)
    assert missing and int(missing.group(1)) == 36 - len(load_results([sweep])), err[-2000:]
