"""LTH's rounds as OpenLTH runs them (src/methods/lth.py): a round after the first continues the
schedule from the rewind step, BatchNorm statistics are rewound with the weights, the output
layer is never pruned; each as an option that restores the other reading."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import context, run_composed
from methods.base import Method
from methods.lth import LTH
from runner.context import Phase
from runner.models.base import Network

pytestmark = pytest.mark.usefixtures("one_thread")


def net():
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
              nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())]
    return Network(blocks, nn.Linear(6, 4))


def rounds(steps=5, total=20, **options):
    """Round 1 trains `steps` steps (train mode: BatchNorm statistics move), then round 2 starts;
    returns the context, the method and the buffers after `rewind_step` = 2 steps."""
    model = net()
    method = LTH(rewind_step=2, **options)
    ctx = context(model, total_steps=total)
    method.setup(ctx)
    ctx.reset_optimizer()
    g = torch.Generator().manual_seed(1)
    saved = None
    for _ in range(steps):
        ctx.optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(8, 3, 6, 6, generator=g)),
                        torch.randint(0, 4, (8,), generator=g)).backward()
        ctx.optimizer.step()
        ctx.masks.project()
        method.after_step(ctx)
        ctx.step += 1
        if ctx.step == 2:
            saved = {n: b.clone() for n, b in model.named_buffers()}
    last = {n: b.clone() for n, b in model.named_buffers()}
    ctx.phase = Phase(1, 1, "round2", None)
    method.on_phase_start(ctx)
    return ctx, method, saved, last


def test_batchnorm_statistics_are_rewound_with_the_weights():
    ctx, _, saved, last = rounds()
    stats = [n for n in saved if "running" in n]
    assert stats and all(not torch.equal(saved[n], last[n]) for n in stats)
    for n, b in ctx.model.named_buffers():
        assert torch.equal(b, saved[n]), n
    ctx, _, saved, last = rounds(rewind_buffers=False)
    for n, b in ctx.model.named_buffers():
        assert torch.equal(b, last[n]), n


def test_the_output_layer_is_never_pruned_unless_asked():
    ctx, method, _, _ = rounds()
    assert "head.weight" not in ctx.masks
    pruned = [n for n, _ in method.named]
    assert "head.weight" not in pruned and len(pruned) == 2
    total = sum(ctx.model.get_parameter(n).numel() for n in pruned)  # 162 + 324 = 486
    assert sum(int(ctx.masks[n].keep.sum()) for n in pruned) == total - math.ceil(0.2 * total)
    summary = method.on_phase_end(ctx)
    assert summary["layer_density"]["head.weight"] == 1.0
    assert summary["sparsity"] == pytest.approx(math.ceil(0.2 * total) / total)
    ctx, method, _, _ = rounds(prune_head=True)
    assert "head.weight" in ctx.masks and len(method.named) == 3


def test_a_round_continues_its_schedule_from_the_rewind_step():
    ctx, _, _, _ = rounds()
    assert ctx.phase_start_step == 2
    ctx, _, _, _ = rounds(continue_schedule=False)
    assert ctx.phase_start_step == 0
    with pytest.raises(RuntimeError, match="rewind_step=2 leaves no step of the round's 2"):
        rounds(steps=2, total=2)


def metrics(run):
    with open(Path(run["_dir"]) / "metrics.csv") as f:
        return [(int(r["phase"]), int(r["epoch"]), int(r["step"]), round(float(r["lr"]), 9))
                for r in csv.DictReader(f)]


@pytest.mark.e2e
def test_the_trainer_starts_round_two_at_the_rewind_step_of_its_schedule(run_cfg):
    """3 steps per epoch, 4 epochs, lr 0.1 x 0.1 at epochs 2 and 3, rewind to step 4 (epoch 2,
    one step in): round 2 trains the last 2 steps of epoch 2, then epochs 3 and 4, at the
    learning rates of those epochs; continue_schedule=false runs all 4 epochs again."""
    common = ["experiment=wimmer_lth_cifar10", "ci=smoke", "train.max_epochs=4",
              "train.max_batches=3", "schedule.milestones=[2,3]", "phases.0.repeat=2",
              "ci.overrides={method.rewind_step:4}"]  # (the test level's own: rewind to 1)
    run = run_cfg(common)
    assert run["phases"][1]["start_step"] == 4 and "start_step" not in run["phases"][0]
    rows = metrics(run)
    assert rows == [(0, 1, 3, 0.1), (0, 2, 6, 0.1), (0, 3, 9, 0.01), (0, 4, 12, 0.001),
                    (1, 2, 14, 0.1), (1, 3, 17, 0.01), (1, 4, 20, 0.001)]
    rows = metrics(run_cfg(common + ["method.continue_schedule=false"]))
    assert rows[4:] == [(1, 1, 15, 0.1), (1, 2, 18, 0.1), (1, 3, 21, 0.01), (1, 4, 24, 0.001)]


class CrashAt(Method):
    """A stacked method that raises once, after training step `step` of this process."""

    crashed = False

    def __init__(self, step: int):
        self.step = step

    def after_step(self, ctx):
        if ctx.step == self.step and not CrashAt.crashed:
            CrashAt.crashed = True
            raise RuntimeError("injected fault")


def outcome(run_dir: Path):
    r = json.loads((run_dir / "result.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    return r["status"], r["phases"], r["summary"], rows


@pytest.mark.e2e
def test_a_round_killed_after_its_started_epoch_resumes_bitwise(tmp_path):
    """Round 2 starts at step 4 of its schedule (epoch 2, one step in); a fault after step 16
    (round 2's epoch 3) resumes from the checkpoint after its first, shortened epoch and ends
    as the run that never stopped."""
    common = ["experiment=wimmer_lth_cifar10", "ci=smoke", "ci.checkpoints=true",
              "train.max_epochs=4", "train.max_batches=3", "phases.0.repeat=2",
              "ci.overrides={method.rewind_step:4}", "train.checkpoint_every=1",
              "target_allowlist=[test_lth_rounds]", "threads=1"]
    crash = "extra_methods=[{_target_: test_lth_rounds.CrashAt, step: %d}]"
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    assert run_composed(common + [crash % 10**9], ref)["status"] == "completed"
    CrashAt.crashed = False
    with pytest.raises(RuntimeError, match="injected fault"):
        run_composed(common + [crash % 16], run_dir)
    run_composed(common + [crash % 16, f"resume={run_dir}"], run_dir)
    assert outcome(run_dir)[1:] == outcome(ref)[1:]
