"""The command line a new user meets: `--help`, schema entries that are no choices, and the two
entry points (`python -m runner`, the `runner` script) behaving the same."""
import importlib
import re
import runpy
from pathlib import Path

import pytest

from conftest import EXPERIMENTS

ROOT = Path(__file__).parents[2]


def console_script():
    tomllib = pytest.importorskip("tomllib")
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["runner"]
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def test_help_describes_the_tool_its_groups_experiments_and_commands(hydra_cli, capsys):
    assert hydra_cli("--help", entry=console_script()) == 0
    out = capsys.readouterr().out
    assert out.startswith("plasticity-runner:")
    groups = dict(line.split(": ", 1) for line in out.splitlines()
                  if re.match(r"^[a-z_]+: [a-z0-9_]+(, [a-z0-9_]+)*$", line))
    assert groups["experiment"].split(", ") == EXPERIMENTS
    assert "family_" not in out  # experiment bases (conf/family_*.yaml) are no choice
    assert {"dataset", "model", "method", "optim", "schedule", "ci"} <= set(groups)
    assert "_schema" not in out
    commands = set(re.findall(r"python -m (runner[.\w]*)", out))
    assert {"runner.report", "runner.plots", "runner.analysis.swr", "runner.analysis.reinit",
            "runner.analysis.zilly_figures"} <= commands
    for module in commands - {"runner"}:
        assert callable(importlib.import_module(module).main)
    analyses = {f"runner.analysis.{p.stem}" for p in (ROOT / "src/runner/analysis").glob("*.py")
                if "\ndef main(" in p.read_text()}
    assert analyses and analyses <= commands  # every analysis command is listed


@pytest.mark.parametrize("override", ["optim=optim_schema", "schedule=schedule_schema",
                                      "ci=ci_schema"])
def test_schemas_are_no_choice(hydra_cli, monkeypatch, capsys, override, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli(override, entry=console_script()) == 2
    err = capsys.readouterr().err
    group = override.split("=")[0]
    assert err.startswith(f"error: {override} is no option of '{group}'") and err.count("\n") == 1
    assert "_schema" not in err.split("valid:")[1]
    assert not (tmp_path / "outputs").exists()


def test_console_script_and_python_m_explain_the_same(hydra_cli, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("optim.lrr=0.1", entry=console_script()) == 2
    script = capsys.readouterr().err
    assert hydra_cli("optim.lrr=0.1",
                     entry=lambda: runpy.run_module("runner", run_name="__main__")) == 2
    module = capsys.readouterr().err
    assert "did you mean optim.lr?" in script
    assert script == module
