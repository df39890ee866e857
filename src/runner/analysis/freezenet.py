"""Tables and figures of Wimmer's thesis, Ch. 3 (FreezeNet), as commands.

    python -m runner.analysis.freezenet table31 [--q 0.99] [--check]   # counts per model (exact)
    python -m runner.analysis.freezenet table32                        # size / q_beta / factor (exact)
    python -m runner.analysis.freezenet table33 [DIR ...]              # + rows quoted from other papers
    python -m runner.analysis.freezenet table34                        # trained parameters (exact)
    python -m runner.analysis.freezenet fig31 [--experiment E] [--data real|synthetic]
    python -m runner.analysis.freezenet accuracy DIR [DIR ...] [--y test_acc] [--hue method]
    python -m runner.analysis.freezenet grads DIR [DIR ...]            # Fig. 3.5(b)

The count tables need no training: they are computed from the models the experiments build (on
PyTorch's `meta` device, so VGG-16 and ResNet34 cost nothing); `table31 --check` builds the real
models, masks them (SNIP, global) and takes one SGD step with momentum and weight decay, counting
the non-zero weights of the forward pass, the stored weights and the weights that moved. Fig. 3.1
(gradient flow at initialization) needs no training either: on Fashion-MNIST by default (LeNet-5-
Caffe, `wimmer_table3_2_fmnist`), or on synthetic inputs of an experiment's shapes
(`--data synthetic`), which the figure's title says. `accuracy` draws Figs. 3.3, 3.4 and 3.6 (a
final metric against q, mean +- std over seeds, with a q_beta axis on top) and 3.5(a); `grads`
draws Fig. 3.5(b) (per-epoch mean +- std of |g| over the trained weights, one run per line).
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runner.analysis.common import (AnalysisError, cli, completed, experiment_cfg,  # noqa: E402
                                    figure_path, metric_label, metrics, percent, save, titled,
                                    value)
from runner.models import params  # noqa: E402
from runner.sparse import pruning  # noqa: E402
from runner.sparse.keep import exact_density, keep_count  # noqa: E402
from runner.sparse.masks import Masks  # noqa: E402

TABLE31_MODELS = {"lenet300_100": "wimmer_fig3_3a", "lenet5_caffe": "wimmer_table3_2",
                  "vgg16_thesis": "wimmer_table3_4_cifar10", "resnet34": "wimmer_fig3_5a"}
TABLE32_PAPER = {0.0: ("", "1,683.9", "1"), 0.9: ("0.899", "170.7", "9.9"),
                 0.99: ("0.989", "19.1", "88.2"), 0.995: ("0.994", "10.7", "157.4"),
                 0.999: ("0.998", "3.9", "431.8")}
TABLE34_PAPER = {0.0: "15.3mio", 0.9: "1.5mio", 0.95: "780k", 0.99: "169k", 0.995: "92k"}
# Table 3.3: rows the thesis quotes from other papers (not its own runs): printed as constants.
# (method, sparse gradients, additional hyperparameters, % trainable, test accuracy %)
TABLE33_QUOTED = [("Connection-Learning [59]", "no", "no", 8.3, 99.2),
                  ("Dynamic-Network-Surgery [57]", "no", "no", 0.9, 99.1),
                  ("Learning-Compression [16]", "no", "yes", 1.0, 98.9),
                  ("Sparse-Momentum [30]", "no", "yes", 1.0, 99.2)]
TABLE33_OWN = {"baseline": ("-", "-", 100.0, 99.4), "snip": ("yes", "no", 1.0, 98.9),
               "grasp": ("yes", "no", 1.0, 98.9), "freezenet": ("yes", "no", 1.0, 99.1)}
FIG31_QS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)  # not given by the thesis (Fig. 3.1, Sec. 3.1): ours


def build(experiment: str, device: str = "meta", seed: int = 0):
    """(model, config) of an experiment, initialized from `seed` (on `meta`: shapes only)."""
    from runner.instantiate import build_model
    cfg = experiment_cfg(experiment)
    torch.manual_seed(seed)
    with torch.device(device):
        return build_model(cfg), cfg


def counts(model) -> tuple:
    """(weights D, biases + normalization parameters)."""
    kinds = [(p.numel(), k) for _, p, k in params.parameters(model)]
    return sum(n for n, k in kinds if k == "weights"), sum(n for n, k in kinds if k != "weights")


# -- Table 3.1 ----------------------------------------------------------------------------------
def table31_row(experiment: str, q: float = 0.99, check: bool = False) -> Dict:
    """Table 3.1 for one model: non-zero weights in the forward pass and stored weights of the
    standard, pruned and frozen network; with `check`, measured on the real masked model, plus
    the weights one SGD step (momentum 0.9, weight decay 5e-4) moves and the gradient flow."""
    model, cfg = build(experiment, "cpu" if check else "meta")
    D, _ = counts(model)
    d = keep_count(D, exact_density(q), "floor")
    name = {v: k for k, v in TABLE31_MODELS.items()}.get(experiment, experiment)
    row = {"model": name, "experiment": experiment, "q": q, "D": D, "d": d,
           "standard_nonzero": D, "standard_stored": D, "pruned_nonzero": d, "pruned_stored": d,
           "freezenet_nonzero": D, "freezenet_stored": d}
    if not check:
        return row
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, *cfg.dataset.shape, generator=g)
    batch = [(x, torch.randint(cfg.dataset.num_classes, (8,), generator=g))]
    keep = pruning.top_d(pruning.scores("snip", model, batch), d)
    dense = pruning.mean_abs_gradient(model, batch)
    for variant, kind in (("standard", None), ("pruned", "pruned"), ("freezenet", "frozen")):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        masks = Masks(m, lambda: opt)
        for name, k in keep.items():
            if kind is not None:
                masks.set(name, k, kind)
        sp = pruning.sparsity(m, masks)
        row[f"{variant}_nonzero"] = sp["nonzero_weights_forward"]
        row[f"{variant}_stored"] = sp["params_stored"] - (sp["params"] - sp["weights"])
        row[f"{variant}_flow"] = float(pruning.mean_abs_gradient(
            m, batch, keep if kind else None) / dense)
        before = {n: p.detach().clone() for n, p in params.select(m, "weights")}
        opt.zero_grad()
        F.cross_entropy(m(x), batch[0][1]).backward()
        masks.mask_grads()
        opt.step()
        masks.project()
        row[f"{variant}_moved"] = sum(int((p.detach() != before[n]).sum())
                                      for n, p in params.select(m, "weights"))
    return row


def table31_rows(q: float = 0.99, check: bool = False) -> List[Dict]:
    return [table31_row(e, q, check) for e in TABLE31_MODELS.values()]


def table31(q: float, check: bool) -> str:
    lines = [f"Table 3.1 at q = {q} (thesis: Standard D / D, Pruned D(1-q) / D(1-q), FreezeNet "
             f"D / D(1-q); sparse gradients, sparse tensor computations, faithful gradient flow: "
             f"Standard no / no / yes, Pruned yes / yes / no, FreezeNet yes / no / yes)"
             + ("; measured on the real masked models, one SGD step" if check else
                "; counts from each model's weights (--check measures them)"), "",
             "| model | method | non-zero weights | weights to store | weights one step moves "
             "| gradient flow (vs dense) |", "|---|---|---|---|---|---|"]
    for r in table31_rows(q, check):
        for v, name in (("standard", "Standard"), ("pruned", "Pruned"), ("freezenet", "FreezeNet")):
            moved = f"{r[f'{v}_moved']:,}" if check else "-"
            flow = f"{r[f'{v}_flow']:.3g}" if check else "-"
            lines.append(f"| {r['model']} (D = {r['D']:,}) | {name} | {r[f'{v}_nonzero']:,} | "
                         f"{r[f'{v}_stored']:,} | {moved} | {flow} |")
    return "\n".join(lines)


# -- Tables 3.2 and 3.4 -------------------------------------------------------------------------
def rate_rows(experiment: str, qs: Sequence[float]) -> List[Dict]:
    """Per q: trained parameters (floor((1-q) D) weights + biases + normalization), q_beta, the
    fp32 size in kB (1024 B) and the compression factor against the dense model."""
    model, _ = build(experiment)
    D, others = counts(model)
    out = []
    for q in qs:
        trained = keep_count(D, exact_density(q), "floor") + others
        size = trained * 4 / 1024
        out.append({"q": q, "params_trained": trained, "q_beta": 1 - trained / (D + others),
                    "size_kb": size, "compression_factor": (D + others) * 4 / 1024 / size})
    return out


def table32_rows() -> List[Dict]:
    return rate_rows("wimmer_table3_2", list(TABLE32_PAPER))


def table32() -> str:
    lines = ["Table 3.2, LeNet-5-Caffe: the columns that need no training, ours (paper). The "
             "paper's factor is 1,683.9 kB / its rounded size; 170.7 kB at q = 0.9 disagrees with "
             "the parameter count. Accuracies: experiment wimmer_table3_2.", "",
             "| q | q_beta | trained parameters | network size (kB) | compression factor |",
             "|---|---|---|---|---|"]
    for r in table32_rows():
        qb, size, factor = TABLE32_PAPER[r["q"]]
        qbeta = "-" if r["q"] == 0 else f"{r['q_beta']:.4f} ({qb})"
        lines.append(f"| {r['q']} | {qbeta} | {r['params_trained']:,} | {r['size_kb']:,.2f} ({size}) | "
                     f"{r['compression_factor']:.2f} ({factor}) |")
    return "\n".join(lines)


def table34_rows() -> Dict[int, List[Dict]]:
    return {c: rate_rows(e, list(TABLE34_PAPER)) for c, e in
            ((10, "wimmer_table3_4_cifar10"), (100, "wimmer_table3_4_cifar100"))}


def table34() -> str:
    rows = table34_rows()
    lines = ["Table 3.4, VGG-16: trained parameters (floor((1-q) D) weights + biases + BatchNorm), "
             "ours (paper; one column printed for both datasets). Accuracies: experiments "
             "wimmer_table3_4_cifar10 / _cifar100.", "",
             "| q | CIFAR-10 | CIFAR-100 | paper |", "|---|---|---|---|"]
    for r10, r100 in zip(rows[10], rows[100]):
        lines.append(f"| {r10['q']} | {r10['params_trained']:,} | {r100['params_trained']:,} | "
                     f"{TABLE34_PAPER[r10['q']]} |")
    return "\n".join(lines)


# -- Table 3.3 ----------------------------------------------------------------------------------
def table33(dirs: Sequence[str]) -> str:
    ours: Dict[str, List[float]] = {}
    for r in (completed(dirs, "runs of experiment wimmer_table3_3") if dirs else []):
        q, method = value(r, "method.q"), str(value(r, "method"))
        key = "baseline" if q in (0, 0.0) else method
        ours.setdefault(key, []).append(100 * r["phases"][-1]["best"]["test_acc"])
    lines = ["Table 3.3, LeNet-5-Caffe on MNIST, 19/1 split. Rows marked *quoted* are the thesis's "
             "quotes of other papers (constants, not run here); the others: ours (paper).", "",
             "| method | sparse gradients | additional hyperparameters | % trainable | test accuracy (%) |",
             "|---|---|---|---|---|"]
    for key, (sparse, hyper, share, acc) in TABLE33_OWN.items():
        vals = ours.get(key, [])
        mine = (f"{pd.Series(vals).mean():.2f} ± {pd.Series(vals).std(ddof=1) if len(vals) > 1 else 0:.2f} "
                f"[n={len(vals)}] ({acc})" if vals else f"not run ({acc})")
        lines.append(f"| {key} | {sparse} | {hyper} | {share} | {mine} |")
    for name, sparse, hyper, share, acc in TABLE33_QUOTED:
        lines.append(f"| {name} *quoted* | {sparse} | {hyper} | {share} | {acc} *quoted* |")
    return "\n".join(lines)


# -- Fig. 3.1 -----------------------------------------------------------------------------------
def calibration(cfg, data: str, seed: int, n: int):
    """One batch of n training samples: the dataset's (normalized as in training) or synthetic."""
    g = torch.Generator().manual_seed(seed)
    if data == "synthetic":
        return torch.randn(n, *cfg.dataset.shape, generator=g), \
            torch.randint(cfg.dataset.num_classes, (n,), generator=g)
    from runner.data.tensors import Pipeline
    from runner.instantiate import instantiate
    try:
        arrays = instantiate(cfg.dataset.reader, "dataset.reader", "reader", cfg.target_allowlist)
    except Exception as e:
        raise AnalysisError(f"{cfg.dataset.name} is not available here ({e}); use --data synthetic")
    idx = torch.randperm(len(arrays.y_train), generator=g)[:n]
    pipe = Pipeline(cfg.dataset.mean, cfg.dataset.std, [], [], torch.device("cpu"))
    return pipe(arrays.x_train[idx], False, None), arrays.y_train[idx]


