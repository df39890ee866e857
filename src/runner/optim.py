"""Optimizer with per-parameter-group weight decay, and the per-epoch learning-rate schedule."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from runner.config import OptimConfig, ScheduleConfig
from runner.errors import RunnerError
from runner.models.params import parameters


FORM_FACTOR = {"half": 1.0, "full": 2.0}  # optimizer decay per unit of lambda (`weight_decay_form`)


def group_decay(kind: str, cfg: OptimConfig, weight_decay: float) -> float:
    """The optimizer's weight decay of a group: biases and norm parameters may have their own
    lambda; `weight_decay_form=full` (lambda ||w||^2, Keras' l2) doubles it."""
    own = {"biases": cfg.weight_decay_bias, "norm": cfg.weight_decay_norm}.get(kind)
    return FORM_FACTOR[cfg.weight_decay_form] * (weight_decay if own is None else own)


def param_groups(model: nn.Module, cfg: OptimConfig, weight_decay: float) -> List[dict]:
    """Weights, biases and normalization parameters as groups with their own weight decay; one
    group ("all") when biases and norm parameters have no lambda of their own, so that a step
    visits one group (the same arithmetic: every update is per parameter)."""
    groups = {"weights": [], "biases": [], "norm": [], "all": []}
    own = cfg.weight_decay_bias is not None or cfg.weight_decay_norm is not None
    for _, p, kind in parameters(model):
        if p.requires_grad:
            groups[kind if own else "all"].append(p)
    return [{"params": ps, "weight_decay": group_decay(k, cfg, weight_decay), "kind": k}
            for k, ps in groups.items() if ps]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, weight_decay: float):
    groups = param_groups(model, cfg, weight_decay)
    on_gpu = any(p.is_cuda for g in groups for p in g["params"])
    fused = {"fused": True} if (on_gpu if cfg.fused is None else cfg.fused) else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas), **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), **fused)
    raise RunnerError(f"optim.name={cfg.name!r} is unknown; valid: sgd, adam, adamw")


def set_hyper(optimizer, cfg: OptimConfig, lr: float, weight_decay: float) -> None:
    """Set the learning rate and weight decay of every group in place (a phase's overrides)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
        g["weight_decay"] = group_decay(g["kind"], cfg, weight_decay)


class Schedule:
    """lr of epoch e of a phase: constant, exponential (gamma^e), step (gamma at milestones),
    or plateau (gamma after `patience` epochs without a better validation loss); `step_iter`
    decays by gamma every `step_size` iterations (`at_step`, set before every step); times a
    linear warm-up (e + 1) / warmup_epochs over the first `warmup_epochs` epochs."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float, gamma: Optional[float] = None,
                 milestones: Optional[List[int]] = None):
        if cfg.name not in ("constant", "exponential", "step", "step_iter", "plateau"):
            raise RunnerError(f"schedule.name={cfg.name!r} is unknown; "
                              "valid: constant, exponential, step, step_iter, plateau")
        if cfg.name == "step_iter" and cfg.step_size < 1:
            raise RunnerError(f"schedule.step_size={cfg.step_size}: step_iter needs a positive "
                              "number of iterations between decays")
        self.per_step = cfg.name == "step_iter"
        self.step_size = cfg.step_size
        self.name, self.min_lr, self.patience = cfg.name, cfg.min_lr, cfg.patience  # plain values
        self.base_lr, self.warmup = base_lr, cfg.warmup_epochs
        self.gamma = cfg.gamma if gamma is None else gamma
        self.milestones = list(cfg.milestones if milestones is None else milestones)
        self.factor, self.best, self.bad = 1.0, math.inf, 0

    def lr(self, epoch: int) -> float:
        name = self.name
        if name == "exponential":
            f = self.gamma ** epoch
        elif name == "step":
            f = self.gamma ** sum(epoch >= m for m in self.milestones)
        elif name == "plateau":
            f = self.factor
        else:
            f = 1.0
        if epoch < self.warmup:
            f *= (epoch + 1) / self.warmup
        return max(self.base_lr * f, self.min_lr)

    def at_step(self, step: int) -> float:
        """step_iter: lr after `step` iterations of the phase."""
        return max(self.base_lr * self.gamma ** (step // self.step_size), self.min_lr)

    def state_dict(self) -> dict:
        return {"factor": self.factor, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.factor, self.best, self.bad = state["factor"], state["best"], state["bad"]

    def observe(self, val_loss: float) -> None:
        """Plateau bookkeeping after each epoch."""
        if val_loss < self.best:
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
            if self.name == "plateau" and self.bad >= self.patience:
                self.factor *= self.gamma
                self.bad = 0
