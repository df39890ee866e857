"""The runner's contract: results on disk, statuses, reproducibility, phases, tables, errors."""
import gc
import json
import logging
import math
import re
import signal
import weakref
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import needs_fashion_mnist, run_cli
from runner.config import ScheduleConfig
from runner.data.tensors import subset_indices
from runner.optim import Schedule, build_optimizer, param_groups
from runner.report import format_table, main as report_main, table_from_results
from runner.results import load_results
from methods.base import Method
from runner.errors import Interrupted, RunnerError
from runner.training.lifecycle import paper_value, run

SMOKE = ["experiment=fmnist_mlp", "ci=smoke", "device=cpu"]


def test_result_files_and_status(run_cfg, tmp_path):
    result = run_cfg(SMOKE)
    run_dir = Path(load_results([tmp_path])[0]["_dir"])
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["status"] == "completed" == result["status"]
    assert on_disk["config"]["optim"]["lr"] == 0.001  # the resolved config is recorded
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("phase,phase_name,epoch,step,lr,train_loss,train_acc,val_loss")
    assert len(rows) == 2  # header + one epoch under ci=smoke
    assert not list(run_dir.glob(".*.tmp"))  # no half-written leftovers


def test_same_seed_same_result_bitwise(run_cfg):
    a = run_cfg(SMOKE + ["seed=3", "train.max_batches=4"])
    b = run_cfg(SMOKE + ["seed=3", "train.max_batches=4"])
    c = run_cfg(SMOKE + ["seed=4", "train.max_batches=4"])
    assert a["phases"] == b["phases"]
    assert a["phases"] != c["phases"]


@needs_fashion_mnist
def test_same_seed_same_result_bitwise_on_real_data(run_cfg):
    args = ["experiment=fmnist_mlp", "device=cpu", "train.epochs=2", "phases.0.subset.n=3000", "seed=1"]
    a, b = run_cfg(args), run_cfg(args)
    assert a["status"] == "completed"
    assert a["phases"] == b["phases"]
    assert a["phases"][0]["end"]["test_acc"] > 0.6  # it learns


def test_divergence_is_a_status_not_a_crash(run_cfg):
    result = run_cfg(SMOKE + ["optim=sgd", "optim.lr=1e30", "train.max_batches=3"])
    assert result["status"] == "diverged"
    assert "loss became" in result["error"]


def test_failure_is_recorded_then_raised(run_cfg, tmp_path):
    with pytest.raises(Exception):
        run_cfg(SMOKE + ["model.activation=nope"])
    [result] = load_results([tmp_path])
    assert result["status"] == "failed" and "nope" in result["error"]


def test_warm_start_subset_is_nested_and_chunks_partition():
    half = subset_indices(100, seed=0, fraction=0.5)
    assert len(half) == 50
    limited = [subset_indices(100, 0, chunks=4, chunk=k, access="limited") for k in range(4)]
    assert torch.cat(limited).sort().values.tolist() == list(range(100))
    full = [subset_indices(100, 0, chunks=4, chunk=k, access="full") for k in range(4)]
    assert [len(f) for f in full] == [25, 50, 75, 100]
    assert set(full[1].tolist()) == set(limited[0].tolist()) | set(limited[1].tolist())


def test_phases_override_lr_epochs_and_repeat(run_cfg):
    result = run_cfg(SMOKE + [
        "+phases=[{name: a, epochs: 1, lr: 0.5}, {name: b, repeat: 2, lr: 0.25}]",
        "train.max_repeat=5"])
    names = [p["name"] for p in result["phases"]]
    assert names == ["a", "b1", "b2"]
    lrs = [row["lr"] for row in _metrics(result)]
    assert lrs == [0.5, 0.25, 0.25]


def _metrics(result):
    import csv
    with open(Path(result["_dir"]) / "metrics.csv") as f:
        return [{k: float(v) if k == "lr" else v for k, v in row.items()} for row in csv.DictReader(f)]


