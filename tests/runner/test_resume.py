"""Nothing lost: a run killed at a random point (SIGKILL) and resumed from its checkpoint ends
bitwise as the run that never stopped; a killed sweep re-launched with `resume=auto` runs only
its unfinished jobs and writes the same table; checkpoints are loaded with weights_only=True."""
import csv
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_composed
from methods.base import Method
from runner import checkpoint
from runner.results import load_results
from trainer_fixtures import BASE, Compiled, script

# several phases (3 rounds of LW) with SWR stacked on, early stopping with restored best weights,
# a checkpoint after every epoch: state in the model, masks, methods, RNGs and the phase
FAULT = ["experiment=reinit_table1", "ci=smoke", "ci.checkpoints=true", "device=cpu",
         "ci.n_train=64", "ci.n_test=32",
         "train.max_batch_size=16", "train.max_batches=3", "train.max_epochs=6", "train.max_repeat=3",
         "train.checkpoint_every=1", "train.val_fraction=0.25", "train.eval_every=1",
         "train.patience=3", "train.restore_best=true",
         "extra_methods=[{_target_: methods.swr.SWR, lam: 0.01}]"]


def rows(run_dir: Path):
    """metrics.csv without its wall-clock column."""
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def outcome(run_dir: Path):
    r = json.loads((run_dir / "result.json").read_text())
    return r["status"], r["phases"], r["summary"], rows(run_dir)


