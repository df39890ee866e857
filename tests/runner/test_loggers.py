"""Trackers (`logger=...`): each receives the config, every epoch's metrics and the summary; read
back offline from what it wrote."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from runner.errors import RunnerError

SMOKE = ["experiment=fmnist_mlp", "ci=smoke", "device=cpu", "threads=1", "train.max_epochs=2"]  # steps 1, 2


def epochs(result):
    return pd.read_csv(Path(result["_dir"]) / "metrics.csv")


def test_tensorboard_event_files_hold_config_epochs_and_summary(run_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cfg(SMOKE + ["logger=tensorboard"])
    events = EventAccumulator(str(Path(result["_dir"]) / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train_loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx(epochs(result)["train_loss"].tolist())
    assert "val_acc" in events.Tags()["scalars"]
    [summary] = events.Scalars("summary/test_acc")
    assert summary.value == pytest.approx(result["summary"]["test_acc"])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.001" in config and "name: fmnist_mlp" in config
    status = events.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"status": "completed"' in status


def test_mlflow_store_holds_params_epochs_summary_and_status(run_cfg, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    result = run_cfg(SMOKE + ["logger=mlflow", f"logger.tracking_uri={uri}"])
    with pytest.raises(Exception, match="nope"):
        run_cfg(SMOKE + ["logger=mlflow", f"logger.tracking_uri={uri}", "model.activation=nope"])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fmnist_mlp")
    runs = {r.data.tags["run_dir"]: r for r in client.search_runs([exp.experiment_id])}
    run = runs[str(Path(result["_dir"]))]
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["seed"] == "0"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(epochs(result)["train_loss"].tolist())
    assert run.data.metrics["summary.test_acc"] == pytest.approx(result["summary"]["test_acc"])
    assert "config.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    [failed] = [r for d, r in runs.items() if d != str(Path(result["_dir"]))]
    assert failed.info.status == "FAILED" and failed.data.tags["status"] == "failed"


class FakeWandb:
    """The part of wandb's API the tracker uses, recording the calls."""

    def __init__(self):
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return SimpleNamespace(log=lambda data, step: self.calls.append(("log", step, data)),
                               summary=SimpleNamespace(update=lambda d: self.calls.append(("summary", d))),
                               finish=lambda exit_code: self.calls.append(("finish", exit_code)))


def test_wandb_run_gets_config_epochs_summary_offline(run_cfg, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    result = run_cfg(SMOKE + ["logger=wandb"])
    (_, init), *logged, (_, summary), (_, code) = fake.calls
    assert init["mode"] == "offline" and init["project"] == "plasticity-runner"
    assert init["dir"] == result["_dir"] and init["config"]["optim"]["lr"] == 0.001
    assert [(step, data["train_loss"]) for _, step, data in logged] == \
        list(zip([1, 2], epochs(result)["train_loss"]))
    assert summary == {**result["summary"], "status": "completed"} and code == 0


def test_a_missing_tracker_package_stops_before_anything_is_written(run_cfg, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(RunnerError, match=r'logger=wandb needs .* pip install -e "\.\[wandb\]"'):
        run_cfg(SMOKE + ["logger=wandb"])
    assert not list(tmp_path.rglob("result.json"))