def fig31_curves(experiment: str, data: str, seeds: int, qs: Sequence[float]) -> pd.DataFrame:
    """Relative gradient flow (mean |g| over the trained weights / the dense network's over all)
    of FreezeNet, SNIP and GraSP (at the methods' temperature) at each q, one calibration batch per
    seed (Fig. 4.1's caption)."""
    rows = []
    for seed in range(seeds):
        model, cfg = build(experiment, "cpu", seed)
        batch = [calibration(cfg, data, seed, int(cfg.method.batch_size))]
        dense = pruning.mean_abs_gradient(model, batch)
        snip = pruning.scores("snip", model, batch)
        grasp = pruning.scores("grasp", model, batch, temperature=pruning.GRASP_TEMPERATURE)
        D = sum(t.numel() for t in snip.values())
        for q in qs:
            d = keep_count(D, exact_density(q), "floor")
            for method, s, pruned in (("FreezeNet", snip, False), ("SNIP", snip, True),
                                      ("GraSP", grasp, True)):
                keep = pruning.top_d(s, d)
                m = model
                if pruned:
                    m = copy.deepcopy(model)
                    with torch.no_grad():
                        for name, p in params.select(m, "weights"):
                            p.mul_(keep[name])
                flow = float(pruning.mean_abs_gradient(m, batch, keep) / dense)
                rows.append({"seed": seed, "q": q, "method": method, "flow": flow,
                             "q_beta": 1 - (d + counts(model)[1]) / (D + counts(model)[1])})
    return pd.DataFrame(rows)


