"""The trainer's best-epoch bookkeeping on a run whose validation loss follows a script.

The data are the reinitialization paper's synthetic task without noise dimensions (x = y's three
bits as +-1) and the model is one linear layer. A stacked test method sets that layer, after every
step, to c_e times the perfect classifier (row k = class k's bits as +-1), with c_e read from a
script per epoch. Every sample then has the same loss, known in closed form:

    L(c) = log(1 + 3 exp(-2c) + 3 exp(-4c) + exp(-6c))   (decreasing in c)

so the script fixes which epoch is best, when patience runs out and which weights `restore_best`
must load, and each is checked against numbers computed here by hand.

The later sections test the trainer's other pieces on the same tiny task: data loading and
caching, the step and the epoch, schedules, checkpoints, logs and bars, devices, seeds and the
run record (most written against surviving mutants; see docs/testing.md).
"""
import csv
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF

from methods.base import Method
from runner.context import Phase
from runner.data import transforms
from runner.data.tensors import Arrays, Pipeline, Split, Splits
from runner.errors import ConfigError, DataError, Diverged, RunnerError
from runner.results import RunRecorder
from runner.instantiate import instantiate
from runner.targets import register
from runner.train import Trainer
from runner.training.best import BestEpoch, score
from runner.training.build import expand_phases, mse_one_hot, resolve_device
from runner.training.data import check_labels
from runner.training.lifecycle import summarize

BITS = torch.tensor([[(k >> b) & 1 for b in (2, 1, 0)] for k in range(8)], dtype=torch.float32)
PERFECT = 2 * BITS - 1  # (8 classes, 3 inputs)
BASE = ["experiment=fmnist_mlp", f"target_allowlist=[{__name__}]", "dataset=reinit_synthetic", "dataset.reader.dim=3", "dataset.shape=[3]",
        "dataset.reader.n_train=64", "dataset.reader.n_test=32", "model=mlp", "model.hidden=[]",
        "model.bias=false", "method=vanilla", "train.batch_size=16", "train.val_fraction=0.25",
        "train.epochs=10", "device=cpu", "threads=1", "progress=false"]


def loss_at(c: float) -> float:
    return math.log(1 + 3 * math.exp(-2 * c) + 3 * math.exp(-4 * c) + math.exp(-6 * c))


class ScriptedScale(Method):
    """After every step: the head's weight := scales[phase][epoch] x the perfect classifier."""

    def __init__(self, scales):
        self.scales = scales

    @torch.no_grad()
    def after_step(self, ctx):
        ctx.model.head[1].weight.copy_(self.scales[ctx.phase_index][ctx.epoch] * PERFECT)


def script(*phases):
    """The override that stacks ScriptedScale with these per-phase scale lists."""
    lists = ", ".join("[" + ", ".join(map(str, p)) + "]" for p in phases)
    return f"+extra_methods=[{{_target_: {__name__}.ScriptedScale, scales: [{lists}]}}]"


def train(compose_cfg, tmp_path, overrides):
    """A Trainer fitted on the composed config; returns it and its result dict."""
    cfg = compose_cfg(BASE + overrides)
    rec = RunRecorder(tmp_path, {"name": "bookkeeping"})
    trainer = Trainer(cfg, rec)
    trainer.fit()
    return trainer, rec.result


def metrics(tmp_path):
    with open(Path(tmp_path) / "metrics.csv") as f:
        return list(csv.DictReader(f))


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
    rows = metrics(tmp_path)
    assert [r["val_loss"] for r in rows[:8:2]] == ["nan"] * 4  # odd epochs are not evaluated


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



# -- the trainer's pieces on their own (a Trainer of the config above, not fitted) -------------
@pytest.fixture(scope="module")
def base_cfg():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=BASE + ["+phases=[{name: a}, {name: b, repeat: 3}, {name: c, repeat: 1}]"])
    finally:
        GlobalHydra.instance().clear()


def with_(cfg, **keys):
    """A copy of the config with dotted `keys` (a__b: a.b) set."""
    cfg = cfg.copy()
    for k, v in keys.items():
        OmegaConf.update(cfg, k.replace("__", "."), v)
    return cfg


@pytest.fixture
def trainer(base_cfg, tmp_path):
    return Trainer(base_cfg, RunRecorder(tmp_path, {"name": "pieces"}))


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


def test_the_input_cache_budget(trainer, monkeypatch):
    trainer.parts.opts.cache_mb = 3
    assert trainer.data.cache_bytes() == 3 * 2**20  # the CPU: the configured MB
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return 2 * 2**20 + 1, 8 * 2**30  # free, total
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    trainer.parts.device = torch.device("cuda:1")  # a GPU: at most half of its free memory
    assert trainer.data.cache_bytes() == 2**20 and isinstance(trainer.data.cache_bytes(), int)
    trainer.parts.opts.cache_mb = 0.5
    assert trainer.data.cache_bytes() == 2**19 and asked == [torch.device("cuda:1")] * 3


def test_float_bytes_counts_every_split_after_the_deterministic_transforms(trainer):
    def split(n):
        return Split(torch.zeros(n, 1, 4, 5, dtype=torch.uint8), torch.zeros(n, dtype=torch.long))
    splits = Splits(split(6), split(2), split(3))
    gray = Pipeline([0.5], [0.5], [], [], "cpu")
    rgb = Pipeline([0.5], [0.5], [transforms.ToRGB()], [], "cpu")
    assert trainer.data.float_bytes(splits, gray) == 4 * 11 * 20
    assert trainer.data.float_bytes(splits, rgb) == 4 * 11 * 60


