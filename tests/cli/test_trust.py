"""Every route from a config to running code or writing a file is refused: `_target_`s of every
slot (torch's own loaders and writers included), Hydra's instantiating keys, experiment files
from elsewhere and the overrides a run directory records. Each case would create a marker file;
it must not appear, and the command ends with one line and exit status 2, leaving no run. An
existing run's directory is never written by a new run; entry points keep their objects' kinds."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from runner.targets import ENTRY_POINTS

SMOKE = ["experiment=fmnist_mlp", "ci=smoke", "device=cpu", "threads=1"]
MARKER = "MARKER"  # replaced by the case's marker path
TOUCH = f"touch {MARKER}"


class Pickled:
    """A pickle that runs a command when loaded."""

    def __reduce__(self):
        import os
        return os.system, (TOUCH.replace(MARKER, str(Pickled.marker)),)


def node(target, **kwargs):
    """A config node in override syntax."""
    items = ", ".join(f"{k}: {json.dumps(v)}" for k, v in kwargs.items())
    return "{_target_: " + target + (", " + items if items else "") + "}"


TARGETS = [  # (overrides after SMOKE, the slot the message names)
    ([f"method._target_=os.system", f"+method.command='{TOUCH}'"], "method._target_"),
    ([f"+extra_methods=[{node('torch.os.system', command=TOUCH)}]"], "extra_methods.0._target_"),
    ([f"+extra_methods=[{node('runner.checkpoint.shutil.rmtree', path='KEEP')}]"], "extra_methods.0"),
    ([f"+extra_methods=[{node('runner.checkpoint.save', path=MARKER, obj=1)}]"], "extra_methods.0"),
    ([f"+model_transforms=[{node('os.system', command=TOUCH)}]"], "model_transforms.0"),
    ([f"model._target_=subprocess.call", f"+model.args=[touch,{MARKER}]"], "model._target_"),
    ([f"dataset.reader._target_=torch.save", "+dataset.reader.obj=1", f"+dataset.reader.f={MARKER}"],
     "dataset.reader._target_"),
    (["target_allowlist=[torch]", "dataset.reader._target_=torch.serialization.save",
      "+dataset.reader.obj=1", f"+dataset.reader.f={MARKER}"], "dataset.reader._target_"),
    (["dataset.reader._target_=torch.load", "+dataset.reader.f=PICKLE",
      "+dataset.reader.weights_only=false"], "dataset.reader._target_"),
    (["target_allowlist=[torch]", "dataset.reader._target_=torch.serialization.load",
      "+dataset.reader.f=PICKLE", "+dataset.reader.weights_only=false"], "dataset.reader._target_"),
    ([f"+model_transforms=[{node('torch.hub.load', repo_or_dir='HUB', model='m', source='local')}]"],
     "model_transforms.0"),
    (["target_allowlist=[torch]",
      f"+model_transforms=[{node('torch.hub.load', repo_or_dir='HUB', model='m', source='local')}]"],
     "model_transforms.0"),
    ([f"+model_transforms=[{node('torch.ops.load_library', path='LIB')}]"], "model_transforms.0"),
    (["target_allowlist=[torch]", f"+model_transforms=[{node('torch._ops._OpNamespace')}]"],
     "model_transforms.0"),
    ([f"+extra_methods=[{node('torch.utils.collect_env.main')}]"], "extra_methods.0"),
    (["target_allowlist=[torch]", f"+extra_methods=[{node('torch.utils.collect_env.run', command=TOUCH)}]"],
     "extra_methods.0"),
    (["target_allowlist=[torchvision]",
      f"+dataset.augment=[{node('torchvision.io.image.write_file', filename=MARKER, data=[])}]"],
     "dataset.augment.0"),
    ([f"+phases.0.transform=[{node('torchvision.utils.save_image', fp=MARKER)}]"], "phases.0.transform.0"),
    ([f"+extra_methods=[{node('methods.vanilla.os.system', command=TOUCH)}]"], "extra_methods.0"),
    ([f"+method.probe={node('os.system', command=TOUCH)}"], "method.probe"),
    ([f"+tuned.x={node('os.system', command=TOUCH)}"], "tuned.x._target_"),
    ([f"+tuned.x={node('runner.checkpoint.save', path=MARKER, obj=1)}"], "tuned.x._target_"),
    ([f"+paper.values.x={node('os.system', command=TOUCH)}"], "paper.values.x._target_"),
    ([f"+ci.overrides.extra_methods=[{node('os.system', command=TOUCH)}]"], "ci.overrides.extra_methods.0"),
    (["target_allowlist=[os]", f"+extra_methods=[{node('os.system', command=TOUCH)}]"], "target_allowlist.0"),
    (["target_allowlist=[subprocess]", f"model._target_=subprocess.call", f"+model.args=[touch,{MARKER}]"],
     "target_allowlist.0"),
    (["extra_methods=[{_target_: methods.base.Method}]"], "extra_methods.0"),
    (["model._target_=runner.data.readers.mnist"], "model._target_"),  # a reader is no model
]
HYDRA = [  # Hydra's own instantiating keys (overrides after SMOKE, the key the message names)
    ([f"+hydra.callbacks.x={node('os.system', command=TOUCH)}"], "hydra.callbacks.x"),
    ([f"+hydra.callbacks.x={node('runner.report.shutil.rmtree', path='KEEP')}"], "hydra.callbacks.x"),
    ([f"hydra.job_logging.handlers.file.filename={MARKER}"], "hydra.job_logging.handlers.file.filename"),
    ([f"hydra.job_logging.handlers.file.class=logging.handlers.WatchedFileHandler"],
     "hydra.job_logging.handlers.file.class"),
    (["+hydra.job.env_set.CC=/bin/false"], "hydra.job.env_set"),
    ([f"+hydra.sweeper.extra={node('os.system', command=TOUCH)}"], None),  # refused by Hydra's schema
]
EXPERIMENTS = {  # an experiment file from elsewhere (searchpath) setting hydra.* or targets
    "callback": {"hydra": {"callbacks": {"x": {"_target_": "os.system", "command": TOUCH}}}},
    "factory": {"hydra": {"job_logging": {"filters": {"f": {"()": "os.system", "command": TOUCH}},
                                          "handlers": {"console": {"filters": ["f"]}}}}},
    "log_file": {"hydra": {"job_logging": {"handlers": {"file": {"filename": MARKER}}}}},
    "stream": {"hydra": {"job_logging": {"handlers": {"console": {"stream": "ext://os.system"}}}}},
    "env": {"hydra": {"job": {"env_set": {"LD_PRELOAD": "/tmp/x.so"}}}},
    "method": {"extra_methods": [{"_target_": "os.system", "command": TOUCH}]},
}


def _fixtures(case: Path) -> dict:
    """A hostile pickle, hub repository and library beside the case's marker."""
    marker = case / "marker"
    Pickled.marker = marker
    (case / "evil.pkl").write_bytes(pickle.dumps(Pickled()))
    (case / "hub").mkdir()
    (case / "hub" / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef m():\n    return 1\n")
    (case / "keep").mkdir()
    (case / "keep" / "file").write_text("kept")
    return {MARKER: str(marker), "PICKLE": str(case / "evil.pkl"), "HUB": str(case / "hub"),
            "LIB": str(case / "evil.so"), "KEEP": str(case / "keep")}


def _refused(hydra_cli, capsys, case: Path, args, names, sweep=False) -> list:
    subs = _fixtures(case)
    for k, v in subs.items():
        args = [a.replace(k, v) for a in args]
    out = case / "out"
    code = hydra_cli(*args, *([] if sweep else [f"hydra.run.dir={out}"]))
    printed = capsys.readouterr()
    lines = [line for line in printed.err.splitlines() if line.strip()]
    problems = []
    if code not in (1, 2) if names is None else code != 2:
        problems.append(f"exit {code}")
    if names is not None and not (len(lines) == 1 and lines[0].startswith(f"error: {names}")
                                  and "refused" in lines[0]):
        problems.append(f"stderr {lines}")
    if "Traceback" in printed.err + printed.out:
        problems.append("a traceback")
    if (case / "marker").exists():
        problems.append("THE MARKER APPEARED")
    if (case / "keep" / "file").read_text() != "kept":
        problems.append("a directory was deleted")
    if sweep:  # the refused job's record says so
        statuses = [json.loads(f.read_text())["status"] for f in out.rglob("result.json")]
        if statuses.count("completed") > 1:
            problems.append(f"statuses {statuses}")
    elif out.exists():
        problems.append(f"a run directory was left: {sorted(p.name for p in out.iterdir())}")
    return [f"{args}: {', '.join(problems)}"] if problems else []


@pytest.mark.sizes  # about 40 commands in this process (some 20 s)
def test_no_route_from_a_config_runs_code_or_writes_files(hydra_cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problems = []
    for i, (args, names) in enumerate(TARGETS + HYDRA):
        case = tmp_path / f"case{i}"
        case.mkdir()
        problems += _refused(hydra_cli, capsys, case, SMOKE + args, names)
    conf = tmp_path / "elsewhere"
    (conf / "experiment").mkdir(parents=True)
    for name, body in EXPERIMENTS.items():
        text = json.dumps({"defaults": ["fmnist_mlp", "_self_"], **body})  # JSON is YAML
        (conf / "experiment" / f"evil_{name}.yaml").write_text("# @package _global_\n" + text)
        for sweep in (False, True):
            case = tmp_path / f"exp_{name}_{sweep}"
            case.mkdir()
            text_marker = str(case / "marker")
            (conf / "experiment" / f"evil_{name}.yaml").write_text(
                "# @package _global_\n" + text.replace(MARKER, text_marker))
            args = [f"hydra.searchpath=[file://{conf}]", f"experiment=evil_{name}", "ci=smoke",
                    "device=cpu"]
            if sweep:  # each job's config is composed apart from the sweep's base
                args = ["-m", f"hydra.sweep.dir={case / 'out'}", f"experiment=fmnist_mlp,evil_{name}",
                        *args[:1], *args[2:]]
            name_key = "extra_methods.0" if name == "method" else "hydra."
            problems += _refused(hydra_cli, capsys, case, args, None if sweep else name_key, sweep)
            assert not (case / "marker").exists()
    assert not problems, "\n".join(problems)


@pytest.mark.sizes
def test_a_run_directory_cannot_name_code(hydra_cli, capsys, tmp_path, monkeypatch):
    """`resume=DIR` re-validates the overrides DIR's result.json records, as if typed."""
    monkeypatch.chdir(tmp_path)
    problems = []
    recorded = [
        [f"+extra_methods=[{node('os.system', command=TOUCH)}]"],
        [f"+extra_methods=[{node('torch.os.system', command=TOUCH)}]"],
        ["target_allowlist=[os]"],
        [f"+hydra.callbacks.x={node('os.system', command=TOUCH)}"],
        [f"hydra.job_logging.handlers.file.filename={MARKER}"],
    ]
    for i, extra in enumerate(recorded):
        case = tmp_path / f"rec{i}"
        case.mkdir()
        subs = _fixtures(case)
        run_dir = case / "run"
        run_dir.mkdir()
        overrides = [o.replace(MARKER, subs[MARKER]) for o in SMOKE + extra]
        record = json.dumps({"status": "interrupted", "overrides": overrides})
        (run_dir / "result.json").write_text(record)
        (run_dir / "checkpoint.pt").write_bytes(b"")
        code = hydra_cli(f"resume={run_dir}")
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.strip()]
        if code != 2 or len(lines) != 1 or "refused" not in lines[0] or (case / "marker").exists():
            problems.append(f"{extra}: exit {code}, stderr {lines}, marker {(case / 'marker').exists()}")
        left = sorted(p.name for p in run_dir.iterdir() if p.suffix != ".log")  # Hydra's log: appended
        if left != ["checkpoint.pt", "result.json"] or (run_dir / "result.json").read_text() != record:
            problems.append(f"{extra}: the run directory changed: {left}")
    assert not problems, "\n".join(problems)


def _files(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.suffix != ".log"}


@pytest.mark.sizes
def test_a_new_run_in_an_existing_runs_directory_changes_nothing(tmp_path):
    """`hydra.run.dir=` (or a sweep job's directory) naming an existing run: refused before Hydra
    rewrites its `.hydra/` record; a refused run leaves no empty `outputs/runs/NAME/` behind."""
    from conftest import run_cli

    done = tmp_path / "done"
    assert run_cli(*SMOKE, f"hydra.run.dir={done}", cwd=tmp_path).returncode == 0
    before = _files(done)
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "result.json"} <= set(before)
    attempts = [
        [*SMOKE, "seed=1", f"hydra.run.dir={done}"],
        [*SMOKE, "resume=auto", "optim.lr=0.5", f"hydra.run.dir={done}"],
        ["-m", *SMOKE, "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweep.subdir={done}"],
        [f"resume={tmp_path / 'other'}", f"hydra.run.dir={done}"],  # a resume writes only its own
    ]
    (tmp_path / "other").mkdir()
    for args in attempts:
        out = run_cli(*args, cwd=tmp_path)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert len(lines) == 1 and (f"{done} already holds a run" in lines[0]
                                    or f"drop hydra.run.dir={done}" in lines[0]), (args, lines)
        assert "Traceback" not in out.stdout + out.stderr
        assert _files(done) == before, args
    out = run_cli(*SMOKE, "train.epochs=0", cwd=tmp_path)  # refused after Hydra made its directory
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert not (tmp_path / "outputs").exists()

