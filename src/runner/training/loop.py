"""The step and the epoch: batches through the methods' hooks, then the epoch's row of numbers."""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional, Tuple

import torch

from runner.context import Phase
from runner.data.tensors import batches
from runner.errors import Diverged
from runner.logs import batch_bar
from runner.models import params


class Loop:
    """Trains and evaluates `parts.ctx.model`; `diverge_ref` is the run's first batch loss."""

    def __init__(self, parts):
        self.parts = parts
        self.diverge_ref = None
        self.pending = []  # (epoch, stats on the device) of the epochs not yet evaluated
        self.zero = torch.zeros((), device=parts.device)

    def state_dict(self) -> Dict[str, Any]:
        return {"diverge_ref": self.diverge_ref}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.diverge_ref = state["diverge_ref"]

    def epoch(self, phase: Phase, epoch: int, evaluate: bool, batch_size, schedule=None,
              start: int = 0, limit=None) -> Optional[Dict[str, Any]]:
        """Train one epoch of `phase` (its first `limit` batches where given). An epoch that is
        not evaluated keeps its training loss on the device and returns None; an evaluated one
        reads every epoch's loss since the last evaluation in one host sync, checks them for
        divergence, and returns its row."""
        t0 = time.perf_counter()
        stats = self.train_epoch(batch_size, self.parts.opts.max_batches if limit is None else limit,
                                 schedule, start, evaluate)
        return self.close(phase, epoch, evaluate, stats, t0)

    def close(self, phase: Phase, epoch: int, evaluate: bool, stats, t0: float,
              evals: Optional[tuple] = None) -> Optional[Dict[str, Any]]:
        """A trained epoch's statistics (`train_epoch`'s EpochStats, or a device tensor [loss
        sum, correct, samples, first batch loss]): kept on the device, or, when
        `evaluate`, read with the pending ones and the evaluation (`evals`: the [loss,
        accuracy] of validation and test where already computed) into the epoch's row."""
        p = self.parts
        ctx, opts = p.ctx, p.opts
        if p.dist:  # every epoch: the ranks check the same losses for divergence
            stats = stats if torch.is_tensor(stats) else stats.tensor(self.zero)
            p.dist.all_reduce(stats[:3])  # loss sum, correct, samples over the ranks
        self.pending.append((epoch, stats))
        if not evaluate:
            return None
        lr = ctx.optimizer.param_groups[0]["lr"]  # a per-iteration schedule's last
        if evals is not None:
            val, test = evals
        else:
            val = torch.stack(ctx.evaluate(ctx.data.val, opts.max_eval_batches))
            test = (torch.stack(ctx.evaluate(ctx.data.test, opts.max_eval_batches)) if opts.eval_test
                    else torch.full((2,), math.nan, device=p.device))
        (loss_sum, correct, n, _), (val_loss, val_acc, test_loss, test_acc, norm, nonzero, trained) = \
            self.flush(phase, [val.float(), test.float(), self.weight_stats()])
        row = {"phase": phase.index, "phase_name": phase.name, "epoch": epoch + 1,
               "step": ctx.step, "lr": lr, "train_loss": loss_sum / max(n, 1),
               "train_acc": correct / max(n, 1), "val_loss": val_loss, "val_acc": val_acc,
               "test_loss": test_loss, "test_acc": test_acc, "weight_norm": norm,
               "nonzero_weights": int(nonzero), "trained_weights": int(trained),
               "seconds": time.perf_counter() - t0}
        row.update(p.methods.collect("on_epoch_end", ctx))
        return row

    def flush(self, phase: Phase, more=()) -> Tuple[Optional[list], list]:
        """Read the pending epochs' statistics and the tensors `more` in one host sync, check
        those epochs for divergence in order; the last epoch's [loss sum, correct, samples,
        first batch loss] (None: no epoch was pending) and the values of `more`."""
        earlier, self.pending = self.pending, []
        if not earlier and not more:
            return None, []
        kept = [t for _, s in earlier if not torch.is_tensor(s) for t in s.tensors()]
        vectors = [s for _, s in earlier if torch.is_tensor(s)] + list(more)
        parts = [torch.stack(kept), *vectors] if kept else vectors
        values = torch.cat(parts).tolist() if parts else []
        i, j, stats = 0, len(kept), None
        for e, s in earlier:
            if torch.is_tensor(s):
                stats, j = values[j:j + 4], j + 4
            else:
                stats, i = s.read(values, i)
            self.check_epoch(stats, phase, e)
        return stats, values[j:]

    def check_epoch(self, stats, phase: Phase, epoch: int) -> None:
        """Divergence of one epoch from its [loss sum, correct, samples, first batch loss]."""
        if self.diverge_ref is None:
            self.diverge_ref = stats[3]
        self.check_divergence(stats[0] / max(stats[2], 1), phase, epoch)

    def train_epoch(self, batch_size, limit, schedule=None, start=0,
                    accuracy: bool = True) -> "EpochStats":
        """One epoch; its statistics stay on the device (`correct` counted only with
        `accuracy`). A per-iteration `schedule` sets the lr before every step (`start`: the
        phase's first step)."""
        p = self.parts
        ctx = p.ctx
        if not ctx.model.training:  # evaluate() leaves it in train mode; methods' choices stay
            ctx.model.train()
        epoch_batches = (p.dist.batches if p.dist else batches)(
            ctx.data.train, batch_size, p.order_gen, limit=limit)
        stats = EpochStats(self.diverge_ref is None and not self.pending)
        for xb, yb in batch_bar(epoch_batches, len(ctx.data.train), batch_size, limit,  # logs.py
                                p.progress):
            if schedule is not None:
                lr = schedule.at_step(ctx.step - start)
                for g in ctx.optimizer.param_groups:
                    g["lr"] = lr
            loss, out = self.train_step(xb, yb)
            right = (out.argmax(1) == yb).sum() if accuracy else None
            stats.add(loss.detach().float(), yb.shape[0], right)
        return stats

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step through the methods' hooks and the masks; (loss, outputs)."""
        p = self.parts
        ctx, m, masks, scaler = p.ctx, p.methods, p.ctx.masks, p.scaler
        x = ctx.pipeline(xb, True, p.aug_gen)
        ctx.batch = (x, yb)
        with p.autocast():
            out = (ctx.model if p.ddp is None else p.ddp)(x)
            loss = p.loss_fn(out, yb)
        ctx.outputs = out
        total = loss + m.loss_term(ctx) if m.by_hook["loss_term"] else loss
        opt = ctx.optimizer
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        if len(masks):
            masks.mask_grads()
        if m.by_hook["before_step"]:
            m.call("before_step", ctx)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if len(masks):
            masks.project()
        if m.by_hook["after_step"]:
            m.call("after_step", ctx)
            if len(masks):
                masks.project()
        ctx.step += 1
        return loss, out

    @torch.no_grad()
    def weight_stats(self) -> torch.Tensor:
        """[total norm of effective parameters, non-zero weights, trained weights] (device)."""
        model, masks, device = self.parts.ctx.model, self.parts.ctx.masks, self.parts.device
        weights = params.slots(model, "weights")
        nonzero = sum(s.value().count_nonzero() for s in weights)
        trained = 0
        for name, p, kind in params.parameters(model):
            if kind == "weights" and p.requires_grad:
                trained = trained + (masks[name].keep.sum() if name in masks else p.numel())
        return torch.stack([params.total_norm(model).float(),
                            torch.as_tensor(nonzero, device=device).float(),
                            torch.as_tensor(trained, device=device).float()])

    def check_divergence(self, train_loss: float, phase: Phase, epoch: int) -> None:
        where = f"in phase {phase.name!r}, epoch {epoch + 1}"
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} {where}")
        factor, ref = self.parts.opts.diverge_factor, self.diverge_ref
        if factor is not None and ref is not None and ref > 0 and train_loss > factor * ref:
            raise Diverged(f"training loss {train_loss:.4g} {where} exceeds train.diverge_factor="
                           f"{factor:g} times the first batch's loss {ref:.4g}")


