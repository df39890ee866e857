"""Pruning scores at initialization and the masks they give (Wimmer's thesis, Ch. 2.2.3, 3, 4).

API (stable; chapter 3's methods and chapter 4's COPS build on it):
- `scores(kind, model, batches, ...) -> {stored name: score tensor}`: one score per entry of
  every stored *weight* tensor of `model` (`runner.models.transforms.prunable`: conv and linear
  weights, or the coefficients of a filter-basis layer; filter bases, biases and normalization
  parameters are never scored). Higher = more important (the Ch. 2 convention:
  keep the top d); Ch. 4 minimizes <s, m> with s = -score (eqs. 4.1-4.5).
  kinds (`SCORES`):
    random     |z|, z ~ N(0, 1) i.i.d. from `gen` (eq. 4.2): a uniform random subset
    magnitude  |theta| (eq. 4.1)
    snip       |g * theta|, g the mean loss gradient over `batches` (eq. 3.1 / 4.3)
    usnip      snip with labels drawn uniformly from the model's classes (`gen`) (Sec. 4.4.3)
    grasp      (H g) * theta, H and g of the loss of outputs / `temperature`, H g by double
               backpropagation (eq. 4.4; signed: GraSP keeps the top d)
    synflow    iterative and data-free (eq. 4.5): |dR/dtheta * theta| of R = sum of the outputs
               of the network with |parameters| on an all-ones input, in eval mode and float64;
               `iterations` rounds prune to density (d / D)^(k / iterations); the returned
               scores are those of the last round (entries pruned earlier score 0), so
               `top_d(scores, d, scope)` is SynFlow's mask
- `l1_normalize(scores)`: every score divided by the L1 norm of all scores together, ||s||_1 = 1
  (Appendix A.4); `scores(..., normalize=True)` applies it.
- `top_d(scores, d, scope) -> {name: bool mask}`: exactly d entries kept (True), the d highest
  scores over all tensors (`scope="global"`) or in each tensor (`"layer"`: d split in
  proportion to the tensors' sizes, largest remainders first (`keep.split_count`), or a dict of
  per-tensor counts); ties go to the earlier entry (parameter order, then row-major), so masks
  are deterministic (`keep.top_k_masks`, ties "first").
- d, the kept count, is `runner.sparse.keep.keep_count(D, exact_density(q), "floor")`:
  floor((1 - q) D), exact for decimal q.
- `gradients(model, batches, ...)`, `mean_abs_gradient(model, batches, keep)`: the loss
  gradient of the weights, and its mean |g| over the kept entries (gradient flow, Fig. 3.1).

Batches are (inputs, labels) pairs as the model takes them (`ctx.calibration_batch` gives one).
Scoring leaves the model as it was: its mode, parameters and buffers (BatchNorm statistics);
gradient scores run in train mode (BatchNorm on batch statistics, as in training).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from runner.models import params
from runner.models.transforms import prunable
from runner.sparse.keep import SCOPES, keep_count, split_count, top_k_masks

Batch = Tuple[torch.Tensor, torch.Tensor]
Scores = Dict[str, torch.Tensor]
SCORES = ("random", "magnitude", "snip", "usnip", "grasp", "synflow")
# GraSP's softmax temperature where the thesis states none: T = 200, as GraSP's authors' code
# (alecwangcq/GraSP, pruner/GraSP.py line 49, `T=200`; outputs divided by T at lines 89, 105, 123)
# and Synaptic-Flow's GraSP pruner (Pruners/pruners.py lines 138, 147, 157), the code of the
# setups the thesis's PaI experiments follow. T = 1 (plain logits) is `temperature: 1`.
GRASP_TEMPERATURE = 200.0


def weights(model: nn.Module):
    """The scored tensors: (stored name, parameter) of every weight, filter bases excepted (a
    basis is shared and dense; its layers' coefficients are what pruning masks)."""
    return prunable(model)


@contextlib.contextmanager
def _scoring(model: nn.Module):
    """Train mode while scoring; mode and buffers (BatchNorm statistics) restored afterwards."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _batches(batches: Iterable[Batch]) -> list:
    out = list(batches)
    if not out:
        raise ValueError("pruning scores from data need at least one (inputs, labels) batch")
    return out


def _loss(model, x, y, loss_fn, temperature: float = 1.0, gen: Optional[torch.Generator] = None):
    out = model(x)
    if gen is not None:  # USNIP: labels uniform over the model's classes
        y = torch.randint(out.shape[1], y.shape, generator=gen).to(y.device)
    return loss_fn(out / temperature if temperature != 1.0 else out, y)


def _grad(loss, ps, create_graph=False):
    gs = torch.autograd.grad(loss, ps, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, ps)]


def gradients(model: nn.Module, batches: Iterable[Batch], loss_fn: Callable = F.cross_entropy,
              temperature: float = 1.0, gen: Optional[torch.Generator] = None) -> Scores:
    """The loss gradient of every weight, averaged over `batches` (random labels from `gen`)."""
    named, batches = weights(model), _batches(batches)
    ps = [p for _, p in named]
    total = [torch.zeros_like(p) for p in ps]
    with _scoring(model):
        for x, y in batches:
            for t, g in zip(total, _grad(_loss(model, x, y, loss_fn, temperature, gen), ps)):
                t.add_(g.detach(), alpha=1.0 / len(batches))
    return {n: t for (n, _), t in zip(named, total)}


def hessian_gradient(model: nn.Module, batches: Iterable[Batch],
                     loss_fn: Callable = F.cross_entropy, temperature: float = 1.0) -> Scores:
    """H g over the weights: g the mean gradient, H the mean Hessian over `batches`."""
    named, batches = weights(model), _batches(batches)
    ps = [p for _, p in named]
    g = list(gradients(model, batches, loss_fn, temperature).values())
    hg = [torch.zeros_like(p) for p in ps]
    with _scoring(model):
        for x, y in batches:
            gb = _grad(_loss(model, x, y, loss_fn, temperature), ps, create_graph=True)
            z = sum((a * b).sum() for a, b in zip(gb, g))
            for t, h in zip(hg, _grad(z, ps)):
                t.add_(h.detach(), alpha=1.0 / len(batches))
    return {n: t for (n, _), t in zip(named, hg)}


def _synflow(model: nn.Module, input_shape: Sequence[int], d: int, iterations: int,
             scope: str) -> Scores:
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    named = weights(net)
    ps = [p for _, p in named]
    start = [p.detach().clone() for p in ps]
    total = sum(p.numel() for p in ps)
    device = ps[0].device if ps else torch.device("cpu")
    x = torch.ones(1, *input_shape, dtype=torch.float64, device=device)
    keep: Optional[Scores] = None
    s: Scores = {}
    for k in range(1, iterations + 1):
        if keep is not None:
            with torch.no_grad():
                for p, p0, (n, _) in zip(ps, start, named):
                    p.copy_(p0 * keep[n])
        grads = _grad(net(x).sum(), ps)
        s = {n: (g * p).detach().abs() for (n, p), g in zip(named, grads)}
        dk = d if k == iterations else keep_count(total, (d / max(total, 1)) ** (k / iterations),
                                                  "round")
        keep = top_d(s, dk, scope)
    dtypes = {n: p.dtype for n, p in weights(model)}
    return {n: t.to(dtypes[n]) for n, t in s.items()}


def scores(kind: str, model: nn.Module, batches: Iterable[Batch] = (), *,
           loss_fn: Callable = F.cross_entropy, gen: Optional[torch.Generator] = None,
           temperature: float = 1.0, d: Optional[int] = None, iterations: int = 100,
           scope: str = "global", input_shape: Optional[Sequence[int]] = None,
           normalize: bool = False) -> Scores:
    """Score every weight entry of `model` by `kind` (module docstring). `gen` draws the random
    scores and USNIP's labels; SynFlow needs the kept count `d`, `iterations` and `scope`, and
    takes its input shape from `input_shape` or the first batch."""
    if kind not in SCORES:
        raise ValueError(f"pruning score {kind!r}; valid: {', '.join(SCORES)}")
    named = weights(model)
    if kind == "random":
        if gen is None:
            raise ValueError("random scores need a generator (gen=ctx.gen)")
        out = {n: torch.randn(p.shape, generator=gen).abs().to(p) for n, p in named}
    elif kind == "magnitude":
        out = {n: p.detach().abs() for n, p in named}
    elif kind in ("snip", "usnip"):
        if kind == "usnip" and gen is None:
            raise ValueError("usnip draws random labels: it needs a generator (gen=ctx.gen)")
        g = gradients(model, batches, loss_fn, gen=gen if kind == "usnip" else None)
        out = {n: (g[n] * p.detach()).abs() for n, p in named}
    elif kind == "grasp":
        hg = hessian_gradient(model, batches, loss_fn, temperature)
        out = {n: hg[n] * p.detach() for n, p in named}
    else:
        if d is None:
            raise ValueError("synflow prunes iteratively towards the kept count d: pass d")
        if input_shape is None:
            input_shape = _batches(batches)[0][0].shape[1:]
        out = _synflow(model, input_shape, d, iterations, scope)
    return l1_normalize(out) if normalize else out


def l1_normalize(s: Mapping[str, torch.Tensor]) -> Scores:
    """Scores divided by the L1 norm of all of them together (Appendix A.4); zeros stay zeros."""
    norm = sum(t.abs().sum() for t in s.values())
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return {n: t / norm for n, t in s.items()}


def top_d(s: Mapping[str, torch.Tensor], d: Union[int, Mapping[str, int]],
          scope: str = "global") -> Dict[str, torch.Tensor]:
    """Masks keeping exactly d entries: the d highest scores globally, or per tensor (`layer`:
    d split by size, or a dict of counts). Ties go to the earlier entry."""
    if scope not in SCOPES:
        raise ValueError(f"mask scope {scope!r}; valid: {', '.join(SCOPES)}")
    sizes = {n: t.numel() for n, t in s.items()}
    total = sum(sizes.values())
    if isinstance(d, Mapping):
        if scope != "layer" or set(d) != set(s):
            raise ValueError("per-tensor counts need scope='layer' and one count per scored tensor")
        counts = dict(d)
    else:
        if not 0 <= d <= total:
            raise ValueError(f"keep d={d} entries of {total}; valid: 0..{total}")
        counts = split_count(sizes, d) if scope == "layer" else None
    for n, t in s.items():
        if torch.isnan(t).any():
            raise ValueError(f"pruning scores of {n!r} contain NaN; check the model's loss")
        if counts is not None and not 0 <= counts[n] <= sizes[n]:
            raise ValueError(f"keep {counts[n]} entries of {n!r}; valid: 0..{sizes[n]}")
    return top_k_masks(s, d if counts is None else counts, ties="first")


def mean_abs_gradient(model: nn.Module, batches: Iterable[Batch],
                      keep: Optional[Mapping[str, torch.Tensor]] = None,
                      loss_fn: Callable = F.cross_entropy) -> torch.Tensor:
    """Mean |g| of the loss gradient over the weight entries `keep` marks (all without it):
    the gradient flow of Fig. 3.1, a device tensor."""
    g = gradients(model, batches, loss_fn)
    num = sum((t.abs() * keep[n] if keep is not None else t.abs()).sum() for n, t in g.items())
    den = sum(keep[n].sum() if keep is not None else t.numel() for n, t in g.items())
    return num / torch.as_tensor(den, dtype=num.dtype).clamp(min=1)


@torch.no_grad()
def sparsity(model: nn.Module, masks) -> Dict[str, object]:
    """What a masked model trains, stores and computes with (thesis Tables 3.1, 3.2, 3.4):
    q (untrained share of the weights: an FB layer's coefficients, not its filter basis),
    q_beta (of all parameters: biases, normalization parameters and filter bases count and
    always train), trained / stored parameter counts, sizes in kB of fp32
    values (1 kB = 1024 B, as Table 3.2), non-zero weights of the forward pass, per-weight-tensor
    densities and the tensors with no trained entry (`empty_layers`). A `frozen_wd` tensor stores
    all its entries (weight decay moves the frozen ones); `pruned` / `frozen` ones only the
    trained entries (the frozen ones come back from the seed). Host values, for setup and reports."""
    w_total = w_trained = w_stored = others = nonzero = 0
    density: Dict[str, float] = {}
    scored = {name for name, _ in weights(model)}
    for name, p, kind in params.parameters(model):
        if name not in scored:
            others += p.numel()
            continue
        mask = masks[name] if name in masks else None
        k = int(mask.keep.sum()) if mask is not None else p.numel()
        w_total, w_trained = w_total + p.numel(), w_trained + k
        w_stored += p.numel() if mask is not None and mask.kind == "frozen_wd" else k
        density[name] = k / p.numel()
    for slot in params.slots(model, "weights"):
        nonzero += int(slot.value().count_nonzero())
    total = w_total + others
    dense_kb, stored_kb = total * 4 / 1024, (w_stored + others) * 4 / 1024
    return {"q": 1 - w_trained / max(w_total, 1), "q_beta": 1 - (w_trained + others) / max(total, 1),
            "weights": w_total, "weights_trained": w_trained, "params": total,
            "params_trained": w_trained + others, "params_stored": w_stored + others,
            "nonzero_weights_forward": nonzero, "size_kb": stored_kb, "dense_size_kb": dense_kb,
            "compression_factor": dense_kb / stored_kb if stored_kb else float("inf"),
            "empty_layers": sum(v == 0 for v in density.values()),
            "empty_layer_names": [n for n, v in density.items() if v == 0], "density": density}
