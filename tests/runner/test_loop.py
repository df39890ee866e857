"""The step and the epoch: batches and their order, the input pipeline, the methods' loss terms
and hooks, per-step and per-epoch schedules, every metrics.csv row by hand, the weight counts,
progress bars and log lines, divergence and the checkpoint cadence.

Most tests run one phase of a `trainer_fixtures` Trainer; `one_sample_phase` trains it on one
sample, one step an epoch, so each row's numbers follow from the scripted task's closed form.
"""
import csv
import logging
import math
import re
import time

import pytest
import torch
from omegaconf import OmegaConf

from methods.base import Method
from runner.context import Phase
from runner.data.tensors import Split, Splits
from runner.errors import Diverged
from runner.results import RunRecorder
from runner.train import Trainer
from runner.training.best import BestEpoch
from trainer_fixtures import (PERFECT, ScriptedScale, base_cfg, loss_at, make_phase,  # noqa: F401
                              metrics, trainer, with_)


# -- an epoch's batches: order, limits, steps per epoch ----------------------------------------
def indexed_trainer(trainer, n=12):
    """The trainer on inputs 0..n-1 (labels = inputs), each step recording its labels."""
    x = torch.arange(n, dtype=torch.float32).view(-1, 1)
    trainer.ctx.data = Splits(Split(x, torch.arange(n)), Split(x[:0], torch.arange(0)), Split(x[:0], torch.arange(0)))
    trainer.ctx.pipeline = lambda x, train, gen: x
    seen = []

    def step(xb, yb):
        seen.append(yb.tolist())
        trainer.ctx.step += 1
        return torch.tensor(0.5), torch.zeros(len(yb), 2)
    trainer.loop.train_step = step
    return seen


def test_an_epoch_draws_its_order_from_the_order_generator_and_stops_at_the_limit(trainer):
    seen = indexed_trainer(trainer)
    trainer.parts.order_gen.manual_seed(5)
    stats = trainer.loop.train_epoch(3, None).tensor(trainer.loop.zero)
    first = [list(b) for b in seen]
    assert len(first) == 4 and sorted(sum(first, [])) == list(range(12)) and stats[2] == 12
    seen.clear()
    torch.manual_seed(123)  # the global generator plays no part
    trainer.parts.order_gen.manual_seed(5)
    trainer.loop.train_epoch(3, None)
    assert seen == first
    seen.clear()
    trainer.parts.order_gen.manual_seed(6)
    stats = trainer.loop.train_epoch(3, 2).tensor(trainer.loop.zero)
    assert len(seen) == 2 and seen != first[:2] and stats[2] == 6 and trainer.ctx.step == 10


@pytest.mark.parametrize("n, steps", [(48, 3), (40, 3), (16, 1)])
def test_steps_per_epoch_round_the_last_batch_up(trainer, n, steps):
    trainer.parts.opts.epochs = 2
    trainer.parts.phases = [make_phase(trainer, subset__n=n)]
    trainer.fit()
    assert (trainer.ctx.steps_per_epoch, trainer.ctx.total_steps, trainer.ctx.step) == (steps, 2 * steps, 2 * steps)


def test_a_full_batch_phase_takes_one_step_an_epoch(trainer):
    trainer.parts.opts.batch_size, trainer.parts.opts.epochs = None, 2
    trainer.parts.phases = [make_phase(trainer)]
    trainer.fit()
    assert (trainer.ctx.steps_per_epoch, trainer.ctx.step) == (1, 2)


def test_the_caps_limit_the_batches_of_an_epoch(base_cfg, tmp_path):
    cfg = with_(base_cfg, train__max_batches=2, train__max_epochs=3, train__max_batch_size=4)
    trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "capped"}))
    trainer.parts.phases = [make_phase(trainer)]
    trainer.fit()
    assert (trainer.ctx.steps_per_epoch, trainer.ctx.step) == (2, 6)


