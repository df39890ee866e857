"""One run: seed, build everything from the config, train phase by phase, record results."""
from __future__ import annotations

import copy
import inspect
import logging
import math
import random
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from methods.base import MethodStack
from runner.checks import check_report, report_at
from runner.data.synthetic import shapes_only
from runner.data.tensors import Arrays, Pipeline, Split, Splits, batches, split_train_val, subset_indices
from runner.errors import Diverged, RunnerError
from runner.optim import Schedule, build_optimizer, set_hyper
from runner.results import RunRecorder

log = logging.getLogger("runner")
_ARRAYS_CACHE: Dict[str, Arrays] = {}  # readers' output, shared by the jobs of one sweep


def mse_one_hot(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    err = (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum(1)
    return err.mean() if reduction == "mean" else err.sum()


LOSSES = {"cross_entropy": F.cross_entropy, "mse": mse_one_hot}


@dataclass
class Stage:
    """One executed phase: a phase config, its repeat index and its position in the run."""

    index: int
    repeat: int
    name: str
    cfg: Any  # the PhaseConfig node


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    return call(cfg.model, "model")


def expand_stages(cfg) -> List[Stage]:
    stages, ci = [], cfg.ci
    for phase in cfg.phases:
        n = min(phase.repeat, ci.max_repeat) if ci.enabled else phase.repeat
        for r in range(n):
            name = phase.name if phase.repeat == 1 else f"{phase.name}{r + 1}"
            stages.append(Stage(len(stages), r, name, phase))
    return stages


class RunContext:
    """What methods see and may change: model, optimizer, data, position in the run."""

    def __init__(self, cfg, device, model, methods):
        self.cfg, self.device, self.model, self.methods = cfg, device, model, methods
        self.optimizer = None
        self.init_state: Dict[str, torch.Tensor] = {}
        self.stage: Optional[Stage] = None
        self.data: Optional[Splits] = None
        self.pipeline: Optional[Pipeline] = None
        self.epoch = 0
        self.step = 0
        self.lr = cfg.optim.lr
        self.weight_decay = cfg.optim.weight_decay
        self.gamma: Optional[float] = None  # the phase's schedule factor (None: the schedule's)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # methods' own randomness (masks, eta)

    @property
    def phase_index(self) -> int:
        return self.stage.index if self.stage else -1

    def reset_optimizer(self) -> None:
        """A fresh optimizer (no momentum / Adam moments) over the model's current parameters."""
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.lr, self.weight_decay)

    def build_model(self) -> torch.nn.Module:
        """A freshly initialized model of the configured architecture, drawn from `self.gen`."""
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.gen)))
        try:
            return build_model(self.cfg).to(self.device)
        finally:
            torch.random.set_rng_state(state)

    def calibration_batch(self, n: int = 256):
        """The first n training samples of the current phase, through the eval pipeline."""
        x, y = self.data.train.x[:n], self.data.train.y[:n]
        return self.pipeline(x, False, None), y


