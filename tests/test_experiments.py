"""Every config composes, and every experiment runs end to end under ci=smoke (with no host
sync in its training steps) and under ci=sizes (realistic data sizes; marked `sizes`)."""
import copy
import inspect
import logging
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF, EXPERIMENTS, extends
from expectations import check_run, method_events  # noqa: F401 (a fixture)
from runner import ci
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


# Test-level overrides that an experiment drops on purpose. ci.apply skips an override whose key
# the config lacks (by design: an experiment extending another, or a group swapped on the command
# line, may drop the node), so a wrong key would silently leave the run at full size; every key
# not listed here must exist in its experiment as written.
DROPPED = {
    # reinit_table2_* shrink their noise probe (extra_methods.0); these set `extra_methods: []`
    *((e, f"extra_methods.0.{k}") for e in ("reinit_ablation", "reinit_appf_cifar", "reinit_fig3")
      for k in ("draws", "sigmas")),
    # wimmer_table5_1_rigl shrinks RigL's t_p and stop; finetune has neither, gmp no `stop`
    ("wimmer_table5_1_ft", "method.t_p"), ("wimmer_table5_1_ft", "method.stop"),
    ("wimmer_table5_1_gmp", "method.stop"),
    # wimmer_fig5_5 extends wimmer_table5_2 (SET's t_p and stop shrink) with SNIP, which has neither
    ("wimmer_fig5_5", "method.t_p"), ("wimmer_fig5_5", "method.stop"),
}


def sets_ci(experiment: str) -> bool:
    """Whether the experiment's file, or a config it extends (another experiment, a family base),
    has a `ci:` block (only these set `ci.overrides`; the others have nothing for ci.apply to
    skip)."""
    path = CONF / "experiment" / f"{experiment}.yaml"
    return any(re.search(r"^ci:", f.read_text(), re.M) for f in [path, *extends(path)])


@pytest.mark.sizes  # composes 35 experiments: about 7 s of CPU, kept out of the everyday stage
def test_every_ci_override_key_exists_in_its_experiment(caplog):
    """Each experiment's `ci.overrides` (and, at sizes, `ci.sizes_overrides`) as ci.apply applies
    them at both test levels: every key reaches a node of the composed config, except DROPPED.
    Compose only, in one Hydra context (its cache halves the time); one composition per
    experiment serves both levels (no config reads `ci.*`)."""
    checked, skipped = [e for e in EXPERIMENTS if sets_ci(e)], set()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"), \
            caplog.at_level(logging.INFO, logger="runner"):
        for experiment in checked:
            cfg = compose("config", overrides=[f"experiment={experiment}", "ci=sizes"])
            assert cfg.ci.overrides or cfg.ci.sizes_overrides, experiment
            for level in ("smoke", "sizes"):
                caplog.clear()
                one = copy.deepcopy(cfg)
                one.ci.level = level
                ci.apply(one)
                skipped |= {(experiment, r.args[0]) for r in caplog.records
                            if r.msg.startswith("ci: %s is not in this config")}
    GlobalHydra.instance().clear()
    assert not skipped - DROPPED, f"ci.overrides keys not in their experiment: {skipped - DROPPED}"
    assert not DROPPED - skipped, f"DROPPED lists keys the experiments have: {DROPPED - skipped}"


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
