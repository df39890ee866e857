"""A catalogue of hostile and careless inputs beyond tests/cli/test_safety.py's: targets, values
refused before a run directory exists, run directories read on resume. Each case asserts its exit
status, one line on stderr, no traceback, and no run directory left (exit 2) or an honest status."""
import json
from pathlib import Path

import pytest

from conftest import in_process
from runner.results import load_results

SMOKE = ["experiment=fmnist_mlp", "ci=smoke", "device=cpu", "threads=1"]
TARGET = "{_target_: %s}"

TARGETS = [  # (overrides, substrings of the line); all exit 2
    ([f"+extra_methods=[{TARGET % t}]"], [f"extra_methods.0._target_='{t}' is refused"])
    for t in ("os.system", "torch.os.system", "runner.checkpoint.shutil.rmtree", "runner.app.main",
              "runner.checkpoint.save", "methods.base.Method", "methods.vanilla.torch",
              "runner.models.mlp.mlp", "torch.save", "torch.load", "torch.hub.load",
              "torch.ops.load_library", "torch.utils.cpp_extension.load_inline",
              "torchvision.io.write_png", "builtins.eval", "importlib.import_module",
              "hydra.utils.instantiate", "omegaconf.OmegaConf.save", "pickle.loads", "x")
] + [
    ([f"model._target_={t}"], [f"model._target_='{t}' is refused"])
    for t in ("methods.vanilla.Vanilla", "runner.data.readers.mnist", "runner.models.mlp.nn.Linear",
              "runner.models.base.Network", "torch.nn.Linear")
] + [
    ([f"dataset.reader._target_={t}"], [f"dataset.reader._target_='{t}' is refused"])
    for t in ("runner.models.mlp.mlp", "runner.data.readers.read_idx", "runner.data.readers.torch.load",
              "numpy.load", "runner.data.transforms.HFlip")
] + [
    ([f"+model_transforms=[{TARGET % 'runner.data.transforms.HFlip'}]"], ["model_transforms.0._target_"]),
    ([f"+dataset.augment=[{TARGET % 'runner.models.transforms.filter_basis'}]"], ["dataset.augment.0._target_"]),
    ([f"+phases.0.transform=[{TARGET % 'methods.l2.L2'}]"], ["phases.0.transform.0._target_"]),
    ([f"+tuned.x={TARGET % 'shutil.rmtree'}"], ["tuned.x._target_='shutil.rmtree' is refused"]),
    (["+extra_methods=[{_target_: methods.l2.L2, _partial_: true}]"], ["extra_methods.0._partial_ is refused"]),
    (["+extra_methods=[{_target_: methods.l2.L2, _args_: [1]}]"], ["extra_methods.0._args_ is refused"]),
    (["+extra_methods=[{_target_: methods.l2.L2, lam: {_target_: methods.l2.L2}}]"], ["nested _target_"]),
    (["target_allowlist=[os]"], ["target_allowlist.0='os' is refused"]),
    (["target_allowlist=[sys]"], ["target_allowlist.0='sys' is refused"]),
    (["target_allowlist=['a b']"], ["target_allowlist.0='a b' is refused"]),
]
VALUES = [  # refused before a run directory exists: exit 2
    (["seed=4294967296"], ["seed=4294967296", "[0, 4294967295]"]),
    (["seed=18446744073709551616"], ["seed=18446744073709551616"]),
    (["seed=99999999999999999999999"], ["seed="]),
    (["train.val_seed=4294967296"], ["train.val_seed=4294967296"]),
    (["train.val_seed=-1"], ["train.val_seed=-1"]),
    (["train.epochs=9223372036854775808"], ["train.epochs=9223372036854775808", "64-bit"]),
    (["train.batch_size=100000000000000000000"], ["train.batch_size=", "64-bit"]),
    (["optim.lr=1e309"], ["optim.lr=inf", "finite"]),
    (["optim.weight_decay=-1e309"], ["optim.weight_decay=-inf"]),
    (["dataset.mean=[1e999]"], ["dataset.mean.0=inf", "finite"]),
    (["train.diverge_factor=nan"], ["train.diverge_factor=nan"]),
    (["phases=[]"], ["phases=[]", "at least one phase"]),
    (["dataset.num_classes=0"], ["dataset.num_classes=0", ">= 1"]),
    (["dataset.num_classes=-3"], ["dataset.num_classes=-3"]),
    (["dataset.num_classes=2.5"], ["dataset.num_classes=2.5"]),
    (["dataset.shape=[0,28,28]"], ["dataset.shape=[0, 28, 28]"]),
    (["dataset.shape=[1,-28,28]"], ["dataset.shape="]),
    (["optim.betas=[0.9]"], ["optim.betas has 1 values", "two"]),
    (["optim.betas=[0.9,0.99,0.999]"], ["optim.betas has 3 values"]),
    (["optim.betas=[]"], ["optim.betas has 0 values"]),
    (["optim.nesterov=true"], ["optim.nesterov=true needs optim.name=sgd"]),
    (["optim=sgd", "optim.momentum=0", "optim.nesterov=true"], ["optim.nesterov=true", "momentum 0"]),
    (["schedule.name=step_iter", "schedule.step_size=0"], ["schedule.step_size=0", "step_iter"]),
    (["train.loss=mse", "train.label_smoothing=0.1"], ["train.label_smoothing=0.1", "cross_entropy"]),
    (["train.label_smoothing=1.0"], ["train.label_smoothing=1.0", "[0, 1)"]),
    (["+train.epoch=3"], ["train.epoch is not an option", "did you mean train.epochs?"]),
    (["+optim.lrr=0.1"], ["optim.lrr is not an option", "did you mean optim.lr?"]),
    (["+schedule.gama=0.5"], ["schedule.gama is not an option", "schedule.gamma"]),
    (["+report.metrc=test_acc"], ["report.metrc is not an option", "report.metric"]),
    (["+ci.widht=2"], ["ci.widht is not an option", "ci.width"]),
    (["+phases.0.epoch=2"], ["phases.0.epoch is not an option", "phases.0.epochs"]),
    (["+phases.0.subset.fractoin=0.5"], ["phases.0.subset.fractoin", "fraction"]),
    (["+distributed.enable=true"], ["distributed.enable is not an option", "distributed.enabled"]),
    (["+sed=1"], ["sed is not an option", "did you mean seed?"]),
    (["train.epochs=${nope}"], ["nope"]),
    (["+tuned.x=${oc.env:RUNNER_SURELY_UNSET_VARIABLE}"], ["RUNNER_SURELY_UNSET_VARIABLE"]),
    (["optim.lr=${optim.lr}"], ["optim.lr"]),  # a cycle
    (["method=l2", "+method.lamda=0.1"], ["method.lamda is not an option", "method.lambda"]),
    (["seed=-5"], ["seed=-5"]),
    (["+model.hiden=[3]"], ["model: got an unexpected keyword argument 'hiden'", "runner.models.mlp.mlp"]),
    (["+dataset.reader.rot=x"], ["dataset.reader: got an unexpected keyword argument 'rot'"]),
    (["+dataset.augment=[{_target_: runner.data.transforms.HFlip, q: 1}]"], ["dataset.augment.0: got an"]),
    (["dataset.shape=[]"], ["dataset.shape=[]"]),
    (["+datasets.more={num_classes: 0}"], ["datasets.more has no reader, shape"]),
    (["+datasets.more={reader: {_target_: runner.data.synthetic.shapes_only, shape: [1], num_classes: 2}, shape: [1], num_classes: 0}"],
     ["datasets.more.num_classes=0"]),
    (["dataset.num_classes=true"], ["dataset.num_classes=True"]),
    (["phases.0.repeat=9223372036854775808"], ["phases.0.repeat=9223372036854775808", "64-bit"]),
    (["train.eval_batch_size=-9223372036854775809"], ["train.eval_batch_size=-9223372036854775809"]),
    (["+extra_methods=[{_target_: methods.l2.L2, _recursive_: false}]"], ["_recursive_ is refused"]),
    (["dataset=imagenet_stream", "dataset.stream.size=128"], ["dataset.stream.size=128", "[3, 224, 224]"]),
]


