"""Tables and analyses keyed by what ran (each run's resolved config), not by what was typed:
one row per resolved config, method options beside the method, the seed count of the caption,
test levels without Δ, and the reinitialization ablation selected by resolved values."""
import json
import math

import pytest

from conftest import run_cli
from runner.analysis.reinit import ablation
from runner.options import method_configs
from runner.report import format_table, main as report_main, table_from_results
from runner.tables import cell_keys, group_runs

TUNED = {"l2": {"lambda": 1e-4}, "swr": {"lambda": 1e-3}, "classifier": "head"}


def run(method, seed, acc, lam=None, typed=(), level="none", paper=None, experiment="e",
        target=None):
    """A run as result.json holds it: group choices, typed overrides, the resolved config."""
    node = {"_target_": target or method_configs()[method][0], "params": "all"}
    if lam is not None:
        node["lambda"] = lam
    config = {"seed": seed, "device": "cpu", "method": node, "tuned": TUNED,
              "dataset": {"reader": {"seed": seed}}, "optim": {"lr": 0.001},
              "ci": {"level": level}, "report": {"metric": "test_acc"}}
    return {"choices": {"experiment": experiment, "method": method}, "status": "completed",
            "overrides": [f"method={method}", *typed, f"seed={seed}"], "config": config,
            "summary": {"test_acc": acc}, "paper_value": paper, "seed": seed, "phases": [{}]}


def md(text):
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|:")]


def two_sweeps():
    """`method=vanilla,l2 seed=0,1,2` and `method=l2 method.lambda=1e-4,1e-3 seed=0,1,2`: the
    first sweep's l2 ran at its tuned 1e-4, the same config as the second's 1e-4."""
    first = [run(m, s, 0.5 + 0.01 * s, lam=None if m == "vanilla" else 1e-4)
             for m in ("vanilla", "l2") for s in range(3)]
    second = [run("l2", s, 0.6 + 0.01 * s, lam=lam, typed=[f"method.lambda={lam}"])
              for lam in (1e-4, 1e-3) for s in range(3)]
    return first + second


def test_two_sweeps_give_one_row_per_resolved_config_with_its_lambda():
    text = format_table(table_from_results(two_sweeps()))
    rows = md(text)
    assert rows[0] == ["method", "test_acc"]  # no column of typed overrides
    assert [r[0] for r in rows[1:]] == ["vanilla", "l2 (lambda=0.0001)", "l2 (lambda=0.001)"]
    assert rows[2][1] == "0.6100 ± 0.0100"  # the later sweep's runs of the same config
    head = text.split("\n\n")[0].splitlines()
    assert head[0] == "test_acc at each run's last epoch; ours: mean ± std over 3 seeds; no paper values"
    assert "Methods at the experiment's tuned values unless their label says otherwise: " \
           "l2 lambda=0.0001" in head
    assert text.endswith("3 duplicate run(s) of the same config and seed skipped")


def test_a_method_of_another_target_is_a_cell_of_its_own_named_by_it():
    """`method=vanilla method._target_=mylab.Mine`: not merged with vanilla's runs, nor named
    vanilla alone."""
    runs = [run("vanilla", s, 0.5) for s in range(2)] + [
        run("vanilla", s, 0.9, target="mylab.Mine", typed=["method._target_=mylab.Mine"])
        for s in range(2)]
    assert list(table_from_results(runs)["method"]) == ["vanilla", "vanilla (_target_=mylab.Mine)"]
    assert list(table_from_results(runs[2:])["method"]) == ["vanilla (_target_=mylab.Mine)"]


def test_a_method_off_its_tuned_value_says_so_and_loses_the_papers_value():
    runs = [run("l2", 0, 0.5, lam=1e-2, paper=0.9), run("l2", 1, 0.7, lam=1e-2, paper=0.9),
            run("swr", 0, 0.8, lam=1e-3, paper=0.95)]
    df = table_from_results(runs)
    assert list(df["method"]) == ["l2 (lambda=0.01)", "swr"]  # swr at its tuned value: no label
    assert math.isnan(df["paper"].iloc[0]) and df["paper"].iloc[1] == 0.95
    assert "ours: mean ± std over up to 2 seeds ([n=k]: fewer)" in format_table(df)


def test_keys_that_vary_are_columns_and_keys_that_follow_the_seed_are_not():
    runs = [run("vanilla", s, 0.5) for s in (0, 1)]
    runs[1]["config"]["optim"]["lr"] = 0.01
    keys = cell_keys(runs)
    assert keys == [{"experiment": "e", "method": "vanilla", "optim.lr": "0.001"},
                    {"experiment": "e", "method": "vanilla", "optim.lr": "0.01"}]
    # a key that differs between experiments only is the experiment's, not a column
    other = run("vanilla", 0, 0.5, experiment="f")
    other["config"]["optim"]["lr"] = 0.1
    assert "optim.lr" not in cell_keys([runs[0], other])[1]


def test_group_runs_by_experiment_and_cell():
    runs = two_sweeps() + [run("vanilla", 0, 0.4, experiment="f")]
    groups = group_runs(runs)
    assert list(groups) == ["e", "f"]
    sizes = {dict(k)["method"]: len(v) for k, v in groups["e"].items()}
    assert sizes == {"vanilla": 3, "l2 (lambda=0.0001)": 6, "l2 (lambda=0.001)": 3}


