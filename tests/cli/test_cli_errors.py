"""Errors a user meets at the command line: one line each, printed once, exit status 2; pipes
closed early; metrics that are not finite."""
import json
import math
import subprocess
import sys

import pytest

from conftest import run_cli


def test_misspelled_experiment_is_one_line_with_a_suggestion(tmp_path):
    out = run_cli("experiment=fmnist_mpl", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stdout == ""
    assert out.stderr.startswith("error: experiment=fmnist_mpl is no option of 'experiment'")
    assert "did you mean experiment=fmnist_mlp?" in out.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args,expect", [
    (["method=l3"], ["method=l3 is no option of 'method'", "valid: bl, ", " l2, "]),
    (["-m", "method=l2,l3"], ["method=l3 is no option of 'method'"]),
    (["train.epoch=5"], ["unknown key 'train.epoch' (did you mean train.epochs?)"]),
    (["train.epochs=abc"], ["train.epochs=abc", "could not be converted to Integer"]),
    (["train.epochs=0"], ["train.epochs=0 is invalid; valid: >= 1"]),
])
def test_composition_errors_are_one_line_printed_once(hydra_cli, capsys, monkeypatch, tmp_path,
                                                      args, expect):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli(*args) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for text in expect:
        assert text in err
    assert expect[0] not in out  # not also logged to the console
    assert "+train" not in err and "HYDRA_FULL_ERROR" not in err  # no advice contradicting ours
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no run directory


@pytest.mark.sizes  # a subprocess pipeline (about 3 s): CI's second stage
def test_report_into_a_closed_pipe_ends_quietly(tmp_path):
    from runner.results import write_json_atomic

    for seed in range(3):
        d = tmp_path / "sweep" / str(seed)
        d.mkdir(parents=True)
        write_json_atomic(d / "result.json", {
            "status": "completed", "name": "fmnist_mlp", "seed": seed,
            "choices": {"experiment": "fmnist_mlp", "method": "vanilla"},
            "overrides": [f"seed={seed}"], "summary": {"test_acc": 0.5}, "phases": []})
    proc = subprocess.run(f"{sys.executable} -m runner.report sweep --format csv | head -n 0",
                          shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stderr == ""


def test_a_fisher_score_of_inf_is_stored_and_read_back(tmp_path):
    from runner.analysis import zilly_figures
    from runner.results import load_results, write_json_atomic

    for i, fisher in enumerate([math.inf, 2.0, 1.0, -math.inf]):
        d = tmp_path / "runs" / str(i)
        d.mkdir(parents=True)
        write_json_atomic(d / "result.json", {
            "status": "completed", "seed": i, "name": "x", "choices": {"method": "vanilla"},
            "overrides": [f"seed={i}"], "config": {}, "summary": {"test_loss": math.nan},
            "phases": [{"end": {"test_loss": 1.0 + i}, "frozen_filters": i},
                       {"end": {"test_loss": 1.0 + i}, "fisher": fisher}]})
    json.loads((tmp_path / "runs" / "0" / "result.json").read_text())  # strict JSON
    runs = load_results([tmp_path / "runs"])
    assert [r["phases"][1]["fisher"] for r in runs] == [math.inf, 2.0, 1.0, -math.inf]
    assert math.isnan(runs[0]["summary"]["test_loss"])
    out = tmp_path / "pareto.png"
    assert zilly_figures.main(["pareto", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
