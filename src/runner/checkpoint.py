"""Checkpoints: what a run needs to continue bitwise where it stopped, and where to find them.

`checkpoint.pt` in the run directory is written atomically (a temporary file renamed over it) at
the end of each phase but the last, every `train.checkpoint_every` epochs and after the first epoch that ends
`train.checkpoint_minutes` after the last one; it is removed when the run completes
(`train.save_model` keeps the final weights as `model.pt`). It holds

- `position`: the phase to run next and the epoch of it (0: the phase has not started);
- the model's state_dict (parametrizations included: their stored tensors are its entries), the
  masks (`ctx.masks`), which parameters train (`requires_grad`) and which the optimizer holds,
  the optimizer's and the gradient scaler's state;
- every method's `state_dict()` (the protocol of `methods.base`);
- every random state: torch's CPU and CUDA generators, Python's and NumPy's, the trainer's
  data-order and augmentation generators and the methods' generator (`ctx.gen`);
- the context (`step`, `lr`, `weight_decay`, `gamma`), the divergence reference loss and, inside
  a phase, its schedule and early-stopping state (best row, best weights, epochs since best);
- what the run has written: `metrics.csv`'s text and `result.json`'s phases, so a resumed run
  rewrites them as they stood and appends from there.

Only tensors, numbers, strings, lists and dicts are stored; `load` reads with
`weights_only=True`, so loading a checkpoint runs no code from it.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from runner.errors import ConfigError, RunnerError
from runner.identity import run_identity
from runner.results import METRICS_FILE, RESULT_FILE, write_atomic, write_json_atomic

log = logging.getLogger("runner")

CHECKPOINT_FILE, MODEL_FILE = "checkpoint.pt", "model.pt"


def save(path: Path, obj: Any) -> None:
    """torch.save to a temporary file beside `path`, renamed over it (readable by the group)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path: Path) -> Dict[str, Any]:
    """A file `save` wrote, read without running code from it; one line if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunnerError(f"checkpoint {path} cannot be read ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}); start the run again") from None


def load_run(path: Path) -> Dict[str, Any]:
    """A run's checkpoint.pt (`load`); one without its identity and position is one line too,
    before anything is written."""
    state = load(path)
    ident, position = (state.get("identity"), state.get("position")) if isinstance(state, dict) \
        else (None, None)
    phase = position.get("phase") if isinstance(position, dict) else None
    if not (isinstance(ident, str) and isinstance(phase, int) and not isinstance(phase, bool)
            and phase >= 0):
        raise RunnerError(f"checkpoint {path} is incomplete (no identity or position); it is not "
                          f"a checkpoint of this runner: start the run again")
    return state


def rng_state(generators: Dict[str, torch.Generator]) -> Dict[str, Any]:
    """Every random state a run draws from."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            **{name: g.get_state() for name, g in generators.items()}}


def set_rng_state(state: Dict[str, Any], generators: Dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    for name, g in generators.items():
        g.set_state(state[name])


def identity(choices: Dict[str, str], config: Dict[str, Any]) -> str:
    """What makes two runs the same run (the report's rule: group choices and resolved config,
    seed included, without execution settings)."""
    return run_identity({"choices": choices, "config": config})


def find_previous(root: Path, ident: str) -> Tuple[Optional[str], Optional[Path]]:
    """A run below `root` with the identity `ident`: ("completed", its dir) if one completed,
    else ("checkpoint", the dir of the newest checkpoint), else (None, None). A requeued job
    finds its own directory."""
    best: Tuple[Optional[str], Optional[Path], float] = (None, None, -1.0)
    for f in sorted(Path(root).rglob(RESULT_FILE)) if Path(root).is_dir() else []:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not r.get("config") or identity(r.get("choices", {}), r["config"]) != ident:
            continue
        if r.get("status") == "completed":
            return "completed", f.parent
        ckpt = f.parent / CHECKPOINT_FILE
        if ckpt.exists() and ckpt.stat().st_mtime > best[2]:
            best = ("checkpoint", f.parent, ckpt.stat().st_mtime)
    return best[0], best[1]


def previous_run(resume: Optional[str], out_dir: Path, ident: str, search_root) -> tuple:
    """What `resume` points at: ("completed", dir), ("checkpoint", dir) or (None, None)."""
    if resume is None:
        return None, None
    if resume == "auto":
        return find_previous(Path(search_root or out_dir.parent), ident)
    where = Path(resume)
    status = None
    if (where / RESULT_FILE).exists():
        status = json.loads((where / RESULT_FILE).read_text()).get("status")
    if status == "completed":
        return "completed", where
    if not (where / CHECKPOINT_FILE).exists():
        raise ConfigError(f"resume={resume}: no {CHECKPOINT_FILE} there (status "
                          f"{status}); the run stopped before its first checkpoint: start it again")
    return "checkpoint", where


def reuse(src: Path, out_dir: Path) -> Dict[str, Any]:
    """A completed run of the same config: its result (copied into `out_dir` when elsewhere)."""
    result = json.loads((src / RESULT_FILE).read_text())
    if src.resolve() != out_dir.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, MODEL_FILE):
            if (src / name).exists():
                shutil.copy2(src / name, out_dir / name)
        result["reused_from"] = str(src)
        write_json_atomic(out_dir / RESULT_FILE, result)
    log.info("%s completed already (%s): not run again", result.get("name"), src)
    return result
