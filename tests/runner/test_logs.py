"""What a run tells: its environment (log and result.json), epoch lines, sweep job numbers and the
bar of batches of a long epoch."""
import math
import subprocess
from pathlib import Path

import torch

from runner import logs

SMOKE = ["experiment=fmnist_mlp", "ci=smoke", "device=cpu", "threads=1"]
ROOT = Path(__file__).parents[2]


def test_result_json_records_the_environment(run_cfg, tmp_path, caplog):
    caplog.set_level("INFO", logger="runner")
    env = run_cfg(SMOKE + ["device=auto"])["environment"]
    assert env["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # not "auto"
    assert env["run_dir"] == str((tmp_path / "run0").resolve())
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert env["git_commit"].split("+")[0] == head.stdout.strip()
    start = caplog.records[0].getMessage().splitlines()
    assert start[0] == "run fmnist_mlp, seed 0"
    assert [line.split(":")[0].strip() for line in start[1:]] == ["device", "run dir", "git", "torch"]
    assert env["run_dir"] in start[2] and torch.__version__ in start[4]


def test_runs_without_validation_log_no_nan(run_cfg, caplog):
    caplog.set_level("INFO", logger="runner")
    run_cfg(SMOKE + ["train.val_fraction=0"])
    [line] = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert "nan" not in line and "| val" not in line
    assert line.startswith("train epoch 1/1 lr 0.001 | train ") and "| test " in line


def test_epoch_line_leaves_out_splits_that_were_not_measured():
    row = {"lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": math.nan, "val_acc": math.nan,
           "test_loss": 2.0, "test_acc": 0.25}
    assert logs.epoch_line("a", 2, 3, row) == "a epoch 2/3 lr 0.1 | train 1.0000 / 0.5000 | test 2.0000 / 0.2500"
    row.update(val_loss=1.5, val_acc=0.75, test_loss=math.nan, test_acc=math.nan)
    assert logs.epoch_line("a", 2, 3, row).endswith("| val 1.5000 / 0.7500")


def test_sweep_log_lines_carry_the_job_number(tmp_path, monkeypatch, hydra_cli):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}/sweep", *SMOKE) == 0
    assert hydra_cli(f"hydra.run.dir={tmp_path}/run", *SMOKE) == 0
    for job in (0, 1):
        [log] = (tmp_path / "sweep" / str(job)).glob("*.log")
        lines = [line for line in log.read_text().splitlines() if line.startswith("[")]
        assert lines and all(f"][job {job}][runner][" in line for line in lines)
    [log] = (tmp_path / "run").glob("*.log")
    assert "[job" not in log.read_text() and "][runner][INFO] - run fmnist_mlp" in log.read_text()


def test_a_long_epoch_shows_a_bar_of_its_batches(run_cfg, capsys, monkeypatch):
    monkeypatch.setattr(logs, "BATCH_BAR_DELAY_S", 0.0)  # every epoch counts as long
    run_cfg(SMOKE + ["progress=true", "train.max_batches=3"])
    err = capsys.readouterr().err
    assert "batches:   0%" in err and "| 0/3 [" in err and "batch/s]" in err
    run_cfg(SMOKE + ["progress=false", "train.max_batches=3"])
    assert "batch" not in capsys.readouterr().err


def test_batch_bar_counts_the_batches_of_an_epoch():
    bar = logs.batch_bar(iter(range(5)), 37, 8, None, True)
    assert bar.total == 5 and list(bar) == list(range(5))
    assert logs.batch_bar(iter(range(2)), 37, 8, 2, True).total == 2
    it = iter(range(3))
    assert logs.batch_bar(it, 37, 8, None, False) is it
    full = iter(range(1))
    assert logs.batch_bar(full, 37, None, None, True) is full  # one batch: no bar
