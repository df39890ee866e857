"""The trainer's best-epoch bookkeeping on a run whose validation loss follows a script.

On the scripted task of `trainer_fixtures` every sample has the same loss, known in closed form:

    L(c) = log(1 + 3 exp(-2c) + 3 exp(-4c) + exp(-6c))   (decreasing in c)

so the script fixes which epoch is best, when patience runs out and which weights `restore_best`
must load, and each is checked against numbers computed here by hand; then what the run reports
(`report.at`, `report.metric`, the summary of the last phase) and how an epoch is scored.
"""
import pytest
import torch
from omegaconf import OmegaConf

from runner.results import RunRecorder
from runner.train import Trainer
from runner.training.best import score
from runner.training.lifecycle import summarize
from trainer_fixtures import BASE, PERFECT, base_cfg, loss_at, metrics, script, trainer  # noqa: F401


# -- the best epoch, patience and restore_best on the scripted run -----------------------------
def train(compose_cfg, tmp_path, overrides):
    """A Trainer fitted on the composed config; returns it and its result dict."""
    cfg = compose_cfg(BASE + overrides)
    rec = RunRecorder(tmp_path, {"name": "bookkeeping"})
    trainer = Trainer(cfg, rec)
    trainer.fit()
    return trainer, rec.result


SCALES = [1, 2, 1.5, 3, 2.5, 2.8, 0.5, 1.0, 5, 5]
# patience 3: best at 1, 2, then 4 (c = 3); epochs 5, 6, 7 do not improve -> stop after epoch 7


def test_validation_loss_follows_the_script(compose_cfg, tmp_path):
    _, result = train(compose_cfg, tmp_path, [script(SCALES)])
    rows = metrics(tmp_path)
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([loss_at(c) for c in SCALES],
                                                                  rel=1e-5, abs=1e-6)
    assert [float(r["test_loss"]) for r in rows] == pytest.approx([loss_at(c) for c in SCALES],
                                                                   rel=1e-5, abs=1e-6)
    phase = result["phases"][0]
    assert phase["epochs"] == 10 and phase["best_epoch"] == 9  # no patience: the minimum, first of ties
    assert phase["best"]["val_loss"] == pytest.approx(loss_at(5), rel=1e-5, abs=1e-6)


def test_patience_stops_at_exactly_the_right_epoch(compose_cfg, tmp_path):
    _, result = train(compose_cfg, tmp_path, [script(SCALES), "train.patience=3"])
    phase = result["phases"][0]
    assert len(metrics(tmp_path)) == 7 and phase["epochs"] == 7
    assert phase["best_epoch"] == 4
    assert phase["best"]["val_loss"] == pytest.approx(loss_at(3), rel=1e-5, abs=1e-6)
    assert phase["end"]["val_loss"] == pytest.approx(loss_at(0.5), rel=1e-5, abs=1e-6)
    assert phase["steps"] == 7 * 3  # 48 training samples in batches of 16


def test_an_equal_loss_is_no_improvement(compose_cfg, tmp_path):
    _, result = train(compose_cfg, tmp_path, [script([2] * 10), "train.patience=2"])
    phase = result["phases"][0]
    assert (phase["epochs"], phase["best_epoch"]) == (3, 1)


def test_patience_counts_evaluations_and_each_phase_has_its_own(compose_cfg, tmp_path):
    # phase a evaluates epochs 2, 4, 6, 8 (eval_every=2): best at 4 (the 9 of epoch 5 is never
    # seen), 6 and 8 do not improve -> stop after 8. Phase b: its own best (epoch 2, though
    # phase a saw better) and its own patience (1).
    phases = "+phases=[{name: a, patience: 2}, {name: b, patience: 1}]"
    _, result = train(compose_cfg, tmp_path, [
        script([1, 1, 1, 3, 9, 2, 9, 2, 9, 9], [9, 0.5, 9, 0.4, 9, 9, 9, 9, 9, 9]),
        phases, "train.eval_every=2"])
    a, b = result["phases"]
    assert (a["epochs"], a["best_epoch"]) == (8, 4)
    assert a["best"]["val_loss"] == pytest.approx(loss_at(3), rel=1e-5, abs=1e-6)
    assert (b["epochs"], b["best_epoch"]) == (4, 2)  # epoch 4 (c = 0.4) is worse than 2 (0.5)
    assert b["best"]["val_loss"] == pytest.approx(loss_at(0.5), rel=1e-5, abs=1e-6)
    rows = metrics(tmp_path)  # evaluated epochs only, as its first line says
    assert [(r["phase"], r["epoch"]) for r in rows] == [
        ("0", "2"), ("0", "4"), ("0", "6"), ("0", "8"), ("1", "2"), ("1", "4")]
    first = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert first == ("# one row per evaluated epoch: every 2 epochs of a phase and its last "
                     "(train.eval_every=2)")


