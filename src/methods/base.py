"""The interface every intervention implements, and the helpers methods share.

A method overrides only the hooks it needs; the trainer calls each hook on every stacked method
in order and skips hooks nobody overrides, so a method costs nothing where it does nothing.

Hooks (all receive the run's context, `runner.context.RunContext`; a method reads weights and
masks only through `runner.models.params` and `ctx.masks`, and never the config):
    setup(ctx)                once, after model, data and optimizer exist, before training
                              (pruning masks, parametrizations, reference snapshots)
    on_phase_start(ctx)       before each phase (task change, round, chunk); ctx.phase_index > 0
                              means the data just changed
    loss_term(ctx) -> Tensor  added to the batch loss (penalties)
    before_step(ctx)          after backward, before optimizer.step (gradient changes)
    after_step(ctx)           after optimizer.step (rescaling); ctx.batch / ctx.outputs hold
                              the step's inputs and outputs
    on_epoch_end(ctx) -> dict extra metrics of an evaluated epoch (its metrics.csv row)
    on_phase_end(ctx) -> dict extra per-phase metrics (written to result.json)

Each method states which parameters it touches through a `params` option (see
`runner.models.params.select`) and,
where it rewrites weights, whether it resets the optimizer state (`reset_optimizer`).

State (checkpoints, `runner.checkpoint`): a resumed run rebuilds the model from the seed and
calls `setup` again, then restores the model, masks and optimizer from the checkpoint and calls
    state_dict() -> dict          what the method carries between hooks: tensors, numbers,
                                  strings, lists and dicts of them (loaded with weights_only=True)
    load_state_dict(state, ctx)   put it back (tensors arrive on the CPU: move them to ctx.device);
                                  runs after `setup` and before the model's weights are loaded, so
                                  a method that changed the model's structure rebuilds it here
Both default to nothing. A method whose attributes change after `__init__` (reference snapshots,
norms, counters, the round it is in, inserted modules) provides them, so that a run killed and
resumed ends bitwise equal to one that never stopped.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

HOOKS = ("setup", "on_phase_start", "loss_term", "before_step", "after_step",
         "on_epoch_end", "on_phase_end")


class Method:
    """Base class: every hook is a no-op. Subclasses override what they need."""

    name = "method"

    def setup(self, ctx) -> None:
        pass

    def on_phase_start(self, ctx) -> None:
        pass

    def loss_term(self, ctx) -> torch.Tensor | None:
        return None

    def before_step(self, ctx) -> None:
        pass

    def after_step(self, ctx) -> None:
        pass

    def on_epoch_end(self, ctx) -> Dict[str, float]:
        return {}

    def on_phase_end(self, ctx) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any], ctx) -> None:
        pass

    def overrides(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(Method, hook)


class MethodStack:
    """Several methods applied in order; each hook lists only the methods that override it."""

    def __init__(self, methods: List[Method]):
        self.methods = list(methods)
        self.by_hook = {h: [m for m in self.methods if m.overrides(h)] for h in HOOKS}

    def call(self, hook: str, ctx) -> None:
        for m in self.by_hook[hook]:
            getattr(m, hook)(ctx)

    def loss_term(self, ctx):
        terms = [t for m in self.by_hook["loss_term"] if (t := m.loss_term(ctx)) is not None]
        return sum(terms) if terms else None

    def state_dict(self) -> List[Dict[str, Any]]:
        return [m.state_dict() for m in self.methods]

    def load_state_dict(self, states: List[Dict[str, Any]], ctx) -> None:
        for m, state in zip(self.methods, states, strict=True):
            m.load_state_dict(state, ctx)

    def collect(self, hook: str, ctx) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for m in self.by_hook[hook]:
            out.update(getattr(m, hook)(ctx))
        return out