# A user's own components enter by an installed entry point of the group `plasticity_runner`: a
# distribution written here (a module and its `*.dist-info/`) on PYTHONPATH. The entry point admits
# its module; the object must still be of the slot's kind (a `Method` subclass, a registered model).
MODULE = '''
from methods.base import Method
from runner.models.mlp import mlp
from runner.targets import register


class Mine(Method):
    name = "mine"

    def on_epoch_end(self, ctx):
        return {"mine_ran": 1.0}


def tiny(in_shape, num_classes, **options):
    return mlp(in_shape, num_classes, hidden=[8])


def loose(in_shape, num_classes, **options):  # never registered as a model
    return mlp(in_shape, num_classes, hidden=[8])


register("model", tiny)
'''
ENTRY = {"method.mine": "userext:Mine", "model.tiny": "userext:tiny",
         "method.net": "userext:tiny",  # a model declared a method
         "model.method": "userext:Mine",  # a method declared a model
         "model.loose": "userext:loose",  # declared, never registered
         "method.shell": "os:system"}


def distribution(where: Path, with_entry_points: bool = True) -> Path:
    where.mkdir()
    (where / "userext.py").write_text(MODULE)
    if with_entry_points:
        info = where / "userext-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: userext\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            f"[{ENTRY_POINTS}]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY.items()))
    return where