def test_without_validation_data_the_last_epoch_is_best(compose_cfg, tmp_path):
    _, result = train(compose_cfg, tmp_path, [script(SCALES), "train.val_fraction=0",
                                              "train.patience=1"])
    phase = result["phases"][0]
    assert (phase["epochs"], phase["best_epoch"]) == (10, 10)  # never stops early


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_loads_the_best_epochs_weights(compose_cfg, tmp_path, restore):
    trainer, result = train(compose_cfg, tmp_path, [
        script(SCALES), "train.patience=3", f"train.restore_best={restore}", "report.at=best"])
    kept = 3 if restore else 0.5  # best epoch (4) or last epoch (7)
    torch.testing.assert_close(trainer.ctx.model.head[1].weight, kept * PERFECT)
    trainer.data.load_phase_data(trainer.parts.phases[0])  # fit() frees the data at its end
    val_loss, val_acc = (float(v) for v in trainer.ctx.evaluate(trainer.ctx.data.val))  # now
    assert val_loss == pytest.approx(loss_at(kept), rel=1e-5, abs=1e-6) and val_acc == 1.0
    key = "best" if restore else "end"
    assert val_loss == pytest.approx(result["phases"][0][key]["val_loss"], rel=1e-6)


def test_the_best_epoch_is_scored_by_the_chosen_metric(trainer):
    row = {"val_loss": 0.4, "val_acc": 0.75}
    assert score(row, trainer.parts.opts.select_by) == 0.4
    trainer.parts.opts.select_by = "val_acc"
    assert score(row, trainer.parts.opts.select_by) == -0.75  # the lowest score is the best


# -- what the run reports: report.at, report.metric and the summary ----------------------------
@pytest.mark.parametrize("at,c", [("best", 3), ("end", 0.5)])
def test_report_at_reports_what_it_says(run_cfg, at, c):
    result = run_cfg(BASE + [script(SCALES), "train.patience=3", f"report.at={at}",
                             "report.metric=test_loss", "report.extra=[val_loss]"])
    assert result["summary"]["test_loss"] == pytest.approx(loss_at(c), rel=1e-5, abs=1e-6)
    assert result["summary"]["val_loss"] == pytest.approx(loss_at(c), rel=1e-5, abs=1e-6)


def test_report_reads_the_last_phase(run_cfg):
    phases = "+phases=[{name: a}, {name: b, epochs: 2}]"
    result = run_cfg(BASE + [script(SCALES, [4, 1]), phases, "report.at=best",
                             "report.metric=val_loss"])
    assert result["summary"]["val_loss"] == pytest.approx(loss_at(4), rel=1e-5, abs=1e-6)


def test_restore_best_requires_report_at_best(run_cfg):
    with pytest.raises(Exception, match="restore_best"):
        run_cfg(BASE + [script(SCALES), "train.restore_best=true", "report.at=end"])


def test_summary_reads_the_last_phase_at_the_report_position():
    def phase(v):
        return {"end": {"test_acc": v, "val_loss": v + 1}, "best": {"test_acc": v + 0.5, "val_loss": v + 1.5},
                "sparsity": v + 0.25}  # a method's phase-end number
    result = {"phases": [phase(0.0), phase(5.0), phase(10.0)]}

    def cfg(at, restore_best=False, metric="test_acc", extra=("val_loss", "sparsity", "other")):
        return OmegaConf.create({"report": {"metric": metric, "at": at, "extra": list(extra)},
                                 "train": {"restore_best": restore_best}})
    assert summarize(result, cfg("end")) == {"test_acc": 10.0, "val_loss": 11.0, "sparsity": 10.25, "other": None}
    assert summarize(result, cfg("best")) == {"test_acc": 10.5, "val_loss": 11.5, "sparsity": 10.25, "other": None}
    assert summarize(result, cfg(None, restore_best=True))["test_acc"] == 10.5
    assert summarize(result, cfg(None))["test_acc"] == 10.0
    assert summarize(result, cfg("end", metric="sparsity", extra=())) == {"sparsity": 10.25}
    assert summarize({"phases": []}, cfg("end")) == {}
