"""A FreezeNet on disk: its trained entries, its mask and one seed (Wimmer's thesis, Sec. 2.2.2.3,
3.3.3.1). The frozen weights are the initialization the seed draws, so they need not be stored.

`pack(model, masks, seed)` -> a dict of: the seed; per masked weight tensor, its mask as packed
bits, its kind and the values of its trained entries; every unmasked parameter whole (biases,
normalization parameters, weights that train entirely); the buffers (BatchNorm statistics).
`unpack(blob, build)` -> the network: `build(seed)` draws the initialization (e.g.
`ctx.build_model`), the trained entries and the rest are written over it, `pruned` entries are 0.
`nbytes(blob)` is the size `torch.save` writes; `identical(a, b)` compares two networks bitwise. FreezeNet-WD (`frozen_wd`) cannot be stored this
way: weight decay has moved its frozen entries away from the seed's values.
"""
from __future__ import annotations

import io
from typing import Callable, Dict

import numpy as np
import torch
from torch import nn


def _bits(keep: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(keep.flatten().cpu().numpy()))


def _unbits(bits: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool)).view(*shape)


@torch.no_grad()
def pack(model: nn.Module, masks, seed: int) -> Dict:
    """What a masked network needs on disk, given that `seed` redraws its initialization."""
    tensors, masked = {}, {}
    for name, p in model.named_parameters():
        if name in masks:
            m = masks[name]
            if m.kind == "frozen_wd":
                raise ValueError(f"{name!r} is frozen_wd: weight decay moved its frozen entries, "
                                 "a seed cannot restore them; store the dense state_dict instead")
            masked[name] = {"bits": _bits(m.keep), "kind": m.kind,
                            "values": p.detach()[m.keep].cpu().clone()}
        else:
            tensors[name] = p.detach().cpu().clone()
    buffers = {n: b.detach().cpu().clone() for n, b in model.named_buffers()}
    return {"seed": int(seed), "params": tensors, "masked": masked, "buffers": buffers}


@torch.no_grad()
def unpack(blob: Dict, build: Callable[[int], nn.Module]) -> nn.Module:
    """The network `pack` stored: `build(seed)`'s initialization with the stored values over it."""
    model = build(blob["seed"])
    named = dict(model.named_parameters())
    for name, m in blob["masked"].items():
        p = named[name]
        keep = _unbits(m["bits"], p.shape).to(p.device)
        if m["kind"] == "pruned":
            p.zero_()
        p[keep] = m["values"].to(p)
    for name, t in blob["params"].items():
        named[name].copy_(t)
    for name, b in model.named_buffers():
        b.copy_(blob["buffers"][name])
    return model


def tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every stored parameter and buffer by name (a tensor shared under two names once)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def identical(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks hold bitwise the same parameters and buffers."""
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(t, tb[n]) for n, t in ta.items())


def nbytes(obj) -> int:
    """Bytes `torch.save` writes for `obj` (a packed blob or a state_dict)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()
