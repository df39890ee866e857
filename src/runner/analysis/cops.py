"""COPS figures and Table 4.3 (Wimmer's thesis, Ch. 4).

    python -m runner.analysis.cops fig43                   # the dual g and Algorithm 4.1 (toy)
    python -m runner.analysis.cops fig46 [--experiment E] [--data synthetic|real] [--batches N]
    python -m runner.analysis.cops fig41 [DIR ...] [--experiment E] [--data ...] [--batches N]
    python -m runner.analysis.cops fig47 DIR [DIR ...]     # G-COPS stability heat map
    python -m runner.analysis.cops fig48 DIR [DIR ...]     # U-COPS / SNIP / USNIP against #T
    python -m runner.analysis.cops table43 DIR [DIR ...]   # random search: alpha vs lambda

fig43 is a toy (the thesis's Fig. 4.3 is an illustration). fig46 and the left panel of fig41
need no training: they score the experiment's model at initialization, on synthetic inputs of
the dataset's shape (`--data synthetic`, the default, which runs anywhere) or on the dataset
itself (`--data real`), with `--batches` score batches (the thesis: 100 of 128 CIFAR-10 images);
the figure's title says which. fig46: sim(m(0), m(alpha)) (SNIP vs G-COPS), sim(m(1), m(alpha))
(GraSP vs G-COPS) and sim(m(0), m(1)) over alpha_kappa at q = 0.9 and 0.995. fig41 left: the
gradient flow at initialization, mean |g| over the kept weights of the pruned network divided by
the dense network's over all weights, for random, SNIP, GraSP and G-COPS (alpha of the
experiment's tuned.g_cops_alpha per q) over q; right, with DIRs of the wimmer_table4_1 sweep: their
test accuracy over q. fig47, fig48 and table43 read sweeps (commands in their experiments).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from runner.analysis.common import (AnalysisError, cli, completed, figure_path, final, plt,
                                    metric_label, percent, save, titled, value)
from runner.sparse import cops, pruning
from runner.sparse.keep import exact_density, keep_count

ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 0.999, 0.9999, 0.99999)
PAPER_TABLE43 = {"g_cops": (0.9308, 0.9279, 0.9293, 0.0016),
                 "cops_linear": (0.9277, 0.9246, 0.9262, 0.0020)}


def fig43(out) -> None:
    """Left: g(lambda) of a toy problem (d = 2, kappa = 0) over its affine pieces s0_i + lambda
    s1_i, active ones red, pieces >= 0 grey; right: the first three bisection steps."""
    s0 = torch.tensor([-1.0, -0.8, -0.5, -0.3, -0.9, -0.2], dtype=torch.float64)
    s1 = torch.tensor([0.6, 0.2, -0.4, -0.5, 0.9, 0.3], dtype=torch.float64)
    d, kappa = 2, 0.0
    lams = np.linspace(0, 3, 301)
    g = [float(torch.topk(s0 + lam * s1, d, largest=False).values.sum()) - lam * kappa
         for lam in lams]
    r = cops.cops(s0, s1, d, alpha=0.0)  # kappa = 0: alpha 0
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i in range(len(s0)):
        line = s0[i].item() + lams * s1[i].item()
        active = [i in torch.topk(s0 + lam * s1, d, largest=False).indices.tolist()
                  for lam in lams]
        left.plot(lams, line, color="0.8", lw=1)
        left.plot(lams, np.where(active & (line < 0), line, np.nan), color="tab:red", lw=1.5)
    left.plot(lams, g, color="k", lw=2.5, label="g(λ)")
    left.axvline(r.lam, ls="--", color="tab:blue", label=f"λ* ≈ {r.lam:.3f}")
    left.set(xlabel="λ", ylabel="s0_i + λ s1_i,  g(λ)", title="dual function (d = 2, κ = 0)")
    left.legend()
    right.plot(lams, g, color="k", lw=2)
    lo, hi = 0.0, 3.0
    for k in range(3):
        mid = (lo + hi) / 2
        slope = float(s1[cops.select(s0, s1, mid, d)].sum()) - kappa
        right.axvspan(lo, hi, ymin=0.05 + 0.1 * k, ymax=0.12 + 0.1 * k, color=f"C{k}", alpha=0.4)
        right.axvline(mid, color=f"C{k}", ls=":", label=f"step {k}: λ0 = {mid:.3f}, g' = {slope:+.2f}")
        lo, hi = (mid, hi) if slope > 0 else (lo, mid)
    right.set(xlabel="λ", ylabel="g(λ)", title="Algorithm 4.1: first three bisection steps")
    right.legend(fontsize=8)
    fig.suptitle("Wimmer's thesis, Fig. 4.3 on a toy problem (6 weights)")
    save(fig, out)


def _scored(experiment: str, data: str, batches: int, overrides: Sequence[str],
            kinds: Sequence[str] = ("snip", "grasp")):
    """(ctx, calibration batches, {score kind: scores}) of the experiment's model at
    initialization, on synthetic inputs of the dataset's shape or on the dataset."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner import ci
    from runner.app import conf_dir
    from runner.results import MemoryRecorder
    from runner.training.build import Parts
    from runner.training.data import DataStager

    extra = [f"method.batches={batches}", "device=cpu"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}", "method=g_cops", *extra, *overrides])
        if data == "synthetic":  # the smoke level's synthetic data of the dataset's shape
            n = math.ceil(batches * cfg.method.batch_size / (1 - cfg.train.val_fraction)) + 2
            cfg = compose("config", [f"experiment={experiment}", "method=g_cops", *extra,
                                     "ci=smoke", "ci.overrides={}", f"ci.n_train={n}",
                                     *overrides])
    GlobalHydra.instance().clear()
    parts = Parts(ci.apply(cfg))
    DataStager(parts, MemoryRecorder()).load_phase_data(parts.phases[0])
    ctx, method = parts.ctx, parts.methods.methods[0]
    calib = method.calibration(ctx)
    scores = {k: pruning.scores(k, ctx.model, calib, loss_fn=ctx.loss_fn, gen=ctx.gen,
                                temperature=method.temperature, normalize=True) for k in kinds}
    where = ("synthetic inputs of " if data == "synthetic" else "") + cfg.dataset.name
    label = (f"{cfg.model._target_.split('.')[-1]} on {where}, {len(calib)} score batches"
             + (f" ({' '.join(overrides)})" if overrides else ""))
    return ctx, calib, scores, cfg, label