def test_a_test_level_table_says_so_and_prints_no_delta():
    runs = [run("l2", s, 0.5, lam=1e-4, level="smoke", paper=0.9) for s in (0, 1)]
    df = table_from_results(runs)
    text = format_table(df)
    assert "Test level ci=smoke: shrunk runs that check the code, not the paper's numbers; " \
           "no Δ against the paper" in text
    assert "Δ" not in md(text)[0] and math.isnan(df["delta"].iloc[0])
    assert "0.5000 ± 0.0000 (0.9000)" in text  # the paper's value for reference
    real = table_from_results([run("l2", 0, 0.5, lam=1e-4, paper=0.9)])
    assert md(format_table(real))[0][-2:] == ["test_acc", "Δ"]


def lw_run(tmp_path, i, dataset, rescale, acc):
    r = {"choices": {"experiment": "reinit_ablation", "method": "lw"}, "status": "completed",
         "overrides": [f"dataset={dataset}", f"method.rescale={rescale}".lower()],
         "summary": {"test_acc": acc}, "phases": [{"end": {}}],
         "config": {"seed": 0, "dataset": {"name": dataset},
                    "method": {"_target_": "methods.lw.LW", "rescale": rescale, "n": 1}}}
    (tmp_path / str(i)).mkdir()
    (tmp_path / str(i) / "result.json").write_text(json.dumps(r))


def test_ablation_reads_the_variant_from_the_resolved_options(tmp_path):
    """The documented recipe sweeps method.rescale=true,false: full LW is the run whose
    options are the experiment's own (rescale true), whatever the command line said."""
    for i, (d, rescale, acc) in enumerate([("a", True, 0.8), ("a", False, 0.7), ("b", True, 0.6),
                                           ("b", False, 0.65), ("c", True, 0.9)]):
        lw_run(tmp_path, i, d, rescale, acc)
    df = ablation([tmp_path])
    assert df.to_dict("records") == [{"variant": "rescale=False", "cells": 2, "P(LW better)": 0.5}]


@pytest.mark.e2e  # two smoke sweeps and the report in subprocesses (about 15 s)
def test_report_over_two_real_sweeps(tmp_path):
    common = ["experiment=swr_gen_fmnist_mlp", "seed=0,1", "ci=smoke"]
    for name, args in (("a", ["method=vanilla,l2"]), ("b", ["method=l2", "method.lambda=1e-5,1e-3"])):
        out = run_cli("-m", *common, *args, f"hydra.sweep.dir={tmp_path / name}", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
    out = run_cli(str(tmp_path / "a"), str(tmp_path / "b"), module="runner.report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = md(out.stdout)
    assert rows[0] == ["method", "test_acc"]
    assert [r[0] for r in rows[1:]] == ["Vanilla", "L2 (lambda=1e-05)", "L2 (lambda=0.001)"]
    assert "ours: mean ± std over 2 seeds" in out.stdout and "Test level ci=smoke" in out.stdout
    assert "2 duplicate run(s) of the same config and seed skipped" in out.stdout


def test_weight_ratios_pair_each_run_with_the_baseline_of_its_resolved_cell_and_seed(tmp_path):
    """Fig. 6's ratio divides by BL's weight size of the same seed and the same resolved values
    (here alpha), however the runs were typed."""
    from runner.analysis.reinit import weight_ratios
    sizes = {("bl", 0.5, 0): 2.0, ("bl", 2.0, 0): 4.0, ("lw", 0.5, 0): 3.0, ("lw", 2.0, 0): 2.0}
    for i, ((method, alpha, seed), size) in enumerate(sizes.items()):
        r = {"choices": {"experiment": "reinit_sec4_synthetic", "method": method},
             "status": "completed", "seed": seed, "overrides": [f"method={method}"],
             "config": {"seed": seed, "dataset": {"alpha": alpha}, "method": {"_target_": method}},
             "summary": {"test_acc": 0.5}, "phases": [{"end": {}, "weight_size": size}]}
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "result.json").write_text(json.dumps(r))
    df = weight_ratios([tmp_path])
    assert sorted(df["ratio"]) == [0.5, 1.5]


def test_values_that_follow_from_the_shown_keys_are_no_columns():
    """Table 2's setting sets dropout and augmentation, the dataset its class count: the grid
    keeps the paper's rows; a value nobody typed that differs within a cell stays."""
    runs = []
    for setting, dropout in (("none", 0.0), ("aug_dropout", 0.25)):
        for dataset, classes in (("pets", 37), ("cars", 196)):
            r = run("bl", 0, 0.5)
            r["choices"]["dataset"] = dataset
            r["config"].update(tuned={**TUNED, "setting": setting},
                               model={"dropout": dropout, "num_classes": classes},
                               dataset={"name": dataset, "reader": {"seed": 0}},
                               report={"rows": ["tuned.setting", "dataset.name"], "cols": ["method"]})
            runs.append(r)
    keys = cell_keys(runs, ["tuned.setting", "dataset.name"])
    assert set(keys[0]) == {"experiment", "method", "tuned.setting", "dataset.name"}
    runs.append(json.loads(json.dumps(runs[0])))  # another seed of a cell, at another lr
    runs[-1]["seed"] = runs[-1]["config"]["seed"] = 1
    runs[-1]["config"]["optim"]["lr"] = 0.1
    keys = cell_keys(runs, ["tuned.setting", "dataset.name"])
    assert keys[0]["optim.lr"] == "0.001" and keys[-1]["optim.lr"] == "0.1"
