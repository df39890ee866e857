"""Fused seeds (`train.fused_seeds=K`): the seeds s, s+1, ..., s+K-1 of one config trained as one
batched model in one process, each member writing its own run directory as a separate run does.

Each member is a whole Trainer of its own config (`seed` = its seed): its model, data, methods,
generators, recorder, early stopping and divergence checks. Only the training step is shared:
every trained parameter is stacked into one leaf tensor [K, ...] that the members' parameters
alias (a method writing a member's weights at a phase start writes its slice), the forward pass
runs on the stacked tensors (runner.training.stacked), the loss is
the sum of the members' losses (so each slice gets its member's gradient), and one optimizer
of the members' kind steps the stacked leaves (elementwise, as each member's would).

A loss term that is a sum over parameters (L2's `penalty`) is computed once over the stacked
leaves. What a step of a separate run does besides that is refused in one line: methods acting in
every step (other loss terms, gradient or weight changes around the optimizer step), masks,
parametrizations, batch norm (running statistics), a schedule following each seed's validation
loss (plateau), distributed training, torch.compile and resuming. On the CPU a member's numbers
equal its separate run's up to the batched matmul's float rounding (tests/runner/test_fused.py).
"""
from __future__ import annotations

import copy
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from runner import checkpoint
from runner.data.tensors import batches
from runner.errors import ConfigError, Diverged, Interrupted
from runner.logs import environment, log_start
from runner.models import params
from runner.results import RunRecorder
from runner.train import Trainer
from runner.training.stacked import Stacked, check_fusable

log = logging.getLogger("runner")


def member_configs(cfg: DictConfig) -> List[DictConfig]:
    """The K members' configs: the run's with `seed` = seed + k and `train.fused_seeds` = 1, each
    exactly a separate run's config."""
    k = cfg.train.fused_seeds
    if cfg.resume is not None:
        raise ConfigError("train.fused_seeds does not resume a run; rerun it, or run the seeds "
                          "separately to resume them")
    if cfg.distributed.enabled or cfg.train.compile:
        raise ConfigError("train.fused_seeds needs one process and no train.compile")
    if cfg.schedule.name == "plateau":
        raise ConfigError("train.fused_seeds: schedule=plateau follows each seed's validation loss; "
                          "run the seeds separately (train.fused_seeds=1)")
    out = []
    for i in range(k):
        m = copy.deepcopy(cfg)
        m.seed, m.train.fused_seeds = cfg.seed + i, 1
        out.append(m)
    return out


def member_overrides(overrides: List[str], seed: int) -> List[str]:
    """A member's command line as its separate run's: `seed=` its seed, no `train.fused_seeds`."""
    keep = [o for o in overrides if o.lstrip("+~").partition("=")[0] not in ("seed", "train.fused_seeds")]
    return keep + [f"seed={seed}"]


