"""Every config composes, and every experiment runs end to end under ci=smoke (with no host
sync in its training steps) and under ci=sizes (realistic data sizes; marked `sizes`)."""
import copy
import inspect
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF, EXPERIMENTS, extends
from expectations import check_run, method_events  # noqa: F401 (a fixture)
from runner import ci
from runner.errors import ConfigError
from runner.training.loop import Loop

SRC = str(Path(__file__).resolve().parents[2] / "src")
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
    step = Loop.train_step

    def counting_step(self, *args):
        inside[0] = True
        try:
            return step(self, *args)
        finally:
            inside[0] = False
    monkeypatch.setattr(Loop, "train_step", counting_step)
    return calls

GROUPS = ["dataset", "model", "method", "optim", "schedule", "ci", "logger", "space"]


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS
                                          for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert (cfg.model_transforms is not None) if group == "space" else cfg[group] is not None


def sets_ci(experiment: str) -> bool:
    """Whether the experiment's file, or a config it extends (another experiment, a family base),
    has a `ci:` block (only these set `ci.overrides`)."""
    path = CONF / "experiment" / f"{experiment}.yaml"
    return any(re.search(r"^ci:", f.read_text(), re.M) for f in [path, *extends(path)])


@pytest.mark.sizes  # composes 35 experiments: about 7 s of CPU, kept out of the everyday stage
def test_every_ci_override_key_exists_in_its_experiment():
    """Each experiment's `ci.overrides` (and, at sizes, `ci.sizes_overrides`) as ci.apply applies
    them at both test levels: every key reaches a node of the composed config (else ci.apply
    refuses the config). Compose only, in one Hydra context (its cache halves the time); one
    composition per experiment serves both levels (no config reads `ci.level`)."""
    checked = [e for e in EXPERIMENTS if sets_ci(e)]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            for experiment in checked:
                cfg = compose("config", overrides=[f"experiment={experiment}", "ci=sizes"])
                assert cfg.ci.overrides or cfg.ci.sizes_overrides, experiment
                for level in ("smoke", "sizes"):
                    one = copy.deepcopy(cfg)
                    one.ci.level = level
                    ci.apply(one)
    finally:
        GlobalHydra.instance().clear()


def test_a_ci_override_that_reaches_nothing_is_refused(compose_cfg):
    cfg = compose_cfg(["experiment=fmnist_mlp", "ci=sizes"])
    cfg.ci.overrides = {"method.t_p": 1}
    with pytest.raises(ConfigError, match=r"^ci.overrides of fmnist_mlp names 'method.t_p', which "
                                          r"reaches nothing in this config; fix the key, or [^\n]*$"):
        ci.apply(cfg)
    cfg.ci.overrides, cfg.ci.sizes_overrides = {"train.epochs": 2}, {"model.nope": 1}
    with pytest.raises(ConfigError, match=r"^ci.sizes_overrides of fmnist_mlp names 'model.nope'"):
        ci.apply(cfg)
    cfg.ci.level = "smoke"  # sizes_overrides apply at sizes only
    before = copy.deepcopy(cfg)
    assert ci.apply(cfg).train.epochs == 2
    assert cfg == before  # a new config; the argument is left as it was


def test_a_test_level_reads_synthetic_data_of_every_datasets_shape_in_memory(compose_cfg):
    cfg = compose_cfg(["experiment=zilly_cifar10_to_fmnist", "ci=smoke", "dataset=imagenet_stream"])
    level = ci.apply(cfg)
    assert cfg.dataset.stream is not None and cfg.dataset.reader._target_ != ci.SYNTHETIC
    for ds, shape in ((level.dataset, [3, 224, 224]), (level.datasets.second, [1, 28, 28])):
        assert ds.get("stream") is None  # no file-reading workers
        assert OmegaConf.to_container(ds.reader, resolve=True) == {
            "_target_": ci.SYNTHETIC, "shape": shape, "num_classes": ds.num_classes,
            "n_train": 32, "n_test": 16, "seed": 0, "dtype": "uint8"}
    assert (level.train.max_batches, level.train.checkpoint) == (2, False)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_under_smoke_without_host_syncs(run_cfg, step_syncs, method_events,
                                                        experiment):
    result = run_cfg([f"experiment={experiment}", "ci=smoke", "device=cpu"])
    assert result["status"] == "completed", result.get("error")
    assert result["phases"], "no phase ran"
    assert result["choices"]["experiment"] == experiment
    check_run(result, method_events)  # phases, steps, report metric, paper value, methods fired
    steps = result["phases"][-1]["steps"]
    assert steps >= 2 and not step_syncs, f"{len(step_syncs)} syncs in {steps} steps: {step_syncs[:5]}"


FLAGSHIP = ("cifar_blur_to_sharp", "zilly_warm_start", "zilly_allcnn_blur_to_sharp")


@pytest.mark.parametrize("experiment", [
    pytest.param(e, marks=pytest.mark.sizes if e in FLAGSHIP else pytest.mark.slow)
    for e in EXPERIMENTS])
def test_experiment_runs_at_realistic_sizes(run_cfg, experiment):
    result = run_cfg([f"experiment={experiment}", "ci=sizes", "device=cpu"])
    assert result["status"] == "completed", result.get("error")
    n_train = result["config"]["dataset"]["reader"]["n_train"]
    assert n_train > result["config"]["train"]["eval_batch_size"]