def test_schedules():
    step = Schedule(ScheduleConfig(name="step", gamma=0.1, milestones=[2, 4]), 1.0)
    assert [round(step.lr(e), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    exp = Schedule(ScheduleConfig(name="exponential"), 1.0, gamma=0.5)
    assert exp.lr(3) == 0.125
    plateau = Schedule(ScheduleConfig(name="plateau", gamma=0.5, patience=2), 1.0)
    for v in [1.0, 0.9, 0.95, 0.95]:
        plateau.observe(v)
    assert plateau.lr(0) == 0.5


def test_per_group_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    cfg = OmegaConf.create({"weight_decay_bias": 0.0, "weight_decay_norm": None, "weight_decay_form": "half"})
    groups = {g["kind"]: g for g in param_groups(model, cfg, 5e-4)}
    assert groups["weights"]["weight_decay"] == 5e-4 and len(groups["weights"]["params"]) == 2
    assert groups["biases"]["weight_decay"] == 0.0 and len(groups["biases"]["params"]) == 2
    assert groups["norm"]["weight_decay"] == 5e-4 and len(groups["norm"]["params"]) == 2


def test_weight_decay_form_full_is_keras_l2():
    """`full`: one SGD step on loss + lam ||w||^2 (Keras' l2(lam)) by hand: w - lr (g + 2 lam w)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2, bias=False)
    w0, x = layer.weight.detach().clone(), torch.randn(5, 3)
    cfg = OmegaConf.create({"name": "sgd", "momentum": 0.0, "nesterov": False, "fused": False,
                            "weight_decay_bias": None, "weight_decay_norm": None,
                            "weight_decay_form": "full"})
    opt = build_optimizer(layer, cfg, lr=0.1, weight_decay=0.05)
    layer(x).sum().backward()
    grad = x.sum(0).expand(2, 3)  # d/dw of sum(x w^T)
    opt.step()
    torch.testing.assert_close(layer.weight.detach(), w0 - 0.1 * (grad + 2 * 0.05 * w0))
    cfg.weight_decay_form = "half"
    assert param_groups(layer, cfg, 0.05)[0]["weight_decay"] == 0.05


def test_paper_value_lookup():
    cfg = OmegaConf.create({"paper": {"by": ["method", "train.epochs"],
                                      "values": {"l2": {"200": 0.97}}},
                            "train": {"epochs": 200}})
    assert paper_value(cfg, {"method": "l2"}) == 0.97
    assert paper_value(cfg, {"method": "swr"}) is None


def test_paper_value_takes_the_choice_first_and_only_a_number():
    cfg = OmegaConf.create({"paper": {"by": ["method", "train.epochs"], "values": {
        "l2": {"200": 0.97, "100": "n/a", "50": {"x": 1}}, "swr": 3, "None": {"200": 0.5}}},
        "train": {"epochs": 200}, "method": None})
    assert paper_value(cfg, {"method": "l2", "train.epochs": "200"}) == 0.97
    assert paper_value(cfg, {"method": "l2", "train.epochs": "100"}) is None  # not a number
    assert paper_value(cfg, {"method": "l2", "train.epochs": "50"}) is None
    assert paper_value(cfg, {"method": "swr"}) is None  # the table stops before `train.epochs`
    assert paper_value(cfg, {}) is None  # no method chosen: no cell (not the key "None")
    assert paper_value(OmegaConf.merge(cfg, {"paper": {"values": None}}), {"method": "l2"}) is None


def test_table_mean_std_and_paper():
    results = [{"choices": {"experiment": "e", "method": "m"}, "overrides": [f"seed={s}", "x=1"],
                "status": "completed", "summary": {"test_acc": v}, "paper_value": 0.5}
               for s, v in enumerate([0.1, 0.2, 0.3])]
    results.append({**results[0], "overrides": ["seed=3", "x=1"], "status": "diverged", "summary": {}})
    df = table_from_results(results)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["n"] == 3 and math.isclose(row["mean"], 0.2) and math.isclose(row["std"], 0.1)
    assert row["diverged"] == 1 and row["paper"] == 0.5 and math.isclose(row["delta"], -0.3)
    assert "0.2000 ± 0.1000 (0.5000) [1 diverged]" in format_table(df)


def test_table_rows_keep_the_order_of_the_runs():
    cells = [(m, a) for m in ("bl", "welsr", "dsd") for a in ("0.5", "1.0", "2.0")]
    results = [{"choices": {"experiment": "e", "method": m}, "overrides": [f"a={a}", f"seed={s}"],
                "status": "completed", "summary": {"test_acc": 0.1}} for m, a in cells for s in (0, 1)]
    df = table_from_results(results)
    assert list(zip(df["method"], df["a"])) == cells


@pytest.mark.parametrize("convention,factor", [("code", 2.0), ("text", 1.0)])
def test_l2_penalty_gradient(convention, factor):
    """code: lam * ||theta||^2 (gradient 2 lam theta); text: lam/2 * ||theta||^2 (lam theta)."""
    from methods.l2 import L2

    model = torch.nn.Linear(3, 2)
    m = L2(lam=0.1, convention=convention)
    m.setup(type("Ctx", (), {"model": model})())
    loss = m.loss_term(None)
    squares = model.weight.detach().square().sum() + model.bias.detach().square().sum()
    assert loss.item() == pytest.approx(factor / 2 * 0.1 * squares.item(), rel=1e-6)
    loss.backward()
    assert torch.allclose(model.weight.grad, factor * 0.1 * model.weight)
    assert torch.allclose(model.bias.grad, factor * 0.1 * model.bias)


@pytest.mark.sizes  # a 3-job sweep in a subprocess (about 8 s): CI's second stage
def test_cli_multirun_aggregates_seeds_and_survives_divergence(tmp_path):
    out = run_cli("-m", "experiment=fmnist_mlp", "ci=smoke", "seed=0,1,2", "optim=sgd",
                  "optim.lr=0.01,1e30", "train.max_batches=3", f"hydra.sweep.dir={tmp_path}/sweep",
                  cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]  # the table is written, the exit says not all completed
    assert out.stderr.strip().splitlines()[-1] == "error: not every job completed (3 diverged); see the table"
    table = (tmp_path / "sweep" / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) == {"optim.lr", "0.01", "1e+30"}  # the constant keys are no columns
    assert " ± " in rows["0.01"] and "[" not in rows["0.01"]  # three seeds, none lost
    assert "[3 diverged]" in rows["1e+30"]  # counted, not crashing the sweep
    assert "Same in every run: experiment=fmnist_mlp" in table
    assert report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rebuilt")]) == 0
    assert (tmp_path / "rebuilt.md").read_text() == table
    assert (tmp_path / "sweep" / "table.tex").read_text().startswith("\\begin{table}")


@pytest.mark.parametrize("override,expect", [
    ("experiment=doesnotexist", "fmnist_mlp"),
    ("method=nope", "vanilla"),
    ("optim.lr=abc", "optim.lr"),
    ("optim.lrr=0.1", "did you mean optim.lr"),
])
def test_bad_config_gives_short_message(hydra_cli, capsys, monkeypatch, tmp_path, override, expect):
    monkeypatch.chdir(tmp_path)  # in-process (the console script and `python -m runner` print
    assert hydra_cli(override) != 0  # the same: test_cli_help); the subprocess runs: `sizes`
    text = "".join(capsys.readouterr())
    assert expect in text
    assert "Traceback" not in text
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_sweep_key_that_only_a_swept_group_has_gets_a_hint(hydra_cli, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("-m", "experiment=reinit_table1", "method=welsr,wels",
                     "method.eta_init=default") != 0
    assert "method.eta_init='choice(default)'" in capsys.readouterr().err
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


def test_missing_dataset_offline_is_one_line_before_a_run_directory(hydra_cli, capsys,
                                                                     monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("experiment=fmnist_mlp", "dataset=mnist", f"data_root={tmp_path}/nowhere",
                     "dataset.reader.download=false") == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "not found" not in out  # printed once
    assert err.startswith(f"error: dataset MNIST not found (looked in: {tmp_path}/nowhere/mnist")
    assert "dataset.reader.root=DIR" in err and "download=true" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no run directory


@pytest.mark.sizes  # the real default run, 1,800 steps in a subprocess (about 8 s)
def test_default_command_prints_a_table(tmp_path):
    """The README's `python -m runner`: offline, on data the install generates (the synthetic
    task), a table with the paper's value beside ours."""
    out = run_cli(cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Alabdulmohsin et al. 2021, Table 1" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("| reinit_table1"))
    assert [c.strip() for c in row.split("|")][2] == "1.0"  # alpha 1, method LW, seed 0
    assert row.rstrip().endswith("(72.3) |")  # ours (the paper's)


def test_every_package_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")

    root = Path(__file__).parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root / "src").parts)
             for p in (root / "src").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"