def test_repeated_phases_expand_into_numbered_phases(base_cfg):
    phases = expand_phases(base_cfg)
    assert [(s.index, s.repeat, s.name, s.cfg.name) for s in phases] == [
        (0, 0, "a", "a"), (1, 0, "b1", "b"), (2, 1, "b2", "b"), (3, 2, "b3", "b"), (4, 0, "c", "c")]
    capped = expand_phases(with_(base_cfg, train__max_repeat=2))
    assert [(s.index, s.name) for s in capped] == [(0, "a"), (1, "b1"), (2, "b2"), (3, "c")]


def test_the_loss_options(base_cfg, tmp_path):
    out, y = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]), torch.tensor([1, 0])
    # squared distance to the one-hot target: 0.25 + 4 + 4 and 1 (class 2 has no sample)
    assert mse_one_hot(out, y).item() == pytest.approx(4.625)
    assert mse_one_hot(out, y, reduction="sum").item() == pytest.approx(9.25)
    rec = RunRecorder(tmp_path, {"name": "loss"})
    assert Trainer(with_(base_cfg, train__loss="mse"), rec).parts.loss_fn is mse_one_hot
    smooth = Trainer(with_(base_cfg, train__label_smoothing=0.2), rec).parts.loss_fn
    lse = math.log(math.exp(2) + 2)  # logits [2, 0, 0], class 0: (1 - e) CE + e mean_k(-log p_k)
    assert smooth(torch.tensor([[2.0, 0, 0]]), torch.tensor([0])).item() == pytest.approx(
        0.8 * (lse - 2) + 0.2 * (lse - 2 / 3))
    with pytest.raises(RunnerError, match=r"^train\.label_smoothing needs train\.loss=cross_entropy$"):
        Trainer(with_(base_cfg, train__label_smoothing=0.2, train__loss="mse"), rec)


def labelled(source=None, **parts):
    a = {"x_train": torch.zeros(4, 3), "y_train": torch.tensor([0, 1, 2, 9]),
         "x_test": torch.zeros(3, 3), "y_test": torch.tensor([9, 0, 5])}
    return Arrays(**{**a, **parts}, source=source)


@pytest.mark.parametrize("part", ["train", "test"])
def test_check_labels_names_the_part_and_the_files(part):
    check_labels(labelled(), 10, "digits")  # labels 0 and 9 of 10 classes are fine
    check_labels(labelled(x_test=torch.zeros(0, 3), y_test=torch.zeros(0, dtype=torch.long)), 10, "d")
    n, y = (4, [0, 1, 2, 9]) if part == "train" else (3, [9, 0, 5])
    short = {f"y_{part}": torch.tensor(y[:-1])}
    with pytest.raises(DataError, match=re.escape(
            f"digits: {n} {part} images but {n - 1} labels (in /d); the files do not belong together")):
        check_labels(labelled("/d", **short), 10, "digits")
    with pytest.raises(DataError, match=f"^digits: {n} {part} images but {n - 1} labels; the files"):
        check_labels(labelled(**short), 10, "digits")
    for bad, span in ((10, "[0, 10]"), (-1, "[-1, 9]")):
        labels = torch.tensor([bad if v == (9 if bad > 0 else 0) else v for v in y])
        with pytest.raises(DataError, match=re.escape(
                f"digits: {part} labels span {span}, outside [0, 10) (num_classes=10); files in /d")):
            check_labels(labelled("/d", **{f"y_{part}": labels}), 10, "digits")
    with pytest.raises(DataError, match=r"outside \[0, 10\) \(num_classes=10\)$"):
        check_labels(labelled(**{f"y_{part}": torch.tensor([10] * n)}), 10, "digits")


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


def test_the_device_of_each_sweep_job(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto", 5) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [str(resolve_device("auto", j)) for j in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda:2") == torch.device("cuda:2") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=re.escape(
            "device='cuda:3' is not available here (3 GPUs visible); use device=cpu or device=auto")):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device='cuda' is not available here \(1 GPUs visible\)"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device='mps' is not available here; use device=cpu or device=auto$"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match=r"^device='banana' is not a device; valid: auto, cpu, cuda, cuda:N$"):
        resolve_device("banana")
    with pytest.raises(ConfigError, match=r"^device='meta' is not supported; valid: auto, cpu, cuda, cuda:N$"):
        resolve_device("meta")


# -- targets, data and the step's pieces (mutation testing) ----------------------------------------
class Box:
    """A callable target: keeps its arguments; refuses `bad` as a constructor does."""

    def __init__(self, v=None, inner=None, bad=None):
        if bad is not None:
            raise ValueError(f"bad   option\n  {bad}")
        self.v, self.inner = v, inner


register("model", Box)  # a component the tests' configs may name (with target_allowlist)


def test_call_names_where_a_value_is_refused_and_refuses_untyped_targets():
    box = instantiate({"_target_": f"{__name__}.Box", "v": {"k": 1}}, "model", "model", [__name__])
    assert isinstance(box, Box) and box.v == {"k": 1}
    with pytest.raises(RunnerError, match=re.escape(f"model: bad option x (calling {__name__}.Box)")):
        instantiate({"_target_": f"{__name__}.Box", "bad": "x"}, "model", "model", [__name__])
    with pytest.raises(RunnerError, match=r"^m\._target_='len' is refused: not a dotted path"):
        instantiate({"_target_": "len"}, "m", "model")
    with pytest.raises(RunnerError, match=r"^m\._target_=.*Box' is refused: .*outside the allowed"):
        instantiate({"_target_": f"{__name__}.Box"}, "m", "model")  # not in target_allowlist
    with pytest.raises(RunnerError, match=r"^m\._target_=.*Box' is refused: a component of another kind.*allowed at m: a registered dataset reader"):
        instantiate({"_target_": f"{__name__}.Box"}, "m", "reader", [__name__])
    with pytest.raises(RunnerError, match="^m has no _target_"):
        instantiate(OmegaConf.create({"v": 1}), "m", "model")


