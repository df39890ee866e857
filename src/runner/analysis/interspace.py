"""Interspace pruning without training (Wimmer's thesis Secs. 5.3, 5.4.4.1 and 5.5.2.4).

- FLOPs per conv layer (Sec. 5.4.4.1, adds and multiplies counted separately, output
  (d1 - K + 1) x (d2 - K + 1)): SP 2 (1 - q) c_out c_in K^2 d~1 d~2; IP adds 2 c_in K^4 d~1 d~2
  (every basis filter on every input channel). Speed-up over dense: SP 1 / (1 - q), IP
  c_out / (c_out (1 - q) + K^2) (Fig. 5.4).
- Theorem 5.3.1 (2): P(rho_T = rho_id) <= eps = C(D2, d / D1) / C(D1 D2, d) when D1 divides d,
  else 0 (Eq. 5.4 with its typo D2 -> D1 fixed); the worst case over d is d = D1 or d = D1 (D2 - 1),
  eps_max = D2 / C(D1 D2, D1) (Fig. 5.3).
- The measured CPU speed-up of sparse inference (Fig. 5.8 b): every conv layer of VGG-16-LTH
  as an im2col product, dense (numpy), SP (the pruned spatial weights as a `scipy.sparse` CSR
  matrix) and IP (every input channel through the K^2 basis filters, dense, then the pruned
  coefficients as CSR), batch 1, the network's time summed over layers, median of `repeats`.
- The theoretical speed-up of a trained network (Fig. 5.8 a): dense FLOPs / sparse FLOPs of one
  image through every Conv2d and Linear layer (adds and multiplies; biases, normalization,
  activations and pooling not counted), from the per-layer densities an LTH round records
  (`layer_density`) and the layers' output sizes (the run's model rebuilt from its config on the
  `meta` device). A spatial layer costs 2 x kept weights x output positions; an interspace layer
  2 x kept coefficients x positions (the coefficient conv) plus 2 c_in n K^2 x positions (every
  input channel through the n basis filters, times the number of bases for out_nc sharing); the
  dense reference is the spatial network. One layer at density 1 - q gives Fig. 5.4's closed
  forms.
- lr x ||g||_2 per epoch (Fig. 5.6 a), recorded by the PaI methods (`grad_stats`, methods/
  prune_init.py): the KxK convolutions' spatial weights (SP) or coefficients (IP), and the
  filter bases (IP).

    python -m runner.analysis.interspace fig5_3 --out plots/fig5_3.png
    python -m runner.analysis.interspace fig5_4 --out plots/fig5_4.png
    python -m runner.analysis.interspace speedup --repeats 5 --out plots/fig5_8b.png
    python -m runner.analysis.interspace rounds DIR          # LTH rounds (Figs. 5.7, 5.10)
    python -m runner.analysis.interspace flops DIR           # LTH rounds by FLOPs (Fig. 5.8 a)
    python -m runner.analysis.interspace gradnorm DIR        # lr x ||g|| per epoch (Fig. 5.6 a)
    python -m runner.analysis.interspace curve DIR --x tuned.q --hue method space
                                                             # q-curves (Figs. 5.5, 5.9, 5.11, 5.12)
    python -m runner.analysis.interspace cost               # CPU images/s, hours per run
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from runner.analysis.common import (AnalysisError, cli, completed, figure_path, final, metrics,
                                     metric_label, percent, plt, save, titled, value)
from runner.analysis.interspace_costs import (  # noqa: F401 (the costs, re-exported)
    COST_SETUPS, VGG16_LTH, LayerCost, ip_flops, layer_costs, max_bound, measure_speedup,
    network_flops, network_speedup, run_costs, sp_flops, speedup_ip, speedup_sp, theorem_bound,
    train_rate, vgg_layers)


def fig5_3(out: str, d2_max: int = 100) -> None:
    d2 = list(range(2, d2_max + 1))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(d2, [max(max_bound(n), 1e-300) for n in d2])
    ax.set_xlabel("D2 = c_out c_in (3x3 filters)")
    ax.set_ylabel("max_d eps (Theorem 5.3.1)")
    ax.set_title("Wimmer's thesis, Fig. 5.3: bound on P(rho_T = rho_id), K = 3")
    save(fig, out)


def fig5_4(out: str, c_outs: Sequence[int] = (64, 512), k: int = 3) -> None:
    q = np.linspace(0, 0.99, 200)
    fig, axes = plt.subplots(1, len(c_outs), figsize=(5 * len(c_outs), 3.5))
    for ax, c in zip(np.atleast_1d(axes), c_outs):
        ax.semilogy(q, [speedup_sp(v) for v in q], label="SP")
        ax.semilogy(q, [speedup_ip(v, c, k) for v in q], label="IP")
        ax.axhline(1, color="grey", lw=0.5)
        ax.set_xlabel("compression rate q")
        ax.set_ylabel("theoretical speed-up")
        ax.set_title(f"Wimmer's thesis, Fig. 5.4: c_out = {c}, K = {k}")
        ax.legend()
    save(fig, out)


def speedup(out: Optional[str], qs: Sequence[float], repeats: int) -> None:
    res = measure_speedup(qs, repeats)
    print("| q | dense ms | SP ms | IP ms | SP speed-up | IP speed-up | SP theory | IP theory |")
    print("|---|---|---|---|---|---|---|---|")
    for q, r in res.items():
        print(f"| {q} | {1e3 * r['dense_s']:.2f} | {1e3 * r['sp_s']:.2f} | {1e3 * r['ip_s']:.2f} "
              f"| {r['sp_speedup']:.2f} | {r['ip_speedup']:.2f} | {network_speedup(q, 'sp'):.2f} "
              f"| {network_speedup(q, 'ip'):.2f} |")
    if out:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(list(res), [r["sp_speedup"] for r in res.values()], "o-", label="SP (measured)")
        ax.plot(list(res), [r["ip_speedup"] for r in res.values()], "o-", label="IP (measured)")
        ax.set_xlabel("compression rate q (every layer)")
        ax.set_ylabel("CPU speed-up over dense")
        ax.set_title("Wimmer's thesis, Fig. 5.8 b: scipy.sparse inference, VGG-16-LTH convs, batch 1")
        ax.legend()
        save(fig, out)


def _lines(points: Dict[str, Dict[float, List[float]]], ax, label_x: str, metric: str,
           scale: float = 1.0) -> None:
    """One line per label, mean ± std over seeds, `scale` 100 for percent."""
    for label, by_x in sorted(points.items()):
        xs = sorted(by_x)
        means = [scale * float(np.mean(by_x[x])) for x in xs]
        stds = [scale * float(np.std(by_x[x])) for x in xs]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=2, label=label)
    ax.set_xlabel(label_x)
    ax.set_ylabel(metric_label(metric, scale == 100))
    ax.legend(fontsize=7)


def rounds(dirs: Sequence[str], hue: Sequence[str], metric: str, out: Optional[str]) -> None:
    """Figs. 5.7 / 5.10 (LTH): `metric` at the end of every round against the round's
    sparsity, one line per `hue` cell, mean and std over seeds."""
    runs = completed(dirs, "runs of experiment=wimmer_lth_cifar10")
    points: Dict[str, Dict[float, List[float]]] = {}
    for run in runs:
        label = ", ".join(f"{k}={value(run, k)}" for k in hue)
        for phase in run["phases"]:
            if "sparsity" not in phase:
                raise AnalysisError(f"{run['_dir']}: phase {phase['name']} has no `sparsity` "
                                    f"(a run of method=lth writes it)")
            points.setdefault(label, {}).setdefault(round(phase["sparsity"], 4), []).append(
                phase["end"][metric])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    _lines(points, ax, "sparsity q after the round", metric,
           100.0 if percent(runs, metric) else 1.0)
    titled(fig, "Wimmer's thesis, Figs. 5.7 and 5.10: LTH rounds", runs)
    save(fig, figure_path(out, dirs, "interspace_rounds"))


def curve(dirs: Sequence[str], x: str, hue: Sequence[str], metric: str,
          out: Optional[str]) -> None:
    """Figs. 5.5, 5.9, 5.11, 5.12: `metric` at each run's end against config key `x`, one line
    per `hue` cell, mean and std over seeds."""
    runs = completed(dirs)
    points: Dict[str, Dict[float, List[float]]] = {}
    for run in runs:
        xv = value(run, x)
        if xv is None:
            raise AnalysisError(f"{run['_dir']} has no config key {x!r}")
        label = ", ".join(f"{k}={value(run, k)}" for k in hue)
        points.setdefault(label, {}).setdefault(float(xv), []).append(final(run, metric))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    _lines(points, ax, x, metric, 100.0 if percent(runs, metric) else 1.0)
    save(fig, figure_path(out, dirs, f"interspace_curve_{metric}"))


def flops(dirs: Sequence[str], hue: Sequence[str], metric: str, out: Optional[str]) -> None:
    """Fig. 5.8 a: `metric` at the end of every LTH round against the round's theoretical
    speed-up (dense / sparse FLOPs, per-layer densities), one line per `hue` cell, mean and std
    over seeds; dashed: the spatial networks' dense first round."""
    runs = completed(dirs, "runs of experiment=wimmer_lth_cifar10")
    cache: Dict[str, List[LayerCost]] = {}
    points: Dict[str, Dict[int, List[tuple]]] = {}
    dense_acc: List[float] = []
    for run in runs:
        for phase in run["phases"]:
            if "layer_density" not in phase:
                raise AnalysisError(f"{run['_dir']}: phase {phase['name']} has no `layer_density` "
                                    f"(a run of method=lth writes it)")
        cfg = run.get("config", {})
        key = json.dumps([cfg.get(k) for k in ("model", "model_transforms", "dataset")],
                         sort_keys=True, default=str)
        if key not in cache:
            cache[key] = run_costs(run)
        costs = cache[key]
        label = ", ".join(f"{k}={value(run, k)}" for k in hue)
        for i, phase in enumerate(run["phases"]):
            dense, sparse = network_flops(costs, phase["layer_density"])
            points.setdefault(label, {}).setdefault(i, []).append(
                (dense / sparse, phase["sparsity"], phase["end"][metric]))
            if i == 0 and phase["sparsity"] == 0 and not any(c.overhead for c in costs):
                dense_acc.append(phase["end"][metric])
    print(f"| {', '.join(hue)} | round | sparsity | theoretical speed-up | {metric} | runs |")
    print("|---|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    scale = 100.0 if percent(runs, metric) else 1.0
    for label, by_round in sorted(points.items()):
        rows = [np.array(by_round[i]) for i in sorted(by_round)]
        xs = [float(r[:, 0].mean()) for r in rows]
        ys, sd = [float(r[:, 2].mean()) for r in rows], [float(r[:, 2].std()) for r in rows]
        ax.errorbar(xs, [scale * y for y in ys], yerr=[scale * d for d in sd], marker="o",
                    capsize=2, label=label)
        for i, (r, x, y) in enumerate(zip(rows, xs, ys)):
            print(f"| {label} | {i + 1} | {r[:, 1].mean():.4f} | {x:.2f} | {y:.4f} | {len(r)} |")
    if dense_acc:
        ax.axhline(scale * float(np.mean(dense_acc)), color="grey", ls="--", lw=1,
                   label="dense (SP)")
    ax.set_xscale("log")
    ax.set_xlabel("theoretical speed-up (dense FLOPs / sparse FLOPs)")
    ax.set_ylabel(metric_label(metric, scale == 100))
    titled(fig, "Wimmer's thesis, Fig. 5.8 a: LTH rounds by FLOPs", runs)
    ax.legend(fontsize=7)
    save(fig, figure_path(out, dirs, "interspace_flops"))


def gradnorm(dirs: Sequence[str], out: Optional[str]) -> None:
    """Fig. 5.6 a: lr x ||g||_2 per epoch (mean over its steps), one colour per run: the KxK
    convolutions' spatial weights (phi, SP) or coefficients (beta, IP), dashed the filter bases
    (F, IP)."""
    runs = completed(dirs, "runs of a pruning-at-initialization method, e.g. method=snip")
    fig, ax = plt.subplots(figsize=(6, 4))
    positive = False
    for i, r in enumerate(runs):
        m = metrics(r, "grad_norm_lr")
        positive |= bool((m.grad_norm_lr > 0).any())
        ip = "grad_norm_lr_fb" in m.columns and m.grad_norm_lr_fb.notna().any()
        label = f"{value(r, 'space') or ''} {value(r, 'method')} seed {r.get('seed')}".strip()
        x = range(1, len(m) + 1)
        ax.plot(x, m.grad_norm_lr, ".-", color=f"C{i}", label=f"{'β' if ip else 'ϕ'}: {label}")
        if ip:
            ax.plot(x, m.grad_norm_lr_fb, ".--", color=f"C{i}", label=f"F: {label}")
    if positive:  # all zero: a layer collapse (every KxK weight pruned)
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("lr × ‖gradient‖₂ (mean over the epoch's steps)")
    ax.set_title("Wimmer's thesis, Fig. 5.6 a: gradient norm x learning rate")
    ax.legend(fontsize=7)
    save(fig, figure_path(out, dirs, "interspace_gradnorm"))


def cost(setups: Sequence[str], spaces: Sequence[str]) -> None:
    """Measured CPU training throughput and the implied hours of one run (Table A.11)."""
    import torch
    print(f"| setup | space | images/s (CPU, {torch.get_num_threads()} threads) | "
          f"hours per run (CPU) |")
    print("|---|---|---|---|")
    for setup in setups:
        for space in spaces:
            rate = train_rate(setup, space)
            hours = COST_SETUPS[setup][4] / rate / 3600
            print(f"| {setup} | {space} | {rate:.2f} | {hours:,.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.analysis.interspace",
                                description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["fig5_3", "fig5_4", "speedup", "rounds", "flops", "gradnorm",
                                    "curve", "cost"])
    p.add_argument("dirs", nargs="*", help="rounds / flops / gradnorm / curve: run or sweep "
                   "directories")
    p.add_argument("--out", default=None, help="figure file (default: plots/<kind>.png, or "
                   "DIR/plots/ for rounds / flops / gradnorm / curve)")
    p.add_argument("--x", default="tuned.q", help="curve: the x-axis config key (tuned.q: the "
                   "q of SET and the PaI methods)")
    p.add_argument("--hue", nargs="*", default=["method", "space"], help="keys of a line")
    p.add_argument("--metric", default="test_acc")
    p.add_argument("--setups", nargs="*", default=list(COST_SETUPS), help="cost: the setups")
    p.add_argument("--spaces", nargs="*", default=["sp", "fine"], help="cost: sp, coarse or fine")
    p.add_argument("--q", type=float, nargs="*", default=[0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.kind == "cost":
        return cli(lambda: cost(a.setups, a.spaces))
    if a.kind == "rounds":
        return cli(lambda: rounds(a.dirs, a.hue, a.metric, a.out))
    if a.kind == "flops":
        return cli(lambda: flops(a.dirs, a.hue, a.metric, a.out))
    if a.kind == "gradnorm":
        return cli(lambda: gradnorm(a.dirs, a.out))
    if a.kind == "curve":
        return cli(lambda: curve(a.dirs, a.x, a.hue, a.metric, a.out))
    out = a.out or f"plots/{a.kind}.png"
    if a.kind == "fig5_3":
        return cli(lambda: fig5_3(out))
    if a.kind == "fig5_4":
        return cli(lambda: fig5_4(out))
    return cli(lambda: speedup(a.out, a.q, a.repeats))


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