def runner(path: Path, cwd: Path, *args):
    """`python -m runner` with `path` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "runner", *SMOKE, "progress=false", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.sizes  # five commands in subprocesses
def test_components_of_an_installed_entry_point_run_and_keep_their_kinds(tmp_path):
    dist = distribution(tmp_path / "dist")
    out = runner(dist, tmp_path, "method._target_=userext.Mine", "model._target_=userext.tiny",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["method"]["_target_"] == "userext.Mine"
    assert record["config"]["model"]["_target_"] == "userext.tiny"
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    header = next(line for line in metrics.splitlines() if not line.startswith("#"))
    assert "mine_ran" in header.split(","), header  # its hook ran
    refused = [  # (override, slot, why)
        ("method._target_=userext.tiny", "method", "a component of another kind"),
        ("model._target_=userext.Mine", "model", "a component of another kind"),
        ("model._target_=userext.loose", "model", "a component of another kind"),
        ("method._target_=os.system", "method", "not a callable defined in os"),
    ]
    problems = []
    for i, (override, slot, why) in enumerate(refused):
        run_dir = tmp_path / f"refused{i}"
        out = runner(dist, tmp_path, override, f"hydra.run.dir={run_dir}")
        lines = out.stderr.strip().splitlines()
        target = override.split("=", 1)[1]
        expected = f"error: {slot}._target_='{target}' is refused: "
        if out.returncode != 2 or len(lines) != 1 or not lines[0].startswith(expected) \
                or why not in lines[0] or f"allowed at {slot}: " not in lines[0] \
                or "Traceback" in out.stdout + out.stderr or run_dir.exists():
            problems.append(f"{override}: exit {out.returncode}, stderr {lines}")
    assert not problems, "\n".join(problems)


@pytest.mark.sizes
def test_the_same_module_without_its_entry_points_is_refused(tmp_path):
    plain = distribution(tmp_path / "plain", with_entry_points=False)
    out = runner(plain, tmp_path, "method._target_=userext.Mine", f"hydra.run.dir={tmp_path / 'run'}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: method._target_='userext.Mine' is refused: its module is "
                               "outside the allowed ones")
    assert not (tmp_path / "run").exists()