def check(case: Path, args, expect, code, printed, keep_dir=None) -> list:
    """What went wrong with one case ([] when it held)."""
    lines = [line for line in printed.err.splitlines() if line.strip()]
    statuses = [r["status"] for r in load_results([case])] if keep_dir is None else []
    problems = []
    if code != 2:
        problems.append(f"exit {code}")
    if len(lines) != 1 or not lines[0].startswith("error: ") or \
            not all(e in lines[0] for e in expect):
        problems.append(f"stderr {lines}")
    if "Traceback" in printed.out + printed.err:
        problems.append("a traceback")
    if keep_dir is None and (case / "out").exists():
        problems.append("a run directory was left")
    if "completed" in statuses and keep_dir is None:
        problems.append(f"statuses {statuses}")
    return [f"{args}: {', '.join(problems)}"] if problems else []


@pytest.mark.sizes  # about 110 configs through the app: CI's second stage
def test_the_catalogue_of_refused_configs(tmp_path, monkeypatch, capsys):
    assert len(TARGETS) + len(VALUES) + len(RECORDS) >= 100
    monkeypatch.chdir(tmp_path)
    problems = []
    for i, (args, expect) in enumerate(TARGETS + VALUES):
        case = tmp_path / f"case{i}"
        code = in_process(SMOKE + args, case / "out")
        problems += check(case, args, expect, code, capsys.readouterr())
    assert not problems, "\n".join(problems)