def test_the_caps_limit_the_batches_of_every_evaluation(base_cfg, tmp_path):
    cfg = with_(base_cfg, train__max_eval_batches=2, train__max_epochs=1, train__eval_test=True)
    trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "capped"}))
    trainer.parts.phases = [make_phase(trainer)]
    trainer.data.load_phase_data(trainer.parts.phases[0])
    trainer.ctx.reset_optimizer()
    limits, evaluate = [], trainer.ctx.evaluate
    trainer.ctx.evaluate = lambda split, limit=None: limits.append(limit) or evaluate(split, limit)
    trainer.run_phase(trainer.parts.phases[0])
    assert limits == [2, 2]  # validation and test


def test_training_batches_go_through_the_pipeline_as_training_data(trainer):
    trainer.parts.phases = [make_phase(trainer, epochs=1)]
    trainer.data.load_phase_data(trainer.parts.phases[0])
    flags, pipe = [], trainer.ctx.pipeline
    trainer.ctx.pipeline = lambda x, train, gen: flags.append((train, gen)) or pipe(x, train, gen)
    trainer.ctx.reset_optimizer()
    trainer.loop.train_epoch(16, None)
    assert flags == [(True, trainer.parts.aug_gen)] * 3  # augmented from the trainer's own generator


def test_training_accuracy_counts_each_samples_class(trainer):
    trainer.data.load_phase_data(trainer.parts.phases[0])
    trainer.ctx.reset_optimizer()
    for g in trainer.ctx.optimizer.param_groups:
        g["lr"] = 0.0
    with torch.no_grad():
        trainer.ctx.model.head[1].weight.copy_(3 * PERFECT)  # every sample right
    stats = trainer.loop.train_epoch(16, None).tensor(trainer.loop.zero)
    assert stats[1].item() == stats[2].item() == 48


# -- the step: the methods' hooks and loss terms -----------------------------------------------
class SeeBatch(Method):
    """Records, before each optimizer step, the batch the step trains on and the step count."""

    def __init__(self):
        self.seen = []

    def before_step(self, ctx):
        self.seen.append((ctx.batch, ctx.step))


def test_a_step_shows_methods_its_batch_before_the_update(trainer):
    from methods.base import MethodStack
    trainer.data.load_phase_data(trainer.parts.phases[0])
    trainer.ctx.reset_optimizer()
    spy = SeeBatch()
    trainer.parts.methods = MethodStack([spy])
    xb, yb = trainer.ctx.data.train.x[:5], trainer.ctx.data.train.y[:5]
    loss, out = trainer.loop.train_step(xb, yb)
    [((x, y), step)] = spy.seen
    assert torch.equal(x, trainer.ctx.pipeline(xb, True, None)) and y is yb and step == 0
    assert trainer.ctx.step == 1 and out.shape == (5, 8) and loss.dim() == 0


def test_a_step_adds_the_methods_loss_terms(trainer):
    """SGD on loss + lam ||theta||^2 (L2, `code` convention): the step differs from the plain
    one by exactly -lr * 2 lam theta."""
    from methods.base import MethodStack
    from methods.l2 import L2
    trainer.data.load_phase_data(trainer.parts.phases[0])
    xb, yb = trainer.ctx.data.train.x[:8], trainer.ctx.data.train.y[:8]
    start = {k: v.clone() for k, v in trainer.ctx.model.state_dict().items()}
    after = []
    for methods in ([], [L2(lam=0.5)]):
        trainer.ctx.model.load_state_dict(start)
        for m in methods:
            m.setup(trainer.ctx)
        trainer.ctx.optimizer = torch.optim.SGD(trainer.ctx.model.parameters(), lr=0.1)
        trainer.parts.methods = MethodStack(methods)
        trainer.loop.train_step(xb, yb)
        after.append({k: v.clone() for k, v in trainer.ctx.model.state_dict().items()})
    for k, w0 in start.items():
        torch.testing.assert_close(after[1][k] - after[0][k], -0.1 * 2 * 0.5 * w0)


class OutputsTerm(Method):
    """A loss term read from the step's context; records the context it was given."""

    def loss_term(self, ctx):
        self.ctx = ctx
        return 0.0 * ctx.outputs.sum()


