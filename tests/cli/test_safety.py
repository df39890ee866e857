"""Nothing silently wrong: a catalogue of bad inputs, each one line and a non-zero exit status with
no run recorded as completed; refused `_target_`s; statuses that tell the truth (sweeps with
failed jobs, SIGTERM, a metrics.csv that cannot be closed, dead `running` runs, file modes)."""
import gzip
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import in_process
from runner.errors import ConfigError
from runner.report import table_from_results
from runner.results import RunRecorder, is_dead, load_results
from runner.targets import register

SMOKE = ["experiment=fmnist_mlp", "ci=smoke", "device=cpu", "threads=1"]


def write_idx(path: Path, arr, truncate: int = 0) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = gzip.compress(data + arr.tobytes())
    path.write_bytes(data[:len(data) - truncate] if truncate else data)


def mnist_files(root: Path, n_labels: int = 20, label_max: int = 9, truncate: int = 0) -> Path:
    """A tiny MNIST in root/mnist: 20 training and 10 test images."""
    d = root / "mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)),
                  truncate if prefix == "train" else 0)
        labels = rng.integers(0, label_max + 1, n_labels if prefix == "train" else n)
        labels[0] = label_max
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def data_case(kind):
    """(extra args, what the message names) for a dataset made bad in one way."""
    def make(tmp):
        if kind == "subset_n":
            return [f"data_root={mnist_files(tmp / 'd')}"], ("subset.n=100", "exceeds the 18")
        if kind == "short_labels":
            root = mnist_files(tmp / "d", n_labels=15)
            return [f"data_root={root}"], ("20 images but", "15 labels")
        if kind == "label_range":
            root = mnist_files(tmp / "d", label_max=12)
            return [f"data_root={root}"], ("labels span [0, 12]", "[0, 10)")
        if kind == "truncated_gz":
            root = mnist_files(tmp / "d", truncate=100)
            return [f"data_root={root}"], ("train-images-idx3-ubyte.gz", "corrupt or truncated")
        if kind == "not_idx":
            root = mnist_files(tmp / "d")
            f = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
            f.write_bytes(gzip.compress(b"\x01\x02\x03\x04 definitely not an idx file"))
            return [f"data_root={root}"], (str(f), "not an unsigned-byte IDX")
        raise KeyError(kind)
    return make