def start(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_after(proc, ready, timeout=300.0) -> bool:
    """SIGKILL the process (group) once `ready()`; False if it ended first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def fault_trials(n, hydra_cli, tmp_path):
    ref = tmp_path / "reference"
    assert hydra_cli(*FAULT, f"hydra.run.dir={ref}") == 0
    expected = outcome(ref)
    total = len(expected[3])
    rng = random.Random(13)
    resumed = 0
    for trial in range(n):
        run_dir = tmp_path / f"trial{trial}"
        proc = start(FAULT + [f"hydra.run.dir={run_dir}"], tmp_path)
        at_row = rng.randint(1, total - 1)  # kill once this many epoch rows are written ...
        delay = rng.uniform(0, 0.02)  # ... and a little later: inside a step, a save, a write

        def ready():
            m = run_dir / "metrics.csv"
            if not (m.exists() and (run_dir / checkpoint.CHECKPOINT_FILE).exists()):
                return False
            if m.read_text().count("\n") - 1 < at_row:
                return False
            time.sleep(delay)
            return True
        killed = kill_after(proc, ready)
        before = json.loads((run_dir / "result.json").read_text())["status"]
        assert hydra_cli(f"resume={run_dir}") == 0
        got = outcome(run_dir)
        assert got == expected, f"trial {trial}: killed at row {at_row} (+{delay:.3f} s), status {before}"
        resumed += killed and before == "running"
        assert not list(run_dir.glob(checkpoint.CHECKPOINT_FILE))  # removed on completion
    return resumed


@pytest.mark.sizes  # about 15 s; the 20-trial test below is `slow` (about 130 s)
def test_killed_runs_resume_bitwise(hydra_cli, tmp_path):
    assert fault_trials(3, hydra_cli, tmp_path) == 3


@pytest.mark.slow  # about 130 s on two cores: not in CI, whose sizes stage runs the 3 trials above
def test_twenty_killed_runs_resume_bitwise(hydra_cli, tmp_path):
    assert fault_trials(20, hydra_cli, tmp_path) >= 18  # a kill may come after the run ended


def test_checkpoints_load_with_weights_only(run_cfg, tmp_path):
    run_cfg(FAULT + ["train.checkpoint_every=null", "train.save_model=true"])
    [model] = tmp_path.rglob(checkpoint.MODEL_FILE)
    weights = torch.load(model, weights_only=True)
    assert any(k.endswith("weight") for k in weights)
    bad = tmp_path / "bad.pt"
    torch.save({"f": print}, bad)  # a pickled function: weights_only refuses it
    with pytest.raises(Exception, match="cannot be read"):
        checkpoint.load(bad)


SWEEP = ["-m", "experiment=reinit_table1", "ci=smoke", "ci.checkpoints=true", "device=cpu",
         "train.max_epochs=8",
         "train.max_repeat=2", "train.max_batches=4", "train.checkpoint_every=1", "method=lw,bl",
         "dataset.alpha=1.0",  # one alpha of the declared sweep
         "seed=0,1,2"]


@pytest.mark.sizes
def test_killed_sweep_resumes_only_its_unfinished_jobs(hydra_cli, tmp_path, capsys):
    whole = tmp_path / "a" / "sweep"
    assert hydra_cli(*SWEEP, f"hydra.sweep.dir={whole}") == 0
    first, second = tmp_path / "b" / "first", tmp_path / "b" / "second"
    proc = start(SWEEP + [f"hydra.sweep.dir={first}"], tmp_path)

    def three_done():
        done = 0
        for f in first.glob("*/result.json"):
            try:
                done += json.loads(f.read_text())["status"] == "completed"
            except ValueError:
                pass
        return done >= 3
    assert kill_after(proc, three_done)
    finished = sum(r["status"] == "completed" for r in load_results([first]))
    assert 3 <= finished < 6
    capsys.readouterr()
    assert hydra_cli(*SWEEP, "resume=auto", f"hydra.sweep.dir={second}") == 0
    again = load_results([second])
    assert sum("reused_from" in r for r in again) == finished  # the others ran (or resumed)
    assert all(r["status"] == "completed" for r in again)
    for name in ("table.md", "table.csv"):
        assert (second / name).read_text() == (whole / name).read_text()


class CrashOnce(Method):
    """A method that raises once, at its `step`-th training step in this process (the resumed
    run passes that step again and goes on)."""

    crashed, steps = False, 0  # steps: after_step calls in this process

    def __init__(self, step: int):
        self.step = step

    def after_step(self, ctx):
        CrashOnce.steps += 1
        if ctx.step == self.step and not CrashOnce.crashed:
            CrashOnce.crashed = True
            raise RuntimeError("injected fault")


MASKED = ["experiment=fmnist_mlp", "ci=smoke", "ci.checkpoints=true", "device=cpu", "optim=adam",
          "method=random_mask", "threads=1",
          "method.kind=frozen", "method.density=0.5", "train.max_epochs=3", "train.max_batches=3",
          "+phases=[{name: a}, {name: b, lr: 0.01, reset_optimizer: true}]",
          "train.checkpoint_every=1", "target_allowlist=[test_resume]"]


def test_masked_adam_run_resumes_bitwise_after_a_failure(tmp_path, caplog):
    """Masks (frozen entries), Adam's moments and a phase's own lr survive a restart."""
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    crash = "extra_methods=[{_target_: test_resume.CrashOnce, step: %d}]"
    assert run_composed(MASKED + [crash % 10**9], ref)["status"] == "completed"
    CrashOnce.crashed = False
    with pytest.raises(RuntimeError, match="injected fault"):
        run_composed(MASKED + [crash % 14], run_dir)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"
    CrashOnce.steps = 0
    with caplog.at_level(logging.INFO, logger="runner"):
        resumed = run_composed(MASKED + [crash % 14, f"resume={run_dir}"], run_dir)
    assert CrashOnce.steps == 6  # from the checkpoint after step 12 (phase b, epoch 1) to step 18
    assert resumed["resumed_from"] == str(run_dir)
    assert f"resuming fmnist_mlp from {run_dir} (phase 1)" in [r.getMessage() for r in caplog.records]
    assert outcome(run_dir)[1:] == outcome(ref)[1:]
    assert len(rows(run_dir)) == 6


# -- continuing a Trainer from each of its checkpoints, in this process ------------------------
# The bookkeeping tests' scripted run (their linear model is set to c x the perfect classifier
# after every step): phase a trains on half the training set, phase b on all of it with its own
# weight decay and gamma and its best epoch (c = 3) before its last, restored at its end; S&P is
# the method (its state holds the initial weights); a checkpoint after every epoch.
ROUND_TRIP = [
    "method=shrink_perturb", "train.checkpoint_every=1", "train.restore_best=true",
    "report.at=best",
    "+phases=[{name: a, epochs: 3, subset: {fraction: 0.5}}, "
    "{name: b, epochs: 3, weight_decay: 0.01, gamma: 0.5}]"]


def context_of(trainer):
    c = trainer.ctx
    return {"step": c.step, "epoch": c.epoch, "lr": c.lr, "weight_decay": c.weight_decay,
            "gamma": c.gamma, "diverge_ref": trainer.loop.diverge_ref}


def keep_checkpoints(trainer):
    """Every checkpoint the trainer writes, as read back, with its context when written."""
    saved, save = [], trainer.save_checkpoint

    def spy(next_phase, progress):
        save(next_phase, progress)
        saved.append((checkpoint.load(trainer.rec.dir / checkpoint.CHECKPOINT_FILE),
                      context_of(trainer)))
    trainer.save_checkpoint = spy
    return saved


def scripted(compose_cfg, overrides):
    return compose_cfg(BASE + [script([1, 2, 1.5], [3, 1, 2])] + overrides)


def scripted_trainer(cfg, out_dir, scaler=None):
    from runner.results import RunRecorder
    from runner.train import Trainer
    trainer = Trainer(cfg, RunRecorder(out_dir, {"name": "round_trip"}))
    if scaler is not None:  # a stand-in for fp16 on a GPU (the trainer makes one there only)
        trainer.parts.scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=1)
    return trainer


def written(trainer):
    """The phases and metrics.csv rows a trainer has written."""
    return trainer.rec.result["phases"], rows(trainer.rec.dir)


def test_a_trainer_continues_from_each_of_its_checkpoints_bitwise(compose_cfg, tmp_path):
    cfg = scripted(compose_cfg, ROUND_TRIP)
    whole = scripted_trainer(cfg, tmp_path / "whole")
    saved = keep_checkpoints(whole)
    whole.fit()
    positions = [(s["position"]["phase"], (s["progress"] or {}).get("next_epoch")) for s, _ in saved]
    assert positions == [(0, 1), (0, 2), (1, None), (1, 1), (1, 2)]  # b is last: no phase-end one
    expected = written(whole)
    for i, (state, when) in enumerate(saved):
        again = scripted_trainer(cfg, tmp_path / f"again{i}")
        restored, restore = {}, again.restore

        def spy(s):
            out = restore(s)
            restored.update(context_of(again))
            return out
        again.restore = spy
        again.fit(state)
        assert restored == when, f"checkpoint {i}: the context put back"
        where = f"resumed at {positions[i]}"
        assert written(again) == expected, where
        assert again.loop.diverge_ref == whole.loop.diverge_ref, where
        got, want = again.ctx.model.state_dict(), whole.ctx.model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), where


def test_the_gradient_scalers_state_survives_a_restart(compose_cfg, tmp_path):
    cfg = scripted(compose_cfg, ["+phases=[{name: a, epochs: 3}]", "train.checkpoint_every=1"])
    whole = scripted_trainer(cfg, tmp_path / "whole", scaler=True)
    saved = keep_checkpoints(whole)
    whole.fit()
    state = saved[0][0]  # after epoch 1: 3 steps, each doubling the scale
    assert state["scaler"]["scale"] == 2.0 * 2 ** 3
    again = scripted_trainer(cfg, tmp_path / "again", scaler=True)
    again.fit(state)
    assert again.parts.scaler.get_scale() == whole.parts.scaler.get_scale() == 2.0 * 2 ** 9
    assert written(again) == written(whole)
    cpu = scripted_trainer(cfg, tmp_path / "cpu")  # no scaler (a GPU's fp16 run goes on on a CPU)
    cpu.fit(state)
    assert written(cpu) == written(whole)


def test_a_checkpoint_of_a_compiled_model_has_the_models_own_names(compose_cfg, tmp_path):
    """torch.compile wraps the model (its names gain `_orig_mod.`); the checkpoint holds the
    model's own names, which the uncompiled fresh model of a resumed run loads."""
    trainer = scripted_trainer(scripted(compose_cfg, ["+phases=[{name: a, epochs: 1}]"]), tmp_path)
    trainer.fit()
    model = trainer.ctx.model
    trainer.ctx.model = Compiled(model)
    trainer.save_checkpoint(1, None)
    state = checkpoint.load(trainer.rec.dir / checkpoint.CHECKPOINT_FILE)
    names = [n for n, _ in model.named_parameters()]
    assert list(state["model"]) == list(model.state_dict()) and names
    assert state["optimizer_params"] == names and list(state["requires_grad"]) == names


def test_a_signal_during_a_checkpoint_write_stops_the_run_after_the_write(compose_cfg, tmp_path,
                                                                         monkeypatch):
    """SIGTERM in the middle of the trainer's torch.save: the checkpoint is written whole, then
    `Interrupted` (before, torch's zip writer turned it into a RuntimeError: a `failed` run)."""
    from runner.errors import Interrupted
    from runner.training.signals import interruptible
    cfg = scripted(compose_cfg, ["+phases=[{name: a, epochs: 3}]", "train.checkpoint_every=1"])
    trainer = scripted_trainer(cfg, tmp_path)
    real_save = torch.save

    def save_with_a_signal_inside(obj, f, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler at the next bytecode
        real_save(obj, f, **kw)

    monkeypatch.setattr(torch, "save", save_with_a_signal_inside)
    with pytest.raises(Interrupted), interruptible():
        trainer.fit()
    monkeypatch.undo()
    state = checkpoint.load(tmp_path / checkpoint.CHECKPOINT_FILE)
    assert state["context"]["epoch"] == 0 and state["progress"]["next_epoch"] == 1


def test_resume_auto_without_a_search_root_looks_beside_the_run(compose_cfg, tmp_path):
    from runner.training.lifecycle import run
    cfg = compose_cfg(BASE + ["train.epochs=1", "resume=auto"])
    first = run(cfg, tmp_path / "runs" / "a")
    again = run(cfg, tmp_path / "runs" / "b")
    assert first["status"] == "completed" and again["reused_from"] == str(tmp_path / "runs" / "a")