def test_a_loss_term_gets_the_steps_context(trainer):
    from methods.base import MethodStack
    trainer.data.load_phase_data(trainer.parts.phases[0])
    trainer.ctx.reset_optimizer()
    term = OutputsTerm()
    trainer.parts.methods = MethodStack([term])
    trainer.loop.train_step(trainer.ctx.data.train.x[:4], trainer.ctx.data.train.y[:4])
    assert term.ctx is trainer.ctx and term.ctx.outputs.shape == (4, 8)


class EpochAtPhaseStart(Method):
    seen = []

    def on_phase_start(self, ctx):
        self.seen.append(ctx.epoch)


def test_a_phase_starts_at_epoch_zero(base_cfg, tmp_path):
    cfg = with_(base_cfg, train__epochs=2)
    OmegaConf.update(cfg, "extra_methods", [{"_target_": f"{__name__}.EpochAtPhaseStart"}], merge=False)
    EpochAtPhaseStart.seen = []
    Trainer(cfg, RunRecorder(tmp_path, {"name": "epochs"})).fit()
    assert EpochAtPhaseStart.seen == [0] * 5  # not the previous phase's last epoch


# -- schedules per epoch and per step ----------------------------------------------------------
class PhaseEnd(Method):
    def on_phase_end(self, ctx):
        return {"phase_end_step": ctx.step}


def test_a_phase_uses_its_milestones_evaluates_test_only_if_asked_and_adds_methods_numbers(base_cfg, tmp_path):
    from methods.base import MethodStack
    cfg = with_(base_cfg, schedule__name="step", schedule__gamma=0.1, train__eval_test=False,
                optim__lr=0.5)
    trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "milestones"}))
    trainer.parts.methods = MethodStack([PhaseEnd()])
    phase = make_phase(trainer, epochs=3, milestones=[2])
    trainer.data.load_phase_data(phase)
    trainer.ctx.reset_optimizer()
    trainer.run_phase(phase)
    rows = metrics(tmp_path)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.5, 0.5, 0.05])
    assert [r["test_loss"] for r in rows] == ["nan"] * 3 and rows[2]["val_loss"] != "nan"
    assert trainer.rec.result["phases"][0]["phase_end_step"] == 9  # 48 samples in batches of 16


def test_a_per_step_schedule_counts_from_the_phases_first_step(trainer):
    indexed_trainer(trainer)
    trainer.ctx.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainer.ctx.step = 7
    asked = []

    class PerStep:
        def at_step(self, step):
            asked.append(step)
            return 0.1 * step
    trainer.loop.train_epoch(4, None, PerStep())
    assert asked == [7, 8, 9]
    trainer.loop.train_epoch(4, None, PerStep(), start=7)
    assert asked[3:] == [3, 4, 5] and trainer.ctx.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def one_sample_phase(trainer, name="warm", **keys):
    """A 3-epoch phase of the trainer's first phase on one training sample (one step an epoch)."""
    ph = trainer.parts.phases[0].cfg.copy()
    for k, v in {"epochs": 3, "subset.n": 1, **keys}.items():
        OmegaConf.update(ph, k, v, merge=False)
    phase = Phase(0, 0, name, ph)
    trainer.data.load_phase_data(phase)
    trainer.ctx.reset_optimizer()
    return phase


def scripted_trainer(base_cfg, tmp_path, scales, **keys):
    cfg = with_(base_cfg, optim__lr=0.5, **keys)
    OmegaConf.update(cfg, "extra_methods",
                     [{"_target_": f"{ScriptedScale.__module__}.ScriptedScale", "scales": [scales]}],
                     merge=False)
    return Trainer(cfg, RunRecorder(tmp_path, {"name": "rows"}))


def test_a_per_step_schedule_is_used_only_when_the_schedule_is_per_step(base_cfg, tmp_path):
    for name, lrs in (("step_iter", [0.5, 0.25, 0.125]), ("step", [0.5, 0.5, 0.25])):
        trainer = scripted_trainer(base_cfg, tmp_path / name, [1.0] * 3, schedule__name=name,
                                   schedule__gamma=0.5, schedule__step_size=1, schedule__milestones=[2])
        given, epoch = [], trainer.loop.train_epoch
        trainer.loop.train_epoch = lambda bs, limit, schedule=None, start=0, accuracy=True: (
            given.append(schedule) or epoch(bs, limit, schedule, start, accuracy))
        trainer.run_phase(one_sample_phase(trainer))
        assert [float(r["lr"]) for r in metrics(tmp_path / name)] == pytest.approx(lrs)
        assert all((s is not None) is (name == "step_iter") for s in given) and len(given) == 3


