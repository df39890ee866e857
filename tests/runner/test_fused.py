"""Fused seeds (`train.fused_seeds=K`, runner.training.fused): each member writes the run
directory its separate run would, with the same numbers up to the batched matmul's rounding
(losses within 1e-3 relative, accuracies within 1 % of the samples: LW's rounds amplify a
difference in the last bits into a flipped test sample or two); what cannot be fused is one line."""
import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from methods.base import Method
from runner.app import compose_and_run
from runner.errors import RunnerError

# the reinitialization paper's synthetic task, 3 rounds of 30 full-batch steps, evaluated at 10
SHORT = ["experiment=reinit_table1", "device=cpu", "dataset.reader.n_test=500", "train.epochs=30",
         "train.eval_every=10", "train.max_repeat=3", "progress=false"]
SEEDS = 3
TOL = dict(rel=1e-3, abs=1e-6)  # losses and norms: float rounding of the batched matmul
ACC = dict(abs=0.01)  # accuracies: 5 of these 500 test samples


def rows(run_dir: Path):
    if not (run_dir / "metrics.csv").exists():
        return None
    lines = [line for line in (run_dir / "metrics.csv").read_text().splitlines()
             if not line.startswith("#")]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(lines)]


def separate_and_fused(tmp_path, overrides):
    """Each seed's separate result and its fused member's (same order)."""
    alone = [{**compose_and_run(SHORT + overrides + [f"seed={s}"], tmp_path / f"alone{s}"),
              "_dir": tmp_path / f"alone{s}"} for s in range(SEEDS)]
    fused = compose_and_run(SHORT + overrides + ["seed=0", f"train.fused_seeds={SEEDS}"],
                            tmp_path / "fused")
    assert [r["seed"] for r in fused] == list(range(SEEDS))
    return alone, [{**r, "_dir": tmp_path / "fused" / f"seed{r['seed']}"} for r in fused]


def assert_same_run(a, f):
    assert f["status"] == a["status"] and f["error"] == a["error"]
    assert f["config"] == a["config"]  # exactly the separate run's config
    assert f["overrides"][-1] == f"seed={a['seed']}" and "train.fused_seeds" not in str(f["overrides"])
    assert set(f) - set(a) == {"fused_with"} and set(a) - set(f) <= {"resumed_from"}
    assert len(f["phases"]) == len(a["phases"])
    for pf, pa in zip(f["phases"], a["phases"]):
        assert (pf["epochs"], pf["steps"], pf["best_epoch"]) == (pa["epochs"], pa["steps"], pa["best_epoch"])
        for at in ("end", "best"):
            for key, value in pa[at].items():
                tol = ACC if key.endswith("_acc") else TOL
                assert pf[at][key] == pytest.approx(value, nan_ok=True, **tol), (pa["name"], at, key)
    ra, rf = rows(a["_dir"]), rows(f["_dir"])
    assert (ra is None) == (rf is None)
    ra, rf = ra or [], rf or []
    assert [list(r) for r in rf] == [list(r) for r in ra]  # the same columns, rows and epochs
    for x, y in zip(rf, ra):
        assert [x[k] for k in ("phase", "epoch", "step")] == [y[k] for k in ("phase", "epoch", "step")]
        for k in ("train_loss", "test_loss", "weight_norm"):
            assert float(x[k]) == pytest.approx(float(y[k]), nan_ok=True, **TOL)


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.sizes)  # each about 5 s
                                    for m in ("bl", "welsr", "dsd", "wels", "fc")] + ["lw"])
def test_each_member_is_its_separate_run(tmp_path, method):
    alone, fused = separate_and_fused(tmp_path, [f"method={method}"])
    for a, f in zip(alone, fused):
        assert_same_run(a, f)
        assert f["summary"]["test_acc"] == pytest.approx(a["summary"]["test_acc"], **ACC)


@pytest.mark.sizes
@pytest.mark.parametrize("penalty", [["method=welsr", "optim.weight_decay=0.01"],
                                     ["method=l2", "method.lambda=0.01"]])
def test_weight_decay_l2_and_momentum_are_fused(tmp_path, penalty):
    alone, fused = separate_and_fused(tmp_path, penalty + ["optim.momentum=0.9"])
    for a, f in zip(alone, fused):
        assert_same_run(a, f)


