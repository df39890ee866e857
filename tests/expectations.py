"""What a run's resolved config implies about its result, checked after the fact.

`check_run(result, events)` asserts, from `result["config"]` alone:
- the executed phases: one per repeat of each configured phase (capped by `train.max_repeat`),
  named as the trainer names them, in order;
- the epochs and steps of each phase: never more epochs than configured (capped by
  `train.max_epochs`), exactly that many without patience, and, when the training-set size is
  known (synthetic data, as at a test level), steps = epochs x batches per epoch, from the val
  split, the phase's subset, the batch size (capped by `train.max_batch_size`) and
  `train.max_batches`, less the steps before its `start_step` (a phase that starts inside its
  schedule: LTH's rounds);
- the report metric is in `summary` (a finite number) and in `result.json` on disk;
- the paper's value is the one `paper.values` declares for this cell, and `paper.by` names only
  keys that exist;
- the methods fired: `events` (from the `method_events` fixture) records, for every method's
  `setup` and `on_phase_start`, whether the model's weights changed. Interventions must change
  them when they say they act (`INTERVENTIONS`); every other method must leave them alone there.
  Probes must have written their metrics (`PROBES`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
from omegaconf import OmegaConf

from methods.base import MethodStack
from runner.ci import SYNTHETIC

WATCHED = ("setup", "on_phase_start")


@dataclass
class Event:
    hook: str
    phase: int
    method: object
    changed: bool


# class name -> at which phase index its on_phase_start must change the weights ("setup": in setup)
INTERVENTIONS: Dict[str, Callable[[object, int], bool]] = {
    **{name: lambda m, i: i > 0 for name in ("WELSR", "DSD", "WELS", "FC", "LW", "ShrinkPerturb",
                                             "HeadReset")},
    "DiracReset": lambda m, i: m.acts(i),
    "ScaleOnce": lambda m, i: i == m.at_phase,
    "SparseInit": lambda m, i: False,  # acts in setup
    "SET": lambda m, i: False, "RigL": lambda m, i: False,  # random sparse mask in setup
    "LTH": lambda m, i: i > 0,  # prune and rewind at every round after the first
    "FineTune": lambda m, i: i == m.at_phase and m.sparsity > 0,
    "PruneAtInit": lambda m, i: False,  # acts in setup
    "Cops": lambda m, i: False,  # prunes in setup
}
# class name -> whether its setup must change the weights (PruneAtInit: pruning zeroes weights,
# reinit redraws them; freezing at q < 1 keeps them)
SETUP_INTERVENTIONS = {"SparseInit": lambda m: True, "SET": lambda m: True, "RigL": lambda m: True,
                       "PruneAtInit": lambda m: m.reinit or (m.kind == "pruned" and m.q > 0),
                       "Cops": lambda m: m.q > 0}
# class name -> (keys every phase summary has, keys the last phase has)
PROBES = {
    "FrozenProbe": (["frozen_filters", "frozen_units", "start_frozen_filters"], []),
    "ReinitProbe": ([], ["margins", "weight_size", "perturb"]),
    "WELSR": (["reinit_rounds"], []), "DSD": (["reinit_rounds"], []),
    "WELS": (["reinit_rounds"], []), "FC": (["reinit_rounds"], []),
    "LW": (["lw_block"], []), "SparseInit": (["init_sparsity"], []),
    "SET": ([], ["mask_updates", "density"]), "RigL": ([], ["mask_updates", "density"]),
    "GMP": (["sparsity"], []), "LTH": (["lth_round", "sparsity", "layer_density"], []),
    "FineTune": (["sparsity"], []),
    "PruneAtInit": (["q", "q_beta", "params_trained", "params_stored", "size_kb", "grad_flow",
                     "density", "empty_layers"], []),
    "Cops": (["q", "q_beta", "params_trained", "params_stored", "size_kb", "grad_flow",
              "density", "empty_layers", "cops_lambda", "cops_s0", "cops_s1", "sim_target",
              "sim_control"], []),
}


@torch.no_grad()
def _state(model) -> Dict[str, tuple]:
    """Per tensor of the state: sum and sum of magnitudes (cheap for big models, and changed by
    any reinitialization, rescaling or reset in practice)."""
    return {k: (v.sum().item(), v.abs().sum().item()) if v.is_floating_point() else v.sum().item()
            for k, v in model.state_dict().items()}


def _changed(before: Dict[str, tuple], model) -> bool:
    return before != _state(model)


@pytest.fixture
def method_events(monkeypatch) -> List[Event]:
    """Record, per method, whether `setup` / `on_phase_start` changed the model's weights."""
    events: List[Event] = []
    call = MethodStack.call

    def watched(stack, hook, ctx):
        if hook not in WATCHED:
            return call(stack, hook, ctx)
        for m in stack.by_hook[hook]:
            before = _state(ctx.model)
            getattr(m, hook)(ctx)
            events.append(Event(hook, ctx.phase_index, m, _changed(before, ctx.model)))

    monkeypatch.setattr(MethodStack, "call", watched)
    return events


def capped(value, cap):
    """min(value, cap); a None cap is no cap, a None value (full batch) is capped too."""
    return value if cap is None else cap if value is None else min(value, cap)


