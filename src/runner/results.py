"""What a run leaves in its directory: `metrics.csv` (one row per epoch) and `result.json`.

`result.json` is written atomically (a temporary file renamed over it): at the start with status
'running', at the end with 'completed', 'diverged' or 'failed'. A reader never sees a half-written
file, and a run killed midway stays marked 'running', never as complete.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from runner.loggers import open_tracker

METRICS_FILE, RESULT_FILE = "metrics.csv", "result.json"
COLUMNS = ["phase", "phase_name", "epoch", "step", "lr", "train_loss", "train_acc", "val_loss",
           "val_acc", "test_loss", "test_acc", "weight_norm", "seconds"]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become strings rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(data), f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunRecorder:
    """Appends epoch rows to metrics.csv and keeps result.json up to date; passes the config,
    the rows and the final result to the tracker of `config.logger` (runner.loggers)."""

    def __init__(self, out_dir: str | Path, base: Dict[str, Any]):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result: Dict[str, Any] = {**base, "status": "running", "phases": []}
        self.columns: List[str] = list(COLUMNS)
        self._csv = None
        self._writer = None
        self.tracker = open_tracker((base.get("config") or {}).get("logger"), self.dir)
        self.rows = 0
        write_json_atomic(self.dir / RESULT_FILE, self.result)
        if self.tracker:
            self.tracker.start(self.result)

    def epoch(self, row: Dict[str, Any]) -> None:
        if self._writer is None:
            self.columns += [k for k in row if k not in self.columns]
            self._csv = open(self.dir / METRICS_FILE, "w", newline="")
            self._writer = csv.DictWriter(self._csv, fieldnames=self.columns, extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(row)
        self._csv.flush()
        self.rows += 1
        if self.tracker:
            self.tracker.epoch(self.rows, row)

    def phase(self, summary: Dict[str, Any]) -> None:
        self.result["phases"].append(summary)
        write_json_atomic(self.dir / RESULT_FILE, self.result)

    def finish(self, status: str, **fields: Any) -> Dict[str, Any]:
        self.result.update(status=status, **fields)
        if self._csv is not None:
            self._csv.close()
        write_json_atomic(self.dir / RESULT_FILE, self.result)
        if self.tracker:
            self.tracker.finish(self.result)
        return self.result


def _natural(path: Path):
    """Sort key: numeric path parts by value (sweep job 2 before job 10)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def load_results(paths) -> List[Dict[str, Any]]:
    """Every result.json below the given run or sweep directories (or given directly)."""
    found = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob(RESULT_FILE), key=_natural)
        for f in files:
            with open(f) as fh:
                r = json.load(fh)
            r["_dir"] = str(f.parent)
            found.append(r)
    return found
