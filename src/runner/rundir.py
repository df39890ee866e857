"""A run directory as untrusted input, and its owner.

`resume=DIR` reads DIR's `result.json`; what it records is checked as if typed on the command line
(its overrides then compose and validate like any others: `runner.targets` decides what they may
name). A record that cannot be read, or that records overrides of Hydra's own keys, is one line
and nothing in DIR changes. While a process runs in a directory it holds an exclusive lock on it
(`flock`), so a second process (a second resume, a new run pointed at it) is refused; a new run
is refused in a directory that holds another run's record, before Hydra writes anything there
(`check_new`). The owner removes the temporary files
a killed writer left.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List

from runner.errors import ConfigError
from runner.results import METRICS_FILE, RESULT_FILE, orphans, write_json_atomic

# where and how a resumed run goes on; not `threads`: on the CPU a convolution's result depends on
# the thread count (swr_gen_cifar10_cnn: threads=1 and 4 differ), so a resumed run keeps its own
RESUME_OPTIONS = ("device", "data_root", "progress", "logger", "distributed")
RUN_FILES = (RESULT_FILE, "checkpoint.pt", METRICS_FILE)


def override_key(override: str) -> str:
    """The key (or group) an override sets: `+a.b=1` -> `a.b`."""
    return override.split("=", 1)[0].lstrip("+~")


def read_record(run_dir: str) -> Dict[str, Any]:
    """DIR's result.json as a dict with a list of string overrides, else one-line `ConfigError`."""
    path = Path(run_dir) / RESULT_FILE
    where = f"resume={run_dir}"
    if not path.is_file():
        raise ConfigError(f"{where}: no {RESULT_FILE} there; give a run directory")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{where}: {path} cannot be read ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:120]}); the run cannot be resumed, start it "
                          f"again in a new directory") from None
    overrides = record.get("overrides") if isinstance(record, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{where}: {path} records no list of overrides (incomplete or not a "
                          f"run's record); start the run again in a new directory")
    for o in overrides:
        key = override_key(o)
        if key.startswith(("hydra", "-")) or key == "resume" or "=" not in o:
            raise ConfigError(f"{where}: {path} records the override {o!r}, which is refused: a "
                              f"run records only its own config's overrides")
    return record


def resume_overrides(run_dir: str, record: Dict[str, Any], extra: List[str]) -> List[str]:
    """The overrides of the resumed run: DIR's own, then the command line's, which may set only
    `RESUME_OPTIONS` (and none on a completed run, which is not run again)."""
    given = [o for o in extra if override_key(o) != "resume"]
    if given and record.get("status") == "completed":
        raise ConfigError(f"resume={run_dir}: the run completed, so {given[0]!r} would be ignored; "
                          f"start a new run with it instead")
    for o in given:
        if override_key(o).split(".")[0] not in RESUME_OPTIONS:
            raise ConfigError(f"resume={run_dir}: {o!r} would change the run; on resume only "
                              f"{', '.join(RESUME_OPTIONS)} may be given")
    return list(record["overrides"]) + given


def check_fresh(out_dir: Path) -> None:
    """A new run does not start in a directory that holds another run's files."""
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found:
        raise ConfigError(f"{out_dir} already holds a run ({', '.join(found)}); a new run needs "
                          f"a new directory (continue that one with resume={out_dir})")


def _lock(fd: int, run_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ConfigError(f"{run_dir} is in use by another process of the runner; wait for "
                          f"it to end (or stop it) and try again") from None


def check_new(out_dir: Path) -> None:
    """Before anything is written in `out_dir` for a new run (Hydra's `.hydra/` record, a log):
    it holds no other run and no process owns it. Nothing in it changes."""
    check_fresh(out_dir)
    if out_dir.is_dir():
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            _lock(fd, out_dir)
        finally:
            os.close(fd)


@contextlib.contextmanager
def owned(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` exclusively while the body runs; another holder is refused (ConfigError).
    Temporary files of a writer killed mid-write are removed once the lock is held."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        _lock(fd, run_dir)
        for tmp in orphans(run_dir):  # no other process writes here now
            tmp.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def settle_dead(root: Path, why: str) -> int:
    """Runs below `root` whose record says `running` though no process owns their directory (a
    killed worker): recorded `interrupted`, with `why` as their error. Returns how many."""
    settled = 0
    for f in sorted(Path(root).rglob(RESULT_FILE)):
        try:
            with owned(f.parent):
                record = json.loads(f.read_text())
                if not isinstance(record, dict) or record.get("status") != "running":
                    continue
                record.update(status="interrupted", error=why)
                write_json_atomic(f, record)
                settled += 1
        except (ConfigError, OSError, ValueError):  # its owner lives, or the record is not readable
            continue
    return settled
