"""The analysis commands (`runner.plots`, `runner.analysis.*`): where figures go, what they refuse,
and the details a reader checks (phase boundaries, tick labels, legends)."""
import json
import math

import matplotlib.pyplot as plt
import pandas as pd

from runner import plots
from runner.analysis import reinit, reinit_stats, swr, zilly_figures
from runner.analysis.common import completed

FROZEN_PROBE = {"_target_": "methods.frozen_probe.FrozenProbe", "every_epoch": False}


def fake_run(d, metrics, method="vanilla", seed=0, experiment="fmnist_mlp", phases=1,
             extra_methods=(), subset=None, overrides=()):
    """A completed run directory with the given metrics.csv columns."""
    d.mkdir(parents=True)
    end = {"test_acc": 0.5, "test_loss": 1.0}
    config = {"extra_methods": list(extra_methods),
              "phases": [{"subset": subset or {}}] + [{"subset": {}}] * (phases - 1)}
    result = {"status": "completed", "seed": seed, "name": experiment, "summary": {"test_acc": 0.5},
              "choices": {"experiment": experiment, "method": method},
              "overrides": [f"method={method}", f"seed={seed}", *overrides], "config": config,
              "phases": [{"index": i, "end": end} for i in range(phases)]}
    (d / "result.json").write_text(json.dumps(result))
    pd.DataFrame(metrics).to_csv(d / "metrics.csv", index=False)
    return d


def plain_metrics(n=4, phases=1):
    return {"phase": [p for p in range(phases) for _ in range(n)], "epoch": list(range(1, n + 1)) * phases,
            "train_loss": [1.0] * (n * phases), "test_acc": [0.1 * (i + 1) for i in range(n * phases)]}


def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unrecorded_metric_names_the_option_that_records_it(tmp_path, capsys):
    fake_run(tmp_path / "sweep" / "0", plain_metrics(), extra_methods=[FROZEN_PROBE])
    assert plots.main([str(tmp_path / "sweep"), "--y", "frozen_filters"]) == 2
    err = error_line(capsys)
    assert err.startswith("error: metric 'frozen_filters' was not recorded")
    assert "extra_methods.0.every_epoch=true" in err
    assert swr.main(["balance", str(tmp_path / "sweep")]) == 2
    assert "BalancednessProbe" in error_line(capsys)


def test_phase_boundaries_are_placed_before_unevaluated_epochs_are_dropped(tmp_path):
    # two phases of 4 epochs, evaluated every 2nd: the phase change lies between epochs 4 and 5
    m = plain_metrics(4, phases=2)
    m["test_acc"] = [math.nan if e % 2 else 0.5 for e in m["epoch"]]
    run = fake_run(tmp_path / "a", m, phases=2)
    df, bounds = plots.load_curves(completed([run]), "test_acc", "method")
    assert bounds == [4.5]
    assert df["x"].tolist() == [2, 4, 6, 8]
    # nine rounds of 200 epochs, evaluated at each round's end only (eval_every=200)
    m = plain_metrics(200, phases=9)
    m["test_acc"] = [0.5 if e == 200 else math.nan for e in m["epoch"]]
    run = fake_run(tmp_path / "b", m, phases=9)
    assert plots.load_curves(completed([run]), "test_acc", "method")[1] == \
        [200.5 + 200 * k for k in range(8)]


def test_plots_go_into_the_sweep_directory_named_by_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        fake_run(sweep / str(seed), plain_metrics(), seed=seed)
    assert plots.main([str(sweep)]) == 0
    first = capsys.readouterr().out
    assert plots.main([str(sweep), "--y", "train_loss", "--hue", "seed"]) == 0
    assert plots.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    png = sweep / "plots" / "plots_test_acc.png"
    assert first.strip() == f"figure written to {png}"
    assert f"figure written to {png} (replacing the previous one)" in out
    assert (sweep / "plots" / "plots_train_loss_by_seed.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.png"))
    assert completed([sweep]) and len(completed([sweep])) == 2  # plots/ holds no runs


def test_swr_warm_refuses_a_plain_sweep_and_scaling_refuses_other_runs(tmp_path, capsys):
    plain = fake_run(tmp_path / "plain", plain_metrics())
    assert swr.main(["warm", str(plain)]) == 2
    err = error_line(capsys)
    assert "swr warm needs warm-start runs" in err and "fmnist_mlp with 1 phase" in err
    warm = fake_run(tmp_path / "warm", plain_metrics(2, phases=2), phases=2, subset={"fraction": 0.5},
                    experiment="swr_warm_mnist_mlp")
    assert swr.main(["warm", str(warm), "--scratch", str(warm)]) == 2
    assert "--scratch needs runs trained from scratch" in error_line(capsys)
    assert swr.main(["warm", str(warm), "--scratch", str(plain), "--out", str(tmp_path / "f.png")]) == 0
    assert swr.main(["scaling", str(plain)]) == 2
    assert "experiment=swr_fig1_cifar10_cnn" in error_line(capsys)


def test_reinit_analyses_refuse_runs_of_another_kind(tmp_path, capsys):
    plain = fake_run(tmp_path / "plain", plain_metrics())
    assert reinit.main(["table2", str(plain)]) == 2
    assert "Table 2 needs runs of the reinit_table2_* experiments" in error_line(capsys)
    assert reinit.main(["margins", str(plain)]) == 2
    assert "ReinitProbe's 'margins'" in error_line(capsys)
    assert reinit.main(["grid", str(plain)]) == 2
    assert "grid needs runs of method=bl,lw" in error_line(capsys)


def test_boxplot_tick_labels_fit_in_the_figure(tmp_path):
    long = ["experiment=zilly_frozen_counts", "model=resnet18_cifar"]
    groups = {(*long, f"optim.weight_decay={wd}", "method=dirac_reset"): [0.1, 0.2, 0.3]
              for wd in ("0", "1e-4", "5e-4", "1e-3", "5e-3")}
    fig = zilly_figures.boxplot_figure(groups, "test_acc")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 and fig.bbox.y0 <= b.y0 for b in boxes)
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    # what all cells share moves to the title, what differs stays on the ticks
    assert "experiment = zilly_frozen_counts" in fig.axes[0].get_title()
    assert "Dirac reset" in fig.axes[0].get_title()  # the paper's name of the method
    assert fig.axes[0].get_xticklabels()[1].get_text() == "weight decay = 1e-4\n(n=3)"
    plt.close(fig)


def test_table3_and_tree_without_arguments_read_the_paper(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert reinit.main(["table3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Table 3 (Alabdulmohsin et al. 2021)") and "the paper's Table 2" in out
    assert "*: p < 0.05" in out and "o: also significant after Holm" in out
    assert "L = LW" in out
    assert reinit.main(["tree"]) == 0
    assert (tmp_path / "plots" / "reinit_tree_paper.png").stat().st_size > 1000


def test_tree_leaves_name_the_methods_that_won_their_cells():
    tree, names = reinit_stats.decision_tree(reinit_stats.paper_table2())
    labels = reinit_stats.node_labels(tree, names)
    t = tree.tree_
    for i, label in enumerate(labels):
        counts = [int(part.rsplit(" ", 1)[1]) for part in
                  label.split("\n")[1].strip("()").split(": ")[-1].split(", ")]
        assert sum(counts) == t.n_node_samples[i]  # every cell of the node is named
        if t.children_left[i] == -1:
            assert label.startswith("best: ") and label.split("\n")[0][6:].lower() in reinit_stats.METHODS
    assert labels[0].startswith("arch \u2260 vgg16?")  # the paper's first split
