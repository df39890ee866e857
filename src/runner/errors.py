"""Errors the runner reports as one clear message (what, where, how to fix), not a traceback."""
from pathlib import Path
from typing import Iterable


class RunnerError(Exception):
    """A problem with the user's config or environment, printed without a traceback."""


class DatasetMissing(RunnerError):
    def __init__(self, name: str, paths: Iterable[Path], how: str = ""):
        looked = ", ".join(str(p) for p in paths)
        msg = f"dataset {name} not found (looked in: {looked})"
        if how:
            msg += f"; {how}"
        super().__init__(msg)


class Diverged(Exception):
    """The training loss became NaN or infinite; the run ends with status 'diverged'."""
