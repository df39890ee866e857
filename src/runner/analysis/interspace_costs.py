"""The computations of interspace pruning without training (Wimmer's thesis Secs. 5.3, 5.4.4.1,
5.5.2.4): FLOPs and speed-ups, Theorem 5.3.1's bound, measured sparse inference and training
rates, per-layer FLOP terms of a model. The figures and the command line are
`runner.analysis.interspace` (its docstring states the definitions).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Sequence, Tuple

import numpy as np

from runner.analysis.common import AnalysisError

VGG16_LTH = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def sp_flops(c_in: int, c_out: int, k: int, d1: int, d2: int, q: float) -> float:
    return 2 * (1 - q) * c_out * c_in * k * k * (d1 - k + 1) * (d2 - k + 1)


def ip_flops(c_in: int, c_out: int, k: int, d1: int, d2: int, q: float) -> float:
    return 2 * c_in * k * k * (d1 - k + 1) * (d2 - k + 1) * (c_out * (1 - q) + k * k)


def speedup_sp(q: float) -> float:
    return 1 / (1 - q)


def speedup_ip(q: float, c_out: int, k: int = 3) -> float:
    return c_out / (c_out * (1 - q) + k * k)


def theorem_bound(d1: int, d2: int, d: int) -> float:
    """eps of Theorem 5.3.1 (2) for D1 x D2 filters and d kept coefficients (exact, then float)."""
    if d % d1:
        return 0.0
    return float(Fraction(math.comb(d2, d // d1), math.comb(d1 * d2, d)))


def max_bound(d2: int, d1: int = 9) -> float:
    """The largest eps over all d (Fig. 5.3)."""
    return max(theorem_bound(d1, d2, d1 * m) for m in range(1, d2))


def vgg_layers(layers=VGG16_LTH, size: int = 32, c: int = 3) -> List[tuple]:
    """(c_in, c_out, side) of every 3x3 conv (padding 1) of a VGG."""
    out = []
    for v in layers:
        if v == "M":
            size //= 2
        else:
            out.append((c, int(v), size))
            c = int(v)
    return out


def measure_speedup(qs: Sequence[float], repeats: int = 5, seed: int = 0,
                    layers=VGG16_LTH) -> Dict[float, Dict[str, float]]:
    """Seconds of dense, SP and IP inference of a VGG's convs (batch 1) at each q, with
    random masks of density 1 - q in every layer (uniform), and the speed-ups over dense."""
    import scipy.sparse as sparse
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    convs = vgg_layers(layers)
    inputs = [F.unfold(torch.randn(1, ci, s, s), 3, padding=1)[0].numpy() for ci, _, s in convs]
    basis = rng.standard_normal((9, 9)).astype(np.float32)
    results = {}

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    for q in qs:
        dense, sp, ip = [], [], []
        for (ci, co, _), cols in zip(convs, inputs):
            w = rng.standard_normal((co, ci * 9)).astype(np.float32)
            keep = rng.random(w.shape) >= q
            dense.append(w)
            sp.append(sparse.csr_matrix(w * keep))
            ip.append(sparse.csr_matrix(w * keep))  # coefficients: same shape and density
        per_channel = [cols.reshape(cols.shape[0] // 9, 9, -1) for cols in inputs]
        t_dense = timed(lambda: [w @ x for w, x in zip(dense, inputs)])
        t_sp = timed(lambda: [w @ x for w, x in zip(sp, inputs)])
        t_ip = timed(lambda: [b @ np.matmul(basis, x).reshape(-1, x.shape[-1])
                              for b, x in zip(ip, per_channel)])
        results[q] = {"dense_s": t_dense, "sp_s": t_sp, "ip_s": t_ip,
                      "sp_speedup": t_dense / t_sp, "ip_speedup": t_dense / t_ip}
    return results


def network_speedup(q: float, kind: str, layers=VGG16_LTH, size: int = 32) -> float:
    """Dense FLOPs / sparse FLOPs over a VGG's convs at the same q in every layer (padding 1:
    the output is the input's size, so d - K + 1 = side with d = side + 2)."""
    convs = vgg_layers(layers, size)
    dense = sum(sp_flops(ci, co, 3, s + 2, s + 2, 0.0) for ci, co, s in convs)
    fn = sp_flops if kind == "sp" else ip_flops
    return dense / sum(fn(ci, co, 3, s + 2, s + 2, q) for ci, co, s in convs)


