"""Every figure the project can draw offline, in one folder.

    python -m runner.plots gallery OUT [--only NAME ...]

Figures that need no training (the reinitialization paper's decision tree from its Table 2, the
thesis's closed forms and scores at initialization on synthetic inputs) are drawn as the papers
define them. Figures of trained runs come from small sweeps at the `ci=smoke` test level
(synthetic data of each dataset's shape, seconds a run), run into OUT/runs/ and reused when
present; their titles say that they are test runs, not the papers' numbers. Each figure is
written as OUT/<paper>_<figure>.png; a figure that cannot be drawn is named with its reason,
and the command then exits 1.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from runner.analysis.common import AnalysisError

Grid = Dict[str, Sequence]
SEEDS = (0, 1)


def sweep(root: Path, name: str, experiment: str, grid: Grid, seeds: Sequence[int] = SEEDS) -> Path:
    """Every combination of `grid` (and the seeds) at ci=smoke, run into root/name/<i>/ unless
    its result is there already."""
    from hydra.core.global_hydra import GlobalHydra

    from runner.app import compose_and_run
    out = root / name
    keys = list(grid)
    jobs = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    for i, (job, seed) in enumerate(itertools.product(jobs, seeds)):
        d = out / str(i)
        if (d / "result.json").exists():
            continue
        overrides = [f"experiment={experiment}", "ci=smoke", "device=cpu", "threads=1",
                     f"seed={seed}", *(f"{k}={v}" for k, v in job.items())]
        GlobalHydra.instance().clear()
        result = compose_and_run(overrides, d)
        GlobalHydra.instance().clear()
        if result.get("status") != "completed":
            raise AnalysisError(f"gallery run {' '.join(overrides)} ended {result.get('status')}")
    return out


def _figures(root: Path) -> Dict[str, Callable[[Path], object]]:
    """Name -> a function drawing that figure to a path (running its sweep first)."""
    from runner import plots
    from runner.analysis import cops, freezenet, interspace, reinit, swr, zilly_figures as zf

    def runs(name, experiment, grid, seeds=SEEDS):
        return [sweep(root, name, experiment, grid, seeds)]

    reinit1 = lambda: runs("reinit_table1", "reinit_table1",  # noqa: E731
                           {"method": ["bl", "lw"], "dataset.alpha": [0.5, 2.0]})
    sec4 = lambda: runs("reinit_sec4", "reinit_sec4_synthetic", {"method": ["bl", "lw"]})  # noqa: E731
    blur = lambda: runs("zilly_blur", "fmnist_blur_to_sharp",  # noqa: E731
                        {"method": ["vanilla", "dirac_reset"], "optim.weight_decay": [0, 5e-4]})
    lth = lambda: runs("wimmer_lth", "wimmer_lth_cifar10", {"space": ["sp", "ip_medium"]})  # noqa: E731
    return {
        "reinit_table1_curves": lambda out: plots.curves(reinit1(), out=out),
        "reinit_fig2_tree": lambda out: reinit.plot_tree(reinit.paper_table2(), out),
        "reinit_fig3_budget": lambda out: reinit.plot_budget(runs(
            "reinit_fig3", "reinit_fig3_synthetic",
            {"method": ["bl", "lw"], "train.epochs": [25, 100, 400]}), out),
        "reinit_fig4_margins": lambda out: reinit.plot_margins(sec4(), out),
        "reinit_fig5_perturb": lambda out: reinit.plot_perturb(sec4(), out),
        "reinit_fig6_ratio": lambda out: reinit.plot_ratio(sec4(), out),
        "reinit_fig7_grid": lambda out: reinit.plot_grid(runs(
            "reinit_appf", "reinit_appf_cifar",
            {"method": ["bl", "lw"], "optim.lr": [0.003, 0.01]}, (0,)), out),
        "swr_fig1_scaling": lambda out: swr.scaling_figure(runs(
            "swr_fig1", "swr_fig1_cifar10_cnn",
            {"method.factor": [0.9, 0.5, 0.1], "method.proportional": ["true", "false"]}, (0,)), out),
        "swr_fig2_warm_start": lambda out: swr.warm_start_figure(
            runs("swr_warm", "swr_warm_mnist_mlp", {"method": ["vanilla", "l2", "swr"]}),
            runs("swr_scratch", "swr_gen_mnist_mlp", {"method": ["vanilla"]}), out),
        "swr_fig3_continual": lambda out: plots.curves(runs(
            "swr_cl", "swr_cl_full_mnist_mlp", {"method": ["vanilla", "l2", "swr"]}), out=out),
        "swr_fig5_balancedness": lambda out: swr.balance_figure(runs(
            "swr_fig5", "swr_fig5_cifar10_mlp", {"method": ["vanilla", "swr"]}), out),
        "zilly_fig3_frozen_filters": lambda out: plots.curves(runs(
            "zilly_frozen", "zilly_frozen_counts", {"optim.weight_decay": [0, 1e-3]}),
            "frozen_filters", "optim.weight_decay", out=out),
        "zilly_fig4_pairs": lambda out: zf.pairs(runs(
            "zilly_pairs", "zilly_pair_dynamics", {"optim.weight_decay": [0, 1e-3]}, (0,)),
            ["optim.weight_decay"], out),
        "zilly_fig5_boxplot": lambda out: zf.boxplot(blur(), ["method", "optim.weight_decay"],
                                                     out=out),
        "zilly_fig6_pareto": lambda out: zf.pareto(blur(), ["method"], out),
        "zilly_fig7_samples": lambda out: zf.samples(runs(
            "zilly_samples", "zilly_sample_size",
            {"method": ["vanilla", "dirac_reset"], "phases.0.subset.n": [8, 16, 32]}), out=out),
        "wimmer_fig3_1_gradient_flow": lambda out: freezenet.fig31(
            "wimmer_fig3_3a", "synthetic", 1, str(out)),
        "wimmer_fig3_3_accuracy": lambda out: freezenet.accuracy(runs(
            "wimmer_fig3_3", "wimmer_fig3_3a",
            {"method": ["snip", "freezenet"], "method.q": [0.9, 0.99]}), "test_acc", "method",
            str(out)),
        "wimmer_fig4_1_gradient_flow": lambda out: cops.fig41(
            [], "wimmer_fig4_8", "synthetic", 1, [], str(out)),
        "wimmer_fig4_3_dual": lambda out: cops.fig43(str(out)),
        "wimmer_fig4_6_similarity": lambda out: cops.fig46(
            "wimmer_fig4_8", "synthetic", 1, [], str(out)),
        "wimmer_fig4_8_classes": lambda out: cops.fig48(runs(
            "wimmer_fig4_8", "wimmer_fig4_8",
            {"method": ["snip", "usnip", "u_cops"], "method.classes": [1, 5]}, (0,)), str(out)),
        "wimmer_fig5_3_bound": lambda out: interspace.fig5_3(str(out)),
        "wimmer_fig5_4_speedup": lambda out: interspace.fig5_4(str(out)),
        "wimmer_fig5_7_lth_rounds": lambda out: interspace.rounds(
            lth(), ["method", "space"], "test_acc", str(out)),
        "wimmer_fig5_8a_flops": lambda out: interspace.flops(
            lth(), ["method", "space"], "test_acc", str(out)),
    }


def gallery(out: Path, only: Optional[Sequence[str]] = None) -> Tuple[List[Path], Dict[str, str]]:
    """Draw the figures (all, or those named in `only`) into `out`; returns the files written
    and the reason of each figure that could not be drawn."""
    out = Path(out)
    figures = _figures(out / "runs")
    unknown = sorted(set(only or ()) - set(figures))
    if unknown:
        raise AnalysisError(f"no gallery figure named {', '.join(unknown)}; the figures: "
                            + ", ".join(figures))
    written, failed = [], {}
    for name, draw in figures.items():
        if only and name not in only:
            continue
        path = out / f"{name}.png"
        try:
            draw(path)
            written.append(path)
        except AnalysisError as e:
            failed[name] = str(e)
            print(f"error: {name}: {e}", file=sys.stderr)
    return written, failed


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.plots gallery",
                                description=__doc__.split("\n")[0])
    p.add_argument("out", help="the folder the figures (and the runs they need) go to")
    p.add_argument("--only", nargs="*", default=None, help="draw only these figures")
    a = p.parse_args(argv)
    try:
        written, failed = gallery(Path(a.out), a.only)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(written)} figure(s) written to {a.out}" +
          (f"; {len(failed)} could not be drawn: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
