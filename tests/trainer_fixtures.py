"""The trainer on a tiny task, shared by the trainer's tests (tests/runner/test_best_epoch.py,
test_loop.py, test_build.py, test_resume.py and tests/data/test_phase_data.py).

The data are the reinitialization paper's synthetic task without noise dimensions (x = y's three
bits as +-1) and the model is one linear layer. `ScriptedScale`, a stacked test method, sets that
layer after every step to c_e times the perfect classifier (row k = class k's bits as +-1), with
c_e read from a script per epoch; every sample then has the loss `loss_at(c_e)`.
"""
import csv
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF

from methods.base import Method
from runner.context import Phase
from runner.results import RunRecorder
from runner.train import Trainer


# -- the scripted task -------------------------------------------------------------------------
BITS = torch.tensor([[(k >> b) & 1 for b in (2, 1, 0)] for k in range(8)], dtype=torch.float32)


PERFECT = 2 * BITS - 1  # (8 classes, 3 inputs)


# the modules whose test components (readers, transforms, methods) the configs name
ALLOWED = [__name__, "test_best_epoch", "test_build", "test_loop", "test_recording", "test_phase_data"]
BASE = ["experiment=fmnist_mlp", f"target_allowlist=[{','.join(ALLOWED)}]", "dataset=reinit_synthetic", "dataset.reader.dim=3", "dataset.shape=[3]",
        "dataset.reader.n_train=64", "dataset.reader.n_test=32", "model=mlp", "model.hidden=[]",
        "model.bias=false", "method=vanilla", "train.batch_size=16", "train.val_fraction=0.25",
        "train.epochs=10", "device=cpu", "threads=1", "progress=false"]


def loss_at(c: float) -> float:
    return math.log(1 + 3 * math.exp(-2 * c) + 3 * math.exp(-4 * c) + math.exp(-6 * c))


class ScriptedScale(Method):
    """After every step: the head's weight := scales[phase][epoch] x the perfect classifier."""

    def __init__(self, scales):
        self.scales = scales

    @torch.no_grad()
    def after_step(self, ctx):
        ctx.model.head[1].weight.copy_(self.scales[ctx.phase_index][ctx.epoch] * PERFECT)


def script(*phases):
    """The override that stacks ScriptedScale with these per-phase scale lists."""
    lists = ", ".join("[" + ", ".join(map(str, p)) + "]" for p in phases)
    return f"+extra_methods=[{{_target_: {__name__}.ScriptedScale, scales: [{lists}]}}]"


def metrics(tmp_path):
    with open(Path(tmp_path) / "metrics.csv") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


# -- a Trainer of the task, not fitted, and its phases -----------------------------------------
@pytest.fixture(scope="module")
def base_cfg():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=BASE + ["+phases=[{name: a}, {name: b, repeat: 3}, {name: c, repeat: 1}]"])
    finally:
        GlobalHydra.instance().clear()


def with_(cfg, **keys):
    """A copy of the config with dotted `keys` (a__b: a.b) set."""
    cfg = cfg.copy()
    for k, v in keys.items():
        OmegaConf.update(cfg, k.replace("__", "."), v)
    return cfg


@pytest.fixture
def trainer(base_cfg, tmp_path):
    return Trainer(base_cfg, RunRecorder(tmp_path, {"name": "pieces"}))


def make_phase(trainer, **keys):
    """A phase of the trainer's first phase with dotted `keys` (a__b: a.b) set."""
    ph = trainer.parts.phases[0].cfg.copy()
    for k, v in keys.items():
        OmegaConf.update(ph, k.replace("__", "."), v, merge=False)
    return Phase(0, 0, "s", ph)


# -- a stand-in for torch.compile --------------------------------------------------------------
class Compiled(torch.nn.Module):
    """What torch.compile returns, without compiling: the model as `_orig_mod`."""

    def __init__(self, inner):
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        return self._orig_mod(x)
