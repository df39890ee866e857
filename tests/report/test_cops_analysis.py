"""runner.analysis.cops: the figures that need no training run here; the sweep readers (Table
4.3, Figs. 4.7, 4.8) compute what they claim from result.json files."""
import json

import pytest

from runner.analysis import cops as analysis


def fake_runs(tmp_path, rows):
    """result.json files of completed runs: (method, config.method values, test_acc, val_acc)."""
    for i, (method, opts, test, val) in enumerate(rows):
        d = tmp_path / f"job{i}"
        d.mkdir()
        result = {"status": "completed", "name": "x",
                  "choices": {"method": method, "experiment": "wimmer_table4_3"},
                  "config": {"method": opts, "dataset": {"num_classes": 10}},
                  "phases": [{"end": {"test_acc": test, "val_acc": val}}]}
        (d / "result.json").write_text(json.dumps(result))
    return tmp_path


def test_table43_is_best_worst_mean_std_over_the_means_per_value(tmp_path):
    rows = [("g_cops", {"alpha": 0.1, "lambda": None}, 0.90, 0), ("g_cops", {"alpha": 0.1}, 0.92, 0),
            ("g_cops", {"alpha": 0.5}, 0.95, 0), ("cops_linear", {"lambda": 3.0}, 0.80, 0),
            ("cops_linear", {"lambda": 9.0}, 0.84, 0)]
    text = analysis.table43([fake_runs(tmp_path, rows)])
    g_cops = next(line for line in text.splitlines() if line.startswith("| g_cops"))
    # means per alpha: 0.91, 0.95 -> best 95.00, worst 91.00, mean 93.00, std 2.83 (ddof 1)
    assert "95.00 (93.08)" in g_cops and "91.00 (92.79)" in g_cops
    assert "93.00 (92.93)" in g_cops and "2.83 (0.16)" in g_cops
    assert "| cops_linear (2 values of method.lambda) | 84.00 (92.77)" in text


def test_fig47_and_fig48_write_figures(tmp_path):
    rows = [("g_cops", {"alpha": a, "q": q}, 0.5 + a / 10, 0.4 + a / 10)
            for a in (0.05, 0.5, 0.99) for q in (0.85, 0.99)]
    rows += [(m, {"classes": c}, 0.5 + 0.01 * (c or 10), 0) for m in ("snip", "usnip", "u_cops")
             for c in (1, 5, None)]
    dirs = [fake_runs(tmp_path, rows)]
    analysis.fig47(dirs, tmp_path / "fig47.png")
    analysis.fig48(dirs, tmp_path / "fig48.png")
    assert (tmp_path / "fig47.png").stat().st_size > 0 and (tmp_path / "fig48.png").stat().st_size > 0


def test_fig43_and_fig46_need_no_training(tmp_path):
    assert analysis.main(["fig43", "--out", str(tmp_path / "fig43.png")]) == 0
    narrow = ["model.layers=[4,M,4,M,8,M,8,M,8,M]", "model.classifier=[8]",
              "method.batch_size=8", "threads=1"]
    analysis.fig46("wimmer_table4_1", "synthetic", 1, narrow, tmp_path / "fig46.png",
                   qs=(0.9,), alphas=(0.1, 0.99999))
    assert (tmp_path / "fig43.png").exists() and (tmp_path / "fig46.png").exists()


def test_sweep_commands_without_directories_are_one_line(capsys):
    assert analysis.main(["table43"]) == 2
    assert "needs run or sweep directories" in capsys.readouterr().err
