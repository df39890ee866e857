"""Every launch path as a user types it, in a subprocess (CI's second stage: pytest -m e2e):
torchrun with two gloo ranks on the CPU, a two-rank run killed with SIGTERM and resumed, and a
sweep through Hydra's submitit launcher (SLURM's code path, run locally)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_fashion_mnist, run_cli
from runner.results import load_results

pytestmark = [pytest.mark.e2e, needs_fashion_mnist]

RUN = ["experiment=fmnist_mlp", "train.epochs=3", "train.checkpoint_every=1"]


def torchrun(*args, cwd, **popen):
    """`torchrun --standalone --nproc_per_node=2 -m runner ARGS distributed.enabled=true`, the
    torchrun script of this environment (--standalone: a free rendezvous port)."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [exe, "--standalone", "--nproc_per_node=2", "-m", "runner", *args,
           "distributed.enabled=true"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **popen)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def final(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def rows(run_dir: Path) -> list:
    """metrics.csv without its wall-clock column."""
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    drop = lines[0].split(",").index("seconds")
    return [[c for i, c in enumerate(line.split(",")) if i != drop] for line in lines]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One uninterrupted two-rank run of RUN (its directory, and the process' output)."""
    cwd = tmp_path_factory.mktemp("torchrun")
    proc = torchrun(*RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd, proc


def test_torchrun_two_gloo_ranks_write_one_completed_result_equal_to_one_process(two_ranks,
                                                                                 tmp_path):
    cwd, proc = two_ranks
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = sorted(cwd.rglob("result.json"))
    assert found == [cwd / "run" / "result.json"]  # rank 1 wrote nothing, anywhere
    assert final(cwd / "run")["status"] == "completed"
    one = run_cli(*RUN, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    # the same global batches: DDP averages the two half-batch gradients, which sums in another
    # order than one process does; after 3 epochs (633 steps) the weights differ by float error
    ranks, single = final(cwd / "run"), final(tmp_path / "one")
    for got, want in zip(ranks["phases"], single["phases"]):
        for key in ("train_loss", "val_loss", "test_loss"):
            assert got["end"][key] == pytest.approx(want["end"][key], rel=1e-3), key
        for key in ("train_acc", "val_acc", "test_acc"):  # within 0.2 % of the samples
            assert got["end"][key] == pytest.approx(want["end"][key], abs=2e-3), key


def test_two_ranks_killed_with_sigterm_end_interrupted_and_resume_bitwise(two_ranks, tmp_path):
    ref, _ = two_ranks
    run_dir = tmp_path / "run"
    proc = torchrun(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists():  # the end of the first epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it to both ranks
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    record = final(run_dir)
    assert record["status"] == "interrupted", out[-3000:]
    assert out.count("the run is recorded as interrupted") == 1  # rank 0 says it, once
    assert len(rows(run_dir)) < 1 + 3

    resumed = torchrun(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    got, want = final(run_dir), final(ref / "run")
    assert got["status"] == "completed" and got["resumed_from"] == str(run_dir)
    assert got["phases"] == want["phases"]  # bitwise: the same float values
    assert rows(run_dir) == rows(ref / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing beside it


def test_submitit_local_sweep_from_the_command_line_writes_its_table(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "experiment=fmnist_mlp", "ci=smoke", "device=cpu", "seed=0,1",
                   "optim.lr=0.001,0.01", "hydra/launcher=submitit_local",
                   "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_results([sweep])
    assert len(results) == 4 and all(r["status"] == "completed" for r in results)
    table = (sweep / "table.md").read_text()
    assert " ± " in table and "optim.lr" in table