def fig31(experiment: str, data: str, seeds: int, out: Optional[str]):
    df = fig31_curves(experiment, data, seeds, FIG31_QS)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in df.groupby("method", sort=False):
        stats = g.groupby("q")["flow"].agg(["mean", "std"]).fillna(0.0)
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                    label=method)
    ax.set_xscale("logit")
    ax.set_xlabel("compression rate q")
    ax.set_ylabel("gradient flow / dense")
    ax.set_yscale("symlog", linthresh=1e-3)  # a pruned net's flow can be exactly 0
    ax.set_ylim(bottom=0)
    model = experiment_cfg(experiment).model._target_.rsplit(".", 1)[-1]
    src = "synthetic inputs" if data == "synthetic" else experiment_cfg(experiment).dataset.name
    ax.set_title(f"Wimmer's thesis, Fig. 3.1 analogue: {model}, {src}, {seeds} seeds, at initialization", fontsize=9)
    ax.legend(fontsize=8)
    print(df.groupby(["method", "q"])["flow"].mean().unstack(0).to_string(float_format="%.4g"))
    return save(fig, figure_path(out, [], f"freezenet_fig31_{experiment}_{data}"))


# -- figures from runs --------------------------------------------------------------------------
def accuracy(dirs: Sequence[str], y: str, hue: str, out: Optional[str]):
    """`y` (at the reported epoch) against method.q, mean +- std over seeds, one line per `hue`,
    q_beta on a second axis (Figs. 3.3-3.6); q = 0 runs are the dense baseline (dashed)."""
    runs = completed(dirs, "runs of a wimmer_table3_* or wimmer_fig3_* experiment with method.q")
    rows = []
    for r in runs:
        q = value(r, "method.q")
        last = r["phases"][-1]
        at = last["best"] if y in last["best"] else last["end"]
        if q is None or y not in at:
            raise AnalysisError(f"{r['_dir']}: no method.q or no {y!r} (a prune_init method run?)")
        rows.append({"q": float(q), "hue": str(value(r, hue)), "y": at[y],
                     "q_beta": last.get("q_beta", float("nan"))})
    df = pd.DataFrame(rows)
    pct = percent(runs, y)
    df["y"] *= 100.0 if pct else 1.0
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in df[df.q > 0].groupby("hue", sort=False):
        stats = g.groupby("q")["y"].agg(["mean", "std"]).fillna(0.0)
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=name)
    base = df[df.q == 0]
    if len(base):
        ax.axhline(base.y.mean(), linestyle="--", color="grey", label=f"dense (n={len(base)})")
    ax.set_xlabel("compression rate q")
    ax.set_ylabel(metric_label(y, pct))
    titled(fig, f"Wimmer's thesis, Figs. 3.3-3.6: {metric_label(y)} against the compression rate",
           runs)
    qs = sorted(df[df.q > 0].q.unique())
    qb = df[df.q > 0].groupby("q")["q_beta"].mean()
    top = ax.secondary_xaxis("top")
    top.set_ticks(qs, [f"{qb[q]:.4f}" for q in qs], fontsize=6, rotation=60)
    top.set_xlabel("real compression rate q_beta", fontsize=8)
    ax.legend(fontsize=8)
    return save(fig, figure_path(out, dirs, f"freezenet_{y}_by_q"))


