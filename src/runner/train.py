"""The Trainer: a run's phases, phase by phase, from the pieces in runner.training."""
from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from runner import checkpoint
from runner.context import Phase
from runner.errors import RunnerError
from runner.logs import epoch_line
from runner.models import params
from runner.optim import Schedule, set_hyper
from runner.results import ROW_METRICS, Recorder
from runner.training.best import BestEpoch
from runner.training.build import Parts, capped
from runner.training.data import DataStager
from runner.training.loop import Loop
from runner.training.signals import held_signals
from runner.training.state import Cadence, holders

log = logging.getLogger("runner")


class Trainer:
    """Builds a run's parts (`parts`), stages its data (`data`), trains (`loop`) and writes
    checkpoints (`cadence`); `ctx` is the methods' RunContext."""

    def __init__(self, cfg: DictConfig, recorder: Recorder, job: int = 0,
                 device: Optional[torch.device] = None):
        self.cfg, self.rec = cfg, recorder
        self.parts = Parts(cfg, job, device)
        self.ctx = self.parts.ctx
        self.data = DataStager(self.parts, recorder)
        self.loop = Loop(self.parts)
        self.cadence = Cadence(self.parts.opts)
        self.identity = ""  # the run's identity, stored in checkpoints (set by `run`)

    def call_hook(self, hook: str) -> None:
        """A method hook, then the masks again (a method's write never beats a mask). A
        `ValueError` (a method refusing its options) is one line."""
        try:
            self.parts.methods.call(hook, self.ctx)
        except ValueError as e:
            raise RunnerError(f"method {hook}: {' '.join(str(e).split())}") from e
        if len(self.ctx.masks):
            self.ctx.masks.project()

    def fit(self, state: Optional[Dict[str, Any]] = None) -> None:
        """Train every phase; from a checkpoint's `state` where given (runner.checkpoint)."""
        ctx, parts = self.ctx, self.parts
        phases = parts.phases
        self.data.load_phase_data(phases[0])
        ctx.init_state = params.snapshot(ctx.model)
        ctx.phase = phases[0]
        self.call_hook("setup")
        ctx.reset_optimizer()
        start, progress = (0, None) if state is None else self.restore(state)
        if parts.opts.compile:
            ctx.model = torch.compile(ctx.model)
        if parts.dist:
            parts.ddp = parts.dist.wrap(ctx.model)
        for phase in phases[start:]:
            resumed = progress if phase.index == start else None
            if phase.index > 0 and resumed is None:
                self.data.load_phase_data(phase)
            self.run_phase(phase, resumed)
        self.data.release()

    def start_phase(self, phase: Phase, ph) -> None:
        """The phase's hyperparameters, then the methods' hook (which may change ctx.lr,
        ctx.gamma, ctx.weight_decay)."""
        ctx, optim = self.ctx, self.cfg.optim
        ctx.epoch = 0
        ctx.lr = optim.lr if ph.lr is None else ph.lr
        ctx.weight_decay = optim.weight_decay if ph.weight_decay is None else ph.weight_decay
        ctx.gamma = ph.gamma
        if ph.reset_optimizer:
            ctx.reset_optimizer()
        self.call_hook("on_phase_start")
        set_hyper(ctx.optimizer, optim, ctx.lr, ctx.weight_decay)

    def run_phase(self, phase: Phase, resumed: Optional[BestEpoch] = None) -> None:
        ctx, opts, parts = self.ctx, self.parts.opts, self.parts
        ph = SimpleNamespace(**OmegaConf.to_container(phase.cfg, resolve=True))
        ctx.phase = phase
        epochs = capped(opts.epochs if ph.epochs is None else ph.epochs, opts.max_epochs)
        patience = opts.patience if ph.patience is None else ph.patience
        batch_size, limit = capped(opts.batch_size, opts.max_batch_size), opts.max_batches
        n_train = len(ctx.data.train)
        bs = n_train if batch_size is None else max(1, min(batch_size, n_train))
        ctx.steps_per_epoch = -(-n_train // bs) if limit is None else min(-(-n_train // bs), limit)
        ctx.total_steps = ctx.steps_per_epoch * epochs
        if resumed is None:
            self.start_phase(phase, ph)
        schedule = Schedule(self.cfg.schedule, ctx.lr, ctx.gamma, ph.milestones)
        p = resumed or BestEpoch()
        if resumed is not None:
            schedule.load_state_dict(p.schedule)
        start = ctx.step - p.next_epoch * ctx.steps_per_epoch  # the phase's first step
        per_step = schedule if schedule.per_step else None
        bar = tqdm(range(p.next_epoch, epochs), desc=f"{phase.name}", leave=False,
                   initial=p.next_epoch, total=epochs,
                   disable=None if parts.progress is None else not parts.progress)
        for epoch in bar:
            ctx.epoch = epoch
            lr = schedule.lr(epoch)
            for g in ctx.optimizer.param_groups:
                g["lr"] = lr
            last = epoch + 1 == epochs
            evaluate = last or (epoch + 1) % opts.eval_every == 0
            row = self.loop.epoch(phase, epoch, evaluate, batch_size, per_step, start)
            if evaluate:
                val_loss = row["val_loss"]
                schedule.observe(val_loss if math.isfinite(val_loss) else row["train_loss"])
            self.rec.epoch(row)
            if evaluate:
                log.info("%s", epoch_line(phase.name, epoch + 1, epochs, row))  # logs.py
                if p.observe(row, opts.select_by, patience,
                             ctx.model if opts.restore_best else None):
                    break
            if not last and self.cadence.due(epoch + 1):
                p.next_epoch, p.schedule = epoch + 1, schedule.state_dict()
                self.save_checkpoint(phase.index, p)
        bar.close()
        p.restore(ctx.model)
        self.end_phase(phase, p)

    def end_phase(self, phase: Phase, p: BestEpoch) -> None:
        """Check the ranks agree, record the phase's summary, checkpoint before the next."""
        ctx, parts = self.ctx, self.parts
        if parts.dist:
            parts.dist.check_same(ctx.model, ctx.masks, f"phase {phase.name!r}")
        keys = ROW_METRICS
        summary = {"index": phase.index, "name": phase.name, "epochs": p.end["epoch"],
                   "steps": ctx.step, "best_epoch": p.best["epoch"],
                   "end": {k: p.end[k] for k in keys}, "best": {k: p.best[k] for k in keys}}
        summary.update(parts.methods.collect("on_phase_end", ctx))
        self.rec.phase(summary)
        if parts.opts.checkpoint and phase.index + 1 < len(parts.phases):  # the last: the run ends
            self.save_checkpoint(phase.index + 1, None)

    def save_checkpoint(self, next_phase: int, progress: Optional[BestEpoch]) -> None:
        """Everything needed to continue at phase `next_phase` (inside it at `progress`), in the
        run directory (none for a recorder that writes nothing)."""
        if self.rec.dir is None:
            return
        state = {"identity": self.identity, "position": {"phase": next_phase},
                 **{k: h.state_dict() for k, h in
                    holders(self.parts, self.loop, self.rec, progress).items()}}
        with held_signals():
            checkpoint.save(self.rec.dir / checkpoint.CHECKPOINT_FILE, state)
        self.cadence.last = time.monotonic()

    def restore(self, state: Dict[str, Any]) -> tuple:
        """Put a checkpoint's state back (after `setup`, which rebuilt what it derives from the
        fresh model); returns (phase to run next, its BestEpoch or None)."""
        start = state["position"]["phase"]
        progress = None if state["progress"] is None else BestEpoch()
        if progress is not None and start > 0:
            self.data.load_phase_data(self.parts.phases[start])
        for key, holder in holders(self.parts, self.loop, self.rec, progress).items():
            if key not in state:
                raise RunnerError(f"the checkpoint has no {key!r} (incomplete, or written by "
                                  f"another version); start the run again")
            holder.load_state_dict(state[key])
        return start, progress
