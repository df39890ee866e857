"""Trackers: a run's config, per-epoch metrics and final summary, also sent to the tool a
researcher already uses (the `logger` config group). The run directory's own files (metrics.csv,
result.json) are written under every logger; `logger=csv`, the default, adds nothing to them.

    python -m runner logger=tensorboard   # <run dir>/tensorboard; tensorboard --logdir outputs
    python -m runner logger=mlflow        # local store ./mlruns (or MLFLOW_TRACKING_URI)
    python -m runner logger=wandb         # offline; `wandb sync <run dir>/wandb/offline-run-*`

Each tracker is installed with an extra: pip install -e ".[tensorboard]" (or mlflow, wandb).
`RunRecorder` calls a tracker once at the start, once per epoch and once at the end, never
inside the training loop.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from omegaconf import OmegaConf

from runner import extras
from runner.errors import RunnerError


def numbers(row: Dict[str, Any]) -> Dict[str, float]:
    """The finite numeric entries of an epoch row (unmeasured splits are NaN and left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """`a.b.c`-keyed leaves of a nested config (lists as values)."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


class TensorBoard:
    """Scalars per epoch (step: the epoch counted across phases), the config and the summary as
    text, in `log_dir` (default: <run dir>/tensorboard)."""

    def __init__(self, run_dir: Path, log_dir: Optional[str] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir or str(run_dir / "tensorboard"))

    def start(self, result: Dict[str, Any]) -> None:
        text = OmegaConf.to_yaml(result["config"])
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "))

    def epoch(self, step: int, row: Dict[str, Any]) -> None:
        for k, v in numbers(row).items():
            self.writer.add_scalar(k, v, step)

    def finish(self, result: Dict[str, Any]) -> None:
        for k, v in numbers(result.get("summary") or {}).items():
            self.writer.add_scalar(f"summary/{k}", v, 0)
        summary = {k: result.get(k) for k in ("status", "summary", "error", "wall_time_s")}
        self.writer.add_text("summary", "    " + json.dumps(summary, default=str))
        self.writer.close()


class MLflow:
    """A run in an MLflow tracking store: the config as parameters (and config.json), metrics
    per epoch, the summary as `summary.<metric>`, the status as a tag."""

    def __init__(self, run_dir: Path, tracking_uri: str, experiment: str):
        if "://" not in tracking_uri or tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        try:
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except MlflowException:  # a parallel job of the sweep created it first
            exp_id = self.client.get_experiment_by_name(experiment).experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name,
                                             tags={"run_dir": str(run_dir)}).info.run_id

    def start(self, result: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in flatten(result["config"])
                  if not k.startswith("paper.values")]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, result["config"], "config.json")
        self.client.set_tag(self.run_id, "seed", result.get("seed"))

    def epoch(self, step: int, row: Dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in numbers(row).items()])

    def finish(self, result: Dict[str, Any]) -> None:
        for k, v in numbers(result.get("summary") or {}).items():
            self.client.log_metric(self.run_id, f"summary.{k}", v)
        self.client.set_tag(self.run_id, "status", result["status"])
        self.client.set_terminated(self.run_id, "FINISHED" if result["status"] == "completed"
                                   else "FAILED")


class WandB:
    """A Weights & Biases run (offline by default, files in <run dir>/wandb): the config, a
    history row per epoch, the summary and the status."""

    def __init__(self, run_dir: Path, project: str, mode: str = "offline",
                 entity: Optional[str] = None):
        import wandb

        self.wandb, self.run_dir, self.project, self.mode, self.entity = \
            wandb, run_dir, project, mode, entity
        self.run = None

    def start(self, result: Dict[str, Any]) -> None:
        self.run = self.wandb.init(project=self.project, entity=self.entity, mode=self.mode,
                                   dir=str(self.run_dir), name=self.run_dir.name,
                                   config=result["config"])

    def epoch(self, step: int, row: Dict[str, Any]) -> None:
        self.run.log(numbers(row), step=step)

    def finish(self, result: Dict[str, Any]) -> None:
        self.run.summary.update({**(result.get("summary") or {}), "status": result["status"]})
        self.run.finish(exit_code=0 if result["status"] == "completed" else 1)


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}  # and extras


def open_tracker(node: Optional[Dict[str, Any]], run_dir: Path):
    """The tracker a run's `logger` config names, or None for `csv`."""
    options = dict(node or {"name": "csv"})
    name = options.pop("name")
    if name == "csv":
        return None
    if name not in TRACKERS:
        raise RunnerError(f"logger.name={name!r}; valid: csv, {', '.join(TRACKERS)}")
    extras.require(name, f"logger={name}")
    return TRACKERS[name](Path(run_dir), **options)
