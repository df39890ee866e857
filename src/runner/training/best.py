"""A phase's early stopping: the best-validation epoch, patience, the best weights kept and put
back, and where the phase stands between epochs (what a mid-phase checkpoint records)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch


def score(row: Dict[str, Any], select_by: str) -> float:
    """What the best epoch minimizes: val_loss, or -val_acc (`train.select_by`)."""
    return row["val_loss"] if select_by == "val_loss" else -row["val_acc"]


@dataclass
class BestEpoch:
    next_epoch: int = 0
    best: Optional[Dict[str, Any]] = None  # the best-validation row so far
    best_state: Optional[Dict[str, torch.Tensor]] = None  # its weights (train.restore_best)
    since_best: int = 0
    end: Optional[Dict[str, Any]] = None  # the last evaluated row
    schedule: Dict[str, Any] = field(default_factory=dict)

    def observe(self, row: Dict[str, Any], select_by: str, patience: Optional[int],
                model: Optional[torch.nn.Module] = None) -> bool:
        """An evaluated row; a new best keeps `model`'s weights where given. True: patience ran
        out (`patience` epochs without a better one)."""
        self.end = row
        if self.best is None or not (score(row, select_by) >= score(self.best, select_by)):  # NaN: latest
            self.best, self.since_best = row, 0
            if model is not None:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.since_best += 1
        return patience is not None and self.since_best >= patience

    def restore(self, model: torch.nn.Module) -> None:
        """The best epoch's weights back into `model`, where they were kept."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> Dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        vars(self).update(state)
        if self.best_state is not None:
            self.best_state = {k: v.to(device) for k, v in self.best_state.items()}