class EpochStats:
    """An epoch's training loss, correct predictions and samples, as device tensors kept
    unreduced: a one-batch epoch adds no device operation, a longer one two a batch."""
    __slots__ = ("loss", "scale", "correct", "n", "first", "wants_first")

    def __init__(self, wants_first: bool):
        self.loss = self.scale = self.correct = self.first = None
        self.n, self.wants_first = 0, wants_first  # the run's first epoch: its first batch loss

    def add(self, loss: torch.Tensor, b: int, correct: Optional[torch.Tensor]) -> None:
        if self.loss is None:  # the loss sum is loss x scale (None: the loss is the sum)
            self.loss, self.scale = loss, b
            if self.wants_first:
                self.first = loss
        else:
            total = self.loss if self.scale is None else self.loss * self.scale
            self.loss, self.scale = total + loss * b, None
        if correct is not None:
            self.correct = correct if self.correct is None else self.correct + correct
        self.n += b

    def tensors(self) -> list:
        """The kept scalars, in the order `read` takes them."""
        return [t for t in (self.loss, self.correct, self.first) if t is not None]

    def read(self, values: list, i: int) -> Tuple[list, int]:
        """[loss sum, correct, samples, first batch loss] from `values[i:]` (as `tensors` gave
        them); and the index after them."""
        out = [0.0, 0.0, float(self.n), 0.0]
        for k, t in ((0, self.loss), (1, self.correct), (3, self.first)):
            if t is not None:
                out[k], i = values[i], i + 1
        out[0] *= self.scale or 1
        return out, i

    def tensor(self, zero: torch.Tensor) -> torch.Tensor:
        """The four statistics as one device tensor (for an all-reduce over ranks)."""
        return torch.stack([zero if self.loss is None else self.loss * (self.scale or 1),
                            zero if self.correct is None else self.correct.to(zero.dtype),
                            zero + self.n, zero if self.first is None else self.first])
