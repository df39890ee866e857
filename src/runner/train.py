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
        k = self.parts.opts.eval_every
        if k > 1:  # metrics.csv's first line says which epochs its rows are
            recorder.note = (f"one row per evaluated epoch: every {k} epochs of a phase and its "
                             f"last (train.eval_every={k})")
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
        ctx.phase_start_step = 0
        if ph.reset_optimizer:
            ctx.reset_optimizer()
        self.call_hook("on_phase_start")
        set_hyper(ctx.optimizer, optim, ctx.lr, ctx.weight_decay)

    def begin_phase(self, phase: Phase, resumed: Optional[BestEpoch] = None) -> SimpleNamespace:
        """The phase's settings and schedule, its hooks run (unless resumed inside it): what
        its epochs need (`epochs`, `patience`, `batch_size`, `schedule`, `per_step`, `start`,
        and `best`, its BestEpoch)."""
        ctx, opts = self.ctx, self.parts.opts
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
        spe = ctx.steps_per_epoch
        offset = ctx.phase_start_step  # a checkpoint comes after its first, shortened epoch
        best = resumed or BestEpoch(next_epoch=offset // spe)
        if resumed is not None:
            schedule.load_state_dict(best.schedule)
        return SimpleNamespace(
            phase=phase, epochs=epochs, patience=patience, batch_size=batch_size,
            schedule=schedule, per_step=schedule if schedule.per_step else None, best=best,
            offset=offset, start=ctx.step - (offset if resumed is None else best.next_epoch * spe))

    def set_epoch(self, st: SimpleNamespace, epoch: int) -> bool:
        """Epoch `epoch` of the phase begins: its lr; True when it is evaluated."""
        self.ctx.epoch = epoch
        lr = st.schedule.lr(epoch)
        for g in self.ctx.optimizer.param_groups:
            g["lr"] = lr
        return epoch + 1 == st.epochs or (epoch + 1) % self.parts.opts.eval_every == 0

    def after_epoch(self, st: SimpleNamespace, epoch: int, row: Optional[Dict[str, Any]]) -> bool:
        """An evaluated epoch's row (None: not evaluated) recorded and observed; True when
        patience ran out."""
        if row is None:
            return False
        opts = self.parts.opts
        val_loss = row["val_loss"]
        st.schedule.observe(val_loss if math.isfinite(val_loss) else row["train_loss"])
        self.rec.epoch(row)
        log.info("%s", epoch_line(st.phase.name, epoch + 1, st.epochs, row))  # logs.py
        return st.best.observe(row, opts.select_by, st.patience,
                               self.ctx.model if opts.restore_best else None)

    def run_phase(self, phase: Phase, resumed: Optional[BestEpoch] = None) -> None:
        ctx, parts = self.ctx, self.parts
        st = self.begin_phase(phase, resumed)
        p, spe = st.best, ctx.steps_per_epoch
        bar = tqdm(range(p.next_epoch, st.epochs), desc=f"{phase.name}", leave=False,
                   initial=p.next_epoch, total=st.epochs,
                   disable=None if parts.progress is None else not parts.progress)
        for epoch in bar:
            evaluate = self.set_epoch(st, epoch)
            rest = spe - st.offset % spe if epoch * spe < st.offset else None  # a started epoch's rest
            row = self.loop.epoch(phase, epoch, evaluate, st.batch_size, st.per_step, st.start, rest)
            if self.after_epoch(st, epoch, row):
                break
            if epoch + 1 < st.epochs and self.cadence.due(epoch + 1):
                self.loop.flush(phase)  # a resumed run checks no epoch twice, misses none
                p.next_epoch, p.schedule = epoch + 1, st.schedule.state_dict()
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
        if ctx.phase_start_step:
            summary["start_step"] = ctx.phase_start_step  # the schedule's step it started at
        summary.update(parts.methods.collect("on_phase_end", ctx))
        self.rec.phase(summary)
        if phase.index + 1 < len(parts.phases) and self.cadence.due_at_phase_end():  # the last: the run ends
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
