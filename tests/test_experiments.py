"""Every config composes, and every experiment runs end to end under ci=smoke."""
import pytest

from conftest import CONF, EXPERIMENTS
from expectations import check_run, method_events  # noqa: F401 (a fixture)

GROUPS = ["dataset", "model", "method", "optim", "schedule", "ci"]


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS
                                          for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert cfg[group] is not None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_under_smoke(run_cfg, method_events, experiment):
    result = run_cfg([f"experiment={experiment}", "ci=smoke", "device=cpu"])
    assert result["status"] == "completed", result.get("error")
    assert result["phases"], "no phase ran"
    assert result["choices"]["experiment"] == experiment
    check_run(result, method_events)  # stages, steps, report metric, paper value, methods fired