def tiny_images(n_train=16, n_test=4, fail=False, start=0, source=None, classes=2):
    """A reader: uint8 one-channel 2x2 images, pixel value = `start` + the sample's index."""
    if fail:
        raise ValueError("no such files")
    x = (torch.arange(n_train + n_test) + start).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    y = torch.arange(n_train + n_test) % classes
    return Arrays(x[:n_train].clone(), y[:n_train], x[n_train:].clone(), y[n_train:], source=source)


register("reader", tiny_images)


class Add:
    """An augmentation: adds `v` (to inputs already in [0, 1])."""

    def __init__(self, v):
        self.v = v

    def __call__(self, x, gen):
        return x + self.v


register("transform", Add)


def image_trainer(base_cfg, tmp_path, reader=(), **keys):
    cfg = with_(base_cfg, dataset__shape=[1, 2, 2], dataset__num_classes=2, dataset__dtype="uint8",
                **{"train__val_fraction": 0.0, **keys})
    OmegaConf.update(cfg, "dataset.reader", {"_target_": f"{__name__}.tiny_images", **dict(reader)},
                     merge=False)
    return Trainer(cfg, RunRecorder(tmp_path, {"name": "images"}))


def make_phase(trainer, **keys):
    """A phase of the trainer's first phase with dotted `keys` (a__b: a.b) set."""
    ph = trainer.parts.phases[0].cfg.copy()
    for k, v in keys.items():
        OmegaConf.update(ph, k.replace("__", "."), v, merge=False)
    return Phase(0, 0, "s", ph)


def test_phase_data_takes_the_subset_and_the_phases_or_datasets_augmentation(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, dataset__augment=[{"_target_": f"{__name__}.Add", "v": 2.0}])
    ctx, x = trainer.ctx, torch.full((3, 1, 2, 2), 0.2)  # a batch of the cached (prepared) inputs
    for augment, added in ((None, 2.0), ([{"_target_": f"{__name__}.Add", "v": 1.0}], 1.0), ([], 0.0)):
        trainer.data.load_phase_data(make_phase(trainer, augment=augment))
        assert len(ctx.data.train) == 16
        torch.testing.assert_close(ctx.pipeline(x, True, trainer.parts.aug_gen), torch.full_like(x, 0.2 + added))
        torch.testing.assert_close(ctx.pipeline(x, False, trainer.parts.aug_gen), x)
    trainer.data.load_phase_data(make_phase(trainer, subset__n=5))
    assert len(ctx.data.train) == 5 and len(set(ctx.data.train.x[:, 0, 0, 0].tolist())) == 5


def test_a_reader_refusing_its_options_is_named(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, reader={"fail": True})
    with pytest.raises(RunnerError, match=r"^dataset\.reader: no such files \(calling"):
        trainer.data.load_phase_data(trainer.parts.phases[0])


class Streamed:
    """What a streamed split looks like to the trainer: it gives its own batches."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def batches(self, batch_size, gen, shuffle, limit):
        return iter(())


def test_streamed_datasets_get_their_options_and_are_not_cached(base_cfg, tmp_path, monkeypatch):
    import runner.training.data as data_module
    trainer = image_trainer(base_cfg, tmp_path)
    OmegaConf.update(trainer.cfg, "dataset.stream", {"size": 8, "workers": "${seed}"}, force_add=True)
    asked = []

    def stream_splits(files, val_fraction, seed, device, **opts):
        asked.append((files, val_fraction, seed, device, opts))
        if len(asked) == 1:
            raise OSError("unreadable")
        return Splits(Streamed(6), Streamed(0), Streamed(2))
    monkeypatch.setattr(data_module, "stream_splits", stream_splits)
    with pytest.raises(OSError):
        trainer.data.load_phase_data(trainer.parts.phases[0])
    trainer.data.load_phase_data(trainer.parts.phases[0])  # a failed build leaves nothing half-made
    files, val_fraction, seed, device, opts = asked[-1]
    assert isinstance(files, Arrays) and len(files.x_train) == 16  # the reader's output
    assert (val_fraction, seed, device, opts) == (0.0, trainer.cfg.seed, trainer.parts.device,
                                                  {"size": 8, "workers": trainer.cfg.seed})
    assert isinstance(trainer.ctx.data.train, Streamed)  # used as it is, not prepared


def test_channels_last_layout_passes_the_generator_on(trainer):
    seen = []

    def pipe(x, train, gen):
        seen.append((train, gen))
        return x
    trainer.parts.opts.channels_last = True
    out = trainer.data.with_layout(pipe)(torch.zeros(2, 3, 4, 5), False, trainer.parts.aug_gen)
    assert out.is_contiguous(memory_format=torch.channels_last) and seen == [(False, trainer.parts.aug_gen)]
    assert trainer.data.with_layout(pipe)(torch.zeros(2, 3), True, None).shape == (2, 3)


def indexed_trainer(trainer, n=12):
    """The trainer on inputs 0..n-1 (labels = inputs), each step recording its labels."""
    x = torch.arange(n, dtype=torch.float32).view(-1, 1)
    trainer.ctx.data = Splits(Split(x, torch.arange(n)), Split(x[:0], torch.arange(0)), Split(x[:0], torch.arange(0)))
    trainer.ctx.pipeline = lambda x, train, gen: x
    seen = []

    def step(xb, yb, stats):
        seen.append(yb.tolist())
        trainer.ctx.step += 1
        stats[:3] += torch.tensor([1.0, 0.0, len(yb)])
        return torch.tensor(0.5)
    trainer.loop.train_step = step
    return seen


def test_an_epoch_draws_its_order_from_the_order_generator_and_stops_at_the_limit(trainer):
    seen = indexed_trainer(trainer)
    trainer.parts.order_gen.manual_seed(5)
    stats = trainer.loop.train_epoch(3, None)
    first = [list(b) for b in seen]
    assert len(first) == 4 and sorted(sum(first, [])) == list(range(12)) and stats[2] == 12
    seen.clear()
    torch.manual_seed(123)  # the global generator plays no part
    trainer.parts.order_gen.manual_seed(5)
    trainer.loop.train_epoch(3, None)
    assert seen == first
    seen.clear()
    trainer.parts.order_gen.manual_seed(6)
    stats = trainer.loop.train_epoch(3, 2)
    assert len(seen) == 2 and seen != first[:2] and stats[2] == 6 and trainer.ctx.step == 10


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
    stats = torch.zeros(4)
    loss = trainer.loop.train_step(xb, yb, stats)
    [((x, y), step)] = spy.seen
    assert torch.equal(x, trainer.ctx.pipeline(xb, True, None)) and y is yb and step == 0
    assert trainer.ctx.step == 1 and stats[2] == 5 and stats[0] == pytest.approx(5 * loss.item())


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


def scaled_by(k):
    """A model transform: multiplies the model's weights by `k`."""
    def apply(model):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(k)
    return apply


