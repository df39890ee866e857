"""The checkpoint of a run, assembled from holders that each have state_dict() and
load_state_dict() (the layout: runner.checkpoint), and when to write the next one."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from runner import checkpoint
from runner.training.best import BestEpoch


class Holder:
    """state_dict() / load_state_dict() from two functions."""

    def __init__(self, get: Callable[[], Any], put: Callable[[Any], None]):
        self.state_dict, self.load_state_dict = get, put


def unwrapped(model):
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper


def holders(parts, loop, rec, progress: Optional[BestEpoch]) -> Dict[str, Any]:
    """What a checkpoint holds, by key, in the order it is put back: the methods first (they
    may restructure the model), the optimizer over exactly the parameters it held, the random
    states last."""
    ctx = parts.ctx

    def params():
        names = {id(p): n for n, p in unwrapped(ctx.model).named_parameters()}
        return [names[id(p)] for g in ctx.optimizer.param_groups for p in g["params"]]

    def hold_params(names):
        held = set(names)
        for n, p in ctx.model.named_parameters():
            p.requires_grad_(n in held)
        ctx.reset_optimizer()

    def set_requires_grad(flags):
        for n, p in ctx.model.named_parameters():
            p.requires_grad_(flags[n])

    def put_scaler(state):
        if parts.scaler is not None and state is not None:
            parts.scaler.load_state_dict(state)

    def put_progress(state):
        if state is not None:
            progress.load_state_dict(state, parts.device)

    return {
        "methods": Holder(lambda: parts.methods.state_dict(),
                          lambda s: parts.methods.load_state_dict(s, ctx)),
        "model": Holder(lambda: unwrapped(ctx.model).state_dict(),
                        lambda s: ctx.model.load_state_dict(s)),
        "masks": Holder(lambda: ctx.masks.state_dict(), lambda s: ctx.masks.load_state_dict(s)),
        "optimizer_params": Holder(params, hold_params),
        "requires_grad": Holder(lambda: {n: p.requires_grad for n, p in
                                         unwrapped(ctx.model).named_parameters()},
                                set_requires_grad),
        "optimizer": Holder(lambda: ctx.optimizer.state_dict(),
                            lambda s: ctx.optimizer.load_state_dict(s)),
        "scaler": Holder(lambda: None if parts.scaler is None else parts.scaler.state_dict(),
                         put_scaler),
        "context": ctx,
        "loop": loop,
        "progress": Holder(lambda: None if progress is None else progress.state_dict(),
                           put_progress),
        "rng": Holder(lambda: checkpoint.rng_state(parts.generators()),
                      lambda s: checkpoint.set_rng_state(s, parts.generators())),
        "record": rec,
    }


PHASE_END_S = 10.0  # a phase end checkpoints once this long has passed since the last one


class Cadence:
    """Whether a checkpoint is due after an epoch (`train.checkpoint_every`,
    `train.checkpoint_minutes` since `last`) or at a phase end (with `checkpoint_every`, or
    PHASE_END_S after the last: runs of many short phases spend no time on checkpoints that
    would save less than that)."""

    def __init__(self, opts):
        self.opts, self.last = opts, time.monotonic()

    def due(self, epochs_done: int) -> bool:
        o = self.opts
        if not o.checkpoint:
            return False
        return bool((o.checkpoint_every and epochs_done % o.checkpoint_every == 0) or (
            o.checkpoint_minutes and time.monotonic() - self.last >= 60 * o.checkpoint_minutes))

    def due_at_phase_end(self) -> bool:
        o = self.opts
        return bool(o.checkpoint and (o.checkpoint_every
                                      or time.monotonic() - self.last >= PHASE_END_S))
