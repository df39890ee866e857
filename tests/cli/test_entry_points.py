"""A user's own components enter by an installed entry point of the group `plasticity_runner`
(`runner.targets`): a distribution written here (a module and its `*.dist-info/`) on PYTHONPATH,
run as a user runs it. The entry point admits its module; the object must still be of the slot's
kind (a `Method` subclass, a registered model)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.targets import ENTRY_POINTS

SMOKE = ["experiment=fmnist_mlp", "ci=smoke", "device=cpu", "threads=1", "progress=false"]
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "runner", *SMOKE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


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