def test_a_resumed_phase_continues_its_per_step_schedule(base_cfg, tmp_path):
    from runner.optim import Schedule
    keys = dict(schedule__name="step_iter", schedule__gamma=0.5, schedule__step_size=1, train__batch_size=1)
    whole = scripted_trainer(base_cfg, tmp_path / "whole", [1.0] * 3, **keys)
    whole.run_phase(one_sample_phase(whole, **{"subset.n": 2}))
    trainer = scripted_trainer(base_cfg, tmp_path / "resumed", [1.0] * 3, **keys)
    phase = one_sample_phase(trainer, **{"subset.n": 2})
    trainer.ctx.step = 4  # two epochs of two steps done
    resumed = BestEpoch(next_epoch=2, schedule=Schedule(trainer.cfg.schedule, 0.5).state_dict())
    trainer.run_phase(phase, resumed)
    [last] = metrics(tmp_path / "resumed")
    assert float(last["lr"]) == float(metrics(tmp_path / "whole")[-1]["lr"]) == 0.5 * 0.5 ** 5


def test_a_later_phases_per_step_schedule_counts_from_its_own_first_step(base_cfg, tmp_path):
    trainer = scripted_trainer(base_cfg, tmp_path, [1.0] * 3, schedule__name="step_iter",
                               schedule__gamma=0.5, schedule__step_size=1, train__batch_size=1)
    for name in ("first", "second"):
        trainer.run_phase(one_sample_phase(trainer, name=name, **{"subset.n": 2}))
    lrs = [float(r["lr"]) for r in metrics(tmp_path)]
    assert trainer.ctx.step == 12 and lrs[3:] == lrs[:3] == [0.5 * 0.5 ** k for k in (1, 3, 5)]


def test_plateau_without_validation_data_watches_the_training_loss(base_cfg, tmp_path):
    from runner.optim import Schedule
    trainer = scripted_trainer(base_cfg, tmp_path, [3.0, 2.0, 1.0, 0.5], train__val_fraction=0.0,
                               schedule__name="plateau", schedule__gamma=0.5, schedule__patience=1)
    trainer.run_phase(one_sample_phase(trainer, epochs=4))
    rows, replay = metrics(tmp_path), Schedule(trainer.cfg.schedule, 0.5)
    for e, row in enumerate(rows):
        assert float(row["lr"]) == replay.lr(e) and row["val_loss"] == "nan"
        replay.observe(float(row["train_loss"]))
    assert [float(r["lr"]) for r in rows] == [0.5, 0.5, 0.5, 0.25]  # losses fall, rise, rise


