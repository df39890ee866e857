"""Stopping on SIGTERM / SIGINT between steps, never inside a checkpoint's write."""
from __future__ import annotations

import contextlib
import signal

from runner.errors import Interrupted

_HELD = {"depth": 0, "signum": None}


@contextlib.contextmanager
def held_signals():
    """A signal `interruptible` turns into `Interrupted` waits for the end of the block, so a
    checkpoint is never cut in the middle of its write (torch.save would fail, not stop)."""
    _HELD["depth"] += 1
    try:
        yield
    finally:
        _HELD["depth"] -= 1
    if not _HELD["depth"] and _HELD["signum"] is not None:
        signum, _HELD["signum"] = _HELD["signum"], None
        raise Interrupted(signum)


@contextlib.contextmanager
def interruptible():
    """SIGTERM and SIGINT raise `Interrupted` (in the main thread, where their handlers are
    Python's defaults: a launcher's own handler, as submitit's, stays in charge)."""
    old = {}

    def handler(signum, frame):
        for sig, h in old.items():  # a second signal acts as it did before
            signal.signal(sig, h)
        if _HELD["depth"]:
            _HELD["signum"] = signum
        else:
            raise Interrupted(signum)

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                old[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
