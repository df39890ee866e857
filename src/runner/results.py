"""What a run leaves in its directory: `metrics.csv` (one row per evaluated epoch) and
`result.json`.

`metrics.csv` starts with a `#` line saying which epochs its rows are where not every epoch is
evaluated (`train.eval_every` > 1; read it with `pandas.read_csv(path, comment="#")`).

`result.json` is written atomically (a temporary file renamed over it): at the start with status
'running', at the end with 'completed', 'diverged', 'failed' or 'interrupted'. A reader never sees
a half-written file, and a run killed midway stays marked 'running', never as complete; its
`host`, `pid` and `heartbeat` (rewritten every HEARTBEAT_S seconds by a background thread) let
`is_dead` tell such a run from a live one. Files are created readable by the group (umask
permitting), like the rest of the run directory.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import socket
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional

from runner.loggers import open_tracker

log = logging.getLogger("runner")

METRICS_FILE, RESULT_FILE = "metrics.csv", "result.json"
SWEEP_FILE = "multirun.yaml"  # a sweep's config, with the sweeper's plan under hydra.sweeper.plan
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file; mkstemp's own is 0600
HEARTBEAT_S = 60.0  # a live run rewrites its heartbeat this often ...
DEAD_AFTER_S = 10 * HEARTBEAT_S  # ... so a `running` run silent this long is dead
PHASE_WRITE_S = 10.0  # a phase end rewrites result.json once this long has passed since the last write
ROW_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")  # per epoch
COLUMNS = ["phase", "phase_name", "epoch", "step", "lr", *ROW_METRICS, "weight_norm", "seconds"]


NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become the strings "nan", "inf" and "-inf" rather than
    invalid JSON (`load_results` reads the metrics back as floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """`write(f)` to a temporary file beside `path`, synced and renamed over it (readable by the
    group): a reader sees the old file or the new one, never a part of either."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def orphans(directory: Path) -> List[Path]:
    """Temporary files `write_atomic` left in `directory` when its process was killed mid-write."""
    return sorted(p for p in Path(directory).glob(".*.tmp") if p.is_file())


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    text = json.dumps(_clean(data), indent=2, default=str).encode()
    write_atomic(path, lambda f: f.write(text))