# -- run(): the record, reuse, and how an ending is recorded ------------------------------------
class Stop(Method):
    """Ends the run in its setup hook with the exception `kind`."""

    def __init__(self, kind):
        self.kind = kind

    def setup(self, ctx):
        raise {"told": RunnerError("train.x=3 is refused; lower it"), "bug": RuntimeError("a bug"),
               "signal": Interrupted(signal.SIGTERM), "exit": SystemExit(3)}[self.kind]


def test_a_run_records_what_it_is_and_a_completed_one_is_reused(compose_cfg, tmp_path):
    cfg = compose_cfg(SMOKE + ["seed=5"])
    result = run(cfg, tmp_path / "a" / "run", choices={"dataset": "fashion_mnist"}, overrides=["seed=5"])
    assert (result["status"], result["name"], result["seed"]) == ("completed", cfg.name, 5)
    assert result["choices"] == {"dataset": "fashion_mnist"} and result["overrides"] == ["seed=5"]
    assert result["device"] == "cpu" and result["deterministic"] is cfg.train.deterministic
    assert result["precision"] == cfg.train.precision == "fp32"
    again = compose_cfg(SMOKE + ["seed=5", "resume=auto"])
    elsewhere = tmp_path / "b" / "run"
    reused = run(again, elsewhere, choices={"dataset": "fashion_mnist"}, search_root=tmp_path / "a")
    assert reused["reused_from"] == str(tmp_path / "a" / "run")  # found below search_root
    assert json.loads((elsewhere / "result.json").read_text())["phases"] == result["phases"]