RECORDS = [  # (what result.json holds, extra args on resume, substrings)
    ("{not json", [], ["cannot be read", "JSONDecodeError"]),
    ("", [], ["cannot be read"]),
    ("[1, 2]", [], ["records no list of overrides"]),
    (json.dumps({"status": "interrupted"}), [], ["records no list of overrides"]),
    (json.dumps({"overrides": "seed=1"}), [], ["records no list of overrides"]),
    (json.dumps({"overrides": [1, 2]}), [], ["records no list of overrides"]),
    (json.dumps({"overrides": SMOKE + ["hydra.run.dir=/tmp"]}), [], ["records the override 'hydra.run.dir=/tmp'"]),
    (json.dumps({"overrides": SMOKE + ["resume=/tmp"]}), [], ["records the override 'resume=/tmp'"]),
    (json.dumps({"overrides": SMOKE + ["--cfg"]}), [], ["records the override '--cfg'"]),
    (json.dumps({"overrides": SMOKE + ["nokey=1"]}), [], ["do not compose"]),
    (json.dumps({"overrides": SMOKE + ["+extra_methods=[{_target_: os.system}]"]}), [],
     ["extra_methods.0._target_='os.system' is refused"]),
    (json.dumps({"overrides": SMOKE + ["train.epochs=0"]}), [], ["train.epochs=0"]),
    (json.dumps({"status": "interrupted", "overrides": SMOKE}), ["seed=3"], ["'seed=3' would change the run"]),
    (json.dumps({"status": "interrupted", "overrides": SMOKE}), ["+train.epoch=3"], ["would change the run"]),
    (json.dumps({"status": "completed", "overrides": SMOKE}), ["device=cpu"], ["the run completed"]),
    (json.dumps({"status": "interrupted", "overrides": SMOKE}), [], ["no checkpoint.pt there"]),
]


@pytest.mark.sizes
def test_run_directories_read_on_resume_are_refused_whole(tmp_path, monkeypatch, capsys):
    """A corrupt, incomplete or hostile record: one line, exit 2, and nothing in DIR changes."""
    monkeypatch.chdir(tmp_path)
    problems = []
    for i, (record, extra, expect) in enumerate(RECORDS):
        case = tmp_path / f"rec{i}"
        run_dir = case / "run"
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(record)
        before = sorted(p.name for p in run_dir.iterdir())
        code = in_process([f"resume={run_dir}"] + extra, case / "fresh")
        problems += check(case, extra, expect, code, capsys.readouterr(), keep_dir=run_dir)
        if code != 2:
            problems.append(f"{record[:40]}: exit {code}")
        if sorted(p.name for p in run_dir.iterdir()) != before or \
                (run_dir / "result.json").read_text() != record:
            problems.append(f"{record[:40]}: the run directory changed")
    assert not problems, "\n".join(problems)