register("model_transform", scaled_by)


def test_the_model_gets_its_transforms_and_the_trainer_its_methods(base_cfg, tmp_path):
    from methods.vanilla import Vanilla
    rec = RunRecorder(tmp_path, {"name": "built"})
    plain = Trainer(base_cfg, rec)
    assert [type(m) for m in plain.parts.methods.methods] == [Vanilla]
    cfg = with_(base_cfg, method=None)
    OmegaConf.update(cfg, "model_transforms", [{"_target_": f"{__name__}.scaled_by", "k": 3.0}], merge=False)
    scaled = Trainer(cfg, rec)  # same seed: the same initial weights, then x 3
    assert scaled.parts.methods.methods == []
    torch.testing.assert_close(scaled.ctx.model.head[1].weight, 3 * plain.ctx.model.head[1].weight)


def test_distributed_steps_go_through_the_wrapped_model(trainer):
    from runner.data.tensors import batches

    class Wrapped(torch.nn.Module):  # what DistributedDataParallel is to the step
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)
    wrapped = []
    trainer.parts.dist = SimpleNamespace(
        wrap=lambda m: wrapped.append(Wrapped(m)) or wrapped[-1], batches=batches,
        all_reduce=lambda t: None, check_same=lambda *a: checked.append(a))
    checked = []
    trainer.parts.phases = [make_phase(trainer, epochs=1)]
    trainer.fit()
    assert wrapped[0].inner is trainer.ctx.model and wrapped[0].calls == 3  # 48 samples / 16
    # every rank ends the phase with the same weights and masks
    assert checked == [(trainer.ctx.model, trainer.ctx.masks, "phase 's'")]


# -- weight_stats and run_phase's rows (mutation testing) ------------------------------------------
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
    OmegaConf.update(cfg, "extra_methods", [{"_target_": f"{__name__}.ScriptedScale", "scales": [scales]}],
                     merge=False)
    return Trainer(cfg, RunRecorder(tmp_path, {"name": "rows"}))


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


def test_a_per_step_schedule_is_used_only_when_the_schedule_is_per_step(base_cfg, tmp_path):
    for name, lrs in (("step_iter", [0.5, 0.25, 0.125]), ("step", [0.5, 0.5, 0.25])):
        trainer = scripted_trainer(base_cfg, tmp_path / name, [1.0] * 3, schedule__name=name,
                                   schedule__gamma=0.5, schedule__step_size=1, schedule__milestones=[2])
        given, epoch = [], trainer.loop.train_epoch
        trainer.loop.train_epoch = lambda bs, limit, schedule=None, start=0: (
            given.append(schedule) or epoch(bs, limit, schedule, start))
        trainer.run_phase(one_sample_phase(trainer))
        assert [float(r["lr"]) for r in metrics(tmp_path / name)] == pytest.approx(lrs)
        assert all((s is not None) is (name == "step_iter") for s in given) and len(given) == 3


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
        trainer.loop.train_step(xb, yb, torch.zeros(4))
        after.append({k: v.clone() for k, v in trainer.ctx.model.state_dict().items()})
    for k, w0 in start.items():
        torch.testing.assert_close(after[1][k] - after[0][k], -0.1 * 2 * 0.5 * w0)


def test_model_and_method_errors_name_their_config_group(base_cfg, tmp_path):
    for group, target in (("model", "runner.models.mlp.mlp"), ("method", "methods.l2.L2")):
        cfg = base_cfg.copy()
        OmegaConf.update(cfg, group, {"_target_": target, "nope": 1}, merge=False)
        with pytest.raises(RunnerError, match=rf"^{group}: .*\(calling {target}\)"):
            Trainer(cfg, RunRecorder(tmp_path, {"name": "m"}))


def test_a_subset_larger_than_the_training_set_names_the_dataset(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, dataset__name="tiny")
    with pytest.raises(ConfigError, match=r"subset.n=99 of phase 's' exceeds the 16 training "
                                          r"samples of tiny; lower it"):
        trainer.data.load_phase_data(make_phase(trainer, subset__n=99))


def test_seeds_above_numpys_range_seed_everything():
    import numpy as np
    from runner.training.build import seed_everything
    seed_everything(2**32 + 5)
    a = np.random.rand()
    seed_everything(5)
    assert np.random.rand() == a


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


def test_the_batch_bar_counts_the_epochs_batches(trainer, capsys, monkeypatch):
    from runner import logs
    monkeypatch.setattr(logs, "BATCH_BAR_DELAY_S", 0.0)
    trainer.parts.progress = True
    trainer.parts.phases = [make_phase(trainer, epochs=1)]
    trainer.fit()
    bars = [b for b in capsys.readouterr().err.split("\r") if b.startswith("batches")]
    assert bars and all("/3 [" in b for b in bars)  # 48 samples in batches of 16


