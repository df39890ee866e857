"""Every config composes, and every experiment runs end to end under ci=smoke (with no host
sync in its training steps) and under ci=sizes (realistic data sizes; marked `sizes`)."""
import inspect
from pathlib import Path

import pytest
import torch

from conftest import CONF, EXPERIMENTS
from expectations import check_run, method_events  # noqa: F401 (a fixture)
from runner.train import Trainer

SRC = str(Path(__file__).resolve().parents[1] / "src")
SYNCS = [(torch.Tensor, n) for n in ("item", "__bool__", "__float__", "__int__", "tolist",
                                     "nonzero")] + [(torch.linalg, "inv"), (torch, "nonzero")]


@pytest.fixture
def step_syncs(monkeypatch):
    """Calls that wait for the device, made by our code (src/) inside a training step."""
    calls, inside = [], [False]
    for owner, name in SYNCS:
        original = getattr(owner, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            caller = inspect.currentframe().f_back
            if inside[0] and caller.f_code.co_filename.startswith(SRC):
                calls.append(f"{_name} at {caller.f_code.co_filename}:{caller.f_lineno}")
            return _original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)
    step = Trainer.train_step

    def counting_step(self, *args):
        inside[0] = True
        try:
            return step(self, *args)
        finally:
            inside[0] = False
    monkeypatch.setattr(Trainer, "train_step", counting_step)
    return calls

GROUPS = ["dataset", "model", "method", "optim", "schedule", "ci", "logger", "space"]


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS
                                          for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert (cfg.model_transforms is not None) if group == "space" else cfg[group] is not None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_under_smoke_without_host_syncs(run_cfg, step_syncs, method_events,
                                                        experiment):
    result = run_cfg([f"experiment={experiment}", "ci=smoke", "device=cpu"])
    assert result["status"] == "completed", result.get("error")
    assert result["phases"], "no phase ran"
    assert result["choices"]["experiment"] == experiment
    check_run(result, method_events)  # stages, steps, report metric, paper value, methods fired
    steps = result["phases"][-1]["steps"]
    assert steps >= 2 and not step_syncs, f"{len(step_syncs)} syncs in {steps} steps: {step_syncs[:5]}"


FLAGSHIP = ("cifar_blur_to_sharp", "zilly_warm_start", "zilly_allcnn_blur_to_sharp")


@pytest.mark.parametrize("experiment", [
    pytest.param(e, marks=pytest.mark.sizes if e in FLAGSHIP else pytest.mark.slow)
    for e in EXPERIMENTS])
def test_experiment_runs_at_realistic_sizes(run_cfg, experiment):
    result = run_cfg([f"experiment={experiment}", "ci=sizes", "device=cpu"])
    assert result["status"] == "completed", result.get("error")
    n_train = result["config"]["ci"]["n_train"]
    assert n_train > result["config"]["train"]["eval_batch_size"]