@pytest.mark.sizes
def test_corrupt_or_incomplete_checkpoints_are_one_line(tmp_path, monkeypatch, capsys):
    """Truncated, foreign or incomplete checkpoint.pt of an interrupted run: one line and exit 1;
    what cannot be read changes nothing, what lacks a holder ends `failed`, saying which."""
    import torch

    from runner import checkpoint

    monkeypatch.chdir(tmp_path)
    done = tmp_path / "done"
    assert in_process(SMOKE, done) == 0
    capsys.readouterr()
    record = json.loads((done / "result.json").read_text())
    ident = checkpoint.identity(record["choices"], record["config"])
    record["status"] = "interrupted"
    good = tmp_path / "good.pt"
    torch.save({"identity": ident, "position": {"phase": 0}, "progress": None}, good)
    cases = [(good.read_bytes()[:50], "cannot be read", False),
             (b"not a zip", "cannot be read", False),
             ({"x": 1}, "is incomplete (no identity or position)", False),
             ({"identity": ident, "position": {"phase": "0"}}, "is incomplete", False),
             ({"identity": ident, "position": {"phase": 0}, "progress": None},
              "the checkpoint has no 'methods'", True)]
    problems = []
    for i, (content, expect, runs) in enumerate(cases):
        run_dir = tmp_path / f"ckpt{i}"
        run_dir.mkdir()
        (run_dir / "result.json").write_text(json.dumps(record))
        if isinstance(content, bytes):
            (run_dir / "checkpoint.pt").write_bytes(content)
        else:
            torch.save(content, run_dir / "checkpoint.pt")
        code = in_process([f"resume={run_dir}"], tmp_path / f"fresh{i}")
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.strip()]
        status = json.loads((run_dir / "result.json").read_text())["status"]
        if code != 1 or len(lines) != 1 or expect not in lines[0] or "Traceback" in printed.err:
            problems.append(f"{expect}: exit {code}, stderr {lines}")
        if status != ("failed" if runs else "interrupted"):
            problems.append(f"{expect}: status {status}")
    assert not problems, "\n".join(problems)


SWEEP = ["-m", "experiment=fmnist_mlp", "ci=smoke", "device=cpu", "threads=1", "progress=false"]


@pytest.mark.sizes
def test_an_interrupted_sweep_ends_with_its_table(tmp_path):
    """Ctrl-C after the first job: the table of what ran, counting the jobs without a result."""
    import os
    import subprocess
    import sys

    from conftest import interrupt_when
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", *SWEEP, "seed=range(40)",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = interrupt_when(proc, sweep / "1" / "result.json")
    assert proc.returncode == 130, err[-2000:]
    assert (sweep / "table.md").exists() and "table written to" in out
    assert "without a result" in err and "Traceback" not in err
    statuses = [r["status"] for r in load_results([sweep])]
    assert 1 <= statuses.count("completed") < 40 and "running" not in statuses


@pytest.mark.e2e
def test_a_killed_joblib_worker_still_ends_the_sweep_with_its_table(tmp_path):
    """SIGKILL to the worker running a job of a joblib sweep: one line on the cause, the table
    counting what did not complete, the killed run recorded `interrupted`, exit status 1."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", *SWEEP, "seed=range(4)", "train.epochs=30",
                             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, killed = time.monotonic() + 240, None
    while killed is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        for f in sweep.rglob("result.json"):
            record = json.loads(f.read_text())
            if record["status"] == "running" and record["pid"] != proc.pid:
                os.kill(record["pid"], signal.SIGKILL)
                killed = f
        time.sleep(0.02)
    out, err = proc.communicate(timeout=240)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 2 and "a worker process died" in lines[0] and "SIGKILL" in lines[0], lines
    assert "not every job completed (" in lines[1] and "interrupted" in lines[1], lines
    assert (sweep / "table.md").exists() and "table written to" in out
    record = json.loads(killed.read_text())
    assert record["status"] == "interrupted" and "SIGKILL" in record["error"]
    assert "running" not in [r["status"] for r in load_results([sweep])]


@pytest.mark.sizes
def test_a_sweep_where_nothing_completed_exits_non_zero(hydra_cli, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert hydra_cli(*SWEEP, "train.epochs=0,-1", f"hydra.sweep.dir={sweep}") == 1
    err = capsys.readouterr().err
    assert "not every job completed (2 failed)" in err
    assert [r["status"] for r in load_results([sweep])] == ["failed", "failed"]
    before = (sweep / "0" / "result.json").read_text()
    assert hydra_cli(*SWEEP, "seed=0,1", f"hydra.sweep.dir={sweep}") == 2  # holds runs already
    assert "already holds runs" in capsys.readouterr().err
    assert (sweep / "0" / "result.json").read_text() == before


def _idx(path: Path, header_dims, body: bytes = b"") -> None:
    import gzip
    import struct
    data = struct.pack(">HBB", 0, 0x08, len(header_dims)) + struct.pack(f">{len(header_dims)}I", *header_dims)
    path.write_bytes(gzip.compress(data + body))


def _mnist(root: Path, images=(20, 28, 28), labels=(20,)) -> Path:
    """root/mnist with training files of the given IDX shapes (test files well formed)."""
    import math
    d = root / "mnist"
    d.mkdir(parents=True)
    _idx(d / "train-images-idx3-ubyte.gz", images, bytes(min(math.prod(images), 10**6)))
    _idx(d / "train-labels-idx1-ubyte.gz", labels, bytes(min(math.prod(labels), 10**6)))
    _idx(d / "t10k-images-idx3-ubyte.gz", (10, 28, 28), bytes(10 * 28 * 28))
    _idx(d / "t10k-labels-idx1-ubyte.gz", (10,), bytes(10))
    return d


def _png_bomb(path: Path) -> None:
    """A PNG header promising 40000 x 40000 pixels (PIL refuses it unopened)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