def expected_phases(cfg) -> List[tuple]:
    """(name, phase config, repeat index) of every phase the config runs."""
    out = []
    for phase in cfg.phases:
        n = capped(phase.repeat, cfg.train.max_repeat)
        out += [(phase.name if phase.repeat == 1 else f"{phase.name}{r + 1}", phase, r)
                for r in range(n)]
    return out


def train_size(cfg, phase, repeat: int, n_train: int) -> int:
    """Training samples a phase sees: the set minus validation, then the phase's subset."""
    n = n_train - int(round(cfg.train.val_fraction * n_train))
    sub = phase.subset
    if sub.fraction is not None:
        return int(round(sub.fraction * n))
    if sub.n is not None:
        return min(sub.n, n)
    if sub.chunks is not None:
        size = n // sub.chunks
        return (repeat + 1) * size if sub.access == "full" else size
    return n


def batches_per_epoch(cfg, n: int) -> int:
    bs = capped(cfg.train.batch_size, cfg.train.max_batch_size)
    per_epoch = 1 if bs is None else math.ceil(n / bs)
    return capped(per_epoch, cfg.train.max_batches)


def synthetic_size(cfg) -> Optional[int]:
    """The training samples of every dataset when all are synthetic of one size, else None."""
    readers = [cfg.dataset.reader, *(d.reader for d in cfg.datasets.values())]
    if any(r.get("_target_") != SYNTHETIC for r in readers):
        return None
    sizes = {r.n_train for r in readers}
    return sizes.pop() if len(sizes) == 1 else None


def declared_paper_value(cfg, choices):
    node = cfg.paper["values"]
    for key in cfg.paper.by:
        k = choices.get(key, OmegaConf.select(cfg, key, default=None))
        node = node.get(str(k)) if hasattr(node, "get") and k is not None else None
    return node if isinstance(node, (int, float)) else None


def check_run(result: dict, events: Optional[List[Event]] = None, n_train: Optional[int] = None):
    """Assert what the run's config implies (see the module's docstring)."""
    cfg = OmegaConf.create(result["config"])
    if n_train is None:
        n_train = synthetic_size(cfg)
    phases = result["phases"]

    expected = expected_phases(cfg)
    assert [p["name"] for p in phases] == [name for name, *_ in expected], "phases"
    assert [p["index"] for p in phases] == list(range(len(expected)))
    steps = 0
    for p, (name, phase, repeat) in zip(phases, expected):
        cap = cfg.train.epochs if phase.epochs is None else phase.epochs
        cap = capped(cap, cfg.train.max_epochs)
        patience = cfg.train.patience if phase.patience is None else phase.patience
        assert 1 <= p["epochs"] <= cap and (patience is not None or p["epochs"] == cap), \
            f"{name}: {p['epochs']} epochs, configured {cap} (patience {patience})"
        assert 1 <= p["best_epoch"] <= p["epochs"], f"{name}: best epoch {p['best_epoch']}"
        if n_train is not None:
            steps += (p["epochs"] * batches_per_epoch(cfg, train_size(cfg, phase, repeat, n_train))
                      - p.get("start_step", 0))  # a phase started inside its schedule
            assert p["steps"] == steps, f"{name}: {p['steps']} steps, expected {steps}"

    metric = cfg.report.metric
    value = result["summary"].get(metric)
    assert isinstance(value, (int, float)) and math.isfinite(value), f"summary {metric}={value!r}"
    on_disk = json.loads((Path(result["_dir"]) / "result.json").read_text())
    assert on_disk["summary"].get(metric) == value

    for key in cfg.paper.by:
        assert key in result["choices"] or OmegaConf.select(cfg, key, default=None) is not None, \
            f"paper.by names {key!r}, neither a group choice nor a config key"
    assert result["paper_value"] == declared_paper_value(cfg, result["choices"])
    if cfg.paper["values"]:
        assert cfg.paper.source, "paper values without a source"

    if events is None:
        return
    methods = {id(e.method): e.method for e in events}
    for m in methods.values():
        kind = type(m).__name__
        mine = [e for e in events if e.method is m]
        if kind in SETUP_INTERVENTIONS and SETUP_INTERVENTIONS[kind](m):
            assert any(e.changed for e in mine if e.hook == "setup"), f"{kind}.setup changed nothing"
        if kind in INTERVENTIONS:
            for e in mine:
                if e.hook == "on_phase_start" and INTERVENTIONS[kind](m, e.phase):
                    assert e.changed, f"{kind} did not change the weights at phase {e.phase}"
        else:
            assert not any(e.changed for e in mine), \
                f"{kind} changed the weights in {[e.hook for e in mine if e.changed]} " \
                f"(an intervention? list it in tests/expectations.py INTERVENTIONS)"
        if kind in ("WELSR", "DSD", "WELS", "FC"):  # one round per phase after the first
            assert [p["reinit_rounds"] for p in phases] == list(range(len(phases)))
        if kind in ("PruneAtInit", "Cops") and m.kind != "frozen_wd" and m.store:
            assert phases[-1]["storage_exact"] == 1, "the stored network did not reload bitwise"
        every, last = PROBES.get(kind, ([], []))
        for p in phases:
            missing = [k for k in every if k not in p]
            assert not missing, f"{kind} wrote no {missing} in phase {p['name']}"
        assert all(k in phases[-1] for k in last), f"{kind} wrote no {last} in the last phase"