def is_dead(result: Dict[str, Any], now: Optional[float] = None) -> bool:
    """A `running` result whose process is gone: no heartbeat for DEAD_AFTER_S seconds (whatever
    its pid, which the system may have given to another process), or, on this host, no process
    `pid`. Results without a heartbeat (older runs) count as dead."""
    if result.get("status") != "running":
        return False
    beat = result.get("heartbeat")
    if not isinstance(beat, (int, float)) or (now or time.time()) - beat > DEAD_AFTER_S:
        return True
    if result.get("host") == socket.gethostname() and result.get("pid"):
        try:
            os.kill(int(result["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OSError, ValueError, OverflowError):
            pass
    return False


def data_rows(csv_text: str) -> int:
    """The rows of metrics.csv text, less its header and `#` lines."""
    return max(sum(1 for line in csv_text.splitlines() if not line.startswith("#")) - 1, 0)


class Recorder(ABC):
    """What a run records through: `result` (the record that becomes result.json), one row per
    epoch, one summary per phase, and the final status. `dir` is where the run's files go, or
    None when nothing is written (then the trainer saves no checkpoint)."""

    dir: Optional[Path]
    result: Dict[str, Any]
    columns: List[str]
    rows: int
    note: Optional[str] = None  # metrics.csv's first line, as a `#` comment, where set

    @abstractmethod
    def update(self, **fields: Any) -> None:
        """Set top-level fields of the record."""

    @abstractmethod
    def epoch(self, row: Dict[str, Any]) -> None:
        """One epoch's metrics row."""

    @abstractmethod
    def phase(self, summary: Dict[str, Any]) -> None:
        """One finished phase's summary."""

    @abstractmethod
    def restore(self, phases: List[Dict[str, Any]], columns: List[str], csv_text: str) -> None:
        """The phases and metrics rows a checkpoint recorded (a resumed run appends to them)."""

    @abstractmethod
    def csv_text(self) -> str:
        """The metrics rows so far, as metrics.csv text (for a checkpoint)."""

    @abstractmethod
    def finish(self, status: str, **fields: Any) -> Dict[str, Any]:
        """The final status and fields; returns the finished record."""

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint keeps of the record: its phases, columns and metrics rows."""
        return {"phases": self.result["phases"], "columns": self.columns,
                "metrics_csv": self.csv_text()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.restore(state["phases"], state["columns"], state["metrics_csv"])


class MemoryRecorder(Recorder):
    """A recorder that writes nothing: the record in memory (ranks other than 0 of a distributed
    run, analyses and tests that need a trainer but no run directory)."""

    def __init__(self, base: Optional[Dict[str, Any]] = None):
        self.dir = None
        self.result = {**(base or {}), "status": "running", "phases": []}
        self.columns, self.rows = list(COLUMNS), 0

    def update(self, **fields: Any) -> None:
        self.result.update(fields)

    def epoch(self, row: Dict[str, Any]) -> None:
        self.columns += [k for k in row if k not in self.columns]
        self.rows += 1

    def phase(self, summary: Dict[str, Any]) -> None:
        self.result["phases"].append(summary)

    def restore(self, phases: List[Dict[str, Any]], columns: List[str], csv_text: str) -> None:
        self.result["phases"] = list(phases)
        self.columns = list(columns)
        self.rows = data_rows(csv_text)

    def csv_text(self) -> str:
        return ""

    def finish(self, status: str, **fields: Any) -> Dict[str, Any]:
        self.result.update(status=status, **fields)
        return self.result


class RunRecorder(Recorder):
    """Appends epoch rows to metrics.csv and keeps result.json up to date; passes the config,
    the rows and the final result to the tracker of `config.logger` (runner.loggers)."""

    def __init__(self, out_dir: str | Path, base: Dict[str, Any], tracked: bool = True):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result: Dict[str, Any] = {**base, "status": "running", "phases": [],
                                       "host": socket.gethostname(), "pid": os.getpid(),
                                       "heartbeat": time.time()}
        self.columns: List[str] = list(COLUMNS)
        self._csv = None
        self._writer = None
        self.tracker = open_tracker((base.get("config") or {}).get("logger"), self.dir) if tracked else None
        self.rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.write()
        if self.tracker:
            self.tracker.start(self.result)
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="heartbeat")
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.write()
            except Exception:  # a full disk: the status says the truth once it can be written
                pass

    def write(self) -> None:
        with self._lock:
            if self.result["status"] == "running":
                self.result["heartbeat"] = time.time()
            write_json_atomic(self.dir / RESULT_FILE, self.result)
            self.written = time.monotonic()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.result.update(fields)

    def restore(self, phases: List[Dict[str, Any]], columns: List[str], csv_text: str) -> None:
        """The phases and metrics.csv rows a checkpoint recorded (a resumed run appends to them)."""
        with self._lock:
            self.result["phases"] = list(phases)
        if csv_text:
            with open(self.dir / METRICS_FILE, "w", newline="") as f:
                f.write(csv_text)
            self.columns = list(columns)
            self._open_csv("a")
            self.rows = data_rows(csv_text)
        self.write()

    def _open_csv(self, mode: str) -> None:
        self._csv = open(self.dir / METRICS_FILE, mode, newline="")
        self._writer = csv.DictWriter(self._csv, fieldnames=self.columns, extrasaction="ignore")

    def csv_text(self) -> str:
        """metrics.csv as written so far (for a checkpoint)."""
        if self._csv is None:
            return ""
        self._csv.flush()
        return (self.dir / METRICS_FILE).read_text()

    def epoch(self, row: Dict[str, Any]) -> None:
        if self._writer is None:
            self.columns += [k for k in row if k not in self.columns]
            self._open_csv("w")
            if self.note:
                self._csv.write(f"# {self.note}\n")
            self._writer.writeheader()
        self._writer.writerow(row)
        self._csv.flush()
        self.rows += 1
        if self.tracker:
            self.tracker.epoch(self.rows, row)

    def phase(self, summary: Dict[str, Any]) -> None:
        """A phase's summary, written at once when PHASE_WRITE_S passed since the last write
        (otherwise with the next write: runs of many short phases spend no time on records that
        the next second replaces; a checkpoint holds the phases of its own)."""
        with self._lock:
            self.result["phases"].append(summary)
        if time.monotonic() - self.written >= PHASE_WRITE_S:
            self.write()

    def finish(self, status: str, **fields: Any) -> Dict[str, Any]:
        """The final status, written even when closing metrics.csv fails (a full disk): the run
        is then `failed`, saying why."""
        self._stop.set()
        if self._csv is not None:
            try:
                self._csv.close()
            except OSError as e:
                if status == "completed":
                    status = "failed"
                fields["error"] = f"writing {METRICS_FILE} failed: {type(e).__name__}: {e}"
        with self._lock:
            self.result.update(status=status, **fields)
        try:
            self.write()
        except OSError as e:  # never in place: the old record stays whole, its heartbeat stops
            log.error("%s could not be written (%s: %s); it keeps its last status, counted dead "
                      "once its heartbeat is %d s old", self.dir / RESULT_FILE, type(e).__name__,
                      e, DEAD_AFTER_S)
        if self.tracker:
            self.tracker.finish(self.result)
        return self.result


def _natural(path: Path):
    """Sort key: numeric path parts by value (sweep job 2 before job 10)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def _numbers(value: Any) -> Any:
    """The inverse of `_clean` on a run's metrics: "nan", "inf", "-inf" as floats."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def sweep_plan(sweep_dir) -> Dict[str, Any]:
    """The plan the sweeper recorded in a sweep directory (`jobs`: how many jobs it makes;
    `order`: each swept key's values in the order they run); empty where none was recorded."""
    import yaml  # omegaconf's dependency
    try:
        with open(Path(sweep_dir) / SWEEP_FILE) as f:
            cfg = yaml.safe_load(f)
        plan = cfg["hydra"]["sweeper"]["plan"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    return plan if isinstance(plan, dict) else {}


def load_results(paths) -> List[Dict[str, Any]]:
    """Every result.json below the given run or sweep directories (or given directly); metrics
    (`phases`, `summary`) that were not finite read back as floats."""
    found = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob(RESULT_FILE), key=_natural)
        for f in files:
            with open(f) as fh:
                r = json.load(fh)
            for key in ("phases", "summary"):
                if key in r:
                    r[key] = _numbers(r[key])
            r["_dir"] = str(f.parent)
            found.append(r)
    return found