@pytest.mark.sizes
def test_bad_data_files_are_named(tmp_path, monkeypatch, capsys):
    """Files that pass a first look and would crash later: one line naming the file, exit 1."""
    monkeypatch.chdir(tmp_path)
    mnist = ["dataset=mnist", "experiment=fmnist_mlp", "device=cpu", "threads=1", "train.max_epochs=1"]
    cases = []
    d = _mnist(tmp_path / "a", images=(2**32 - 1, 2**32 - 1, 2**32 - 1))
    cases.append((mnist + [f"data_root={tmp_path / 'a'}"], str(d / "train-images-idx3-ubyte.gz")))
    d = _mnist(tmp_path / "b", labels=(20, 2))
    cases.append((mnist + [f"data_root={tmp_path / 'b'}"], str(d / "train-labels-idx1-ubyte.gz")))
    d = _mnist(tmp_path / "c", images=(20, 784))
    cases.append((mnist + [f"data_root={tmp_path / 'c'}"], str(d / "train-images-idx3-ubyte.gz")))
    folder = ["dataset=caltech101", "experiment=fmnist_mlp", "device=cpu", "threads=1"]
    for split in ("train", "test"):
        (tmp_path / "e" / "caltech101" / split / "cat").mkdir(parents=True)
    cases.append((folder + [f"data_root={tmp_path / 'e'}"], str(tmp_path / "e" / "caltech101" / "train")))
    for split in ("train", "test"):
        (tmp_path / "f" / "caltech101" / split / "cat").mkdir(parents=True)
        _png_bomb(tmp_path / "f" / "caltech101" / split / "cat" / "bomb.png")
    cases.append((folder + [f"data_root={tmp_path / 'f'}"], "bomb.png"))
    problems = []
    for i, (args, names) in enumerate(cases):
        code = in_process(args, tmp_path / f"out{i}")
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.strip()]
        statuses = [r["status"] for r in load_results([tmp_path / f"out{i}"])]
        if code != 1 or len(lines) != 1 or names not in lines[0] or "Traceback" in printed.err \
                or statuses not in ([], ["failed"]):
            problems.append(f"{args[-1]}: exit {code}, stderr {lines}, statuses {statuses}")
    assert not problems, "\n".join(problems)


EMPTY = [  # splits that come out empty once the data are read: one line, exit 2, status failed
    (["train.val_fraction=0.99"], ["no training samples", "train.val_fraction=0.99"]),
    (["phases.0.subset.fraction=0.0001"], ["no training samples", "'fraction': 0.0001"]),
    (["phases.0.subset.chunks=1000"], ["no training samples", "'chunks': 1000"]),
    (["ci.n_train=3", "train.val_fraction=0.1"], ["train.val_fraction=0.1 leaves no validation"]),
]


@pytest.mark.sizes
def test_empty_splits_are_one_line_and_an_honest_status(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    problems = []
    for i, (args, expect) in enumerate(EMPTY):
        case = tmp_path / f"case{i}"
        code = in_process(SMOKE + args, case / "out")
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.strip()]
        statuses = [r["status"] for r in load_results([case])]
        if code != 2 or len(lines) != 1 or not all(e in lines[0] for e in expect) \
                or "Traceback" in printed.err or statuses not in ([], ["failed"]):
            problems.append(f"{args}: exit {code}, stderr {lines}, statuses {statuses}")
    assert not problems, "\n".join(problems)


@pytest.mark.sizes
def test_a_new_run_in_an_existing_runs_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    done = tmp_path / "done"
    assert in_process(SMOKE, done) == 0
    capsys.readouterr()
    files = {p.name: p.read_bytes() for p in done.iterdir() if p.is_file()}
    assert in_process(SMOKE + ["seed=1"], done) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run (result.json, metrics.csv)" in err[0]
    assert {p.name: p.read_bytes() for p in done.iterdir() if p.is_file()} == files