@pytest.mark.parametrize("budget, cached", [(1000, True), (999, False)])
def test_inputs_are_prepared_once_when_they_fit_the_cache_budget(base_cfg, tmp_path, monkeypatch, budget, cached):
    trainer = image_trainer(base_cfg, tmp_path)
    monkeypatch.setattr(trainer.data, "float_bytes", lambda splits, pipe: 1000)
    monkeypatch.setattr(trainer.data, "cache_bytes", lambda: budget)  # exactly the size still fits
    trainer.data.load_phase_data(trainer.parts.phases[0])
    assert trainer.ctx.data.train.x.dtype == (torch.float32 if cached else torch.uint8)


def test_a_refused_config_without_a_name_is_recorded_as_run(tmp_path, monkeypatch):
    import runner.training.lifecycle as lifecycle

    def refuse(cfg, job):
        raise ConfigError("optim.lr=-1: must be positive")
    monkeypatch.setattr(lifecycle, "prepare", refuse)
    with pytest.raises(ConfigError):
        lifecycle.run(OmegaConf.create({"seed": 3}), tmp_path, record_invalid=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["name"], result["seed"], result["status"]) == ("run", 3, "failed")
    assert result["error"] == "optim.lr=-1: must be positive"


# -- what the trainer passes on: seeds, flags, devices, names (mutation testing) -------------------
@pytest.fixture
def torch_flags():
    """The global flags set_determinism changes, restored afterwards."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark, cuda.allow_tf32, cudnn.allow_tf32)
    yield cuda, cudnn
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    cudnn.deterministic, cudnn.benchmark, cuda.allow_tf32, cudnn.allow_tf32 = saved[2:]


def test_determinism_sets_the_kernel_flags_and_the_cublas_workspace(torch_flags, monkeypatch):
    from runner.training.build import set_determinism
    cuda, cudnn = torch_flags
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so that the test's value is undone
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    set_determinism(True, torch.device("cpu"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's deterministic setting
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert cudnn.deterministic and not cudnn.benchmark and not cuda.allow_tf32 and not cudnn.allow_tf32
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_determinism(True, torch.device("cpu"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's own value stays
    set_determinism(False, torch.device("cuda"))  # fast: autotuned convolutions and TF32
    assert not torch.are_deterministic_algorithms_enabled() and not cudnn.deterministic
    assert cudnn.benchmark and cuda.allow_tf32 and cudnn.allow_tf32
    set_determinism(False, torch.device("cpu"))
    assert not cudnn.benchmark


def test_every_seed_gives_numpy_its_own_state():
    import numpy as np
    from runner.training.build import seed_everything
    draws = []
    for seed in (0, 2, 64):
        seed_everything(seed)
        draws.append(np.random.rand())
    assert len(set(draws)) == 3


def test_the_sweep_job_number_picks_the_device(compose_cfg, tmp_path, monkeypatch):
    import runner.training.build as build
    from runner.training.lifecycle import run
    asked = []
    monkeypatch.setattr(build, "resolve_device",
                        lambda name, job=0: asked.append((name, job)) or torch.device("cpu"))
    cfg = compose_cfg(BASE + ["train.epochs=1"])
    Trainer(cfg, RunRecorder(tmp_path / "t", {"name": "t"}), job=3)
    Trainer(cfg, RunRecorder(tmp_path / "t", {"name": "t"}))  # not a sweep: job 0
    assert asked == [("cpu", 3), ("cpu", 0)]
    asked.clear()  # run: the device is resolved once, before anything is built, and passed on
    assert run(cfg, tmp_path / "r", job=5)["status"] == "completed"
    assert asked == [("cpu", 5)]


def test_the_model_is_moved_to_the_trainers_device(trainer):
    trainer.parts.device = torch.device("meta")  # stands for a GPU
    model = trainer.parts.prepare_model(torch.nn.Linear(3, 2))
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_each_phase_loads_its_data_once(trainer):
    loaded, load = [], trainer.data.load_phase_data
    trainer.data.load_phase_data = lambda phase: loaded.append(phase.name) or load(phase)
    trainer.parts.opts.epochs = 1
    trainer.fit()
    assert loaded == ["a", "b1", "b2", "b3", "c"]


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


@pytest.mark.parametrize("n, steps", [(48, 3), (40, 3), (16, 1)])
def test_steps_per_epoch_round_the_last_batch_up(trainer, n, steps):
    trainer.parts.opts.epochs = 2
    trainer.parts.phases = [make_phase(trainer, subset__n=n)]
    trainer.fit()
    assert (trainer.ctx.steps_per_epoch, trainer.ctx.total_steps, trainer.ctx.step) == (steps, 2 * steps, 2 * steps)


def test_the_caps_limit_the_batches_of_an_epoch(base_cfg, tmp_path):
    cfg = with_(base_cfg, train__max_batches=2, train__max_epochs=3, train__max_batch_size=4)
    trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "capped"}))
    trainer.parts.phases = [make_phase(trainer)]
    trainer.fit()
    assert (trainer.ctx.steps_per_epoch, trainer.ctx.step) == (2, 6)


def test_smoke_data_follow_the_seed_bitwise(base_cfg, tmp_path):
    from runner import ci
    from runner.data.synthetic import shapes_only
    for seed in (0, 1):
        cfg = ci.apply(with_(base_cfg, ci__level="smoke", seed=seed))
        got = Trainer(cfg, RunRecorder(tmp_path / str(seed), {"name": "smoke"})).data.arrays(cfg.dataset)
        want = shapes_only(cfg.dataset.shape, cfg.dataset.num_classes, cfg.ci.n_train, cfg.ci.n_test,
                           seed=seed, dtype=cfg.dataset.dtype)
        assert torch.equal(got.x_train, want.x_train) and torch.equal(got.y_test, want.y_test)
    assert not torch.equal(got.x_train, shapes_only(cfg.dataset.shape, cfg.dataset.num_classes,
                                                    cfg.ci.n_train, cfg.ci.n_test, seed=0,
                                                    dtype=cfg.dataset.dtype).x_train)


def test_reader_options_interpolating_the_seed_read_again(base_cfg, tmp_path):
    firsts = []
    for seed in (0, 1, 0):
        trainer = image_trainer(base_cfg, tmp_path / str(seed), reader={"start": "${seed}"}, seed=seed)
        firsts.append(int(trainer.data.arrays(trainer.cfg.dataset).x_train[0, 0, 0, 0]))
    assert firsts == [0, 1, 0]


def test_the_arrays_cache_keeps_the_most_recently_used_entries():
    from runner.training.data import ArraysCache
    cache = ArraysCache(2)
    cache.put("a", "A"), cache.put("b", "B")
    assert cache.get("a") == "A"  # used: "b" is now the oldest
    cache.put("c", "C")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    cache.clear()
    assert cache.get("a") is None


def test_the_data_source_is_recorded_under_the_datasets_name(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path / "named", reader={"source": "/data/tiny"},
                            dataset__name="tiny")
    trainer.data.arrays(trainer.cfg.dataset)
    assert trainer.rec.result["data"] == {"tiny": "/data/tiny"}
    later = OmegaConf.merge(trainer.cfg.dataset, {"name": "later", "reader": {"source": "/data/later"}})
    trainer.data.arrays(later)  # a phase's other dataset: recorded beside the first
    assert trainer.rec.result["data"] == {"tiny": "/data/tiny", "later": "/data/later"}
    trainer = image_trainer(base_cfg, tmp_path / "unnamed", reader={"source": "/data/tiny2"})
    trainer.data.arrays(unnamed(trainer))
    assert trainer.rec.result["data"] == {"dataset": "/data/tiny2"}
    trainer = image_trainer(base_cfg, tmp_path / "none")
    trainer.data.arrays(trainer.cfg.dataset)
    assert "data" not in trainer.rec.result  # no files read: nothing to record


def test_labels_outside_the_classes_name_the_dataset(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, reader={"classes": 3}, dataset__name="tiny")
    with pytest.raises(DataError, match=r"^tiny: train labels span \[0, 2\], outside \[0, 2\)"):
        trainer.data.arrays(trainer.cfg.dataset)


@pytest.mark.parametrize("access, chunk", [("limited", slice(4, 8)), ("full", slice(0, 8))])
def test_a_continual_chunk_is_its_piece_of_the_seeds_order(base_cfg, tmp_path, access, chunk):
    from runner.data.tensors import subset_indices
    trainer = image_trainer(base_cfg, tmp_path)
    ph = make_phase(trainer, subset__chunks=4, subset__access=access)
    trainer.data.load_phase_data(make_phase(trainer))
    whole = trainer.ctx.data.train.x
    trainer.data.load_phase_data(Phase(1, 1, "s2", ph.cfg))  # the phase's second repeat: chunk 1
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(trainer.cfg.seed + 7919))
    assert torch.equal(subset_indices(16, trainer.cfg.seed, chunks=4), perm[:4])  # the seed's order
    assert torch.equal(trainer.ctx.data.train.x, whole[perm[chunk]])


def test_augmentations_and_transforms_refusing_an_option_name_the_phase(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path)
    bad = [{"_target_": f"{__name__}.Add", "nope": 1}]
    for key in ("augment", "transform"):
        with pytest.raises(RunnerError, match=rf"^s\.{key}: .*\(calling {__name__}\.Add\)"):
            trainer.data.load_phase_data(make_phase(trainer, **{key: bad}))


def test_training_batches_go_through_the_pipeline_as_training_data(trainer):
    trainer.parts.phases = [make_phase(trainer, epochs=1)]
    trainer.data.load_phase_data(trainer.parts.phases[0])
    flags, pipe = [], trainer.ctx.pipeline
    trainer.ctx.pipeline = lambda x, train, gen: flags.append((train, gen)) or pipe(x, train, gen)
    trainer.ctx.reset_optimizer()
    trainer.loop.train_epoch(16, None)
    assert flags == [(True, trainer.parts.aug_gen)] * 3  # augmented from the trainer's own generator


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


def test_the_best_epoch_is_scored_by_the_chosen_metric(trainer):
    row = {"val_loss": 0.4, "val_acc": 0.75}
    assert score(row, trainer.parts.opts.select_by) == 0.4
    trainer.parts.opts.select_by = "val_acc"
    assert score(row, trainer.parts.opts.select_by) == -0.75  # the lowest score is the best


def test_a_later_phases_per_step_schedule_counts_from_its_own_first_step(base_cfg, tmp_path):
    trainer = scripted_trainer(base_cfg, tmp_path, [1.0] * 3, schedule__name="step_iter",
                               schedule__gamma=0.5, schedule__step_size=1, train__batch_size=1)
    for name in ("first", "second"):
        trainer.run_phase(one_sample_phase(trainer, name=name, **{"subset.n": 2}))
    lrs = [float(r["lr"]) for r in metrics(tmp_path)]
    assert trainer.ctx.step == 12 and lrs[3:] == lrs[:3] == [0.5 * 0.5 ** k for k in (1, 3, 5)]


def test_the_trainer_joins_distributed_training_as_configured(base_cfg, tmp_path, monkeypatch):
    from runner import distributed
    asked = []
    monkeypatch.setattr(distributed, "setup", lambda cfg, device: asked.append((cfg, device)))
    trainer = Trainer(base_cfg, RunRecorder(tmp_path, {"name": "dist"}))
    assert asked == [(base_cfg.distributed, "cpu")] and trainer.parts.dist is None


def test_a_streamed_reader_refusing_its_options_is_named(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, reader={"fail": True})
    OmegaConf.update(trainer.cfg, "dataset.stream", {"size": 8}, force_add=True)
    with pytest.raises(RunnerError, match=r"^dataset\.reader: no such files \(calling"):
        trainer.data.load_phase_data(trainer.parts.phases[0])


def test_fp16_gets_a_gradient_scaler_on_a_gpu_only(base_cfg, tmp_path):
    trainer = Trainer(with_(base_cfg, train__precision="fp16"), RunRecorder(tmp_path, {"name": "fp16"}))
    assert trainer.parts.amp is torch.float16 and trainer.parts.scaler is None  # the CPU: autocast alone


class SeeGen:
    """An augmentation that records the generator it draws from."""
    gens = []

    def __call__(self, x, gen):
        self.gens.append(gen)
        return x


register("transform", SeeGen)


def test_cached_inputs_are_augmented_with_the_trainers_generator(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, dataset__augment=[{"_target_": f"{__name__}.SeeGen"}])
    trainer.data.load_phase_data(trainer.parts.phases[0])
    assert trainer.ctx.data.train.x.dtype == torch.float32  # cached: only the random part is left
    SeeGen.gens = []
    trainer.ctx.pipeline(trainer.ctx.data.train.x[:2], True, trainer.parts.aug_gen)
    assert SeeGen.gens == [trainer.parts.aug_gen]


def test_val_seed_fixes_the_validation_split_across_seeds(base_cfg, tmp_path):
    def val(seed, val_seed):
        trainer = image_trainer(base_cfg, tmp_path / f"{seed}-{val_seed}", seed=seed,
                                train__val_fraction=0.25, train__val_seed=val_seed)
        return sorted(trainer.data.device_splits(trainer.cfg.dataset).val.x[:, 0, 0, 0].tolist())
    assert val(0, 7) == val(1, 7) == val(7, None)
    assert val(0, None) != val(1, None)


def test_compile_runs_the_compiled_model(trainer, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(Compiled(model)) or compiled[-1])
    trainer.parts.opts.compile, trainer.parts.opts.epochs = True, 1
    trainer.parts.phases = trainer.parts.phases[:1]
    trainer.fit()
    assert len(compiled) == 1 and trainer.ctx.model is compiled[0] and trainer.ctx.step == 3


def test_device_memory_is_given_back_on_a_gpu_only(trainer, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    trainer.data.free_device_memory()
    assert emptied == []
    trainer.parts.device = torch.device("cuda")
    trainer.data.free_device_memory()
    assert emptied == [1]


def test_an_apple_gpu_is_a_device_where_it_is_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")


def test_an_unimportable_target_is_named():
    with pytest.raises(RunnerError, match=r"(?s)^model\._target_='nowhere\.Net' is refused: module nowhere cannot be imported \(.*No module named 'nowhere'"):
        instantiate({"_target_": "nowhere.Net"}, "model", "model", ["nowhere"])


def test_train_options_are_resolved_and_progress_is_taken_from_the_config(base_cfg, tmp_path):
    for progress in (True, False, None):
        cfg = with_(base_cfg, train__patience="${train.epochs}", progress=progress)
        trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "opts"}))
        assert trainer.parts.opts.patience == 10 and trainer.parts.progress is progress


def test_resume_auto_without_a_search_root_looks_beside_the_run(compose_cfg, tmp_path):
    from runner.training.lifecycle import run
    cfg = compose_cfg(BASE + ["train.epochs=1", "resume=auto"])
    first = run(cfg, tmp_path / "runs" / "a")
    again = run(cfg, tmp_path / "runs" / "b")
    assert first["status"] == "completed" and again["reused_from"] == str(tmp_path / "runs" / "a")


def unnamed(trainer, drop=("name",)):
    """The trainer's dataset config without its `name` (or the keys in `drop`)."""
    node = OmegaConf.to_container(trainer.cfg.dataset)
    trainer.cfg.dataset = OmegaConf.create({k: v for k, v in node.items() if k not in drop})
    return trainer.cfg.dataset


