"""Figures as the papers draw them: nothing averaged over a swept key (lines or panels per value),
`n` counting runs, unknown keys refused, and every figure of the gallery titled, with worded
axes and its legend off the data."""
import json

import pandas as pd
import pytest

from conftest import run_cli
from runner import plots
from runner.analysis import common
from runner.options import method_configs

TUNED = {"l2": {"lambda": 1e-4}}


def fake_run(d, method, seed, alpha, lam=None, acc=0.5, epochs=4, level="none"):
    """A completed run directory: result.json with its resolved config, and metrics.csv."""
    d.mkdir(parents=True)
    node = {"_target_": method_configs()[method][0], **({"lambda": lam} if lam is not None else {})}
    config = {"seed": seed, "method": node, "tuned": TUNED, "dataset": {"alpha": alpha},
              "ci": {"level": level}, "report": {"scale": 100}, "paper": {"source": "P, Fig. 1"}}
    result = {"status": "completed", "seed": seed, "config": config,
              "choices": {"experiment": "e", "method": method}, "summary": {"test_acc": acc},
              "overrides": [f"method={method}", f"seed={seed}"],
              "phases": [{"end": {"test_acc": acc}}]}
    (d / "result.json").write_text(json.dumps(result))
    pd.DataFrame({"phase": [0] * epochs, "epoch": range(1, epochs + 1),
                  "test_acc": [acc * (i + 1) / epochs for i in range(epochs)]}
                 ).to_csv(d / "metrics.csv", index=False)


@pytest.fixture
def sweep(tmp_path):
    """method=bl,lw x dataset.alpha=0.5,1.0,2.0 x seed=0,1, one run repeated in a second sweep,
    and l2 at two values of lambda."""
    i = 0
    for method in ("lw", "bl"):
        for alpha in (0.5, 1.0, 2.0):
            for seed in (0, 1):
                fake_run(tmp_path / "a" / str(i), method, seed, alpha, acc=alpha / 4)
                i += 1
    fake_run(tmp_path / "b" / "0", "bl", 0, 0.5, acc=0.125)  # the same config and seed again
    return tmp_path


@pytest.fixture
def figures(monkeypatch):
    """The figures the commands would write, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plots, "save", lambda fig, out: (common.finish(fig), kept.append(fig)))
    return kept


def test_a_sweep_over_alpha_and_method_draws_a_panel_per_alpha_and_a_line_per_method(sweep, figures):
    plots.curves([sweep / "a", sweep / "b"])
    fig = figures[0]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [f"signal strength α = {a}" for a in (0.5, 1.0, 2.0)]
    for ax in panels:  # BL before LW (the paper's order), each the mean of its 2 runs
        assert [line.get_label() for line in ax.get_lines()] == ["BL (n=2)", "LW (n=2)"]
        assert all(line.get_marker() == "o" for line in ax.get_lines())  # 4 points: markers
    assert panels[0].get_ylabel() == "test accuracy [%]"  # the experiment prints percent
    assert max(panels[2].get_lines()[1].get_ydata()) == pytest.approx(50.0)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["BL (n=2 each)", "LW (n=2 each)"]
    colours = {line.get_label(): line.get_color() for ax in panels for line in ax.get_lines()}
    assert len(set(colours.values())) == 2  # one colour per method across panels
    assert fig._suptitle.get_text() == "P, Fig. 1"


def test_hue_alpha_splits_lines_by_alpha_in_a_panel_per_method(sweep, figures):
    plots.curves([sweep / "a"], hue="dataset.alpha")
    panels = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["method = LW", "method = BL"]
    assert [line.get_label() for line in panels[0].get_lines()] == \
        ["0.5 (n=2)", "1.0 (n=2)", "2.0 (n=2)"]


def test_two_lambdas_are_two_lines_and_test_runs_say_so(tmp_path, figures):
    for i, lam in enumerate((1e-4, 1e-3)):
        fake_run(tmp_path / str(i), "l2", 0, 1.0, lam=lam, level="smoke")
    plots.curves([tmp_path])
    ax = figures[0].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["L2 (lambda=0.0001) (n=1)",
                                                             "L2 (lambda=0.001) (n=1)"]
    assert "[ci=smoke test runs, not the paper's numbers]" in figures[0]._suptitle.get_text()


def test_an_unknown_hue_is_refused_in_one_line(sweep):
    out = run_cli(str(sweep / "a"), "--hue", "nosuch.key", module="runner.plots", cwd=sweep)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("error: --hue 'nosuch.key' is neither a group choice nor a config key")
    assert not (sweep / "a" / "plots").exists()


def check_figure(fig, name):
    """A title, worded axes on every drawn panel, and legends that cover no panel."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]
    assert any(t.strip() for t in titles), f"{name}: no title"
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    for ax in panels:  # a panel sharing its y axis may leave the label to its neighbour
        ylabels = [a.get_ylabel() for a in ax.get_shared_y_axes().get_siblings(ax)]
        for label in (ax.get_xlabel(), next((y for y in ylabels if y), "")):
            raw = common.METRIC_WORDS.get(label, label) != label  # a metric id, not its words
            assert label.strip() and not raw, f"{name}: axis {label!r}"
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in panels:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"{name}: legend on data"


@pytest.mark.e2e  # about 40 smoke runs and 26 figures (a minute of CPU)
def test_the_gallery_draws_every_figure_titled_worded_and_legible(tmp_path, monkeypatch, capsys):
    from runner.analysis import gallery
    checked = []
    save = common.save

    def checking_save(fig, out):
        common.finish(fig)
        check_figure(fig, out.name if hasattr(out, "name") else str(out))
        checked.append(str(out))
        return save(fig, out)
    for module in ("runner.analysis.common", "runner.plots", "runner.analysis.reinit",
                   "runner.analysis.reinit_stats",
                   "runner.analysis.swr", "runner.analysis.zilly_figures",
                   "runner.analysis.freezenet", "runner.analysis.cops",
                   "runner.analysis.interspace"):
        monkeypatch.setattr(f"{module}.save", checking_save)
    assert gallery.main([str(tmp_path / "gallery")]) == 0, capsys.readouterr().err
    pngs = sorted(p.name for p in (tmp_path / "gallery").glob("*.png"))
    assert len(pngs) == len(checked) == 26
    assert {p.split("_")[0] for p in pngs} == {"reinit", "swr", "zilly", "wimmer"}
    assert all((tmp_path / "gallery" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