def grads(dirs: Sequence[str], out: Optional[str]):
    """Fig. 3.5(b): per-epoch mean +- std of |g| over the trained weights, one line per run."""
    runs = completed(dirs, "runs of prune_init methods with grad_stats")
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(runs):
        m = metrics(r, "grad_abs_mean")
        x = range(1, len(m) + 1)
        space = f" {value(r, 'space')}" if value(r, "space") else ""  # SP / IP (Fig. 5.6 b)
        label = f"{value(r, 'method')}{space} q={value(r, 'method.q')} seed {r.get('seed')}"
        ax.plot(x, m.grad_abs_mean, color=f"C{i}", label=label)
        ax.fill_between(x, m.grad_abs_mean - m.grad_abs_std, m.grad_abs_mean + m.grad_abs_std,
                        color=f"C{i}", alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("|gradient| of trained weights, mean ± std")
    ax.legend(fontsize=7)
    titled(fig, "Wimmer's thesis, Fig. 3.5 (b): gradient magnitudes of the trained weights", runs)
    return save(fig, figure_path(out, dirs, "freezenet_grads"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.analysis.freezenet",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t31 = sub.add_parser("table31", help="Table 3.1 on every thesis model")
    t31.add_argument("--q", type=float, default=0.99)
    t31.add_argument("--check", action="store_true", help="measure on the real masked models")
    sub.add_parser("table32", help="Table 3.2's size, q_beta and compression columns")
    t33 = sub.add_parser("table33", help="Table 3.3 with the quoted rows")
    t33.add_argument("dirs", nargs="*")
    sub.add_parser("table34", help="Table 3.4's trained-parameter column")
    f31 = sub.add_parser("fig31", help="gradient flow at initialization")
    f31.add_argument("--experiment", default="wimmer_table3_2_fmnist")
    f31.add_argument("--data", choices=("real", "synthetic"), default="real")
    f31.add_argument("--seeds", type=int, default=3)
    acc = sub.add_parser("accuracy", help="a final metric against q (Figs. 3.3-3.6)")
    acc.add_argument("dirs", nargs="+")
    acc.add_argument("--y", default="test_acc")
    acc.add_argument("--hue", default="method")
    gr = sub.add_parser("grads", help="gradient statistics over training (Fig. 3.5b)")
    gr.add_argument("dirs", nargs="+")
    for s in (f31, acc, gr):
        s.add_argument("--out", default=None)
    a = p.parse_args(argv)
    commands = {"table31": lambda: print(table31(a.q, a.check)), "table32": lambda: print(table32()),
                "table33": lambda: print(table33(a.dirs)), "table34": lambda: print(table34()),
                "fig31": lambda: fig31(a.experiment, a.data, a.seeds, a.out),
                "accuracy": lambda: accuracy(a.dirs, a.y, a.hue, a.out),
                "grads": lambda: grads(a.dirs, a.out)}
    return cli(commands[a.cmd])


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
