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

from runner.tables import cell_keys  # noqa: E402
from runner.results import METRICS_FILE, load_results  # noqa: E402


class AnalysisError(ValueError):
    """Input an analysis cannot use; printed as one line `error: ...`."""


def completed(dirs: Iterable, need: str = "") -> List[dict]:
    """The completed runs (with at least one phase) below `dirs`; `need` says what for."""
    dirs = [Path(d) for d in dirs]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise AnalysisError(f"no such directory: {', '.join(missing)}")
    runs = [r for r in load_results(dirs) if r.get("status") == "completed" and r.get("phases")]
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
        return ("rerun with extra_methods=[{_target_:runner.analysis.swr.BalancednessProbe}] "
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
    m = pd.read_csv(path)
    if metric is not None and (metric not in m.columns or m[metric].isna().all()):
        cols = [c for c in m.columns if c not in ("phase", "phase_name", "epoch")]
        cols = ", ".join(cols[:20]) + (f" and {len(cols) - 20} more" if len(cols) > 20 else "")
        raise AnalysisError(f"metric {metric!r} was not recorded in {path} ({how_to_record(metric, run)}); "
                            f"recorded: {cols}")
    return m


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