def _flat(s: Dict[str, torch.Tensor]) -> torch.Tensor:
    return -torch.cat([t.flatten() for t in s.values()]).double()  # minimized: s = -score


def _unflat(keep: torch.Tensor, like: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {n: k.view(t.shape) for (n, t), k in zip(like.items(),
                                                    keep.split([t.numel() for t in like.values()]))}


def fig46(experiment, data, batches, overrides, out, qs=(0.9, 0.995), alphas=ALPHAS[1:]):
    _, _, s, _, label = _scored(experiment, data, batches, overrides)
    s0, s1 = _flat(s["snip"]), _flat(s["grasp"])
    fig, axes = plt.subplots(1, len(qs), figsize=(5.5 * len(qs), 4), squeeze=False)
    for ax, q in zip(axes[0], qs):
        d = keep_count(s0.numel(), exact_density(q), "floor")
        m0, m1 = cops.select(s0, s1, 0.0, d), cops.select(s1, s0, 0.0, d)
        masks = [cops.cops(s0, s1, d, a).keep for a in alphas]
        x = np.arange(len(alphas))
        ax.plot(x, [cops.similarity(m0, m) for m in masks], "o-", label="sim(m(0), m(α)): SNIP")
        ax.plot(x, [cops.similarity(m1, m) for m in masks], "s-", label="sim(m(1), m(α)): GraSP")
        ax.axhline(cops.similarity(m0, m1), color="0.5", ls="--", label="sim(m(0), m(1))")
        ax.set_xticks(x, [f"{a:g}" for a in alphas], rotation=60, fontsize=7)
        ax.set(xlabel="α_κ", ylabel="mask similarity (eq. 4.29)", ylim=(0, 1.02),
               title=f"q = {q}")
        ax.legend(fontsize=8)
    fig.suptitle(f"Wimmer's thesis, Fig. 4.6 (G-COPS mask similarities), no training: {label}")
    save(fig, out)


def _keep_at(kind, s, q, alpha):
    s0 = _flat(s["snip"])
    d = keep_count(s0.numel(), exact_density(q), "floor")
    if kind == "g_cops":
        flat = cops.cops(s0, _flat(s["grasp"]), d, alpha).keep
        return _unflat(flat, s["snip"])
    return pruning.top_d(s[kind], d)


def fig41(dirs, experiment, data, batches, overrides, out, qs=(0.9, 0.95, 0.99, 0.995)):
    ctx, calib, s, cfg, label = _scored(experiment, data, batches, overrides,
                                        ("snip", "grasp", "random"))
    alpha = cfg.get("tuned", {}).get("g_cops_alpha", {})
    dense = pruning.mean_abs_gradient(ctx.model, calib, loss_fn=ctx.loss_fn)
    kinds = {"random": "random_prune", "snip": "snip", "grasp": "grasp", "g_cops": "g_cops"}
    fig, axes = plt.subplots(1, 2 if dirs else 1, figsize=(11 if dirs else 5.5, 4), squeeze=False)
    for kind, name in kinds.items():
        flow = []
        for q in qs:
            keep = _keep_at(kind, s, q, float(alpha.get(str(q), 0.5)))
            model = copy.deepcopy(ctx.model)
            with torch.no_grad():
                for n, p in pruning.weights(model):
                    p.mul_(keep[n])
            flow.append(float(pruning.mean_abs_gradient(model, calib, keep, ctx.loss_fn) / dense))
        axes[0][0].plot(qs, flow, "o-", label=name)
    axes[0][0].set(xlabel="compression rate q", ylabel="gradient flow / dense", yscale="log",
                   title=f"at initialization ({label})")
    axes[0][0].legend(fontsize=8)
    if dirs:
        runs = completed(dirs, "fig41's right panel: wimmer_table4_1 runs")
        ax = axes[0][1]
        for name in kinds.values():
            pts = sorted((float(value(r, "method.q")), final(r, "test_acc")) for r in runs
                         if value(r, "method") == name or r.get("choices", {}).get("method") == name)
            if pts:
                by_q: Dict[float, List[float]] = {}
                for q, acc in pts:
                    by_q.setdefault(q, []).append(acc)
                ax.plot(list(by_q), [np.mean(v) for v in by_q.values()], "o-", label=name)
        ax.set(xlabel="compression rate q", ylabel="test accuracy", title="trained (DIR)")
        ax.legend(fontsize=8)
    fig.suptitle("Wimmer's thesis, Fig. 4.1")
    save(fig, out)


def _means(runs, key: str, metric: str = "test_acc") -> Dict[object, float]:
    """Mean of `metric` over seeds per value of `key`."""
    by: Dict[object, List[float]] = {}
    for r in runs:
        by.setdefault(value(r, key), []).append(final(r, metric))
    return {k: float(np.mean(v)) for k, v in by.items()}


def table43(dirs) -> str:
    runs = completed(dirs, "table43: wimmer_table4_3 sweeps of g_cops and cops_linear")
    rows, missing = [], []
    for method, key in (("g_cops", "method.alpha"), ("cops_linear", "method.lambda")):
        mine = [r for r in runs if r.get("choices", {}).get("method") == method]
        if not mine:
            missing.append(method)
            continue
        means = np.array(list(_means(mine, key).values()))
        ours = (means.max(), means.min(), means.mean(), means.std(ddof=1) if len(means) > 1 else 0)
        paper = PAPER_TABLE43[method]
        cells = [f"{100 * o:.2f} ({100 * p:.2f})" for o, p in zip(ours, paper)]
        rows.append(f"| {method} ({len(means)} values of {key}) | " + " | ".join(cells) + " |")
    if not rows:
        raise AnalysisError(f"no g_cops or cops_linear runs under {', '.join(map(str, dirs))}")
    head = ("| method | best | worst | mean | std |\n|---|---|---|---|---|\n")
    note = f"\n(no {' or '.join(missing)} runs in these directories)" if missing else ""
    return ("Thesis Table 4.3: test accuracy in %, ours (thesis), over the means per "
            "hyperparameter value\n" + head + "\n".join(rows) + note)


def fig47(dirs, out) -> None:
    runs = [r for r in completed(dirs, "fig47: g_cops runs over method.alpha")
            if r.get("choices", {}).get("method") == "g_cops"]
    qs = sorted({float(value(r, "method.q")) for r in runs})
    if not qs:
        raise AnalysisError("fig47 needs g_cops runs (wimmer_table4_2_cifar100 alpha sweep)")
    fig, axes = plt.subplots(1, len(qs), figsize=(6 * len(qs), 5), squeeze=False)
    for ax, q in zip(axes[0], qs):
        mine = [r for r in runs if float(value(r, "method.q")) == q]
        test, val = _means(mine, "method.alpha"), _means(mine, "method.alpha", "val_acc")
        alphas = sorted(test)
        acc = np.array([test[a] for a in alphas])
        grid = acc[:, None] - acc[None, :]
        np.fill_diagonal(grid, acc)
        ax.imshow(grid * 100, cmap="RdBu")
        for i in range(len(alphas)):
            for j in range(len(alphas)):
                best = i == j and acc[i] == acc.max()
                ax.text(j, i, f"{100 * grid[i, j]:.1f}", ha="center", va="center", fontsize=6,
                        color="red" if best else "k",
                        fontweight="bold" if i == j and alphas[i] == max(val, key=val.get) else None)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], rotation=60, fontsize=7)
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=7)
        ax.set(xlabel="α_κ2", ylabel="α_κ1", title=f"q = {q}: A(α1) - A(α2), diagonal A(α) "
               "(red: best test, bold: best val)")
    fig.suptitle("Wimmer's thesis, Fig. 4.7: G-COPS test stability")
    save(fig, out)