def test_an_unnamed_dataset_is_called_the_dataset_in_errors(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path / "labels", reader={"classes": 3})
    with pytest.raises(DataError, match=r"^dataset: train labels span \[0, 2\]"):
        trainer.data.arrays(unnamed(trainer))
    trainer = image_trainer(base_cfg, tmp_path / "subset")
    unnamed(trainer)
    with pytest.raises(ConfigError, match=r"exceeds the 16 training samples of the dataset; lower it$"):
        trainer.data.load_phase_data(make_phase(trainer, subset__n=99))


def test_smoke_inputs_are_bytes_unless_the_dataset_says_otherwise(base_cfg, tmp_path):
    from runner import ci
    cfg = with_(base_cfg, ci__level="smoke")
    assert ci.apply(cfg).dataset.reader.dtype == "float32"  # reinit_synthetic's features
    del cfg.dataset.dtype
    trainer = Trainer(ci.apply(cfg), RunRecorder(tmp_path, {"name": "bytes"}))
    assert trainer.data.arrays(trainer.cfg.dataset).x_train.dtype == torch.uint8


def test_checkpoints_fall_every_n_epochs_of_a_phase(trainer):
    saved = []
    trainer.save_checkpoint = lambda phase, p: saved.append((phase, p.next_epoch))
    trainer.parts.opts.checkpoint, trainer.parts.opts.checkpoint_every, trainer.parts.opts.checkpoint_minutes = True, 3, None
    trainer.parts.phases = [make_phase(trainer, epochs=7)]
    trainer.fit()
    assert saved == [(0, 3), (0, 6)]  # after epochs 3 and 6; the run's end needs none


