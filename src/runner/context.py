"""What a method sees of a run (`ctx`), so that it never reads the config or imports the trainer.

Fixed for the run: `device`, `model`, `seed`, `gen` (the methods' own random generator),
`loss_fn(out, y, reduction)`, `num_phases`, `masks` (runner.sparse.masks), `init_state` (stored
parameters at setup, runner.models.params.snapshot), `eval_batch_size`, `autocast()`.
Changing as it runs: `optimizer`, `phase` (index, repeat, name), `data` (train / val / test
splits of the current phase), `pipeline(x, train, gen)`, `epoch`, `step`, `steps_per_epoch`,
`total_steps` (of the current phase), `lr`, `weight_decay`, `gamma` (a phase-start hook may set
them), `phase_start_step` (0; a phase-start hook may set it: the phase then starts at that step
of its schedule, its epochs and learning rates as if that many steps had run), and, inside the
step hooks, `batch` (inputs after the pipeline, labels) and `outputs`.
Helpers: `predict` (model outputs in eval mode, in eval batches), `evaluate`, `build_model`
(a fresh draw of the same architecture and transforms), `reset_optimizer`, `calibration_batch`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from runner.data.tensors import Split, Splits
from runner.sparse.masks import Masks


@dataclass
class Phase:
    """One executed phase: its position in the run, its repeat index, name and phase config."""

    index: int
    repeat: int
    name: str
    cfg: Any


class RunContext:
    def __init__(self, *, device: torch.device, model: torch.nn.Module, seed: int,
                 loss_fn: Callable, num_phases: int, eval_batch_size: int,
                 build_model: Callable[[], torch.nn.Module],
                 make_optimizer: Callable[[torch.nn.Module, float, float], Any],
                 autocast: Callable[[], Any] = contextlib.nullcontext, lr: float = 0.0,
                 weight_decay: float = 0.0):
        self.device, self.model, self.seed, self.loss_fn = device, model, seed, loss_fn
        self.num_phases, self.eval_batch_size, self.autocast = num_phases, eval_batch_size, autocast
        self._build_model, self._make_optimizer = build_model, make_optimizer
        self.gen = torch.Generator().manual_seed(seed)  # methods' own randomness (masks, eta)
        self.optimizer = None
        self.masks = Masks(model, lambda: self.optimizer)
        self.init_state: Dict[str, torch.Tensor] = {}
        self.phase: Optional[Phase] = None
        self.data: Optional[Splits] = None
        self.pipeline: Optional[Callable] = None
        self.epoch = self.step = self.steps_per_epoch = self.total_steps = 0
        self.phase_start_step = 0
        self.lr, self.weight_decay = lr, weight_decay
        self.gamma: Optional[float] = None
        self.batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.outputs: Optional[torch.Tensor] = None

    def state_dict(self) -> Dict[str, Any]:
        """The counters and hyperparameters a checkpoint keeps."""
        return {k: getattr(self, k) for k in ("step", "epoch", "lr", "weight_decay", "gamma",
                                              "phase_start_step")}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    @property
    def phase_index(self) -> int:
        return self.phase.index if self.phase else -1

    def reset_optimizer(self) -> None:
        """A fresh optimizer (no momentum / Adam moments) over the model's current parameters."""
        self.optimizer = self._make_optimizer(self.model, self.lr, self.weight_decay)

    def build_model(self, seed: Optional[int] = None) -> torch.nn.Module:
        """A freshly initialized model of the configured architecture and transforms, drawn
        from `seed`, else from a seed drawn from `self.gen` (the global random state is left as
        it was). `build_model(ctx.seed)` is the run's own initialization."""
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.gen))
                          if seed is None else seed)
        try:
            return self._build_model().to(self.device)
        finally:
            torch.random.set_rng_state(state)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, fn: Optional[Callable] = None,
                model: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """`fn(model, inputs)` (default: the model's outputs) over raw samples `x`, in eval mode
        and eval batches, through the phase's pipeline; the model's mode is restored."""
        model = self.model if model is None else model
        fn = fn or (lambda m, inputs: m(inputs))
        was_training = model.training
        model.eval()
        try:
            with self.autocast():
                out = [fn(model, self.pipeline(x[i:i + self.eval_batch_size], False, None))
                       for i in range(0, len(x), self.eval_batch_size)]
        finally:
            model.train(was_training)
        return torch.cat(out).float() if out else torch.empty(0, device=self.device)

    @torch.no_grad()
    def evaluate(self, split: Split, limit: Optional[int] = None,
                 model: Optional[torch.nn.Module] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, accuracy) on the first `limit` eval batches of `split`, as device tensors."""
        n = len(split) if limit is None else min(len(split), limit * self.eval_batch_size)
        if n == 0:
            nan = torch.full((), float("nan"), device=self.device)
            return nan, nan
        if hasattr(split, "batches"):  # streamed from files (runner.data.stream)
            parts = [(self.predict(x, model=model), y)
                     for x, y in split.batches(self.eval_batch_size, None, False, limit)]
            out, y = torch.cat([o for o, _ in parts]), torch.cat([t for _, t in parts])
        else:
            out, y = self.predict(split.x[:n], model=model), split.y[:n]
        return self.loss_fn(out, y), (out.argmax(1) == y).float().mean()

    def calibration_batch(self, n: int = 256, classes: Optional[torch.Tensor] = None):
        """The first n training samples of the current phase (of the labels in `classes` only,
        if given), through the eval pipeline."""
        train = self.data.train
        if classes is None:
            x, y = train.x[:n], train.y[:n]
        else:
            idx = torch.isin(train.y, classes.to(train.y.device)).nonzero().squeeze(1)[:n]
            if len(idx) == 0:
                raise ValueError(f"no training sample has a label in {classes.tolist()}")
            x, y = train.x[idx], train.y[idx]
        return self.pipeline(x, False, None), y