@dataclass
class LayerCost:
    """One Conv2d / Linear layer for one input image: the stored tensor a pruning method masks
    (`name`, `entries` of it), FLOPs per kept entry, the IP basis overhead, the dense FLOPs."""

    name: str
    entries: int
    per_entry: float
    overhead: float
    dense: float


def layer_costs(model, in_shape: Sequence[int]) -> List[LayerCost]:
    """The FLOP terms of every Conv2d and Linear layer of `model` (one image of `in_shape`,
    output sizes from a forward pass on the model's device, `meta` included)."""
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    from runner.models.transforms import FilterBasis
    positions: Dict[nn.Module, int] = {}

    def hook(mod, _, out):
        positions[mod] = out.numel() // (out.shape[1] if isinstance(mod, nn.Conv2d) else out.shape[-1])
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    names = {m: n for n, m in model.named_modules()}
    out = []
    for m in layers:
        pos, dense = positions[m], 2.0 * m.weight.numel() * positions[m]
        fb = (m.parametrizations.weight[0] if parametrize.is_parametrized(m, "weight") else None)
        if isinstance(fb, FilterBasis):
            coef = m.parametrizations.weight.original
            g, n, k2 = fb.basis.shape
            bases = g if fb.share == "out" else 1
            out.append(LayerCost(f"{names[m]}.parametrizations.weight.original", coef.numel(),
                                 2.0 * pos, 2.0 * m.in_channels * n * k2 * pos * bases, dense))
        elif fb is not None:
            raise AnalysisError(f"{names[m]}: FLOPs of a {type(fb).__name__} parametrization "
                                f"are not counted (spatial and filter-basis layers are)")
        else:
            out.append(LayerCost(f"{names[m]}.weight", m.weight.numel(), 2.0 * pos, 0.0, dense))
    return out


def network_flops(costs: Sequence[LayerCost], density: Dict[str, float]) -> Tuple[float, float]:
    """(dense, sparse) FLOPs of one image at the per-tensor `density` (by stored name; a layer
    not named is dense)."""
    unknown = sorted(set(density) - {c.name for c in costs})
    if unknown:
        raise AnalysisError(f"no Conv2d / Linear layer stores {', '.join(unknown)}: its FLOPs "
                            f"are not counted")
    sparse = sum(c.per_entry * density.get(c.name, 1.0) * c.entries + c.overhead for c in costs)
    return sum(c.dense for c in costs), sparse


def run_costs(run: dict) -> List[LayerCost]:
    """`layer_costs` of a run's model, rebuilt from its config on the `meta` device."""
    import torch
    from omegaconf import OmegaConf

    from runner.instantiate import build_model
    cfg = OmegaConf.create(run["config"])
    with torch.device("meta"):
        model = build_model(cfg)
    return layer_costs(model, list(cfg.dataset.shape))


COST_SETUPS = {  # (model, input side, classes, batch, images per run): thesis Table A.11
    "resnet50_imagenet": ("resnet50", 224, 1000, 32, 100 * 1_281_167),
    "vgg16_cifar10": ("vgg16", 32, 10, 128, 250 * 45_000),
}


def train_rate(setup: str, space: str, steps: int = 2) -> float:
    """Training images per second of one SGD step (forward, backward, step) on this machine."""
    import torch

    from runner.models.torchvision_resnet import torchvision_resnet
    from runner.models.transforms import filter_basis
    from runner.models.vgg import vgg
    arch, side, classes, batch, _ = COST_SETUPS[setup]
    torch.manual_seed(0)
    model = (torchvision_resnet([3, side, side], classes, arch) if arch.startswith("resnet")
             else vgg([3, side, side], classes, classifier=[512, 512], fc_norm="batch"))
    if space != "sp":
        filter_basis(sharing=space)(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch, 3, side, side), torch.randint(0, classes, (batch,))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times[1:]))