TOUCHED = "touched_by_a_target"  # a file a refused target would have created
CASES = [  # (arguments after SMOKE, substrings of the one error line)
    (["train.batch_size=-5"], ["train.batch_size=-5", ">= 1"]),
    (["train.batch_size=0"], ["train.batch_size=0"]),
    (["phases.0.subset.fraction=-0.5"], ["phases.0.subset.fraction=-0.5", "(0, 1]"]),
    (["phases.0.subset.fraction=2"], ["phases.0.subset.fraction=2"]),
    (["phases.0.subset.fraction=0"], ["phases.0.subset.fraction=0"]),
    (["train.val_fraction=-0.1"], ["train.val_fraction=-0.1", "[0, 1)"]),
    (["train.val_fraction=1"], ["train.val_fraction=1"]),
    (["train.val_fraction=1.5"], ["train.val_fraction=1.5"]),
    (["train.epochs=0"], ["train.epochs=0", ">= 1"]),
    (["train.epochs=-3"], ["train.epochs=-3"]),
    (["train.eval_every=0"], ["train.eval_every=0"]),
    (["train.eval_batch_size=0"], ["train.eval_batch_size=0"]),
    (["train.patience=0"], ["train.patience=0"]),
    (["phases.0.subset.chunks=0"], ["phases.0.subset.chunks=0"]),
    (["phases.0.repeat=0"], ["phases.0.repeat=0"]),
    (["phases.0.subset.n=0"], ["phases.0.subset.n=0"]),
    (["phases.0.subset.fraction=0.5", "phases.0.subset.n=10"], ["fraction and n", "only one"]),
    (["phases.0.subset.chunks=2", "phases.0.repeat=5"], ["repeat=5", "chunks=2"]),
    (["phases.0.subset.access=some"], ["phases.0.subset.access='some'", "full, limited"]),
    (["phases.0.epochs=0"], ["phases.0.epochs=0"]),
    (["phases.0.lr=-1"], ["phases.0.lr=-1"]),
    (["device=cuda"], ["device='cuda'", "not available"]),
    (["device=cuda:7"], ["device='cuda:7'"]),
    (["device=banana"], ["device='banana'"]),
    (["optim.lr=-0.1"], ["optim.lr=-0.1"]),
    (["optim.lr=inf"], ["optim.lr=inf", "finite"]),
    (["optim=sgd", "optim.momentum=1.5"], ["optim.momentum=1.5", "[0, 1)"]),
    (["optim.betas=[0.9,1.5]"], ["optim.betas=1.5"]),
    (["optim.weight_decay=-1e-4"], ["optim.weight_decay=-0.0001"]),
    (["optim.name=rmsprop"], ["optim.name='rmsprop'", "adam, sgd, adamw"]),
    (["schedule.name=cosine"], ["schedule.name='cosine'"]),
    (["schedule.gamma=0"], ["schedule.gamma=0"]),
    (["schedule=step", "schedule.milestones=[0,5]"], ["schedule.milestones=0"]),
    (["train.loss=hinge"], ["train.loss='hinge'", "cross_entropy, mse"]),
    (["train.precision=fp8"], ["train.precision='fp8'"]),
    (["train.diverge_factor=0.5"], ["train.diverge_factor=0.5"]),
    (["train.checkpoint_every=0"], ["train.checkpoint_every=0"]),
    (["report.metric=accuracy"], ["report.metric='accuracy'", "test_acc"]),
    (["report.at=middle"], ["report.at='middle'", "end, best"]),
    (["report.at=end", "train.restore_best=true"], ["report.at=end", "restore_best"]),
    (["report.scale=0"], ["report.scale=0"]),
    (["train.max_batches=0"], ["train.max_batches=0"]),
    (["ci.level=bogus"], ["ci.level='bogus'"]),
    (["seed=-1"], ["seed=-1"]),
    (["threads=0"], ["threads=0"]),
    (["method=l2", "method.lambda=-1"], ["method.lambda=-1", ">= 0"]),
    (["method=swr", "method.lambda=-0.5"], ["method.lambda=-0.5"]),
    (["method=random_mask", "method.density=1.5"], ["method.density=1.5"]),
    (["method=random_mask", "method.kind=halfpruned"], ["method", "halfpruned"]),
    (["experiment=reinit_table1", "dataset.alpha=nan"], ["dataset.alpha=nan", "finite"]),
    (["optim.lr=1e6"], ["diverged", "train.diverge_factor"]),  # Adam: loss 1e19 once
    (["optim=sgd", "optim.lr=1e30"], ["diverged"]),
    (["method._target_=os.system", f"+method.command='touch {TOUCHED}'"],
     ["method._target_='os.system'", "refused"]),
    (["method._target_=subprocess.call", f"+method.args=[touch,{TOUCHED}]"],
     ["method._target_='subprocess.call'", "refused"]),
    (["dataset.reader._target_=subprocess.call", f"+dataset.reader.args=[touch,{TOUCHED}]"],
     ["dataset.reader._target_='subprocess.call'", "refused"]),
    ([f"+model_transforms=[{{_target_: os.system, command: 'touch {TOUCHED}'}}]"],
     ["model_transforms.0._target_='os.system'", "refused"]),
    (["dataset=mnist", "ci=none", "phases.0.subset.n=100", data_case("subset_n")], None),
    (["dataset=mnist", "ci=none", data_case("short_labels")], None),
    (["dataset=mnist", "ci=none", data_case("label_range")], None),
    (["dataset=mnist", "ci=none", data_case("truncated_gz")], None),
    (["dataset=mnist", "ci=none", data_case("not_idx")], None),
    (["ci=none", "dataset.reader.root=NOWHERE", "dataset.reader.download=false"],
     ["Fashion-MNIST not found", "NOWHERE"]),
    (["resume=NOWHERE"], ["resume=NOWHERE", "no result.json"]),
]


@pytest.mark.sizes  # 62 configs through the app (about 12 s): CI's second stage
def test_the_catalogue_of_bad_inputs(tmp_path, monkeypatch, capsys):
    """Every case: exit status != 0, one line on stderr naming the problem, no traceback, no
    `completed` run, and no file made by a refused target."""
    assert len(CASES) >= 40
    monkeypatch.chdir(tmp_path)
    problems = []
    for i, (args, expect) in enumerate(CASES):
        case = tmp_path / f"case{i}"
        case.mkdir()
        if callable(args[-1]):
            extra, expect = args[-1](case)
            args = args[:-1] + extra
        args = [a.replace("NOWHERE", str(case / "nowhere")) for a in args]
        out = case / "out"
        code = in_process(SMOKE + args, out)
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.strip()]
        statuses = [r["status"] for r in load_results([case])]
        ok = (code != 0 and len(lines) == 1 and lines[0].startswith("error: ")
              and all(e.replace("NOWHERE", str(case / "nowhere")) in lines[0] for e in expect)
              and "Traceback" not in printed.out + printed.err and "completed" not in statuses)
        if not ok:
            problems.append(f"{args}: exit {code}, stderr {lines}, statuses {statuses}")
    assert not problems, "\n".join(problems)
    assert not list(tmp_path.rglob(TOUCHED)), "a refused _target_ ran"