def test_a_divergence_is_logged(compose_cfg, tmp_path, caplog):
    cfg = compose_cfg(SMOKE + ["optim=sgd", "optim.lr=1e30", "train.max_batches=2"])
    with caplog.at_level(logging.WARNING, logger="runner"):
        assert run(cfg, tmp_path)["status"] == "diverged"
    assert any(r.getMessage().startswith("diverged: training loss became") for r in caplog.records)


@pytest.mark.parametrize("kind,status,error", [
    ("told", "failed", "RunnerError: train.x=3 is refused; lower it"),
    ("bug", "failed", "RuntimeError: a bug"),
    ("signal", "interrupted", "Interrupted: interrupted by SIGTERM"),
    ("exit", "interrupted", "SystemExit: 3")])
def test_only_a_bug_keeps_its_traceback(compose_cfg, tmp_path, kind, status, error):
    cfg = compose_cfg(SMOKE + ["target_allowlist=[test_runner]",
                               f"extra_methods=[{{_target_: test_runner.Stop, kind: {kind}}}]"])
    with pytest.raises(BaseException) as raised:
        run(cfg, tmp_path)
    assert f"{type(raised.value).__name__}: {raised.value}" == error
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["status"], result["error"]) == (status, error)
    assert ("traceback" in result) is (kind == "bug")
    assert 0 <= result["wall_time_s"] < 60 and result["summary"] == {}  # stopped in setup: no phase
    if kind == "bug":
        assert "RuntimeError: a bug" in result["traceback"] and "in setup" in result["traceback"]


