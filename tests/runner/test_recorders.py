"""The two recorders behind one interface: RunRecorder writes the run's files; MemoryRecorder
(ranks other than 0 of a distributed run, analyses) keeps the same record in memory, writes
nothing, and makes the trainer save no checkpoint."""
import json

import pytest

from runner import distributed
from runner.results import COLUMNS, MemoryRecorder, Recorder, RunRecorder


def record(rec: Recorder):
    rec.update(device="cpu")
    rec.epoch({"phase": 0, "epoch": 1, "train_loss": 0.5, "extra_metric": 2.0})
    rec.phase({"index": 0, "name": "train"})
    return rec.finish("completed", summary={"test_acc": 0.75})


def test_both_recorders_keep_the_same_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = record(RunRecorder(tmp_path / "run", {"name": "r", "config": {}}))
    kept = record(MemoryRecorder({"name": "r", "config": {}}))
    for key in ("name", "status", "phases", "summary", "device"):
        assert kept[key] == written[key]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the memory one wrote nothing


def test_memory_recorder_counts_rows_and_restores_a_checkpoints_record():
    rec = MemoryRecorder()
    assert rec.dir is None and rec.csv_text() == "" and rec.columns == COLUMNS
    rec.epoch({"epoch": 1, "new_column": 1.0})
    assert rec.rows == 1 and rec.columns[-1] == "new_column"
    rec.restore([{"index": 0}], ["epoch", "x"], "epoch,x\n1,2\n2,3\n")
    assert rec.result["phases"] == [{"index": 0}] and rec.columns == ["epoch", "x"]
    assert rec.rows == 2


def test_a_recorder_implements_every_method_of_the_interface():
    with pytest.raises(TypeError):
        type("Partial", (Recorder,), {"update": lambda self, **f: None})()


@pytest.mark.parametrize("rank,kind", [("0", RunRecorder), ("1", MemoryRecorder)])
def test_only_rank_0_writes(tmp_path, monkeypatch, rank, kind):
    monkeypatch.setenv("RANK", rank)
    rec = distributed.recorder(tmp_path / "run", {"name": "r"})
    assert type(rec) is kind
    rec.finish("completed")
    assert (tmp_path / "run").exists() == (rank == "0")
