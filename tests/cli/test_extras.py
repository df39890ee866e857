"""An optional extra that is not installed (pyproject.toml's cluster, tensorboard, mlflow,
wandb) is one line naming the pip install that brings it, exit 2, and no run directory."""
import subprocess
import sys

import pytest

from runner.extras import EXTRAS

HIDE = """import sys
sys.modules[{module!r}] = None  # as if the extra were not installed: importing it fails
sys.argv = ["runner", *{args!r}]
from runner.app import cli
cli()
"""


@pytest.mark.parametrize("extra,args", [
    ("cluster", ["hydra/launcher=submitit_slurm"]),
    ("cluster", ["-m", "hydra/launcher=submitit_local", "seed=0,1"]),
    ("tensorboard", ["logger=tensorboard"]),
    ("mlflow", ["logger=mlflow"]),
    ("wandb", ["logger=wandb"]),
])
def test_a_missing_extra_is_one_line_naming_its_install(tmp_path, extra, args):
    code = HIDE.format(module=EXTRAS[extra], args=[*args, "ci=smoke"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f'pip install -e ".[{extra}]"' in lines[0] and f"'{extra}' extra" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no run directory
