"""What every analysis command shares: completed runs, keys of a run, recorded metrics, figures.

An analysis command (`runner.plots`, `runner.analysis.*`) reads run or sweep directories, checks
that they hold the data it needs (else one line: what is missing, where, which option records
it), and writes its figure to `DIR/plots/<command>.png` unless `--out` says otherwise.
"""
from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from runner.identity import deduplicate  # noqa: E402
from runner.tables import cell_keys  # noqa: E402
from runner.results import METRICS_FILE, load_results  # noqa: E402


class AnalysisError(ValueError):
    """Input an analysis cannot use; printed as one line `error: ...`."""


def completed(dirs: Iterable, need: str = "") -> List[dict]:
    """The completed runs (with at least one phase) below `dirs`, each config and seed once;
    `need` says what for."""
    dirs = [Path(d) for d in dirs]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise AnalysisError(f"no such directory: {', '.join(missing)}")
    runs = [r for r in load_results(dirs) if r.get("status") == "completed" and r.get("phases")]
    runs = deduplicate(runs)[0]  # a config and seed found twice (two sweeps) counts once
    if not runs:
        raise AnalysisError(f"no completed runs under {', '.join(map(str, dirs))}"
                            + (f" ({need})" if need else ""))
    return runs


def value(run: dict, key: str):
    """A group choice (`method`) or a dotted config path (`phases.0.subset.n`) of a run."""
    if key in run.get("choices", {}):
        return run["choices"][key]
    node = run.get("config", {})
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def cell_pairs(runs: Sequence[dict], by: Optional[Sequence[str]] = None) -> List[List[str]]:
    """Each run's cell as `key=value` strings: its `by` keys, else the resolved values that
    differ between the runs (`runner.tables.cell_keys`; the seed never does)."""
    if by:
        return [[f"{k}={value(r, k)}" for k in by] for r in runs]
    keys = cell_keys(runs)
    names = list(dict.fromkeys(k for d in keys for k in d))
    varying = [k for k in names if len({d.get(k, "") for d in keys}) > 1]
    return [[f"{k}={d.get(k, '')}" for k in varying] for d in keys]


def cells(runs: Sequence[dict], by: Optional[Sequence[str]] = None) -> List[str]:
    """The label of each run's cell (see `cell_pairs`), else the run's name."""
    return [", ".join(p) or r.get("name", "run") for r, p in zip(runs, cell_pairs(runs, by))]


def experiment_cfg(experiment: str, overrides: Sequence[str] = ()):
    """The composed config of an experiment (no run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.app import conf_dir
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=[f"experiment={experiment}", *overrides])
    finally:
        GlobalHydra.instance().clear()


@lru_cache(maxsize=None)
def _reference_method(experiment: str, method: str) -> tuple:
    from omegaconf import OmegaConf
    try:
        node = OmegaConf.to_container(experiment_cfg(experiment, [f"method={method}"]).method,
                                      resolve=True)
    except Exception as e:  # an experiment or method this checkout no longer has
        raise AnalysisError(f"cannot compose experiment={experiment} method={method} to find its "
                            f"tuned options: {str(e).splitlines()[0]}") from e
    return tuple(node.items())


def reference_method(experiment: str, method: str) -> Dict[str, object]:
    """The method's options as the experiment sets them when nothing else is typed (its tuned
    values, else the method's file, else the constructor's defaults)."""
    return dict(_reference_method(experiment, method))


def options_changed(run: dict) -> Dict[str, object]:
    """The run's method options that differ from `reference_method` of its experiment."""
    choices = run.get("choices", {})
    ref = reference_method(str(choices.get("experiment")), str(choices.get("method")))
    own = (run.get("config") or {}).get("method") or {}
    return {k: v for k, v in own.items() if k != "_target_" and str(v) != str(ref.get(k))}


def final(run: dict, metric: str) -> float:
    """`metric` at the end of the run's last phase (NaN where not recorded)."""
    last = run["phases"][-1]
    v = last["end"].get(metric, last.get(metric))
    return float(v) if v is not None else float("nan")


def experiments(runs: Sequence[dict]) -> str:
    """The experiments of some runs, for messages."""
    return ", ".join(sorted({str(r.get("choices", {}).get("experiment", r.get("name"))) for r in runs}))


def _probe_index(run: dict, cls: str) -> Optional[int]:
    for i, m in enumerate(value(run, "extra_methods") or []):
        if isinstance(m, dict) and str(m.get("_target_", "")).endswith(cls):
            return i
    return None


