"""One run: seed, build everything from the config, train phase by phase, record results."""
from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import logging
import math
import os
import random
import time
import traceback
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from methods.base import MethodStack
from runner import ci
from runner.checks import check_report, report_at
from runner.context import RunContext, Stage
from runner.data.synthetic import shapes_only
from runner.data.tensors import Arrays, Pipeline, Splits, batches, split_train_val, subset_indices
from runner.errors import Diverged, RunnerError
from runner.logs import batch_bar, environment, epoch_line, log_start
from runner.models import params
from runner.optim import Schedule, build_optimizer, set_hyper
from runner.results import RunRecorder

log = logging.getLogger("runner")
_ARRAYS_CACHE: Dict[str, Arrays] = {}  # readers' output, shared by the jobs of one sweep
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
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise RunnerError(f"device={name!r} is not available here ({torch.cuda.device_count()} GPUs "
                          "visible); use device=cpu or device=auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RunnerError(f"device={name!r} is not available here; use device=cpu or device=auto")
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
    first). Errors inside the target propagate unchanged; a bad target or argument names `where`.
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
    return fn(**kwargs)


def build_model(cfg) -> torch.nn.Module:
    """The configured model with its `model_transforms` applied (masks' structure, bases, ...)."""
    model = call(cfg.model, "model")
    for i, t in enumerate(cfg.get("model_transforms") or []):
        model = call(t, f"model_transforms[{i}]")(model) or model
    return model


def expand_stages(cfg) -> List[Stage]:
    stages = []
    for phase in cfg.phases:
        n = min(phase.repeat, cfg.ci.max_repeat) if ci.active(cfg) else phase.repeat
        for r in range(n):
            name = phase.name if phase.repeat == 1 else f"{phase.name}{r + 1}"
            stages.append(Stage(len(stages), r, name, phase))
    return stages


