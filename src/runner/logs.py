"""What a run tells as it goes: its environment at the start (also kept in result.json), one line
per evaluated epoch, and a bar of the batches of an epoch that takes long."""
from __future__ import annotations

import functools
import logging
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch
from tqdm import tqdm

log = logging.getLogger("runner")
BATCH_BAR_DELAY_S = 10.0  # an epoch running longer than this shows a bar of its batches


@functools.lru_cache(maxsize=None)
def git_commit(where: Path) -> Optional[str]:
    """HEAD of the git checkout holding `where` ('+dirty' when tracked files changed), else None."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def environment(device: torch.device, run_dir) -> Dict[str, Any]:
    """The device a run actually uses, where it writes, and the code and libraries it runs on."""
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {"device": str(device), "device_name": name, "run_dir": str(Path(run_dir).resolve()),
            "git_commit": git_commit(Path(__file__).resolve().parent),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "python": platform.python_version()}


def log_start(name: str, seed: int, env: Dict[str, Any]) -> None:
    """One block at the start of a run."""
    cuda = "none" if env["cuda"] is None else \
        f"{env['cuda']} ({'available' if env['cuda_available'] else 'not available'})"
    log.info("run %s, seed %s\n  device:    %s (%s)\n  run dir:   %s\n  git:       %s\n"
             "  torch:     %s, CUDA %s, Python %s", name, seed, env["device"], env["device_name"],
             env["run_dir"], env["git_commit"] or "not a git checkout", env["torch"], cuda,
             env["python"])


def epoch_line(phase: str, epoch: int, epochs: int, row: Dict[str, Any]) -> str:
    """`phase epoch e/E lr | train loss / acc | val ... | test ...`, leaving out unmeasured splits."""
    parts = [f"{phase} epoch {epoch}/{epochs} lr {row['lr']:.3g}"]
    for split in ("train", "val", "test"):
        loss, acc = row[f"{split}_loss"], row[f"{split}_acc"]
        if math.isfinite(loss) or math.isfinite(acc):
            parts.append(f"{split} {loss:.4f} / {acc:.4f}")
    return " | ".join(parts)


def batch_bar(it: Iterable, n: int, batch_size: Optional[int], limit: Optional[int],
              progress: Optional[bool]) -> Iterable:
    """The batches of one epoch, behind a bar that shows once the epoch has run
    BATCH_BAR_DELAY_S seconds (none for a one-batch epoch); `progress` as the run's option
    (None: only on a terminal)."""
    total = math.ceil(n / (batch_size or n or 1))
    total = total if limit is None else min(total, limit)
    if total <= 1 or progress is False or (progress is None and not sys.stderr.isatty()):
        return it
    return tqdm(it, total=total, desc="batches", unit="batch", leave=False, delay=BATCH_BAR_DELAY_S)
