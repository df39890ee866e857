"""The run's masks over stored parameters, owned by the runner (`ctx.masks`), not by a method.

A mask says, entry by entry, which values of a stored parameter train (`keep` True). The others
are, by kind:
- `pruned`: exactly 0, in the forward pass and after every step, whatever the optimizer;
- `frozen`: fixed at a value (by default the value when the mask is set), bitwise;
- `frozen_wd`: their gradient is zeroed, so only the optimizer's weight decay moves them
  (FreezeNet-WD).

Methods set masks (`set`); the trainer enforces them: `mask_grads` before each optimizer step and
`project` after it and after every method hook, as two foreach calls over all masked tensors.
Setting or changing a mask zeroes the optimizer state (momentum, Adam moments) at every entry
whose status changed, so a regrown weight starts from a clean state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

MASK_KINDS = ("pruned", "frozen", "frozen_wd")


@dataclass
class Mask:
    keep: torch.Tensor  # bool, the parameter's shape: True trains
    kind: str
    fill: Optional[torch.Tensor]  # value of the masked entries (pruned: None = 0)

    def __post_init__(self):  # the factors of the projection, made once
        self.factor = self.keep.to(self.fill.dtype if self.fill is not None else torch.float32)
        self.offset = None if self.fill is None else self.fill * (~self.keep)


class Masks:
    def __init__(self, model: nn.Module, optimizer: Callable[[], Optional[torch.optim.Optimizer]]):
        self.params: Dict[str, nn.Parameter] = dict(model.named_parameters())
        self.optimizer = optimizer
        self.masks: Dict[str, Mask] = {}
        self._lists()

    def __contains__(self, name: str) -> bool:
        return name in self.masks

    def __getitem__(self, name: str) -> Mask:
        return self.masks[name]

    def __len__(self) -> int:
        return len(self.masks)

    def names(self) -> List[str]:
        return list(self.masks)

    @torch.no_grad()
    def set(self, name: str, keep: torch.Tensor, kind: str = "pruned",
            value: Optional[torch.Tensor] = None) -> None:
        """Mask stored parameter `name`: `keep` (bool, its shape) trains; the rest is `kind`."""
        if kind not in MASK_KINDS:
            raise ValueError(f"mask kind {kind!r}; valid: {', '.join(MASK_KINDS)}")
        if name not in self.params:
            raise KeyError(f"no stored parameter {name!r}; valid: {', '.join(self.params)}")
        p = self.params[name]
        keep = keep.to(device=p.device, dtype=torch.bool)
        if keep.shape != p.shape:
            raise ValueError(f"mask of {name!r} has shape {tuple(keep.shape)}, "
                             f"the parameter {tuple(p.shape)}")
        old = self.masks.get(name)
        changed = keep != (old.keep if old is not None else torch.ones_like(keep))
        if old is not None and old.kind != kind:
            changed = changed | ~keep
        fill = None
        if kind == "frozen":
            fill = (p.detach() if value is None else value.to(p)).clone()
        mask = self.masks[name] = Mask(keep, kind, fill)
        self._clear_state(p, changed)
        self._lists()
        if kind != "frozen_wd":
            p.mul_(mask.factor)
            if mask.offset is not None:
                p.add_(mask.offset)

    def remove(self, name: str) -> None:
        """Unmask `name`: every entry trains again (its optimizer state restarts)."""
        mask = self.masks.pop(name)
        self._clear_state(self.params[name], ~mask.keep)
        self._lists()

    def _clear_state(self, p: nn.Parameter, changed: torch.Tensor) -> None:
        opt = self.optimizer()
        state = opt.state.get(p, {}) if opt is not None else {}
        for value in state.values():
            if torch.is_tensor(value) and value.shape == p.shape:
                value.masked_fill_(changed, 0)

    def _lists(self) -> None:
        """The tensors of the foreach calls, precomputed when masks change."""
        projected = [(n, m) for n, m in self.masks.items() if m.kind != "frozen_wd"]
        self._t = [self.params[n] for n, _ in projected]
        self._keep = [m.factor.to(self.params[n].dtype) for n, m in projected]
        filled = [(n, m) for n, m in projected if m.offset is not None]
        self._ft = [self.params[n] for n, _ in filled]
        self._fill = [m.offset for _, m in filled]
        grads = [(n, m) for n, m in self.masks.items() if m.kind == "frozen_wd"]
        self._gt = [self.params[n] for n, _ in grads]
        self._gkeep = [m.factor.to(self.params[n].dtype) for n, m in grads]

    @torch.no_grad()
    def project(self) -> None:
        """Masked entries back to their value: stored * keep (+ fill)."""
        if self._t:
            torch._foreach_mul_(self._t, self._keep)
        if self._ft:
            torch._foreach_add_(self._ft, self._fill)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradient of `frozen_wd` entries (before the optimizer step)."""
        grads = [(p.grad, k) for p, k in zip(self._gt, self._gkeep) if p.grad is not None]
        if grads:
            torch._foreach_mul_([g for g, _ in grads], [k for _, k in grads])

    def counts(self) -> Dict[str, torch.Tensor]:
        """Per masked parameter, the number of entries that train (a device tensor each)."""
        return {n: m.keep.sum() for n, m in self.masks.items()}

    def state_dict(self) -> Dict[str, Dict]:
        return {n: {"keep": m.keep, "kind": m.kind, "fill": m.fill} for n, m in self.masks.items()}

    def load_state_dict(self, state: Dict[str, Dict]) -> None:
        self.masks = {n: Mask(s["keep"].to(self.params[n].device), s["kind"],
                              None if s["fill"] is None else s["fill"].to(self.params[n]))
                      for n, s in state.items()}
        self._lists()
        self.project()
