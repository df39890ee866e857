"""Run directories as untrusted input and their owner (runner.rundir), and writes that cannot
corrupt a record (runner.results): no in-place fallback, stale heartbeats, orphan temporaries."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from runner import rundir
from runner.errors import ConfigError
from runner.results import DEAD_AFTER_S, RESULT_FILE, RunRecorder, is_dead, write_json_atomic


def test_a_stale_heartbeat_is_dead_whatever_the_pid_says():
    alive = {"status": "running", "host": socket.gethostname(), "pid": os.getpid(),
             "heartbeat": time.time()}
    assert not is_dead(alive)
    assert is_dead({**alive, "heartbeat": time.time() - DEAD_AFTER_S - 1})  # our pid, reused
    assert is_dead({**alive, "heartbeat": None}) and is_dead({**alive, "pid": "x", "heartbeat": 0})
    assert not is_dead({**alive, "pid": "x"})  # a pid that is no number: the heartbeat decides


def test_a_record_that_cannot_be_written_stays_whole(tmp_path, monkeypatch, caplog):
    rec = RunRecorder(tmp_path, {"name": "r"}, tracked=False)
    before = (tmp_path / RESULT_FILE).read_text()
    import runner.results

    def full(path, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runner.results, "write_json_atomic", full)
    result = rec.finish("completed")
    assert result["status"] == "completed"  # in memory
    assert (tmp_path / RESULT_FILE).read_text() == before  # on disk: whole, still `running`
    assert json.loads(before)["status"] == "running"
    assert any("could not be written" in r.getMessage() for r in caplog.records)


def test_the_owner_removes_orphan_temporaries_and_holds_the_directory(tmp_path):
    write_json_atomic(tmp_path / RESULT_FILE, {"status": "running"})
    orphan = tmp_path / ".result.json.abc123.tmp"
    orphan.write_text("{half")
    kept = tmp_path / "notes.tmp"
    kept.write_text("mine")
    with rundir.owned(tmp_path):
        assert not orphan.exists() and kept.exists()
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from runner import rundir\n"
             "try:\n    rundir.owned(Path(sys.argv[1])).__enter__()\n"
             "except Exception as e:\n    print(e)", str(tmp_path)],
            capture_output=True, text=True, env={**os.environ}, timeout=60)
        assert "is in use by another process" in other.stdout
    with rundir.owned(tmp_path):  # released
        pass


def test_a_new_run_is_refused_in_another_runs_directory(tmp_path):
    rundir.check_fresh(tmp_path)
    for name in rundir.RUN_FILES:
        (tmp_path / name).write_text("")
        with pytest.raises(ConfigError, match=f"already holds a run \\({name}\\)"):
            rundir.check_fresh(tmp_path)
        (tmp_path / name).unlink()


@pytest.mark.parametrize("extra,ok", [
    (["device=cuda", "data_root=/d", "progress=false", "logger=tensorboard"], True),
    (["+logger.log_dir=/x", "distributed.enabled=true"], True), (["threads=2"], False),
    (["seed=1"], False), (["train.epochs=3"], False),
    (["method=l2"], False), (["+extra_methods=[]"], False)])
def test_only_where_and_how_it_runs_may_change_on_resume(tmp_path, extra, ok):
    record = {"status": "interrupted", "overrides": ["seed=0"]}
    if ok:
        assert rundir.resume_overrides(str(tmp_path), record, extra + ["resume=x"]) == ["seed=0"] + extra
    else:
        with pytest.raises(ConfigError, match="would change the run; on resume only device, data_root"):
            rundir.resume_overrides(str(tmp_path), record, extra)
    with pytest.raises(ConfigError, match="the run completed"):
        rundir.resume_overrides(str(tmp_path), {**record, "status": "completed"}, extra)


def test_where_the_data_lie_and_the_tracker_do_not_make_another_run():
    """Resume may point `data_root` elsewhere and pick another logger: the same run."""
    from runner.identity import run_identity
    config = {"seed": 0, "data_root": "/a/data", "logger": {"name": "csv"},
              "dataset": {"reader": {"root": "/a/data/mnist"}, "name": "mnist"}}
    moved = {**config, "data_root": "/b", "logger": {"name": "wandb"},
             "dataset": {"reader": {"root": "/b/mnist"}, "name": "mnist"}}
    same = run_identity({"choices": {"logger": "csv"}, "config": config})
    assert same == run_identity({"choices": {"logger": "wandb"}, "config": moved})
    other = {**moved, "dataset": {"reader": {"root": "/b/kmnist"}, "name": "mnist"}}
    assert same != run_identity({"choices": {}, "config": other})
