"""A paper experiment runs at the paper's stated settings, fitted values live in a variant that
says so, and results are read at the epoch whose weights a run keeps."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, EXPERIMENTS
from runner.checks import check_report, report_at
from runner.errors import RunnerError
from runner.training.lifecycle import summarize

FITTED = "fitted, not stated by the paper"


@pytest.mark.sizes  # composes every experiment (about 14 s): CI's second stage
def test_report_position_follows_restore_best_in_every_experiment(compose_cfg):
    restored = []
    for name in EXPERIMENTS:
        cfg = compose_cfg([f"experiment={name}"])
        check_report(cfg)
        if cfg.train.restore_best:
            restored.append(name)
            assert report_at(cfg) == "best", f"{name}: restores the best weights, reports {report_at(cfg)}"
    assert {f"reinit_table2_{a}" for a in ("scnn", "vgg16", "mobilenet", "resnet50")} <= set(restored)


@pytest.mark.parametrize("at,restore,expect", [
    (None, False, "end"), (None, True, "best"), ("best", False, "best"), ("end", False, "end")])
def test_summary_reads_the_phase_where_report_at_says(at, restore, expect):
    cfg = OmegaConf.create({"report": {"metric": "test_acc", "at": at, "extra": ["frozen"]},
                            "train": {"restore_best": restore}})
    result = {"phases": [{"end": {"test_acc": 0.313}, "best": {"test_acc": 0.264}, "frozen": 3}]}
    assert summarize(result, cfg) == {"test_acc": {"end": 0.313, "best": 0.264}[expect], "frozen": 3}


def test_report_at_end_on_restored_weights_is_refused():
    cfg = OmegaConf.create({"report": {"at": "end"}, "train": {"restore_best": True}})
    with pytest.raises(RunnerError, match="set report.at=best"):
        check_report(cfg)
    with pytest.raises(RunnerError, match="valid: end, best"):
        check_report(OmegaConf.create({"report": {"at": "last"}, "train": {"restore_best": False}}))


def test_table_layout_keys_must_exist():
    cfg = OmegaConf.create({"report": {"at": None, "rows": ["dataset.alpha"], "cols": ["method"]},
                            "train": {"restore_best": False}, "dataset": {"alpha": 1.0}})
    check_report(cfg)
    cfg.report.rows = ["dataset.alpah"]
    with pytest.raises(RunnerError, match="report.rows names 'dataset.alpah'"):
        check_report(cfg)


def test_refusal_is_one_line_before_anything_runs(hydra_cli, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert hydra_cli("train.restore_best=true", "report.at=end") == 2  # a config error
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "error: report.at=end with train.restore_best=true")
    assert not list(tmp_path.rglob("result.json"))


def test_reinit_table1_runs_the_papers_stated_settings(compose_cfg):
    for method in ("welsr", "wels", "dsd"):
        m = compose_cfg(["experiment=reinit_table1", f"method={method}"]).method
        assert (m.fraction, list(m.params), m.eta, m.eta_scale) == \
            (0.2, ["weights", "biases"], "fresh", 1.0), method


def test_fitted_values_live_in_variants_that_say_so(compose_cfg):
    m = compose_cfg(["experiment=reinit_table1_fitted", "method=welsr"]).method
    assert (m.fraction, list(m.params), m.eta_scale) == (0.3, ["weights"], 0.9)
    fitted = [n for n in EXPERIMENTS if n.endswith("_fitted")]
    assert fitted
    readme = (Path(__file__).parents[2] / "docs" / "reinit.md").read_text()  # the experiment table
    for name in fitted:
        assert "FITTED, NOT STATED BY THE PAPER" in (CONF / "experiment" / f"{name}.yaml").read_text()
        cfg = compose_cfg([f"experiment={name}"])
        assert FITTED in cfg.description and FITTED in cfg.paper.source
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert FITTED in row


def test_dsd_eta_is_a_fresh_draw_unless_zeros_is_asked_for(compose_cfg):
    assert compose_cfg(["experiment=fmnist_mlp", "method=dsd"]).method.eta == "fresh"
    assert compose_cfg(["experiment=fmnist_mlp", "method=dsd", "method.eta=zeros"]).method.eta == "zeros"


def test_l2_conventions_default_to_what_produced_the_papers_lambdas(compose_cfg):
    for method in ("l2", "l2_init"):
        assert compose_cfg([f"method={method}"]).method.convention == "code"


def test_reinit_table5_runs_the_reading_the_text_supports_best(compose_cfg):
    """App. B and Sec. 1.1: full-batch gradient descent at lr 0.05 without momentum, T = 1,800
    steps in 5 rounds, the penalty lambda ||w||^2 of a Keras l2(lambda) on the weights only."""
    for method in ("bl", "rescale", "lw"):
        cfg = compose_cfg(["experiment=reinit_table5", f"method={method}", "optim.weight_decay=0.05"])
        o = cfg.optim
        assert (o.name, o.lr, o.momentum, o.weight_decay_form, o.weight_decay_bias) == \
            ("sgd", 0.05, 0.0, "full", 0.0), method
        assert cfg.train.batch_size is None and cfg.train.epochs * cfg.phases[0].repeat == 1800