def how_to_record(metric: str, run: dict) -> str:
    """The option that makes a run record `metric` per epoch."""
    if metric.startswith(("frozen_", "pair/")):
        i = _probe_index(run, "FrozenProbe")
        option = "every_epoch=true" if metric.startswith("frozen_") else "pairs=8"
        if i is not None:
            return f"rerun with extra_methods.{i}.{option}"
        return ("rerun with extra_methods=[{_target_:methods.frozen_probe.FrozenProbe,"
                f"{option.replace('=', ':')}}}]")
    if metric == "balancedness":
        return ("rerun with extra_methods=[{_target_:methods.balancedness.BalancednessProbe}] "
                "(as experiment=swr_fig5_cifar10_mlp does)")
    if metric.startswith(("grad_abs_", "grad_norm_lr")):
        return ("a run of a pruning-at-initialization method (method=snip, grasp, synflow, "
                "random_prune, freezenet, ...) with method.grad_stats=true records it")
    if metric.startswith("val_"):
        return "rerun with a validation split, e.g. train.val_fraction=0.1"
    if metric.startswith("test_"):
        return "rerun with train.eval_test=true"
    return "metrics.csv holds the trainer's columns and those of the stacked methods"


def metrics(run: dict, metric: Optional[str] = None) -> pd.DataFrame:
    """A run's metrics.csv; with `metric`, fail with the recording option where it is absent."""
    path = Path(run["_dir"]) / METRICS_FILE
    if not path.exists():
        raise AnalysisError(f"{path} is missing")
    m = pd.read_csv(path, comment="#")
    if metric is not None and (metric not in m.columns or m[metric].isna().all()):
        cols = [c for c in m.columns if c not in ("phase", "phase_name", "epoch")]
        cols = ", ".join(cols[:20]) + (f" and {len(cols) - 20} more" if len(cols) > 20 else "")
        raise AnalysisError(f"metric {metric!r} was not recorded in {path} ({how_to_record(metric, run)}); "
                            f"recorded: {cols}")
    return m


# -- how figures look: the papers' names, one colour per method, worded axes, titles ---------------
# The papers' names of the methods, each paper's in the order its tables list them:
# Alabdulmohsin et al. 2021, Table 1; Oh et al. 2025, Table 1 and App. D.2; Zilly et al. 2021,
# appendix Tables 6-8; Wimmer's thesis, Tables 3.2, 4.1 and 5.1.
PAPER_METHODS = [
    {"bl": "BL", "welsr": "WELSR", "dsd": "DSD", "wels": "WELS", "fc": "FC", "lw": "LW"},
    {"vanilla": "vanilla", "l2": "L2", "l2_init": "L2 Init", "shrink_perturb": "S&P",
     "head_reset": "Head Reset", "swr": "SWR", "swr_reinit": "SWR + re-init"},
    {"dirac_reset": "Dirac reset"},
    {"random_prune": "random", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow",
     "freezenet": "FreezeNet", "freezenet_random": "FreezeNet (random)",
     "freezenet_reinit": "FreezeNet (reinit)", "freezenet_wd": "FreezeNet (WD)",
     "g_cops": "G-COPS", "u_cops": "U-COPS", "m_cops": "M-COPS", "usnip": "USNIP",
     "lth": "LTH", "finetune": "FT", "gmp": "GMP", "set": "SET", "rigl": "RigL"},
]
METHOD_NAMES = {k: v for names in PAPER_METHODS for k, v in names.items()}
_COLOUR = {k: f"C{i % 10}" for names in PAPER_METHODS for i, k in enumerate(names)}
_COLOUR["vanilla"] = _COLOUR["bl"] = "C0"  # each paper's baseline in the same colour
_COLOUR.update({METHOD_NAMES[k]: c for k, c in list(_COLOUR.items())})  # by name as by id
# config keys in words, for panel titles and legends
KEY_WORDS = {"dataset.alpha": "signal strength α", "method.lambda": "λ", "method.q": "q",
             "optim.weight_decay": "weight decay", "optim.lr": "learning rate", "method": "method",
             "tuned.setting": "setting", "dataset.name": "dataset", "method.sparsity": "sparsity",
             "phases.0.subset.n": "samples in the first task", "experiment": "experiment"}


def key_words(key: str) -> str:
    return KEY_WORDS.get(key, key)

# metrics.csv columns and result.json values in words (with units); accuracies in % where the
# experiment prints percent (`report.scale: 100`)
METRIC_WORDS = {"test_acc": "test accuracy", "train_acc": "training accuracy",
                "val_acc": "validation accuracy", "test_loss": "test loss (cross-entropy)",
                "train_loss": "training loss (cross-entropy)", "val_loss": "validation loss (cross-entropy)",
                "lr": "learning rate", "frozen_filters": "frozen filters (count)",
                "balancedness": "balancedness", "weight_norm": "weight norm (L2)"}


def method_name(label: str) -> str:
    """The paper's name of a method label (`l2 (lambda=0.001)` -> `L2 (lambda=0.001)`)."""
    base, _, rest = str(label).partition(" (")
    return METHOD_NAMES.get(base, base) + (f" ({rest}" if rest else "")


