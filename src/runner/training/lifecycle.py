"""A run's lifecycle: its config prepared, a previous run reused or resumed, the Trainer run
under signal handling, its status and result recorded."""
from __future__ import annotations

import gc
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from runner import checkpoint, distributed
from runner.checks import check_shadowed, report_at
from runner.config import prepare as prepare_config
from runner.errors import (ConfigError, DatasetMissing, Diverged, DownloadFailed, Interrupted,
                           RunnerError)
from runner.logs import environment, log_start
from runner.results import RunRecorder
from runner.train import Trainer
from runner.training import build, fused
from runner.training.data import read_ahead
from runner.training.signals import interruptible

log = logging.getLogger("runner")


def paper_value(cfg, choices: Dict[str, str]) -> Any:
    """The paper's value for this run's cell (`paper.values` indexed by `paper.by`), or None."""
    node: Any = cfg.paper["values"]
    for key in cfg.paper.by:
        k = choices.get(key, OmegaConf.select(cfg, key, default=None))
        if node is None or k is None:
            return None
        node = node.get(str(k)) if hasattr(node, "get") else None
    return node if isinstance(node, (int, float)) else None


def summarize(result: Dict[str, Any], cfg) -> Dict[str, Any]:
    """The run's headline numbers: the report metric (and extras) of its last phase."""
    if not result["phases"]:
        return {}
    last = result["phases"][-1]
    at = last["best"] if report_at(cfg) == "best" else last["end"]
    out = {cfg.report.metric: at.get(cfg.report.metric, last.get(cfg.report.metric))}
    for key in cfg.report.extra:
        out[key] = at.get(key, last.get(key))
    return out


def prepare(cfg: DictConfig, job: int = 0):
    """The config the run trains (`runner.config.prepare`) and its device: before anything is built."""
    cfg = prepare_config(cfg)
    return cfg, build.resolve_device(cfg.device, job)


def run(cfg: DictConfig, out_dir, choices: Optional[Dict[str, str]] = None,
        overrides: Optional[List[str]] = None, job: int = 0, search_root=None,
        record_invalid: bool = False):
    """Train one configured run in `out_dir` (sweep job number `job`); returns its result.json
    (with `train.fused_seeds` > 1: the list of its seeds' results, runner.training.fused).

    `resume` (config): a run directory to continue from its checkpoint, or `auto`: a completed
    run of the same config below `search_root` is reused, an unfinished one continued.
    `record_invalid` (sweeps): a config error is recorded as a failed result.json, so the sweep's
    table counts it."""
    choices, out_dir = dict(choices or {}), Path(out_dir)

    def refused(e: Exception) -> None:
        if record_invalid:
            RunRecorder(out_dir, {"name": OmegaConf.select(cfg, "name", default="run"),
                                  "seed": OmegaConf.select(cfg, "seed", default=None),
                                  "choices": choices, "overrides": list(overrides or []),
                                  "config": None}, tracked=False).finish("failed", error=str(e))

    try:
        check_shadowed(cfg, overrides)
        cfg, device = prepare(cfg, job)
    except ConfigError as e:
        refused(e)
        raise
    if cfg.train.fused_seeds > 1:  # a list: one result per seed
        base = {"name": cfg.name, "choices": choices, "paper_value": paper_value(cfg, choices),
                "paper_source": cfg.paper.source}
        with interruptible():
            return fused.run(cfg, out_dir, base, list(overrides or []), job, device)
    config = OmegaConf.to_container(cfg, resolve=True)
    ident = checkpoint.identity(choices, config)
    kind, where = checkpoint.previous_run(cfg.resume, out_dir, ident, search_root)
    if kind == "completed":
        return checkpoint.reuse(where, out_dir)
    state = None
    if kind == "checkpoint":
        state = checkpoint.load_run(where / checkpoint.CHECKPOINT_FILE)
        if state.get("identity") != ident:
            raise ConfigError(f"resume={cfg.resume}: the checkpoint in {where} belongs to another "
                              "config; resume with the run's own overrides only")
        log.info("resuming %s from %s (phase %d)", cfg.name, where, state["position"]["phase"])
    try:
        read_ahead(cfg)
    except (DatasetMissing, DownloadFailed) as e:  # before anything of the run is written
        refused(e)
        raise
    t0 = time.time()
    base = {"name": cfg.name, "seed": cfg.seed, "choices": choices,
            "overrides": list(overrides or []), "paper_value": paper_value(cfg, choices),
            "paper_source": cfg.paper.source, "config": config}
    if state is not None:
        base["resumed_from"] = str(where)
    rec = distributed.recorder(out_dir, base)  # only rank 0 writes
    status, error = "completed", None
    with interruptible():
        try:
            trainer = Trainer(cfg, rec, job, device)
            trainer.identity = ident
            rec.update(device=str(trainer.parts.device), deterministic=cfg.train.deterministic,
                       precision=cfg.train.precision,
                       environment=environment(trainer.parts.device, out_dir))  # logs.py
            log_start(cfg.name, cfg.seed, rec.result["environment"])
            trainer.fit(state)
            if cfg.train.save_model and rec.dir is not None:
                model = trainer.ctx.model
                checkpoint.save(out_dir / checkpoint.MODEL_FILE,
                                getattr(model, "_orig_mod", model).state_dict())
        except Diverged as e:
            status, error = "diverged", str(e)
            log.warning("diverged: %s", e)
        except BaseException as e:
            # an exit asked for while training (submitit requeues a timed-out job that way)
            status = "interrupted" if isinstance(e, (Interrupted, SystemExit)) else "failed"
            told = isinstance(e, (RunnerError, Interrupted, SystemExit))  # else a bug: keep where
            extra = {} if told else {"traceback": traceback.format_exc()}
            rec.finish(status, error=f"{type(e).__name__}: {e}", wall_time_s=time.time() - t0,
                       summary=summarize(rec.result, cfg), **extra)
            traceback.clear_frames(e.__traceback__)  # a sweep's next job gets the memory back
            if torch.cuda.is_available():
                gc.collect()
                torch.cuda.empty_cache()
            raise
        result = rec.finish(status, error=error, wall_time_s=time.time() - t0,
                            summary=summarize(rec.result, cfg))
    if result["status"] == "completed" and rec.dir is not None:
        (out_dir / checkpoint.CHECKPOINT_FILE).unlink(missing_ok=True)
    return result