def test_config_errors_exit_2_and_leave_no_run_directory(hydra_cli, tmp_path):
    out = tmp_path / "out"
    assert hydra_cli(*SMOKE, "train.epochs=0", f"hydra.run.dir={out}") == 2
    assert not out.exists()
    assert hydra_cli(*SMOKE, "optim.lr=1e6", f"hydra.run.dir={out}") == 1  # ran, diverged
    assert json.loads((out / "result.json").read_text())["status"] == "diverged"


def unchanged():
    """A model transform (for the allow-list test): leaves the model as it is."""
    return lambda model: model


register("model_transform", unchanged)


def test_target_allowlist_admits_a_trusted_prefix(run_cfg):
    transform = "+model_transforms=[{_target_: test_safety.unchanged}]"
    with pytest.raises(ConfigError, match="test_safety.unchanged"):
        run_cfg(SMOKE + [transform])
    assert run_cfg(SMOKE + [transform, "target_allowlist=[test_safety]"])["status"] == "completed"


def sweep_rows(sweep: Path, key: str):
    rows = (sweep / "table.csv").read_text().splitlines()
    header = rows[0].split(",")
    return {r.split(",")[header.index(key)]: dict(zip(header, r.split(","))) for r in rows[1:]}


@pytest.mark.parametrize("swept,bad", [("model.activation=relu,nope", "nope"),  # fails running
                                       ("optim.lr=0.001,-1", "-1")])  # a config error
def test_sweep_with_one_failing_job_writes_its_table_and_exits_1(hydra_cli, tmp_path, capsys,
                                                                  swept, bad):
    sweep = tmp_path / "sweep"
    code = hydra_cli("-m", *SMOKE, swept, f"hydra.sweep.dir={sweep}")
    assert code == 1 and "1 failed" in capsys.readouterr().err
    rows = sweep_rows(sweep, swept.split("=")[0])
    assert rows[bad]["failed"] == "1" and rows[bad]["n"] == "0"
    good = next(v for k, v in rows.items() if k != bad)
    assert good["failed"] == "0" and good["n"] == "1"
    assert "[1 failed]" in (sweep / "table.md").read_text()


@pytest.mark.sizes  # a subprocess run (about 5 s): CI's second stage
def test_sigterm_ends_a_run_as_interrupted_with_143(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", *SMOKE, "train.max_epochs=100000",
                             "train.epochs=100000", "train.checkpoint_every=1", "ci.checkpoints=true",
                             f"hydra.run.dir={tmp_path}/run"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") > 3) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "interrupted"
    assert {"host", "pid", "heartbeat"} <= set(result)
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_status_is_written_when_closing_metrics_fails(run_cfg, tmp_path, monkeypatch):
    real = RunRecorder._open_csv

    def failing(self, mode):
        real(self, mode)
        f = self._csv

        class Full:
            def __getattr__(self, name):
                return getattr(f, name)

            def close(self):
                f.close()
                raise OSError(28, "No space left on device")
        self._csv = Full()
    monkeypatch.setattr(RunRecorder, "_open_csv", failing)
    result = run_cfg(SMOKE)
    assert result["status"] == "failed" and "No space left" in result["error"]
    [on_disk] = load_results([tmp_path])
    assert on_disk["status"] == "failed"


def test_result_files_are_group_readable(run_cfg, tmp_path):
    old = os.umask(0o022)
    try:
        run_cfg(SMOKE + ["train.save_model=true"])
    finally:
        os.umask(old)
    for name in ("result.json", "metrics.csv", "model.pt"):
        [f] = tmp_path.rglob(name)
        assert f.stat().st_mode & stat.S_IRGRP, name


def test_dead_running_runs_are_counted_apart(tmp_path):
    alive = {"status": "running", "host": os.uname().nodename, "pid": os.getpid(),
             "heartbeat": time.time()}
    gone = {**alive, "pid": 2**22 + 12345}  # above pid_max: no such process
    silent = {**alive, "host": "elsewhere", "heartbeat": time.time() - 10**5}
    assert not is_dead(alive) and is_dead(gone) and is_dead(silent)
    assert not is_dead({**alive, "host": "elsewhere"})
    runs = [{"choices": {"experiment": "e"}, "overrides": [f"seed={s}"], "summary": {}, **r}
            for s, r in enumerate([alive, gone, silent])]
    df = table_from_results(runs)
    assert df["unfinished"].tolist() == [1] and df["dead"].tolist() == [2]
