"""What a run trains with, built from its config: device, determinism, seeds, precision, the
model in its RunContext, methods, phases, loss and the trainer's random generators."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import random
from types import SimpleNamespace
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from methods.base import MethodStack
from runner import distributed
from runner.context import RunContext, Phase
from runner.errors import ConfigError, RunnerError
from runner.instantiate import build_model, instantiate
from runner.optim import build_optimizer

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def mse_one_hot(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    err = (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum(1)
    return err.mean() if reduction == "mean" else err.sum()


def cross_entropy(out: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    """`F.cross_entropy`. Outputs [N, C] of fewer than 16 classes on a CPU, outside autograd
    (an evaluation), go in as [1, C, N]: the same loss, and log_softmax then vectorizes along N
    (10,000 x 8 outputs: 1.5 ms against 0.17 ms; torch 2.14, one thread of a 2-core x86 CPU)."""
    if not out.requires_grad and out.dim() == 2 and out.shape[1] < 16 and out.device.type == "cpu":
        loss = F.cross_entropy(out.T.unsqueeze(0), y.unsqueeze(0), **kw)
        return loss.squeeze(0) if loss.dim() else loss
    return F.cross_entropy(out, y, **kw)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse_one_hot}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


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


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> None:
    """On glibc, keep freed memory for the next allocation (once per process). By default glibc
    maps every block of 128 KB or more afresh and hands the top of the heap back to the system,
    so each step's and evaluation's large temporaries fault their pages in anew (a fused
    `reinit_table1` job: 600,000 page faults against 255,000, its evaluations 35 % slower)."""
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest
    libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20)


def capped(value: Optional[int], cap: Optional[int]) -> Optional[int]:
    """min(value, cap), where None means 'no cap' for the cap and 'all' for the value."""
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


def expand_phases(cfg) -> List[Phase]:
    """One executed phase per repeat of each configured phase (at most `train.max_repeat`)."""
    phases = []
    for phase in cfg.phases:
        n = capped(phase.repeat, cfg.train.max_repeat)
        for r in range(n):
            name = phase.name if phase.repeat == 1 else f"{phase.name}{r + 1}"
            phases.append(Phase(len(phases), r, name, phase))
    return phases


def loss_function(opts):
    """The loss of `train.loss`, with `train.label_smoothing` where set."""
    fn = LOSSES[opts.loss]
    if not opts.label_smoothing:
        return fn
    if opts.loss != "cross_entropy":
        raise RunnerError("train.label_smoothing needs train.loss=cross_entropy")
    return functools.partial(cross_entropy, label_smoothing=opts.label_smoothing)


class Parts:
    """Everything of one run that the data stager, the loop and the checkpoint share: `cfg`,
    `opts` (train options), `device`, `dist` (None: one process), `ddp` (the model as the step
    calls it under distributed training), `amp`, `scaler`, `methods`, `phases`, `loss_fn`,
    `ctx`, the data-order and augmentation generators and `progress` (show bars)."""

    def __init__(self, cfg: DictConfig, job: int = 0, device: Optional[torch.device] = None):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.opts = SimpleNamespace(**OmegaConf.to_container(cfg.train, resolve=True))  # hot loop
        self.dist = distributed.setup(cfg.distributed, cfg.device)
        self.ddp = None
        if device is None:
            device = self.dist.device if self.dist else resolve_device(cfg.device, job)
        self.device = device
        if device.type == "cpu":
            keep_freed_memory()
        set_determinism(self.opts.deterministic, self.device)
        seed_everything(cfg.seed)
        self.amp = PRECISIONS[self.opts.precision]
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.amp is torch.float16 and self.device.type == "cuda" else None)
        model = self.prepare_model(build_model(cfg))
        allow = cfg.target_allowlist
        methods = [instantiate(cfg.method, "method", "method", allow)] if cfg.method is not None else []
        methods += [instantiate(m, f"extra_methods.{i}", "method", allow)
                    for i, m in enumerate(cfg.extra_methods)]
        self.methods = MethodStack(methods)
        self.phases = expand_phases(cfg)
        self.loss_fn = loss_function(self.opts)
        self.ctx = RunContext(
            device=self.device, model=model, seed=cfg.seed, loss_fn=self.loss_fn,
            num_phases=len(self.phases), eval_batch_size=self.opts.eval_batch_size,
            build_model=lambda: self.prepare_model(build_model(cfg)),
            make_optimizer=lambda m, lr, wd: build_optimizer(m, cfg.optim, lr, wd),
            autocast=self.autocast, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.order_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.progress = cfg.progress

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def generators(self) -> Dict[str, torch.Generator]:
        return {"order": self.order_gen, "aug": self.aug_gen, "method": self.ctx.gen}