class FusedTrainer:
    """K members trained in lockstep; `live` are those still training (not diverged)."""

    def __init__(self, members: List[Trainer], rng: List[Dict[str, Any]]):
        self.members = members
        self.rng = rng  # each member's global random states (Python, NumPy, torch)
        self.device = members[0].parts.device
        self.stacked: Optional[Stacked] = None
        self.optimizer = None
        self.optimizers: List[Any] = []  # each member's optimizer the fused one was built from
        self.diverged: Dict[int, Diverged] = {}
        self.x_cache = None
        self.eval_cache: Dict[str, tuple] = {}  # split name -> (key, splits and pipelines, inputs, labels)
        self.selected = None  # (training members, every, weight, indices): `selection`

    def live(self) -> List[int]:
        return [k for k in range(len(self.members)) if k not in self.diverged]

    def as_member(self, k: int, fn) -> None:
        """`fn()` under member k's global random states, as its separate run would call it."""
        checkpoint.set_rng_state(self.rng[k], {})
        try:
            fn()
        finally:
            self.rng[k] = checkpoint.rng_state({})

    def fit(self) -> None:
        for k, t in enumerate(self.members):
            def setup(t=t):
                phases = t.parts.phases
                t.data.load_phase_data(phases[0])
                t.ctx.init_state = params.snapshot(t.ctx.model)
                t.ctx.phase = phases[0]
                t.call_hook("setup")
                t.ctx.reset_optimizer()
            self.as_member(k, setup)
            check_fusable(t, "setup")
        for phase in self.members[0].parts.phases:
            self.run_phase(phase)
        self.eval_cache.clear()
        for t in self.members:
            t.data.release()

    def sync(self, where: str) -> None:
        """After the members' phase-start hooks: stacked leaves (rebuilt when a member's
        parameters changed), buffers, and the optimizer (rebuilt when the members reset theirs)."""
        models = [self.members[k].ctx.model for k in range(len(self.members))]
        for k in self.live():
            check_fusable(self.members[k], where)
        if self.stacked is None or not self.stacked.covers(models[0]):
            self.stacked = Stacked(models)
            self.optimizers = []
        self.stacked.stack_buffers()
        self.stacked.plan()
        opts = [self.members[k].ctx.optimizer for k in self.live()]
        if self.optimizers != opts:
            lead = opts[0]
            groups = [{**{k: v for k, v in g.items() if k != "params"},
                       "params": [self.stacked.leaf[id(p)] for p in g["params"]]}
                      for g in lead.param_groups]
            self.optimizer = type(lead)(groups, **lead.defaults)
            self.optimizers = opts

    def copy_hyper(self, k: int) -> None:
        """Member k's optimizer hyperparameters (every member's are the same) to the fused one."""
        lead = self.members[k].ctx.optimizer
        for gf, g in zip(self.optimizer.param_groups, lead.param_groups):
            for key in ("lr", "weight_decay", "momentum", "betas"):
                if key in g:
                    gf[key] = g[key]

    def run_phase(self, phase) -> None:
        sts: Dict[int, Any] = {}
        for k in self.live():
            def begin(t=self.members[k], k=k):
                if phase.index > 0:
                    t.data.load_phase_data(phase)
                sts[k] = t.begin_phase(phase)
            self.as_member(k, begin)
        if not sts:
            return
        self.sync(f"phase {phase.name!r}")
        self.x_cache = None
        lead = sts[self.live()[0]]
        stopped: Dict[int, Any] = {}
        for epoch in range(lead.epochs):
            training = [k for k in sts if k not in stopped and k not in self.diverged]
            if not training:
                break
            evaluate = [self.members[k].set_epoch(sts[k], epoch) for k in training][0]
            self.copy_hyper(training[0])
            t0 = time.perf_counter()
            stats = self.train_epoch(training, lead, evaluate).unbind(0)
            evals = self.evaluations(training) if evaluate else {}
            for i, k in enumerate(training):
                t = self.members[k]
                try:
                    row = t.loop.close(phase, epoch, evaluate, stats[i], t0, evals.get(k))
                except Diverged as e:
                    self.diverged[k] = e
                    log.warning("seed %s diverged: %s", t.cfg.seed, e)
                    continue
                if t.after_epoch(sts[k], epoch, row):
                    stopped[k] = self.freeze(k)
        for k in sts:
            if k in self.diverged:
                continue
            if k in stopped:
                self.thaw(k, stopped[k])
            t = self.members[k]
            sts[k].best.restore(t.ctx.model)
            self.as_member(k, lambda t=t, k=k: t.end_phase(phase, sts[k].best))

    @torch.no_grad()
    def evaluations(self, training: List[int]) -> Dict[int, tuple]:
        """Each training member's ([val loss, accuracy], [test loss, accuracy]) as its
        `RunContext.evaluate` gives them, from one batched forward pass per eval batch; {} (each
        member evaluates its own) unless the members' splits are in memory and of one size."""
        ts = {k: self.members[k] for k in training}
        t0 = ts[training[0]]
        ctx, opts, K = t0.ctx, t0.parts.opts, len(self.members)
        out: Dict[int, list] = {k: [] for k in training}
        for name in ("val", "test"):
            splits = {k: getattr(t.ctx.data, name) for k, t in ts.items()}
            if any(hasattr(s, "batches") for s in splits.values()) or len({len(s) for s in splits.values()}) > 1:
                return {}
            n = len(splits[training[0]])
            if opts.max_eval_batches is not None:
                n = min(n, opts.max_eval_batches * ctx.eval_batch_size)
            if n == 0 or (name == "test" and not opts.eval_test):
                for k in training:
                    out[k].append(torch.full((2,), float("nan"), device=self.device))
                continue
            xs, y = self.eval_inputs(name, training, splits, n)
            with t0.parts.autocast():
                logits = torch.cat([self.stacked(x).float() for x in xs], 1)
            if opts.loss == "cross_entropy":
                loss = t0.parts.loss_fn(logits.transpose(1, 2), y, reduction="none").mean(1)
            else:
                loss = torch.stack([t0.parts.loss_fn(logits[k], y[k]) for k in range(K)])
            acc = (logits.argmax(2) == y).float().mean(1)
            for k in training:
                out[k].append(torch.stack([loss[k], acc[k]]))
        return {k: tuple(v) for k, v in out.items()}

    def eval_inputs(self, name: str, training: List[int], splits: Dict[int, Any], n: int) -> tuple:
        """The first `n` samples of the members' splits `name` as eval batches stacked
        [K, b, ...] (a member not training gets `training[0]`'s; an iterable) and their labels
        [K, n]. The batches are kept for the next evaluations of the same split and pipeline
        objects where they fit the data's memory budget (`train.cache_mb`), else made one at a
        time."""
        lead, K = splits[training[0]], len(self.members)
        given = [splits.get(k, lead) for k in range(K)]
        pipes = [self.members[k if k in splits else training[0]].ctx.pipeline for k in range(K)]
        kept = self.eval_cache.pop(name, None)  # a miss frees the old inputs first
        if kept is not None and kept[0] == (training, n) and all(
                a is b for a, b in zip(kept[1], given + pipes)):
            self.eval_cache[name] = kept
            return kept[2], kept[3]
        t0 = self.members[training[0]]
        size = t0.ctx.eval_batch_size

        def batch(i: int) -> torch.Tensor:
            return torch.stack([pipe(s.x[i:i + size], False, None) for pipe, s in zip(pipes, given)])

        y, first = torch.stack([s.y[:n] for s in given]), batch(0)
        if first.numel() * first.element_size() * n / first.shape[1] > t0.data.cache_bytes():
            return itertools.chain([first], map(batch, range(size, n, size))), y
        xs = [first, *map(batch, range(size, n, size))]
        self.eval_cache[name] = ((list(training), n), given + pipes, xs, y)
        return xs, y

    def freeze(self, k: int) -> Dict[str, Any]:
        """Member k stopped early: its slices of the weights and the optimizer state, kept to be
        put back at the phase end (the other members train on)."""
        leaves = list(self.stacked.leaf.values())
        state = [{n: v[k].clone() for n, v in self.optimizer.state.get(leaf, {}).items()
                  if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == len(self.members)}
                 for leaf in leaves]
        return {"weights": [leaf.detach()[k].clone() for leaf in leaves], "state": state}

    @torch.no_grad()
    def thaw(self, k: int, kept: Dict[str, Any]) -> None:
        for leaf, w, st in zip(self.stacked.leaf.values(), kept["weights"], kept["state"]):
            leaf[k].copy_(w)
            for n, v in st.items():
                self.optimizer.state[leaf][n][k].copy_(v)

    def batch(self, training: List[int], per_member) -> tuple:
        """The members' batches stacked [K, B, ...] (every member's slot filled: a member not
        training gets member `training[0]`'s batch and a zero weight in the loss)."""
        mine = {}
        for k, (xb, yb) in per_member.items():
            t = self.members[k]
            mine[k] = (t.ctx.pipeline(xb, True, t.parts.aug_gen), yb)
        xs, ys = zip(*(mine.get(k, mine[training[0]]) for k in range(len(self.members))))
        key = [(x.data_ptr(), x.shape) for x in xs]
        if self.x_cache is not None and self.x_cache[0] == key:
            return self.x_cache[1], self.x_cache[2]
        x, y = torch.stack(xs), torch.stack(ys)
        self.x_cache = (key, x, y)
        return x, y

    def train_epoch(self, training: List[int], lead, evaluate: bool) -> torch.Tensor:
        """One epoch of every training member in lockstep; [len(training), 4] statistics as
        `Loop.train_epoch` gives each (loss sum, correct, samples, first batch loss)."""
        members, K = self.members, len(self.members)
        for k in training:
            if not members[k].ctx.model.training:
                members[k].ctx.model.train()
        every, weight, idx = self.selection(training)
        its = {k: iter(batches(members[k].ctx.data.train, lead.batch_size, members[k].parts.order_gen,
                               limit=members[k].parts.opts.max_batches)) for k in training}
        first = [members[k].loop.diverge_ref is None and not members[k].loop.pending
                 for k in training]
        zeros = weight.new_zeros(len(training))
        loss_sum, correct, first_loss, n = None, zeros, zeros, 0
        parts = members[training[0]].parts
        penalties = members[0].parts.methods.by_hook["loss_term"]
        while True:
            got = {k: next(its[k], None) for k in training}
            if any(v is None for v in got.values()):
                break
            if lead.per_step is not None:
                lr = lead.per_step.at_step(members[training[0]].ctx.step - lead.start)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
            x, y = self.batch(training, got)
            with parts.autocast():
                out = self.stacked(x)
                if parts.opts.loss == "cross_entropy":  # classes as dim 1: 2-4x faster on a CPU
                    losses = parts.loss_fn(out.transpose(1, 2), y, reduction="none").mean(1)
                else:
                    losses = parts.loss_fn(out.flatten(0, 1), y.flatten(), reduction="none")
                    losses = losses.view(K, -1).mean(1)
            total = losses.sum() if every else (losses * weight).sum()
            for m in penalties:  # member 0's, over every member's stacked parameters
                total = total + m.penalty([self.stacked.leaf[id(t)] for t in m.tensors])
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            for k in training:
                members[k].ctx.step += 1
            b = y.shape[1]
            mine = losses.detach().float()
            mine = mine if every else mine[idx]
            loss_sum = mine * b if loss_sum is None else loss_sum + mine * b
            if evaluate:
                right = (out.argmax(2) == y).sum(1)
                correct = correct + (right if every else right[idx])
            if any(first):
                first_loss = torch.where(torch.tensor(first, device=self.device), mine, first_loss)
                first = [False] * len(training)
            n += b
        return torch.stack([zeros if loss_sum is None else loss_sum, correct,
                            zeros + n, first_loss], 1)

    def selection(self, training: List[int]) -> tuple:
        """(every member trains, the loss weights [K], the training members' indices), kept
        while the training members stay the same."""
        if self.selected is None or self.selected[0] != training:
            weight = torch.zeros(len(self.members), device=self.device)
            weight[training] = 1.0
            self.selected = (list(training), len(training) == len(self.members), weight,
                             torch.tensor(training, device=self.device))
        return self.selected[1:]