def test_mixed_precision_computes_in_its_dtype_on_the_trainers_device(trainer):
    trainer.parts.amp = torch.bfloat16
    with trainer.parts.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    trainer.parts.amp = torch.float16  # fp16 kernels on a CPU need torch >= 2.4: check what is asked for
    cast = trainer.parts.autocast()
    assert (cast.device, cast.fast_dtype) == ("cpu", torch.float16)
    trainer.parts.amp = None
    with trainer.parts.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_training_accuracy_counts_each_samples_class(trainer):
    trainer.data.load_phase_data(trainer.parts.phases[0])
    trainer.ctx.reset_optimizer()
    for g in trainer.ctx.optimizer.param_groups:
        g["lr"] = 0.0
    with torch.no_grad():
        trainer.ctx.model.head[1].weight.copy_(3 * PERFECT)  # every sample right
    stats = trainer.loop.train_epoch(16, None)
    assert stats[1].item() == stats[2].item() == 48


def test_on_a_terminal_the_phase_bar_shows_by_default(base_cfg, tmp_path, capsys, monkeypatch):
    import sys
    trainer = scripted_trainer(base_cfg, tmp_path, [1.0] * 3)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    trainer.parts.progress = None  # progress unset: shown on a terminal only
    trainer.run_phase(one_sample_phase(trainer, name="termphase"))
    assert "termphase: " in capsys.readouterr().err


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


