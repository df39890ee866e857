"""The optional extras of pyproject.toml: which module each one brings, and the one-line error
for a run that needs one that is not installed (before Hydra or the run starts)."""
from __future__ import annotations

import importlib
from typing import List

from runner.errors import ConfigError

EXTRAS = {  # extra -> a module it installs
    "cluster": "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
}
LAUNCHERS = {"submitit_local": "cluster", "submitit_slurm": "cluster"}  # hydra/launcher=...


def require(extra: str, what: str) -> None:
    """Raise one line naming the install command when `extra`'s module does not import."""
    try:
        importlib.import_module(EXTRAS[extra])
    except ImportError:
        raise ConfigError(f"{what} needs the '{extra}' extra, which is not installed; install it "
                          f"with: pip install -e \".[{extra}]\" (in a checkout) or pip install "
                          f"\"plasticity-runner[{extra}]\"") from None


def check_command_line(args: List[str]) -> None:
    """The extras that the command line's launcher and logger choices need."""
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        names = [v.strip() for v in value.split(",")]  # a sweep over choices
        for name in names:
            if key == "hydra/launcher" and name in LAUNCHERS:
                require(LAUNCHERS[name], f"hydra/launcher={name}")
            elif key == "logger" and name in EXTRAS:
                require(name, f"logger={name}")