class BlowUpSeed1(Method):
    """Seed 1's weights times 1e30 at setup: that seed diverges, the others do not."""

    def setup(self, ctx):
        if ctx.seed == 1:
            with torch.no_grad():
                for p in ctx.model.parameters():
                    p.mul_(1e30)


@pytest.mark.sizes
def test_a_diverging_member_ends_alone_and_early_stopping_is_per_member(tmp_path):
    over = [f"target_allowlist=[{__name__}]", f"+extra_methods=[{{_target_: {__name__}.BlowUpSeed1}}]",
            "method=bl", "train.val_fraction=0.25", "train.eval_every=1", "train.patience=2",
            "train.select_by=val_acc",
            "train.restore_best=true"]
    alone, fused = separate_and_fused(tmp_path, over)
    assert [f["status"] for f in fused] == ["completed", "diverged", "completed"]
    assert any(p["epochs"] < 30 for f in fused if f["status"] == "completed" for p in f["phases"])
    for a, f in zip(alone, fused):
        assert_same_run(a, f)


@pytest.mark.sizes
def test_a_method_acting_in_every_step_is_refused_in_one_line(tmp_path):
    out = run_cli(*SHORT, "method=swr", "train.fused_seeds=2", f"hydra.run.dir={tmp_path}/run",
                  cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: train.fused_seeds: method swr acts in every training step (after_step) and cannot "
        "be fused; run the seeds separately (train.fused_seeds=1)")
    for seed in (0, 1):
        assert json.loads((tmp_path / "run" / f"seed{seed}" / "result.json").read_text())["status"] == "failed"


def test_a_fused_run_does_not_resume(compose_cfg, tmp_path):
    with pytest.raises(Exception, match="train.fused_seeds does not resume"):
        compose_and_run(SHORT + ["train.fused_seeds=2", f"resume={tmp_path}"], tmp_path)


def test_masks_are_refused_naming_them(tmp_path):
    with pytest.raises(RunnerError, match=r"^train.fused_seeds: masks \(.*weight.*\) are not fused"):
        compose_and_run(SHORT + ["method=random_mask", "train.fused_seeds=2"], tmp_path)


def test_stacked_eval_inputs_are_kept_for_the_same_splits_and_pipelines_only():
    from types import SimpleNamespace as NS
    from runner.data.tensors import Split
    from runner.training.fused import FusedTrainer

    def member(pipe, cache_mb=1):
        return NS(ctx=NS(pipeline=pipe, eval_batch_size=4), parts=NS(device=torch.device("cpu")),
                  data=NS(cache_bytes=lambda: cache_mb * 2**20))

    double = lambda x, train, gen: 2 * x  # noqa: E731
    splits = {k: Split(torch.full((6, 3), float(k + 1)), torch.full((6,), k)) for k in (0, 1)}
    fused = FusedTrainer([member(double), member(double)], [])
    xs, y = fused.eval_inputs("test", [0, 1], splits, 6)
    assert [tuple(x.shape) for x in xs] == [(2, 4, 3), (2, 2, 3)] and y.tolist() == [[0] * 6, [1] * 6]
    assert torch.equal(xs[1][1], torch.full((2, 3), 4.0))  # member 1's last two samples, doubled
    assert fused.eval_inputs("test", [0, 1], splits, 6)[0] is xs  # kept
    fused.members[1].ctx.pipeline = lambda x, train, gen: 3 * x  # a phase's new pipeline
    assert torch.equal(fused.eval_inputs("test", [0, 1], splits, 6)[0][1][1], torch.full((2, 3), 6.0))
    splits[0] = Split(splits[0].x.clone(), splits[0].y)  # a phase's new split
    assert fused.eval_inputs("test", [0, 1], splits, 6)[0] is not xs
    only0 = fused.eval_inputs("test", [0], {0: splits[0]}, 6)[0]  # member 1 stopped: 0's batch
    assert torch.equal(only0[0][1], only0[0][0])
    small = FusedTrainer([member(double, 0), member(double, 0)], [])  # train.cache_mb=0
    made = small.eval_inputs("test", [0, 1], splits, 6)[0]
    assert not isinstance(made, list) and not small.eval_cache  # one batch at a time, none kept
    assert torch.equal(torch.cat(list(made), 1), torch.stack([2 * splits[0].x, 2 * splits[1].x]))