class Refuses(Method):
    def setup(self, ctx):
        raise ValueError("lam=-1 must be\n    positive")


def test_a_method_refusing_its_options_is_one_line(base_cfg, tmp_path):
    cfg = base_cfg.copy()
    OmegaConf.update(cfg, "extra_methods", [{"_target_": f"{__name__}.Refuses"}], merge=False)
    with pytest.raises(RunnerError, match=r"^method setup: lam=-1 must be positive$"):
        Trainer(cfg, RunRecorder(tmp_path, {"name": "refused"})).fit()


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
    trainer.loop.train_step(trainer.ctx.data.train.x[:4], trainer.ctx.data.train.y[:4], torch.zeros(4))
    assert term.ctx is trainer.ctx and term.ctx.outputs.shape == (4, 8)


def test_inputs_are_normalized_by_the_datasets_mean_and_std(base_cfg, tmp_path):
    x = torch.arange(16, dtype=torch.float32) / 255  # the pixel values of tiny_images' training set
    for drop, want in (((), (x - 0.5) / 0.25), (("std",), x - 0.5), (("mean", "std"), x)):  # defaults 0, 1
        trainer = image_trainer(base_cfg, tmp_path, dataset__mean=[0.5], dataset__std=[0.25])
        unnamed(trainer, drop=drop)
        trainer.data.load_phase_data(trainer.parts.phases[0])
        got = trainer.ctx.data.train.x[:, 0, 0, 0]
        torch.testing.assert_close(got.sort().values, want)


def test_a_phase_trains_on_the_dataset_it_names(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path)
    OmegaConf.update(trainer.cfg, "datasets", {"later": {**OmegaConf.to_container(trainer.cfg.dataset),
                                                         "reader": {"_target_": f"{__name__}.tiny_images", "start": 100}}},
                     merge=False, force_add=True)
    trainer.data.load_phase_data(make_phase(trainer, dataset="later"))
    assert trainer.ctx.data.train.x.min().item() == pytest.approx(100 / 255)
    with pytest.raises(RunnerError, match=r"^phase dataset 'nope' is not in `datasets`; defined: \['later'\]"):
        trainer.data.load_phase_data(make_phase(trainer, dataset="nope"))


def test_the_run_context_carries_the_trainers_device(trainer):
    assert trainer.ctx.device == trainer.parts.device == torch.device("cpu")


def test_call_gives_targets_plain_resolved_values_from_a_config():
    root = OmegaConf.create({"n": 2, "m": {"_target_": f"{__name__}.Box", "v": [1, "${n}"],
                                           "inner": {"a": "${n}"}}})
    box = instantiate(root.m, "m", "model", [__name__])
    assert type(box.v) is list and box.v == [1, 2]
    assert type(box.inner) is dict and box.inner == {"a": 2}


def test_channels_last_models_keep_their_weights_channels_last(trainer):
    trainer.parts.opts.channels_last = True
    model = trainer.parts.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_full_batch_phase_takes_one_step_an_epoch(trainer):
    trainer.parts.opts.batch_size, trainer.parts.opts.epochs = None, 2
    trainer.parts.phases = [make_phase(trainer)]
    trainer.fit()
    assert (trainer.ctx.steps_per_epoch, trainer.ctx.step) == (1, 2)


def test_phases_on_the_same_dataset_share_its_device_splits(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path)
    first = trainer.data.device_splits(trainer.cfg.dataset)
    assert trainer.data.device_splits(trainer.cfg.dataset) is first  # not split again


def test_the_smoke_level_caps_a_subset_at_the_training_set(base_cfg, tmp_path):
    from runner import ci
    cfg = with_(base_cfg, ci__level="smoke", ci__n_train=20, phases__0__subset__n=1000,
                phases__1__subset__n=15, phases__2__subset__n=14)
    cfg = ci.apply(cfg)  # 20 samples, 5 of them (val_fraction 0.25) held out
    assert [p.subset.n for p in cfg.phases] == [15, 15, 14]
    trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "subset"}))
    trainer.data.load_phase_data(trainer.parts.phases[0])
    assert len(trainer.ctx.data.train) == 15


class Compiled(torch.nn.Module):
    """What torch.compile returns, without compiling: the model as `_orig_mod`."""

    def __init__(self, inner):
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        return self._orig_mod(x)


def test_a_compiled_runs_saved_model_has_the_models_own_names(compose_cfg, tmp_path, monkeypatch):
    from runner import checkpoint
    from runner.training.lifecycle import run
    monkeypatch.setattr(torch, "compile", Compiled)
    cfg = compose_cfg(BASE + ["train.epochs=1", "train.compile=true", "train.save_model=true"])
    assert run(cfg, tmp_path)["status"] == "completed"
    assert list(checkpoint.load(tmp_path / checkpoint.MODEL_FILE)) == ["head.1.weight"]
