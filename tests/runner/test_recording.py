"""Per-epoch work proportional to what is recorded: with `train.eval_every` > 1 the epochs between
evaluations keep their loss on the device, are checked for divergence at the next evaluation
(naming the epoch that diverged), write no metrics.csv row and call no `on_epoch_end`."""
import csv

import pytest
import torch

from methods.base import Method
from runner.errors import Diverged
from runner.results import RunRecorder
from runner.train import Trainer
from trainer_fixtures import BASE, script


class CountEpochEnds(Method):
    """Reports how many times its `on_epoch_end` ran."""

    def __init__(self):
        self.calls = 0

    def on_epoch_end(self, ctx):
        self.calls += 1
        return {"epoch_ends": self.calls}


def trainer_of(compose_cfg, tmp_path, overrides):
    return Trainer(compose_cfg(BASE + overrides), RunRecorder(tmp_path, {"name": "rec"}))


def test_rows_and_epoch_hooks_only_at_evaluated_epochs(compose_cfg, tmp_path):
    hook = f"+extra_methods=[{{_target_: {__name__}.CountEpochEnds}}]"
    trainer = trainer_of(compose_cfg, tmp_path, [hook, "train.eval_every=4", "train.epochs=10"])
    trainer.fit()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("# one row per evaluated epoch: every 4 epochs")
    rows = list(csv.DictReader(lines[1:]))
    assert [r["epoch"] for r in rows] == ["4", "8", "10"]  # and the phase's last
    assert [r["epoch_ends"] for r in rows] == ["1", "2", "3"]
    assert [r["step"] for r in rows] == ["12", "24", "30"]  # 3 steps an epoch, all trained
    assert all(float(r["weight_norm"]) > 0 for r in rows)


def test_every_epoch_recorded_needs_no_note(compose_cfg, tmp_path):
    trainer_of(compose_cfg, tmp_path, ["train.epochs=3"]).fit()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("phase,") and len(lines) == 4


def test_a_divergence_between_evaluations_names_its_epoch(compose_cfg, tmp_path):
    """Epoch 3 (its 2nd and 3rd steps at weights -50 x the perfect classifier) exceeds twice the
    first loss; it is found at the evaluation of epoch 5, which trained on."""
    scales = [1, 1, -50, 1, 1, 1, 1, 1, 1, 1]
    trainer = trainer_of(compose_cfg, tmp_path, [script(scales), "train.eval_every=5",
                                                 "train.diverge_factor=2"])
    with pytest.raises(Diverged, match=r"in phase '\w+', epoch 3 exceeds train.diverge_factor=2 "):
        trainer.fit()
    assert trainer.ctx.step == 15
    assert not (tmp_path / "metrics.csv").exists()  # no evaluated epoch got through


def test_a_nonfinite_loss_between_evaluations_names_its_epoch(compose_cfg, tmp_path):
    scales = [1, float("nan"), 1, 1, 1, 1, 1, 1, 1, 1]
    trainer = trainer_of(compose_cfg, tmp_path, [script(scales), "train.eval_every=5"])
    with pytest.raises(Diverged, match=r"training loss became nan in phase '\w+', epoch 2$"):
        trainer.fit()


def test_a_checkpoint_between_evaluations_checks_the_epochs_before_it(compose_cfg, tmp_path):
    """A mid-phase checkpoint reads the pending epochs first: the first batch's loss is the
    reference it stores, and a resumed run has no epoch left unchecked."""
    trainer = trainer_of(compose_cfg, tmp_path, ["train.eval_every=5", "train.checkpoint_every=2",
                                                 "train.epochs=3"])
    saved = []
    trainer.save_checkpoint = lambda phase, progress: saved.append(
        (list(trainer.loop.pending), trainer.loop.diverge_ref))
    trainer.fit()
    assert saved and all(pending == [] and isinstance(ref, float) for pending, ref in saved)
    assert torch.isfinite(torch.tensor(saved[0][1]))


def test_a_phase_end_checkpoints_once_10_s_passed_or_with_checkpoint_every():
    from types import SimpleNamespace
    from runner.training.state import PHASE_END_S, Cadence
    cadence = Cadence(SimpleNamespace(checkpoint=True, checkpoint_every=None, checkpoint_minutes=None))
    assert not cadence.due_at_phase_end()  # a short phase: nothing worth saving yet
    cadence.last -= PHASE_END_S
    assert cadence.due_at_phase_end()
    cadence.opts.checkpoint = False
    assert not cadence.due_at_phase_end()
    every = Cadence(SimpleNamespace(checkpoint=True, checkpoint_every=3, checkpoint_minutes=None))
    assert every.due_at_phase_end()