class Trainer:
    def __init__(self, cfg: DictConfig, recorder: RunRecorder):
        self.cfg, self.rec = cfg, recorder
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        model = build_model(cfg).to(self.device)
        methods = [call(cfg.method, "method")] if cfg.method is not None else []
        methods += [call(m, f"extra_methods[{i}]") for i, m in enumerate(cfg.extra_methods)]
        self.methods = MethodStack(methods)
        self.ctx = RunContext(cfg, self.device, model, self.methods)
        self.stages = expand_stages(cfg)
        self.order_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.progress = cfg.progress
        self.opts = SimpleNamespace(**OmegaConf.to_container(cfg.train, resolve=True))  # hot loop
        if self.opts.loss not in LOSSES:
            raise RunnerError(f"train.loss={self.opts.loss!r}; valid: {', '.join(LOSSES)}")
        self.loss_fn = LOSSES[self.opts.loss]

    # -- data ---------------------------------------------------------------------------------
    def dataset_cfg(self, key: Optional[str]):
        if key is None:
            return self.cfg.dataset
        if key not in self.cfg.datasets:
            raise RunnerError(f"phase dataset {key!r} is not in `datasets`; "
                              f"defined: {sorted(self.cfg.datasets)}")
        return self.cfg.datasets[key]

    def arrays(self, ds) -> Arrays:
        ci = self.cfg.ci
        if ci.enabled:
            return shapes_only(ds.shape, ds.num_classes, ci.n_train, ci.n_test, seed=self.cfg.seed,
                               dtype=ds.get("dtype", "uint8"))
        key = OmegaConf.to_yaml(ds.reader, resolve=True)  # interpolated options (seed) count
        if key not in _ARRAYS_CACHE:
            _ARRAYS_CACHE[key] = call(ds.reader, "dataset.reader")
        return _ARRAYS_CACHE[key]

    def load_stage_data(self, stage: Stage) -> None:
        ds = self.dataset_cfg(stage.cfg.dataset)
        tr = self.cfg.train
        val_seed = self.cfg.seed if tr.val_seed is None else tr.val_seed
        splits = split_train_val(self.arrays(ds), tr.val_fraction, val_seed, self.device)
        sub = stage.cfg.subset
        n = sub.n if sub.n is None or not self.cfg.ci.enabled else min(sub.n, len(splits.train))
        idx = subset_indices(len(splits.train), self.cfg.seed, sub.fraction, n, sub.chunks,
                             stage.repeat, sub.access)
        if idx is not None:
            splits.train = splits.train.take(idx.to(self.device))
        augment = stage.cfg.augment if stage.cfg.augment is not None else ds.get("augment", [])
        pipe = Pipeline(ds.get("mean", [0.0]), ds.get("std", [1.0]),
                        [call(t, f"{stage.name}.transform") for t in stage.cfg.transform],
                        [call(t, f"{stage.name}.augment") for t in augment], self.device)
        self.ctx.pipeline = pipe
        if self.float_bytes(splits, pipe) <= tr.cache_mb * 2**20:
            splits = Splits(*(pipe.prepare(s) for s in (splits.train, splits.val, splits.test)))
            self.ctx.pipeline = lambda x, train, gen: pipe.random(x, train, gen)
        self.ctx.data = splits

    def float_bytes(self, splits: Splits, pipe: Pipeline) -> int:
        """Size of the splits as float32 after the deterministic transforms."""
        probe = pipe.deterministic(splits.train.x[:1])
        n = len(splits.train) + len(splits.val) + len(splits.test)
        return 4 * n * probe[0].numel()

    # -- loops --------------------------------------------------------------------------------
    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.loss_fn(out, y, reduction=reduction)

    def train_epoch(self, batch_size, limit):
        ctx, model, pipe, m = self.ctx, self.ctx.model, self.ctx.pipeline, self.methods
        loss_terms, before, after = (m.by_hook[h] for h in ("loss_term", "before_step", "after_step"))
        if not model.training:  # evaluate() leaves it in train mode; methods' choices stay
            model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = 0
        for xb, yb in batches(ctx.data.train, batch_size, self.order_gen, limit=limit):
            out = model(pipe(xb, True, self.aug_gen))
            loss = self.loss(out, yb)
            total = loss + m.loss_term(ctx) if loss_terms else loss
            opt = ctx.optimizer
            opt.zero_grad(set_to_none=True)
            total.backward()
            if before:
                m.call("before_step", ctx)
            opt.step()
            if after:
                m.call("after_step", ctx)
            ctx.step += 1
            loss_sum += loss.detach() * len(yb)
            correct += (out.argmax(1) == yb).sum()
            n += len(yb)
        return loss_sum.item() / max(n, 1), correct.item() / max(n, 1)

    @torch.no_grad()
    def evaluate(self, split: Split, limit=None):
        if len(split) == 0:
            return math.nan, math.nan
        model, pipe = self.ctx.model, self.ctx.pipeline
        model.eval()
        loss_sum, correct, n = 0.0, 0, 0
        for xb, yb in batches(split, self.opts.eval_batch_size, None, shuffle=False, limit=limit):
            out = model(pipe(xb, False, None))
            loss_sum += self.loss(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
            n += len(yb)
        model.train()
        return loss_sum / n, correct / n

    @torch.no_grad()
    def weight_norm(self) -> float:
        """L2 norm of all parameters together (one device sync)."""
        norms = [torch.linalg.vector_norm(p) for p in self.ctx.model.parameters()]
        return torch.linalg.vector_norm(torch.stack(norms)).item()

    # -- the run ------------------------------------------------------------------------------
    def fit(self) -> None:
        ctx = self.ctx
        self.load_stage_data(self.stages[0])
        ctx.init_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        ctx.stage = self.stages[0]
        self.methods.call("setup", ctx)
        ctx.reset_optimizer()
        for stage in self.stages:
            if stage.index > 0:
                self.load_stage_data(stage)
            self.run_stage(stage)

    def run_stage(self, stage: Stage) -> None:
        cfg, ctx, ci, opts = self.cfg, self.ctx, self.cfg.ci, self.opts
        ph = SimpleNamespace(**OmegaConf.to_container(stage.cfg, resolve=True))
        ctx.stage, ctx.epoch = stage, 0
        ctx.lr = cfg.optim.lr if ph.lr is None else ph.lr
        ctx.weight_decay = cfg.optim.weight_decay if ph.weight_decay is None else ph.weight_decay
        ctx.gamma = ph.gamma
        if ph.reset_optimizer:
            ctx.reset_optimizer()
        self.methods.call("on_phase_start", ctx)  # may change ctx.lr, ctx.gamma, ctx.weight_decay
        set_hyper(ctx.optimizer, cfg.optim, ctx.lr, ctx.weight_decay)
        schedule = Schedule(cfg.schedule, ctx.lr, ctx.gamma, ph.milestones)

        epochs = opts.epochs if ph.epochs is None else ph.epochs
        patience = opts.patience if ph.patience is None else ph.patience
        batch_size, limit, eval_limit = opts.batch_size, None, None
        if ci.enabled:
            epochs, limit, eval_limit = min(epochs, ci.max_epochs), ci.max_batches, ci.max_batches
            batch_size = None if batch_size is None else min(batch_size, ci.batch_size)

        best, best_state, since_best, end = None, None, 0, None
        bar = tqdm(range(epochs), desc=f"{stage.name}", leave=False,
                   disable=None if self.progress is None else not self.progress)
        for epoch in bar:
            ctx.epoch = epoch
            lr = schedule.lr(epoch)
            for g in ctx.optimizer.param_groups:
                g["lr"] = lr
            t0 = time.perf_counter()
            train_loss, train_acc = self.train_epoch(batch_size, limit)
            if not math.isfinite(train_loss):
                raise Diverged(f"training loss became {train_loss} in phase {stage.name!r}, "
                               f"epoch {epoch + 1}")
            last = epoch + 1 == epochs
            evaluate = last or (epoch + 1) % opts.eval_every == 0
            val_loss = val_acc = test_loss = test_acc = math.nan
            if evaluate:
                val_loss, val_acc = self.evaluate(ctx.data.val, eval_limit)
                if opts.eval_test:
                    test_loss, test_acc = self.evaluate(ctx.data.test, eval_limit)
                schedule.observe(val_loss if math.isfinite(val_loss) else train_loss)
            row = {"phase": stage.index, "phase_name": stage.name, "epoch": epoch + 1,
                   "step": ctx.step, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
                   "test_acc": test_acc, "weight_norm": self.weight_norm(),
                   "seconds": time.perf_counter() - t0}
            row.update(self.methods.collect("on_epoch_end", ctx))
            self.rec.epoch(row)
            if not evaluate:
                continue
            log.info("%s epoch %d/%d lr %.3g | train %.4f / %.4f | val %.4f / %.4f | test %.4f / %.4f",
                     stage.name, epoch + 1, epochs, lr, train_loss, train_acc, val_loss, val_acc,
                     test_loss, test_acc)
            end = row
            if best is None or not (val_loss >= best["val_loss"]):  # NaN val: keep the latest
                best, since_best = row, 0
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
        overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Train one configured run in `out_dir`; returns the content of its result.json."""
    check_report(cfg)
    choices = dict(choices or {})
    t0 = time.time()
    base = {"name": cfg.name, "seed": cfg.seed, "choices": choices,
            "overrides": list(overrides or []), "paper_value": paper_value(cfg, choices),
            "paper_source": cfg.paper.source, "config": OmegaConf.to_container(cfg, resolve=True)}
    rec = RunRecorder(out_dir, base)
    status, error = "completed", None
    try:
        Trainer(cfg, rec).fit()
    except Diverged as e:
        status, error = "diverged", str(e)
        log.warning("diverged: %s", e)
    except BaseException as e:
        rec.finish("failed", error=f"{type(e).__name__}: {e}", wall_time_s=time.time() - t0,
                   summary=summarize(rec.result, cfg))
        raise
    return rec.finish(status, error=error, wall_time_s=time.time() - t0,
                      summary=summarize(rec.result, cfg))