def test_a_run_refused_before_it_starts_is_recorded_only_when_asked(compose_cfg, tmp_path, monkeypatch):
    import runner.results
    from runner.errors import ConfigError
    opened = []
    monkeypatch.setattr(runner.results, "open_tracker", lambda *a: opened.append(a))
    cfg = compose_cfg(SMOKE + ["seed=4", "device=nope"])
    with pytest.raises(ConfigError, match="device='nope'"):
        run(cfg, tmp_path / "quiet")  # by default: nothing on disk
    assert not (tmp_path / "quiet").exists()
    with pytest.raises(ConfigError):
        run(cfg, tmp_path / "a", choices={"m": "x"}, overrides=["seed=4"], record_invalid=True)
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert (result["name"], result["seed"], result["choices"], result["overrides"]) == (
        cfg.name, 4, {"m": "x"}, ["seed=4"])
    assert result["config"] is None and result["status"] == "failed" and "nope" in result["error"]
    assert opened == []  # a refused run has no tracker


def test_a_checkpoint_of_another_config_is_refused_with_the_fix(compose_cfg, tmp_path, monkeypatch):
    from runner import checkpoint
    from runner.errors import ConfigError
    (tmp_path / checkpoint.CHECKPOINT_FILE).write_bytes(b"")
    monkeypatch.setattr(checkpoint, "load", lambda path: {"identity": "another", "position": {"phase": 0}})
    cfg = compose_cfg(SMOKE + [f"resume={tmp_path}"])
    with pytest.raises(ConfigError, match=re.escape(
            f"resume={tmp_path}: the checkpoint in {tmp_path} belongs to another config; resume "
            "with the run's own overrides only")):
        run(cfg, tmp_path / "new")


def test_a_completed_run_logs_its_name_and_drops_its_checkpoint(compose_cfg, tmp_path, caplog):
    from runner import checkpoint
    cfg = compose_cfg(SMOKE)
    (tmp_path / checkpoint.CHECKPOINT_FILE).write_bytes(b"stale")  # as a run's last checkpoint
    with caplog.at_level(logging.INFO, logger="runner"):
        assert run(cfg, tmp_path)["status"] == "completed"
    assert not (tmp_path / checkpoint.CHECKPOINT_FILE).exists()  # complete: nothing to resume
    assert any(r.getMessage().startswith(f"run {cfg.name}, seed {cfg.seed}\n") for r in caplog.records)


class Holds(Method):
    """Fails in its setup hook while a local holds a tensor."""

    def setup(self, ctx):
        held = torch.ones(3)
        Holds.ref = weakref.ref(held)
        raise RuntimeError("a bug")


def test_a_failed_run_lets_go_of_its_frames_memory(compose_cfg, tmp_path):
    cfg = compose_cfg(SMOKE + ["target_allowlist=[test_runner]", "extra_methods=[{_target_: test_runner.Holds}]"])
    with pytest.raises(RuntimeError) as raised:
        run(cfg, tmp_path)
    gc.collect()
    assert raised.value.__traceback__ is not None and Holds.ref() is None  # a sweep's next job gets it


def test_prepare_takes_the_first_gpu_by_default(compose_cfg, monkeypatch):
    from runner.training.lifecycle import prepare
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose_cfg(SMOKE + ["device=auto"])
    assert prepare(cfg)[1] == torch.device("cuda:0")
    assert prepare(cfg, 3)[1] == torch.device("cuda:1")


def test_result_json_carries_the_papers_value_and_source(run_cfg):
    result = run_cfg(SMOKE + ["paper.by=[name]", "++paper.values={fmnist_mlp: 0.5, other: 0.25}",
                              "paper.source='Table 9, row 1'"])
    assert (result["paper_value"], result["paper_source"]) == (0.5, "Table 9, row 1")
    assert json.loads((Path(result["_dir"]) / "result.json").read_text())["paper_value"] == 0.5