def fig48(dirs, out) -> None:
    runs = completed(dirs, "fig48: snip / usnip / u_cops runs over method.classes")
    scale = 100.0 if percent(runs, "test_acc") else 1.0
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("snip", "usnip", "u_cops"):
        mine = [r for r in runs if r.get("choices", {}).get("method") == method]
        if not mine:
            continue
        n_all = max(int(value(r, "dataset.num_classes")) for r in mine)
        by = {(n_all if k is None else int(k)): v
              for k, v in _means(mine, "method.classes").items()}
        ax.plot(sorted(by), [scale * by[k] for k in sorted(by)], "o-", label=method)
    ax.set(xlabel="#T (classes known when scoring)", ylabel=metric_label("test_acc", scale == 100))
    titled(fig, "Wimmer's thesis, Fig. 4.8: U-COPS vs SNIP vs USNIP", runs)
    ax.legend()
    save(fig, out)


def command(a) -> None:
    if a.what == "fig43":
        fig43(figure_path(a.out, a.dirs, "cops_fig43"))
    elif a.what == "fig46":
        fig46(a.experiment, a.data, a.batches, a.overrides,
              figure_path(a.out, a.dirs, "cops_fig46"))
    elif a.what == "fig41":
        fig41(a.dirs, a.experiment, a.data, a.batches, a.overrides,
              figure_path(a.out, a.dirs, "cops_fig41"))
    elif not a.dirs:
        raise AnalysisError(f"{a.what} needs run or sweep directories")
    elif a.what == "table43":
        print(table43(a.dirs))
    else:
        {"fig47": fig47, "fig48": fig48}[a.what](a.dirs, figure_path(a.out, a.dirs, f"cops_{a.what}"))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.analysis.cops",
                                description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["fig41", "fig43", "fig46", "fig47", "fig48", "table43"])
    p.add_argument("dirs", nargs="*", help="run or sweep directories")
    p.add_argument("--experiment", default="wimmer_table4_1",
                   help="fig41 / fig46: the model and data to score (default wimmer_table4_1)")
    p.add_argument("--data", choices=["synthetic", "real"], default="synthetic",
                   help="fig41 / fig46: synthetic inputs of the dataset's shape, or the dataset")
    p.add_argument("--batches", type=int, default=1,
                   help="fig41 / fig46: score batches (the thesis: 100)")
    p.add_argument("--overrides", nargs="*", default=[],
                   help="fig41 / fig46: config overrides, e.g. model.layers=[...]")
    p.add_argument("--out", default=None, help="figure file (default: DIR/plots/cops_<what>.png)")
    a = p.parse_args(argv)
    return cli(lambda: command(a))


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