def method_rank(label: str) -> tuple:
    """A sort key that puts methods in their paper's order, then by label."""
    base = str(label).partition(" (")[0]
    for p, names in enumerate(PAPER_METHODS):
        if base in names:
            return (p, list(names).index(base), str(label))
    return (len(PAPER_METHODS), 0, str(label))


def colours(labels: Iterable[str], methods: bool) -> Dict[str, str]:
    """One colour per label for a whole figure: a method's own colour (the same in every
    figure), else one per value in order."""
    labels = list(dict.fromkeys(labels))
    if methods and len({_COLOUR.get(str(v).partition(" (")[0]) for v in labels}) == len(labels) \
            and all(str(v).partition(" (")[0] in _COLOUR for v in labels):
        return {v: _COLOUR[str(v).partition(" (")[0]] for v in labels}
    return {v: f"C{i % 10}" for i, v in enumerate(labels)}


def percent(runs: Sequence[dict], metric: str) -> bool:
    """Whether the runs' experiments print `metric` in percent."""
    return metric.endswith("_acc") and any(
        float(((r.get("config") or {}).get("report") or {}).get("scale", 1)) == 100 for r in runs)


def metric_label(metric: str, pct: bool = False) -> str:
    words = METRIC_WORDS.get(metric, metric.replace("_", " "))
    return words + (" [%]" if pct else "")


def smoke_note(runs: Sequence[dict]) -> str:
    """`[ci=smoke test runs, not the paper's numbers]` where runs ran at a test level."""
    from runner.tables import run_level
    levels = sorted({run_level(r) for r in runs} - {""})
    return f" [ci={', '.join(levels)} test runs, not the paper's numbers]" if levels else ""


def titled(fig, title: str, runs: Sequence[dict] = ()) -> None:
    """The figure's title (naming paper and figure), marked when its runs are test runs."""
    note = smoke_note(runs).strip()
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)


def legend_outside(ax, handles=None, labels=None, below: bool = False, **kw) -> None:
    """The legend right of the axes (or below them), off the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        where = (dict(loc="upper center", bbox_to_anchor=(0.5, -0.2)) if below else
                 dict(loc="upper left", bbox_to_anchor=(1.02, 1.0)))
        ax.legend(handles, labels, borderaxespad=0.0, fontsize=8, **where, **kw).set_gid("outside")


def display_label(label: str) -> str:
    """A legend entry in the papers' words: method ids as the papers name them, `key=value`
    parts with the key in words (`method=lth, space=sp` -> `LTH, space = sp`)."""
    parts = []
    for part in str(label).split(", "):
        key, eq, v = part.partition("=")
        if eq and key == "method":
            parts.append(method_name(v))
        elif eq and key in KEY_WORDS or eq and key in ("space", "model", "dataset"):
            parts.append(f"{key_words(key)} = {v}")
        else:
            head, sep, rest = part.partition(" ")
            parts.append(method_name(head) + sep + rest if head in METHOD_NAMES else part)
    return ", ".join(parts)


def finish(fig) -> None:
    """What every figure gets before it is written: legend entries in the papers' words and
    outside the data (one legend where the panels repeat it), metric ids on axes in words."""
    axes = [ax for ax in fig.axes if ax.get_visible()]
    legends = [(ax, ax.get_legend()) for ax in axes if ax.get_legend() is not None]
    moved = [(ax, leg) for ax, leg in legends if leg.get_gid() != "outside"]
    texts = [tuple(t.get_text() for t in leg.get_texts()) for _, leg in moved]
    for i, (ax, leg) in enumerate(moved):
        handles, labels = leg.legend_handles, [display_label(t) for t in texts[i]]
        title = leg.get_title().get_text() or None
        leg.remove()
        if texts[i] in texts[i + 1:]:
            continue  # the same legend on a later panel: shown there only
        last = i == len(moved) - 1 or ax is axes[-1]
        legend_outside(ax, handles, labels, below=not last, title=title)
    for ax in axes:
        for get, set_ in ((ax.get_xlabel, ax.set_xlabel), (ax.get_ylabel, ax.set_ylabel)):
            if get() in METRIC_WORDS:
                set_(METRIC_WORDS[get()])


def marker(n_points: int) -> Optional[str]:
    """A marker on sparse series (a few points), none on dense curves."""
    return "o" if n_points <= 30 else None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def figure_path(out: Optional[str], dirs: Sequence, name: str) -> Path:
    """`out`, else `<first DIR>/plots/<name>.png` (`./plots/` without a directory)."""
    if out:
        return Path(out)
    base = Path(dirs[0]) if dirs else Path(".")
    return base / "plots" / f"{slug(name)}.png"


def save(fig, out) -> Path:
    """Write a figure (nothing cut off at its edges) and say where; a replaced file is named so."""
    path = Path(out)
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    finish(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"figure written to {path}" + (" (replacing the previous one)" if existed else ""))
    return path


def cli(fn: Callable[[], object]) -> int:
    """Run a command's body: 0, or 2 with one `error:` line for input it cannot use."""
    try:
        fn()
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