# -- metrics rows and weight counts ------------------------------------------------------------
def test_every_metrics_row_by_hand_on_one_sample_an_epoch(base_cfg, tmp_path):
    scales = [1.5, 2.0, 3.0]
    trainer = scripted_trainer(base_cfg, tmp_path, scales, schedule__name="step", schedule__gamma=0.1)
    # the phase's own gamma (0.5, not the schedule's 0.1), its lr as an interpolation
    phase = one_sample_phase(trainer, gamma=0.5, milestones=[2], lr="${optim.lr}")
    ctx = trainer.ctx
    with torch.no_grad():
        out = ctx.model(ctx.pipeline(ctx.data.train.x, False, None))
        first_loss = torch.nn.functional.cross_entropy(out, ctx.data.train.y).item()
        first_acc = float(out.argmax(1).item() == ctx.data.train.y.item())
    trainer.run_phase(phase)
    assert ctx.gamma == 0.5
    with open(tmp_path / "metrics.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["phase", "phase_name", "epoch", "step", "lr", "train_loss",
                                 "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                                 "weight_norm", "seconds", "nonzero_weights", "trained_weights"]
    # a step's loss is on the weights before it: the first epoch's the initial ones, later
    # epochs' those the script set after the previous step. One sample: the sum is the mean.
    train_losses = [first_loss] + [loss_at(c) for c in scales[:2]]
    for e, (row, c) in enumerate(zip(rows, scales)):
        assert (row["phase"], row["phase_name"], row["epoch"], row["step"]) == ("0", "warm", str(e + 1), str(e + 1))
        assert float(row["lr"]) == pytest.approx([0.5, 0.5, 0.25][e])
        assert float(row["train_loss"]) == pytest.approx(train_losses[e], rel=1e-5)
        assert float(row["train_acc"]) == (first_acc if e == 0 else 1.0)
        assert float(row["val_loss"]) == pytest.approx(loss_at(c), rel=1e-5)
        assert float(row["val_acc"]) == float(row["test_acc"]) == 1.0
        assert float(row["weight_norm"]) == pytest.approx(c * 24 ** 0.5, rel=1e-5)
        assert (row["nonzero_weights"], row["trained_weights"]) == ("24", "24")
        assert float(row["seconds"]) >= 0


def test_weight_stats_count_nonzero_and_trained_weights_by_hand(trainer):
    from runner.sparse.masks import Masks
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.5)  # no zeros but the ones set below
        model[2].weight[0, 0] = 0.0
    model[2].weight.requires_grad_(False)  # frozen: its nonzeros count, it trains nothing
    ctx = trainer.ctx
    ctx.model, ctx.masks = model, Masks(model, lambda: None)
    keep = torch.zeros(4, 3, dtype=torch.bool)
    keep.view(-1)[[0, 3, 5, 7, 11]] = True
    ctx.masks.set("0.weight", keep)  # pruned: 5 of 12 entries stay
    norm, nonzero, trained = trainer.loop.weight_stats().tolist()
    assert nonzero == 5 + 7 + 4  # weights only: not the bias, not the LayerNorm's
    assert trained == 5 + 4  # the mask's kept entries, the frozen weight not, the last in full
    everything = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert norm == pytest.approx(everything.norm().item(), rel=1e-6)


@pytest.mark.parametrize("norm_only", [False, True])
def test_weight_stats_live_on_the_trainers_device(trainer, norm_only):
    # the meta device stands for a GPU: a number left on the CPU would not stack with the rest
    model = torch.nn.LayerNorm(3) if norm_only else torch.nn.Linear(3, 2)
    trainer.parts.device = torch.device("meta")
    trainer.ctx.model = model.to("meta")
    from runner.sparse.masks import Masks
    trainer.ctx.masks = Masks(trainer.ctx.model, lambda: None)
    stats = trainer.loop.weight_stats()
    assert stats.device.type == "meta" and stats.shape == (3,)


# -- progress bars and log lines ---------------------------------------------------------------
def test_the_phase_bar_shows_the_phase_from_the_resumed_epoch_only_when_asked(base_cfg, tmp_path, capsys):
    from runner.optim import Schedule
    trainer = scripted_trainer(base_cfg, tmp_path, [1.0] * 3)
    phase = one_sample_phase(trainer, name="warmphase")
    resumed = BestEpoch(next_epoch=2, schedule=Schedule(trainer.cfg.schedule, 0.5).state_dict())
    trainer.parts.progress = True
    trainer.run_phase(phase, resumed)
    err = capsys.readouterr().err
    assert "warmphase: " in err and "| 2/3" in err
    assert "warmphase" not in err.split("\r")[-1]  # erased when the phase ends, not left behind
    assert "0/3" not in err and "1/3" not in err  # it starts where the phase stood
    trainer.parts.progress = False
    trainer.run_phase(one_sample_phase(trainer, name="quietphase"))
    assert "quietphase" not in capsys.readouterr().err


def test_on_a_terminal_the_phase_bar_shows_by_default(base_cfg, tmp_path, capsys, monkeypatch):
    import sys
    trainer = scripted_trainer(base_cfg, tmp_path, [1.0] * 3)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    trainer.parts.progress = None  # progress unset: shown on a terminal only
    trainer.run_phase(one_sample_phase(trainer, name="termphase"))
    assert "termphase: " in capsys.readouterr().err