def run(cfg: DictConfig, out_dir, base: Dict[str, Any], overrides: List[str], job: int,
        device: torch.device) -> List[Dict[str, Any]]:
    """Train the members of `cfg` (prepared) into `out_dir/seed<seed>/`; returns their results.
    `base` is the record a separate run would start with, less its seed, overrides and config."""
    t0 = time.time()
    configs = member_configs(cfg)
    recs, members = [], []
    seeds = [int(c.seed) for c in configs]
    for c in configs:
        recs.append(RunRecorder(Path(out_dir) / f"seed{c.seed}", {
            **base, "seed": c.seed, "overrides": member_overrides(overrides, c.seed),
            "config": OmegaConf.to_container(c, resolve=True), "fused_with": seeds}))
    rng = []
    try:
        for c, rec in zip(configs, recs):
            t = Trainer(c, rec, job, device)
            t.parts.opts.checkpoint = False  # a fused run does not resume
            members.append(t)
            rng.append(checkpoint.rng_state({}))
            rec.update(device=str(device), deterministic=c.train.deterministic,
                       precision=c.train.precision, environment=environment(device, rec.dir))
        log_start(cfg.name, f"{seeds[0]}..{seeds[-1]} (fused)", recs[0].result["environment"])
        fused = FusedTrainer(members, rng)
        fused.fit()
    except BaseException as e:
        status = "interrupted" if isinstance(e, (Interrupted, SystemExit)) else "failed"
        for rec in recs:
            if rec.result["status"] == "running":
                rec.finish(status, error=f"{type(e).__name__}: {e}", wall_time_s=time.time() - t0)
        raise
    from runner.training.lifecycle import summarize  # lifecycle imports this module
    results = []
    for k, rec in enumerate(recs):
        status, error = ("diverged", str(fused.diverged[k])) if k in fused.diverged else ("completed", None)
        results.append(rec.finish(status, error=error, wall_time_s=time.time() - t0,
                                  summary=summarize(rec.result, configs[k])))
    return results
