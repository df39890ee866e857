"""The one way to reach a model's weights, whatever produces them.

A layer's weight may be a plain `nn.Parameter`, or computed by a `torch.nn.utils.parametrize`
parametrization from one or several stored tensors (`parametrizations.weight.original`, or
`original0, original1, ...`; a filter basis: coefficients `original` x `0.basis`). Writing `module.weight` in
place then changes a temporary, and the stored names differ from the effective ones.

Two views, used consistently by every method, init, probe and analysis:
- **parameters** (`parameters`, `select`): the stored tensors the optimizer trains, named as in
  `model.named_parameters()` and `state_dict()`; penalties, reinitialization masks, snapshots
  (`ctx.init_state`) and the runner's masks (`runner.sparse.masks`) address these;
- **slots** (`slots`): a module's `weight` / `bias` as the forward pass uses it, named
  `<module>.<weight|bias>`; read it with `Slot.value()`, write it with `Slot.assign` (through the
  parametrization's `right_inverse`), scale it with `scale_`. Norm-based methods (SWR, LW's
  rescaling, the Dirac reset) and analyses (frozen weights, norms) use slots.

Every parameter has a kind: `weights`, `biases` or `norm` (normalization-layer scale and shift).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
KINDS = ("weights", "biases", "norm")
PARAM_KINDS = KINDS + ("all",)


def kind_of(module: nn.Module, local: str) -> str:
    """'norm' for normalization-layer parameters, else 'biases' or 'weights' by name."""
    if isinstance(module, NORM_TYPES):
        return "norm"
    return "biases" if local.endswith("bias") else "weights"


def _kinds(params: str | Sequence[str]) -> set:
    kinds = {params} if isinstance(params, str) else set(params)
    unknown = kinds - set(PARAM_KINDS)
    if unknown:
        raise ValueError(f"unknown parameter kind(s) {sorted(unknown)}; valid: {PARAM_KINDS}")
    return set(KINDS) if "all" in kinds else kinds


@dataclass(frozen=True)
class Slot:
    """A module's tensor as the forward pass sees it (`module.<local>`)."""

    name: str
    module: nn.Module
    local: str
    kind: str

    @property
    def parametrized(self) -> bool:
        return parametrize.is_parametrized(self.module, self.local)

    def value(self) -> torch.Tensor:
        """The effective tensor, detached (computed through the parametrization, if any)."""
        return getattr(self.module, self.local).detach()

    def stored(self) -> List[nn.Parameter]:
        """The stored tensors this slot is computed from."""
        if not self.parametrized:
            return [getattr(self.module, self.local)]
        plist = self.module.parametrizations[self.local]
        return [p for _, p in plist.named_parameters()]

    @torch.no_grad()
    def assign(self, value: torch.Tensor) -> None:
        """Make the effective tensor equal `value` (stored tensors via `right_inverse`)."""
        if self.parametrized:
            setattr(self.module, self.local, value.to(self.value().dtype))
        else:
            getattr(self.module, self.local).copy_(value)


def _is_internal(name: str) -> bool:
    return "parametrizations" in name.split(".")


def slots(model: nn.Module, params: str | Sequence[str] = "all",
          modules: Iterable[nn.Module] | None = None) -> List[Slot]:
    """The weight / bias slots of the given kinds, in module order (a shared tensor once)."""
    kinds, out, seen = _kinds(params), [], set()
    allowed = None if modules is None else {id(m) for m in modules}
    for mod_name, module in model.named_modules():
        if _is_internal(mod_name) or (allowed is not None and id(module) not in allowed):
            continue
        locals_ = [n for n, _ in module.named_parameters(recurse=False)]
        if parametrize.is_parametrized(module):
            locals_ += list(module.parametrizations.keys())
        for local in locals_:
            slot = Slot(f"{mod_name}.{local}" if mod_name else local, module, local,
                        kind_of(module, local))
            key = id(slot.stored()[0])
            if slot.kind in kinds and key not in seen:
                seen.add(key)
                out.append(slot)
    return out


def parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter, str]]:
    """(stored name, tensor, kind) of every stored parameter, as in `named_parameters()`."""
    owner: Dict[int, str] = {}
    for slot in slots(model):
        for p in slot.stored():
            owner.setdefault(id(p), slot.kind)
    return [(n, p, owner.get(id(p), "weights")) for n, p in model.named_parameters()]


def select(model: nn.Module, params: str | Sequence[str] = "all") -> List[Tuple[str, nn.Parameter]]:
    """The stored parameters of the given kinds: 'weights', 'biases', 'norm', 'all' or a list."""
    kinds = _kinds(params)
    return [(n, p) for n, p, k in parameters(model) if k in kinds]


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A detached copy of every stored parameter, by stored name."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@torch.no_grad()
def scale_(chosen: Sequence[Slot], factors: torch.Tensor | Sequence[torch.Tensor]) -> None:
    """Multiply each slot's effective tensor by its factor (device tensors: no host sync).

    Plain tensors are scaled in place in one foreach call; a parametrized slot is reassigned.
    """
    each = factors.unbind() if torch.is_tensor(factors) else list(factors)
    plain = [i for i, s in enumerate(chosen) if not s.parametrized]
    if plain:
        torch._foreach_mul_([chosen[i].stored()[0] for i in plain], [each[i] for i in plain])
    for i, s in enumerate(chosen):
        if s.parametrized:
            s.assign(s.value() * each[i])


@torch.no_grad()
def norms(chosen: Sequence[Slot]) -> torch.Tensor:
    """The Frobenius norm of each slot's effective tensor, as one device tensor."""
    if not chosen:
        return torch.zeros(0)
    return torch.stack(torch._foreach_norm([s.value() for s in chosen]))


@torch.no_grad()
def total_norm(model: nn.Module) -> torch.Tensor:
    """The L2 norm of all effective weights, biases and norm parameters together."""
    return torch.linalg.vector_norm(norms(slots(model)))