def test_the_batch_bar_counts_the_epochs_batches(trainer, capsys, monkeypatch):
    from runner import logs
    monkeypatch.setattr(logs, "BATCH_BAR_DELAY_S", 0.0)
    trainer.parts.progress = True
    trainer.parts.phases = [make_phase(trainer, epochs=1)]
    trainer.fit()
    bars = [b for b in capsys.readouterr().err.split("\r") if b.startswith("batches")]
    assert bars and all("/3 [" in b for b in bars)  # 48 samples in batches of 16


def test_each_evaluated_epoch_logs_its_line(base_cfg, tmp_path, caplog):
    from runner.logs import epoch_line
    trainer = scripted_trainer(base_cfg, tmp_path, [1.0, 2.0, 3.0])
    with caplog.at_level(logging.INFO, logger="runner"):
        trainer.run_phase(one_sample_phase(trainer, name="warm"))
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    rows = metrics(tmp_path)
    assert len(lines) == len(rows) == 3
    for e, (line, row) in enumerate(zip(lines, rows)):
        assert line == epoch_line("warm", e + 1, 3, {k: float(v) for k, v in row.items() if k != "phase_name"})
        assert line.startswith(f"warm epoch {e + 1}/3 lr ")


# -- divergence and the checkpoint cadence -----------------------------------------------------
STAGE = Phase(0, 0, "warm", None)  # the trainer's own phases: a, b1, b2, b3, c


def test_divergence_is_a_loss_above_factor_times_the_first_or_not_finite(trainer):
    trainer.parts.opts.diverge_factor, trainer.loop.diverge_ref = 10.0, 0.5
    trainer.loop.check_divergence(5.0, STAGE, 2)  # exactly factor x reference: not yet
    with pytest.raises(Diverged, match=re.escape(
            "training loss 5.001 in phase 'warm', epoch 3 exceeds train.diverge_factor=10 times "
            "the first batch's loss 0.5")):
        trainer.loop.check_divergence(5.001, STAGE, 2)
    for loss in (math.nan, math.inf):
        with pytest.raises(Diverged, match=f"^training loss became {loss} in phase 'warm', epoch 1$"):
            trainer.loop.check_divergence(loss, STAGE, 0)
    for factor, ref in ((10.0, 0.0), (10.0, None), (None, 0.5)):  # no ratio to compare with
        trainer.parts.opts.diverge_factor, trainer.loop.diverge_ref = factor, ref
        trainer.loop.check_divergence(1e30, STAGE, 0)


def test_checkpoints_fall_due_every_n_epochs_and_after_the_minutes(trainer, monkeypatch):
    o = trainer.parts.opts
    o.checkpoint, o.checkpoint_every, o.checkpoint_minutes = True, 3, None
    assert [e for e in range(1, 10) if trainer.cadence.due(e)] == [3, 6, 9]
    o.checkpoint_every, o.checkpoint_minutes = None, 2.0
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)
    trainer.cadence.last = 1000.0 - 119.5
    assert not trainer.cadence.due(3)
    trainer.cadence.last = 1000.0 - 120.0  # two minutes since the last one
    assert trainer.cadence.due(1)
    o.checkpoint_every = 3
    assert trainer.cadence.due(1)
    o.checkpoint = False  # never, whatever the cadence
    assert not any(trainer.cadence.due(e) for e in range(1, 10))
    o.checkpoint, o.checkpoint_every, o.checkpoint_minutes = True, None, None
    assert not any(trainer.cadence.due(e) for e in range(1, 10))


def test_checkpoints_fall_every_n_epochs_of_a_phase(trainer):
    saved = []
    trainer.save_checkpoint = lambda phase, p: saved.append((phase, p.next_epoch))
    trainer.parts.opts.checkpoint, trainer.parts.opts.checkpoint_every, trainer.parts.opts.checkpoint_minutes = True, 3, None
    trainer.parts.phases = [make_phase(trainer, epochs=7)]
    trainer.fit()
    assert saved == [(0, 3), (0, 6)]  # after epochs 3 and 6; the run's end needs none
