"""One run: seed, build everything from the config, train phase by phase, record results."""
from __future__ import annotations

import contextlib
import copy
import functools
import gc
import inspect
import logging
import math
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from methods.base import MethodStack
from runner import checkpoint, distributed
from runner.checks import report_at
from runner.config import prepare as prepare_config
from runner.context import RunContext, Stage
from runner.data.stream import stream_splits
from runner.data.tensors import Arrays, Pipeline, Splits, batches, split_train_val, subset_indices
from runner.errors import ConfigError, DataError, Diverged, Interrupted, RunnerError
from runner.logs import batch_bar, environment, epoch_line, log_start
from runner.models import params
from runner.optim import Schedule, build_optimizer, set_hyper
from runner.results import Recorder, RunRecorder

log = logging.getLogger("runner")
_ARRAYS_CACHE: Dict[str, Arrays] = {}  # what readers read from files, shared by the jobs of one sweep
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def mse_one_hot(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    err = (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum(1)
    return err.mean() if reduction == "mean" else err.sum()


LOSSES = {"cross_entropy": F.cross_entropy, "mse": mse_one_hot}


def resolve_device(name: str, job: int = 0) -> torch.device:
    """`auto`: GPU number `job` modulo the visible GPUs (one GPU per sweep job), else the CPU."""
    if name == "auto":
        n = torch.cuda.device_count()
        return torch.device(f"cuda:{job % n}" if n else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device={name!r} is not available here ({torch.cuda.device_count()} GPUs "
                          "visible); use device=cpu or device=auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} is not available here; use device=cpu or device=auto")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={name!r} is not supported; valid: auto, cpu, cuda, cuda:N")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels (GPU runs repeat bitwise), or cudnn.benchmark and TF32 (faster)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic


def call(node, where: str) -> Any:
    """Call the `_target_` of a config node with its other keys (nested `_target_`s are built
    first). A bad target or argument names `where`, and so does a `ValueError` (a constructor's
    way of refusing an option); other errors inside the target propagate unchanged. Which
    targets may be named is checked before (`runner.config.validate`).
    """
    kwargs = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    target = kwargs.pop("_target_", None)
    if target is None:
        raise RunnerError(f"{where} has no _target_ (keys: {sorted(kwargs)})")
    try:
        fn = get_method(target) if "." in target else None
    except Exception as e:
        raise RunnerError(f"{where}._target_={target!r} cannot be imported ({e})") from None
    if fn is None:
        raise RunnerError(f"{where}._target_={target!r} is not a dotted path to a callable")
    if "lambda" in kwargs:  # Python reserves the word; constructors take `lam`
        kwargs["lam"] = kwargs.pop("lambda")
    kwargs = {k: call(v, f"{where}.{k}") if isinstance(v, dict) and "_target_" in v else v
              for k, v in kwargs.items()}
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise RunnerError(f"{where}: {e} (calling {target})") from None
    try:
        return fn(**kwargs)
    except ValueError as e:
        raise RunnerError(f"{where}: {' '.join(str(e).split())} (calling {target})") from e


def build_model(cfg) -> torch.nn.Module:
    """The configured model with its `model_transforms` applied (masks' structure, bases, ...)."""
    model = call(cfg.model, "model")
    for i, t in enumerate(cfg.get("model_transforms") or []):
        model = call(t, f"model_transforms[{i}]")(model) or model
    return model


def capped(value: Optional[int], cap: Optional[int]) -> Optional[int]:
    """min(value, cap), where None means 'no cap' for the cap and 'all' for the value."""
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


def expand_stages(cfg) -> List[Stage]:
    """One stage per repeat of each phase (at most `train.max_repeat`)."""
    stages = []
    for phase in cfg.phases:
        n = capped(phase.repeat, cfg.train.max_repeat)
        for r in range(n):
            name = phase.name if phase.repeat == 1 else f"{phase.name}{r + 1}"
            stages.append(Stage(len(stages), r, name, phase))
    return stages


@dataclass
class PhaseProgress:
    """Where a phase stands between epochs: what a mid-phase checkpoint records."""

    next_epoch: int = 0
    best: Optional[Dict[str, Any]] = None  # the best-validation row so far
    best_state: Optional[Dict[str, torch.Tensor]] = None  # its weights (train.restore_best)
    since_best: int = 0
    end: Optional[Dict[str, Any]] = None  # the last evaluated row
    schedule: Dict[str, Any] = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: DictConfig, recorder: Recorder, job: int = 0,
                 device: Optional[torch.device] = None):
        self.cfg, self.rec = cfg, recorder
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.opts = SimpleNamespace(**OmegaConf.to_container(cfg.train, resolve=True))  # hot loop
        self.dist = distributed.setup(cfg.distributed, cfg.device)  # None: one process
        self.ddp = None  # the model as the step calls it under distributed training
        if device is None:
            device = self.dist.device if self.dist else resolve_device(cfg.device, job)
        self.device = device
        set_determinism(self.opts.deterministic, self.device)
        seed_everything(cfg.seed)
        self.amp = PRECISIONS[self.opts.precision]
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.amp is torch.float16 and self.device.type == "cuda" else None)
        model = self.prepare_model(build_model(cfg))
        methods = [call(cfg.method, "method")] if cfg.method is not None else []
        methods += [call(m, f"extra_methods[{i}]") for i, m in enumerate(cfg.extra_methods)]
        self.methods = MethodStack(methods)
        self.stages = expand_stages(cfg)
        self.loss_fn = LOSSES[self.opts.loss]
        if self.opts.label_smoothing:
            if self.opts.loss != "cross_entropy":
                raise RunnerError("train.label_smoothing needs train.loss=cross_entropy")
            self.loss_fn = functools.partial(F.cross_entropy,
                                             label_smoothing=self.opts.label_smoothing)
        self.ctx = RunContext(
            device=self.device, model=model, seed=cfg.seed, loss_fn=self.loss_fn,
            num_stages=len(self.stages), eval_batch_size=self.opts.eval_batch_size,
            build_model=lambda: self.prepare_model(build_model(cfg)),
            make_optimizer=lambda m, lr, wd: build_optimizer(m, cfg.optim, lr, wd),
            autocast=self.autocast, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.order_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.progress = cfg.progress
        self._device_data = None  # (dataset config key, splits on the device) for reuse
        self.diverge_ref: Optional[float] = None  # the run's first batch loss
        self.last_checkpoint = time.monotonic()
        self.identity = ""  # the run's identity, stored in checkpoints (set by `run`)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    # -- data ---------------------------------------------------------------------------------
    def dataset_cfg(self, key: Optional[str]):
        if key is None:
            return self.cfg.dataset
        if key not in self.cfg.datasets:
            raise RunnerError(f"phase dataset {key!r} is not in `datasets`; "
                              f"defined: {sorted(self.cfg.datasets)}")
        return self.cfg.datasets[key]

    def arrays(self, ds) -> Arrays:
        """The reader's arrays; those read from files (`source` set) are kept for the next run
        of the same reader options, generated ones (synthetic data) are drawn again."""
        key = OmegaConf.to_yaml(ds.reader, resolve=True)  # interpolated options (seed) count
        arrays = _ARRAYS_CACHE.get(key)
        if arrays is None:
            arrays = call(ds.reader, "dataset.reader")
            check_labels(arrays, ds.num_classes, ds.get("name", "dataset"))
            if arrays.source is not None:
                _ARRAYS_CACHE[key] = arrays
        if arrays.source is not None:
            self.rec.update(data={**self.rec.result.get("data", {}), ds.get("name", "dataset"): arrays.source})
        return arrays

    def device_splits(self, ds) -> Splits:
        """Train / val / test of a dataset on the device; reused while phases keep the dataset."""
        tr = self.cfg.train
        key = OmegaConf.to_yaml(ds, resolve=True)
        if self._device_data is not None and self._device_data[0] == key:
            return self._device_data[1]
        self._device_data = None  # free the previous dataset before building the next
        self.free_device_memory()
        val_seed = self.cfg.seed if tr.val_seed is None else tr.val_seed
        if ds.get("stream") is not None:  # files read by workers
            splits = stream_splits(call(ds.reader, "dataset.reader"), tr.val_fraction, val_seed,
                                   self.device, **OmegaConf.to_container(ds.stream, resolve=True))
        else:
            splits = split_train_val(self.arrays(ds), tr.val_fraction, val_seed, self.device)
        self._device_data = (key, splits)
        return splits

    def free_device_memory(self) -> None:
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def load_stage_data(self, stage: Stage) -> None:
        ds = self.dataset_cfg(stage.cfg.dataset)
        self.ctx.data = self.ctx.pipeline = None
        base = self.device_splits(ds)
        splits = Splits(base.train, base.val, base.test)
        sub = stage.cfg.subset
        if sub.n is not None and sub.n > len(splits.train):
            raise ConfigError(f"subset.n={sub.n} of phase {stage.name!r} exceeds the {len(splits.train)} "
                              f"training samples of {ds.get('name', 'the dataset')}; lower it")
        idx = subset_indices(len(splits.train), self.cfg.seed, sub.fraction, sub.n, sub.chunks,
                             stage.repeat, sub.access)
        if idx is not None:
            splits.train = splits.train.take(idx.to(self.device))
        augment = stage.cfg.augment if stage.cfg.augment is not None else ds.get("augment", [])
        pipe = Pipeline(ds.get("mean", [0.0]), ds.get("std", [1.0]),
                        [call(t, f"{stage.name}.transform") for t in stage.cfg.transform],
                        [call(t, f"{stage.name}.augment") for t in augment], self.device)
        self.ctx.pipeline = self.with_layout(pipe)
        streamed = hasattr(splits.train, "batches")
        if not streamed and self.float_bytes(splits, pipe) <= self.cache_bytes():
            splits = Splits(*(pipe.prepare(s) for s in (splits.train, splits.val, splits.test)))
            self.ctx.pipeline = self.with_layout(lambda x, train, gen: pipe.random(x, train, gen))
        self.ctx.data = splits

    def with_layout(self, pipe):
        """The pipeline, giving channels-last batches when the model is channels-last."""
        if not self.opts.channels_last:
            return pipe
        return lambda x, train, gen: (lambda y: y.contiguous(memory_format=torch.channels_last)
                                      if y.dim() == 4 else y)(pipe(x, train, gen))

    def cache_bytes(self) -> int:
        limit = self.opts.cache_mb * 2**20
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            limit = min(limit, free // 2)
        return limit

    def float_bytes(self, splits: Splits, pipe: Pipeline) -> int:
        """Size of the splits as float32 after the deterministic transforms."""
        probe = pipe.deterministic(splits.train.x[:1])
        n = len(splits.train) + len(splits.val) + len(splits.test)
        return 4 * n * probe[0].numel()

    # -- loops --------------------------------------------------------------------------------
    def train_epoch(self, batch_size, limit, schedule=None, start=0) -> torch.Tensor:
        """One epoch; returns the device tensor [loss sum, correct, samples, first batch loss]
        (no host sync; the last entry only in the run's first epoch). A per-iteration
        `schedule` sets the lr before every step (`start`: the phase's first step)."""
        ctx = self.ctx
        if not ctx.model.training:  # evaluate() leaves it in train mode; methods' choices stay
            ctx.model.train()
        stats = torch.zeros(4, device=self.device)
        epoch_batches = (self.dist.batches if self.dist else batches)(
            ctx.data.train, batch_size, self.order_gen, limit=limit)
        first = self.diverge_ref is None
        for xb, yb in batch_bar(epoch_batches, len(ctx.data.train), batch_size, limit,  # logs.py
                                self.progress):
            if schedule is not None:
                lr = schedule.at_step(ctx.step - start)
                for g in ctx.optimizer.param_groups:
                    g["lr"] = lr
            loss = self.train_step(xb, yb, stats)
            if first:
                stats[3] = loss.detach().float()
                first = False
        return stats

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        ctx, m, masks = self.ctx, self.methods, self.ctx.masks
        x = ctx.pipeline(xb, True, self.aug_gen)
        ctx.batch = (x, yb)
        with self.autocast():
            out = (ctx.model if self.ddp is None else self.ddp)(x)
            loss = self.loss_fn(out, yb)
        ctx.outputs = out
        total = loss + m.loss_term(ctx) if m.by_hook["loss_term"] else loss
        opt = ctx.optimizer
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(opt)
        else:
            total.backward()
        if len(masks):
            masks.mask_grads()
        if m.by_hook["before_step"]:
            m.call("before_step", ctx)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        if len(masks):
            masks.project()
        if m.by_hook["after_step"]:
            m.call("after_step", ctx)
            if len(masks):
                masks.project()
        ctx.step += 1
        n = len(yb)
        stats[:3] += torch.stack([loss.detach().float() * n, (out.argmax(1) == yb).sum().float(),
                                  torch.tensor(float(n), device=stats.device)])
        return loss

    def weight_stats(self) -> torch.Tensor:
        """[total norm of effective parameters, non-zero weights, trained weights] (device)."""
        with torch.no_grad():
            model, masks = self.ctx.model, self.ctx.masks
            weights = params.slots(model, "weights")
            nonzero = sum(s.value().count_nonzero() for s in weights)
            trained = 0
            for name, p, kind in params.parameters(model):
                if kind == "weights" and p.requires_grad:
                    trained = trained + (masks[name].keep.sum() if name in masks else p.numel())
            return torch.stack([params.total_norm(model).float(),
                                torch.as_tensor(nonzero, device=self.device).float(),
                                torch.as_tensor(trained, device=self.device).float()])

    def call_hook(self, hook: str) -> None:
        """A method hook, then the masks again (a method's write never beats a mask). A
        `ValueError` (a method refusing its options) is one line."""
        try:
            self.methods.call(hook, self.ctx)
        except ValueError as e:
            raise RunnerError(f"method {hook}: {' '.join(str(e).split())}") from e
        if len(self.ctx.masks):
            self.ctx.masks.project()

    # -- the run ------------------------------------------------------------------------------
    def fit(self, state: Optional[Dict[str, Any]] = None) -> None:
        """Train every stage; from a checkpoint's `state` where given (runner.checkpoint)."""
        ctx = self.ctx
        self.load_stage_data(self.stages[0])
        ctx.init_state = params.snapshot(ctx.model)
        ctx.stage = self.stages[0]
        self.call_hook("setup")
        ctx.reset_optimizer()
        start, progress = (0, None) if state is None else self.restore(state)
        if self.opts.compile:
            ctx.model = torch.compile(ctx.model)
        if self.dist:
            self.ddp = self.dist.wrap(ctx.model)
        for stage in self.stages[start:]:
            resumed = progress if stage.index == start else None
            if stage.index > 0 and resumed is None:
                self.load_stage_data(stage)
            self.run_stage(stage, resumed)
        self._device_data = None
        self.ctx.data = None

    def score(self, row: Dict[str, Any]) -> float:
        """What the best epoch minimizes: val_loss, or -val_acc (`train.select_by`)."""
        return row["val_loss"] if self.opts.select_by == "val_loss" else -row["val_acc"]

    def run_stage(self, stage: Stage, resumed: Optional[PhaseProgress] = None) -> None:
        cfg, ctx, opts = self.cfg, self.ctx, self.opts
        ph = SimpleNamespace(**OmegaConf.to_container(stage.cfg, resolve=True))
        ctx.stage = stage
        epochs = capped(opts.epochs if ph.epochs is None else ph.epochs, opts.max_epochs)
        patience = opts.patience if ph.patience is None else ph.patience
        batch_size = capped(opts.batch_size, opts.max_batch_size)
        limit, eval_limit = opts.max_batches, opts.max_eval_batches
        n_train = len(ctx.data.train)
        bs = n_train if batch_size is None else max(1, min(batch_size, n_train))
        ctx.steps_per_epoch = -(-n_train // bs) if limit is None else min(-(-n_train // bs), limit)
        ctx.total_steps = ctx.steps_per_epoch * epochs
        if resumed is None:  # the phase starts: its hyperparameters, then the methods' hook
            ctx.epoch = 0
            ctx.lr = cfg.optim.lr if ph.lr is None else ph.lr
            ctx.weight_decay = cfg.optim.weight_decay if ph.weight_decay is None else ph.weight_decay
            ctx.gamma = ph.gamma
            if ph.reset_optimizer:
                ctx.reset_optimizer()
            self.call_hook("on_phase_start")  # may change ctx.lr, ctx.gamma, ctx.weight_decay
            set_hyper(ctx.optimizer, cfg.optim, ctx.lr, ctx.weight_decay)
        schedule = Schedule(cfg.schedule, ctx.lr, ctx.gamma, ph.milestones)
        p = resumed or PhaseProgress()
        if resumed is not None:
            schedule.load_state_dict(p.schedule)

        start = ctx.step - p.next_epoch * ctx.steps_per_epoch  # the phase's first step
        per_step = schedule if schedule.per_step else None
        bar = tqdm(range(p.next_epoch, epochs), desc=f"{stage.name}", leave=False,
                   initial=p.next_epoch, total=epochs,
                   disable=None if self.progress is None else not self.progress)
        for epoch in bar:
            ctx.epoch = epoch
            lr = schedule.lr(epoch)
            for g in ctx.optimizer.param_groups:
                g["lr"] = lr
            t0 = time.perf_counter()
            stats = self.train_epoch(batch_size, limit, per_step, start)
            lr = ctx.optimizer.param_groups[0]["lr"]  # a per-iteration schedule's last
            if self.dist:
                self.dist.all_reduce(stats[:3])  # loss sum, correct, samples over the ranks
            last = epoch + 1 == epochs
            evaluate = last or (epoch + 1) % opts.eval_every == 0
            nan = torch.full((2,), math.nan, device=self.device)
            val = torch.stack(ctx.evaluate(ctx.data.val, eval_limit)) if evaluate else nan
            test = (torch.stack(ctx.evaluate(ctx.data.test, eval_limit))
                    if evaluate and opts.eval_test else nan)
            # the epoch's one host sync: every number of the row at once
            (loss_sum, correct, n, first_loss, val_loss, val_acc, test_loss, test_acc, norm, nonzero,
             trained) = torch.cat([stats, val.float(), test.float(), self.weight_stats()]).tolist()
            train_loss, train_acc = loss_sum / max(n, 1), correct / max(n, 1)
            if self.diverge_ref is None:
                self.diverge_ref = first_loss
            self.check_divergence(train_loss, stage, epoch)
            if evaluate:
                schedule.observe(val_loss if math.isfinite(val_loss) else train_loss)
            row = {"phase": stage.index, "phase_name": stage.name, "epoch": epoch + 1,
                   "step": ctx.step, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
                   "test_acc": test_acc, "weight_norm": norm, "nonzero_weights": int(nonzero),
                   "trained_weights": int(trained), "seconds": time.perf_counter() - t0}
            row.update(self.methods.collect("on_epoch_end", ctx))
            self.rec.epoch(row)
            if evaluate:
                log.info("%s", epoch_line(stage.name, epoch + 1, epochs, row))  # logs.py
                p.end = row
                if p.best is None or not (self.score(row) >= self.score(p.best)):  # NaN: latest
                    p.best, p.since_best = row, 0
                    if opts.restore_best:
                        p.best_state = copy.deepcopy(ctx.model.state_dict())
                else:
                    p.since_best += 1
                    if patience is not None and p.since_best >= patience:
                        break
            if not last and self.checkpoint_due(epoch + 1):
                p.next_epoch, p.schedule = epoch + 1, schedule.state_dict()
                self.save_checkpoint(stage.index, p)
        bar.close()
        if p.best_state is not None:
            ctx.model.load_state_dict(p.best_state)
        if self.dist:
            self.dist.check_same(ctx.model, ctx.masks, f"phase {stage.name!r}")
        keys = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        summary = {"index": stage.index, "name": stage.name, "epochs": p.end["epoch"],
                   "steps": ctx.step, "best_epoch": p.best["epoch"],
                   "end": {k: p.end[k] for k in keys}, "best": {k: p.best[k] for k in keys}}
        summary.update(self.methods.collect("on_phase_end", ctx))
        self.rec.phase(summary)
        if self.opts.checkpoint and stage.index + 1 < len(self.stages):  # the last: the run ends
            self.save_checkpoint(stage.index + 1, None)

    def check_divergence(self, train_loss: float, stage: Stage, epoch: int) -> None:
        where = f"in phase {stage.name!r}, epoch {epoch + 1}"
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} {where}")
        factor, ref = self.opts.diverge_factor, self.diverge_ref
        if factor is not None and ref is not None and ref > 0 and train_loss > factor * ref:
            raise Diverged(f"training loss {train_loss:.4g} {where} exceeds train.diverge_factor="
                           f"{factor:g} times the first batch's loss {ref:.4g}")

    # -- checkpoints (runner.checkpoint) ------------------------------------------------------
    def generators(self) -> Dict[str, torch.Generator]:
        return {"order": self.order_gen, "aug": self.aug_gen, "method": self.ctx.gen}

    def checkpoint_due(self, epochs_done: int) -> bool:
        o = self.opts
        if not o.checkpoint:
            return False
        return bool((o.checkpoint_every and epochs_done % o.checkpoint_every == 0) or (
            o.checkpoint_minutes and time.monotonic() - self.last_checkpoint >= 60 * o.checkpoint_minutes))

    def save_checkpoint(self, next_stage: int, progress: Optional[PhaseProgress]) -> None:
        """Everything needed to continue at stage `next_stage` (inside it at `progress`), in the
        run directory (none for a recorder that writes nothing)."""
        if self.rec.dir is None:
            return
        ctx = self.ctx
        model = getattr(ctx.model, "_orig_mod", ctx.model)  # torch.compile's wrapper
        names = {id(p): n for n, p in model.named_parameters()}
        state = {
            "identity": self.identity, "position": {"stage": next_stage},
            "model": model.state_dict(), "masks": ctx.masks.state_dict(),
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "optimizer_params": [names[id(p)] for g in ctx.optimizer.param_groups for p in g["params"]],
            "optimizer": ctx.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "methods": self.methods.state_dict(),
            "rng": checkpoint.rng_state(self.generators()),
            "context": {"step": ctx.step, "epoch": ctx.epoch, "lr": ctx.lr,
                        "weight_decay": ctx.weight_decay, "gamma": ctx.gamma},
            "diverge_ref": self.diverge_ref,
            "progress": None if progress is None else vars(progress),
            "phases": self.rec.result["phases"], "columns": self.rec.columns,
            "metrics_csv": self.rec.csv_text(),
        }
        with held_signals():
            checkpoint.save(self.rec.dir / checkpoint.CHECKPOINT_FILE, state)
        self.last_checkpoint = time.monotonic()

    def restore(self, state: Dict[str, Any]) -> tuple:
        """Put a checkpoint's state back (after `setup`, which rebuilt what it derives from the
        fresh model); returns (stage to run next, its PhaseProgress or None)."""
        ctx = self.ctx
        start = state["position"]["stage"]
        progress = None if state["progress"] is None else PhaseProgress(**state["progress"])
        if progress is not None and start > 0:
            self.load_stage_data(self.stages[start])
        self.methods.load_state_dict(state["methods"], ctx)  # may restructure the model (LW)
        ctx.model.load_state_dict(state["model"])
        ctx.masks.load_state_dict(state["masks"])
        named = dict(ctx.model.named_parameters())
        held = set(state["optimizer_params"])
        for n, p in named.items():  # the optimizer over exactly the parameters it held
            p.requires_grad_(n in held)
        ctx.reset_optimizer()
        for n, p in named.items():
            p.requires_grad_(state["requires_grad"][n])
        ctx.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        for k, v in state["context"].items():
            setattr(ctx, k, v)
        self.diverge_ref = state["diverge_ref"]
        if progress is not None and progress.best_state is not None:
            progress.best_state = {k: v.to(self.device) for k, v in progress.best_state.items()}
        checkpoint.set_rng_state(state["rng"], self.generators())
        self.rec.restore(state["phases"], state["columns"], state["metrics_csv"])
        return start, progress


def check_labels(arrays: Arrays, classes: int, name: str) -> None:
    """Labels are integers in [0, classes), as many as the images."""
    for part in ("train", "test"):
        x, y = getattr(arrays, f"x_{part}"), getattr(arrays, f"y_{part}")
        if len(x) != len(y):
            raise DataError(f"{name}: {len(x)} {part} images but {len(y)} labels"
                            + (f" (in {arrays.source})" if arrays.source else "")
                            + "; the files do not belong together")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise DataError(f"{name}: {part} labels span [{int(y.min())}, {int(y.max())}], outside "
                            f"[0, {classes}) (num_classes={classes})"
                            + (f"; files in {arrays.source}" if arrays.source else ""))


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


def prepare(cfg: DictConfig, job: int = 0):
    """The config the run trains (`runner.config.prepare`) and its device: before anything is built."""
    cfg = prepare_config(cfg)
    return cfg, resolve_device(cfg.device, job)


def run(cfg: DictConfig, out_dir, choices: Optional[Dict[str, str]] = None,
        overrides: Optional[List[str]] = None, job: int = 0, search_root=None,
        record_invalid: bool = False) -> Dict[str, Any]:
    """Train one configured run in `out_dir` (sweep job number `job`); returns its result.json.

    `resume` (config): a run directory to continue from its checkpoint, or `auto`: a completed
    run of the same config below `search_root` is reused, an unfinished one continued.
    `record_invalid` (sweeps): a config error is recorded as a failed result.json, so the sweep's
    table counts it."""
    choices, out_dir = dict(choices or {}), Path(out_dir)
    try:
        cfg, device = prepare(cfg, job)
    except ConfigError as e:
        if record_invalid:
            RunRecorder(out_dir, {"name": OmegaConf.select(cfg, "name", default="run"),
                                  "seed": OmegaConf.select(cfg, "seed", default=None),
                                  "choices": choices, "overrides": list(overrides or []),
                                  "config": None}, tracked=False).finish("failed", error=str(e))
        raise
    config = OmegaConf.to_container(cfg, resolve=True)
    ident = checkpoint.identity(choices, config)
    kind, where = checkpoint.previous_run(cfg.resume, out_dir, ident, search_root)
    if kind == "completed":
        return checkpoint.reuse(where, out_dir)
    state = None
    if kind == "checkpoint":
        state = checkpoint.load(where / checkpoint.CHECKPOINT_FILE)
        if state.get("identity") != ident:
            raise ConfigError(f"resume={cfg.resume}: the checkpoint in {where} belongs to another "
                              "config; resume with the run's own overrides only")
        log.info("resuming %s from %s (stage %d)", cfg.name, where, state["position"]["stage"])
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
            rec.update(device=str(trainer.device), deterministic=cfg.train.deterministic,
                       precision=cfg.train.precision,
                       environment=environment(trainer.device, out_dir))  # logs.py
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
