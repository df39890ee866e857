"""Errors the runner reports as one clear message (what, where, how to fix), not a traceback."""
from pathlib import Path
from typing import Iterable


class RunnerError(Exception):
    """A problem with the user's config or environment, printed without a traceback."""


class DatasetMissing(RunnerError):
    def __init__(self, name: str, paths: Iterable[Path], how: str = ""):
        self.name, self.how = name, how
        looked = ", ".join(str(p) for p in paths)
        msg = f"dataset {name} not found (looked in: {looked})"
        if how:
            msg += f"; {how}"
        super().__init__(msg)


class DownloadFailed(RunnerError):
    """A requested download did not complete; nothing of it was kept."""

    def __init__(self, name: str, cause: BaseException, how: str = ""):
        reason = " ".join(f"{type(cause).__name__}: {cause}".split())  # one line
        msg = f"downloading {name} failed ({reason}); nothing was kept"
        super().__init__(msg + (f"; without a network, {how}" if how else ""))


class Diverged(Exception):
    """The training loss became NaN or infinite; the run ends with status 'diverged'."""


class ConfigError(RunnerError):
    """An option outside its valid values, found before anything runs (exit status 2)."""


class DataError(RunnerError):
    """A dataset file that is corrupt, truncated or inconsistent (names the file)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; the run ends with status 'interrupted' (exit 128 + signal)."""

    def __init__(self, signum: int):
        import signal
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def exit_with(main) -> None:
    """`sys.exit(main())` for a command's `__main__`; a reader that closed the pipe early
    (`... | head`) ends the command quietly, as `cat` does (exit 141, no traceback)."""
    import os
    import sys

    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush into the pipe
        code = 141
    sys.exit(code)