class Trainer:
    def __init__(self, cfg: DictConfig, recorder: RunRecorder, job: int = 0):
        self.cfg, self.rec = cfg, recorder
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.opts = SimpleNamespace(**OmegaConf.to_container(cfg.train, resolve=True))  # hot loop
        if self.opts.loss not in LOSSES:
            raise RunnerError(f"train.loss={self.opts.loss!r}; valid: {', '.join(LOSSES)}")
        if self.opts.select_by not in ("val_loss", "val_acc"):
            raise RunnerError(f"train.select_by={self.opts.select_by!r}; valid: val_loss, val_acc")
        if self.opts.precision not in PRECISIONS:
            raise RunnerError(f"train.precision={self.opts.precision!r}; valid: {', '.join(PRECISIONS)}")
        self.device = resolve_device(cfg.device, job)
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
        caps = self.cfg.ci
        if ci.active(self.cfg):
            return shapes_only(ds.shape, ds.num_classes, caps.n_train, caps.n_test,
                               seed=self.cfg.seed, dtype=ds.get("dtype", "uint8"))
        key = OmegaConf.to_yaml(ds.reader, resolve=True)  # interpolated options (seed) count
        if key not in _ARRAYS_CACHE:
            _ARRAYS_CACHE[key] = call(ds.reader, "dataset.reader")
        return _ARRAYS_CACHE[key]

    def device_splits(self, ds) -> Splits:
        """Train / val / test of a dataset on the device; reused while phases keep the dataset."""
        tr = self.cfg.train
        key = OmegaConf.to_yaml(ds, resolve=True)
        if self._device_data is not None and self._device_data[0] == key:
            return self._device_data[1]
        self._device_data = None  # free the previous dataset before building the next
        self.free_device_memory()
        val_seed = self.cfg.seed if tr.val_seed is None else tr.val_seed
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
        n = sub.n if sub.n is None or not ci.active(self.cfg) else min(sub.n, len(splits.train))
        idx = subset_indices(len(splits.train), self.cfg.seed, sub.fraction, n, sub.chunks,
                             stage.repeat, sub.access)
        if idx is not None:
            splits.train = splits.train.take(idx.to(self.device))
        augment = stage.cfg.augment if stage.cfg.augment is not None else ds.get("augment", [])
        pipe = Pipeline(ds.get("mean", [0.0]), ds.get("std", [1.0]),
                        [call(t, f"{stage.name}.transform") for t in stage.cfg.transform],
                        [call(t, f"{stage.name}.augment") for t in augment], self.device)
        self.ctx.pipeline = self.with_layout(pipe)
        if self.float_bytes(splits, pipe) <= self.cache_bytes():
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
        """One epoch; returns the device tensor [loss sum, correct, samples] (no host sync).
        A per-iteration `schedule` sets the lr before every step (`start`: the phase's first step)."""
        ctx = self.ctx
        if not ctx.model.training:  # evaluate() leaves it in train mode; methods' choices stay
            ctx.model.train()
        stats = torch.zeros(3, device=self.device)
        epoch_batches = batches(ctx.data.train, batch_size, self.order_gen, limit=limit)
        for xb, yb in batch_bar(epoch_batches, len(ctx.data.train), batch_size, limit,  # logs.py
                                self.progress):
            if schedule is not None:
                lr = schedule.at_step(ctx.step - start)
                for g in ctx.optimizer.param_groups:
                    g["lr"] = lr
            self.train_step(xb, yb, stats)
        return stats

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor, stats: torch.Tensor) -> None:
        ctx, m, masks = self.ctx, self.methods, self.ctx.masks
        x = ctx.pipeline(xb, True, self.aug_gen)
        ctx.batch = (x, yb)
        with self.autocast():
            out = ctx.model(x)
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
        stats += torch.stack([loss.detach().float() * n, (out.argmax(1) == yb).sum().float(),
                              torch.tensor(float(n), device=stats.device)])

    @torch.no_grad()
    def weight_stats(self) -> torch.Tensor:
        """[total norm of effective parameters, non-zero weights, trained weights] (device)."""
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
        """A method hook, then the masks again (a method's write never beats a mask)."""
        self.methods.call(hook, self.ctx)
        if len(self.ctx.masks):
            self.ctx.masks.project()

    # -- the run ------------------------------------------------------------------------------
    def fit(self) -> None:
        ctx = self.ctx
        self.load_stage_data(self.stages[0])
        ctx.init_state = params.snapshot(ctx.model)
        ctx.stage = self.stages[0]
        self.call_hook("setup")
        ctx.reset_optimizer()
        if self.opts.compile:
            ctx.model = torch.compile(ctx.model)
        for stage in self.stages:
            if stage.index > 0:
                self.load_stage_data(stage)
            self.run_stage(stage)
        self._device_data = None
        self.ctx.data = None

    def run_stage(self, stage: Stage) -> None:
        cfg, ctx, opts = self.cfg, self.ctx, self.opts
        caps = cfg.ci if ci.active(cfg) else None
        ph = SimpleNamespace(**OmegaConf.to_container(stage.cfg, resolve=True))
        ctx.stage, ctx.epoch = stage, 0
        ctx.lr = cfg.optim.lr if ph.lr is None else ph.lr
        ctx.weight_decay = cfg.optim.weight_decay if ph.weight_decay is None else ph.weight_decay
        ctx.gamma = ph.gamma
        if ph.reset_optimizer:
            ctx.reset_optimizer()
        epochs = opts.epochs if ph.epochs is None else ph.epochs
        patience = opts.patience if ph.patience is None else ph.patience
        batch_size, limit, eval_limit = opts.batch_size, None, None
        if caps is not None:
            epochs, limit, eval_limit = min(epochs, caps.max_epochs), caps.max_batches, caps.eval_batches
            batch_size = ci.cap(batch_size, caps.batch_size)
        n_train = len(ctx.data.train)
        bs = n_train if batch_size is None else max(1, min(batch_size, n_train))
        ctx.steps_per_epoch = -(-n_train // bs) if limit is None else min(-(-n_train // bs), limit)
        ctx.total_steps = ctx.steps_per_epoch * epochs
        self.call_hook("on_phase_start")  # may change ctx.lr, ctx.gamma, ctx.weight_decay
        set_hyper(ctx.optimizer, cfg.optim, ctx.lr, ctx.weight_decay)
        schedule = Schedule(cfg.schedule, ctx.lr, ctx.gamma, ph.milestones)

        best, best_score, best_state, since_best, end = None, None, None, 0, None
        start, per_step = ctx.step, schedule if schedule.per_step else None
        bar = tqdm(range(epochs), desc=f"{stage.name}", leave=False,
                   disable=None if self.progress is None else not self.progress)
        for epoch in bar:
            ctx.epoch = epoch
            lr = schedule.lr(epoch)
            for g in ctx.optimizer.param_groups:
                g["lr"] = lr
            t0 = time.perf_counter()
            stats = self.train_epoch(batch_size, limit, per_step, start)
            lr = ctx.optimizer.param_groups[0]["lr"]  # a per-iteration schedule's last
            last = epoch + 1 == epochs
            evaluate = last or (epoch + 1) % opts.eval_every == 0
            nan = torch.full((2,), math.nan, device=self.device)
            val = torch.stack(ctx.evaluate(ctx.data.val, eval_limit)) if evaluate else nan
            test = (torch.stack(ctx.evaluate(ctx.data.test, eval_limit))
                    if evaluate and opts.eval_test else nan)
            # the epoch's one host sync: every number of the row at once
            (loss_sum, correct, n, val_loss, val_acc, test_loss, test_acc, norm, nonzero,
             trained) = torch.cat([stats, val.float(), test.float(), self.weight_stats()]).tolist()
            train_loss, train_acc = loss_sum / max(n, 1), correct / max(n, 1)
            if not math.isfinite(train_loss):
                raise Diverged(f"training loss became {train_loss} in phase {stage.name!r}, "
                               f"epoch {epoch + 1}")
            if evaluate:
                schedule.observe(val_loss if math.isfinite(val_loss) else train_loss)
            row = {"phase": stage.index, "phase_name": stage.name, "epoch": epoch + 1,
                   "step": ctx.step, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
                   "test_acc": test_acc, "weight_norm": norm, "nonzero_weights": int(nonzero),
                   "trained_weights": int(trained), "seconds": time.perf_counter() - t0}
            row.update(self.methods.collect("on_epoch_end", ctx))
            self.rec.epoch(row)
            if not evaluate:
                continue
            log.info("%s", epoch_line(stage.name, epoch + 1, epochs, row))  # logs.py
            end = row
            score = val_loss if opts.select_by == "val_loss" else -val_acc
            if best is None or not (score >= best_score):  # NaN val: keep the latest
                best, best_score, since_best = row, score, 0
                if opts.restore_best:
                    best_state = copy.deepcopy(ctx.model.state_dict())
            else:
                since_best += 1
                if patience is not None and since_best >= patience:
                    break
        bar.close()
        if best_state is not None:
            ctx.model.load_state_dict(best_state)
        keys = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        summary = {"index": stage.index, "name": stage.name, "epochs": end["epoch"],
                   "steps": ctx.step, "best_epoch": best["epoch"],
                   "end": {k: end[k] for k in keys}, "best": {k: best[k] for k in keys}}
        summary.update(self.methods.collect("on_phase_end", ctx))
        self.rec.phase(summary)


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


def run(cfg: DictConfig, out_dir, choices: Optional[Dict[str, str]] = None,
        overrides: Optional[List[str]] = None, job: int = 0) -> Dict[str, Any]:
    """Train one configured run in `out_dir` (sweep job number `job`); returns its result.json."""
    cfg = ci.apply(cfg)
    check_report(cfg)
    choices = dict(choices or {})
    t0 = time.time()
    base = {"name": cfg.name, "seed": cfg.seed, "choices": choices,
            "overrides": list(overrides or []), "paper_value": paper_value(cfg, choices),
            "paper_source": cfg.paper.source, "config": OmegaConf.to_container(cfg, resolve=True)}
    rec = RunRecorder(out_dir, base)
    status, error = "completed", None
    try:
        trainer = Trainer(cfg, rec, job)
        rec.result.update(device=str(trainer.device), deterministic=cfg.train.deterministic,
                          precision=cfg.train.precision,
                          environment=environment(trainer.device, out_dir))  # logs.py
        log_start(cfg.name, cfg.seed, rec.result["environment"])
        trainer.fit()
    except Diverged as e:
        status, error = "diverged", str(e)
        log.warning("diverged: %s", e)
    except BaseException as e:
        rec.finish("failed", error=f"{type(e).__name__}: {e}", wall_time_s=time.time() - t0,
                   summary=summarize(rec.result, cfg))
        traceback.clear_frames(e.__traceback__)  # a sweep's next job gets the memory back
        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()
        raise
    return rec.finish(status, error=error, wall_time_s=time.time() - t0,
                      summary=summarize(rec.result, cfg))
