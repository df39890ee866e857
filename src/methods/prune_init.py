"""Pruning and freezing at initialization (Wimmer's thesis, Ch. 3; Algorithm 3.1): score every
weight entry once before training (`runner.sparse.pruning`: random, magnitude, SNIP, USNIP, GraSP,
SynFlow) from `batches` calibration batches of `batch_size` training samples, keep the top
d = floor((1 - q) D) of them over all weights (`scope: global`) or per tensor (`layer`), and
mask the rest in `ctx.masks` as
- `pruned`: 0 and never moved (SNIP, GraSP, ...: pruning at initialization);
- `frozen`: fixed at their initial values (FreezeNet; weight decay only on what trains);
- `frozen_wd`: moved by weight decay alone (FreezeNet-WD).
`reinit: true` redraws the whole network after the mask is computed (FreezeNet-reinit, Fig. 3.6).
Biases and normalization parameters are never masked: they always train. q = 0 masks nothing
(the dense baseline, with the same metrics). `classes: k` scores on the samples of k labels
only, drawn once from `class_seed` (the set T of Sec. 4.4.3 / Fig. 4.8: the same for every seed
and method), though training uses all of them.

Metrics (each phase's summary in result.json): the sparsity counts of `runner.sparse.pruning.sparsity`
(q, q_beta, trained / stored parameters, sizes, per-tensor density, empty layers), `grad_flow`
(mean |g| of the loss gradient over the trained weights right after masking, divided by the
dense network's mean |g| over all weights, on the calibration batches: Fig. 3.1), and at the end
of the last phase, for `pruned` and `frozen`, the bytes of the network stored as (trained entries,
mask, seed) (`runner.sparse.storage`) beside the dense state_dict's, and `storage_exact` (1 when the
network reloaded from them equals the trained one bitwise). Per epoch (`grad_stats`): mean and
standard deviation of |g| over the trained weight entries and all steps of the epoch (Fig. 3.5b),
and the mean over the epoch's steps of lr x ||g||_2 (Fig. 5.6 a): `grad_norm_lr` over the
trained entries of the KxK convolutions (spatial weights under SP, coefficients under IP),
`grad_norm_lr_fb` over the filter bases (IP only). Under plain SGD that is the length of a step.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch.nn.utils import parametrize

from methods.base import Method
from runner.models.transforms import FilterBasis, fb_convs, filter_bases
from runner.sparse import pruning, storage
from runner.sparse.keep import SCOPES, exact_density, keep_count
from runner.sparse.masks import MASK_KINDS


class PruneAtInit(Method):
    name = "prune_init"

    def __init__(self, score: str = "snip", q: float = 0.9, scope: str = "global",
                 kind: str = "pruned", batches: int = 1, batch_size: int = 100,
                 reinit: bool = False, temperature: float = pruning.GRASP_TEMPERATURE,
                 iterations: int = 100,
                 normalize: bool = False, grad_stats: bool = True, store: bool = True,
                 classes: Optional[int] = None, class_seed: int = 0):
        if score not in pruning.SCORES:
            raise ValueError(f"prune_init score={score!r}; valid: {', '.join(pruning.SCORES)}")
        if scope not in SCOPES:
            raise ValueError(f"prune_init scope={scope!r}; valid: {', '.join(SCOPES)}")
        if kind not in MASK_KINDS:
            raise ValueError(f"prune_init kind={kind!r}; valid: {', '.join(MASK_KINDS)}")
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"prune_init q={q}; valid: [0, 1] (the share of weights not trained)")
        if classes is not None and classes < 1:
            raise ValueError(f"prune_init classes={classes}; valid: null (all) or >= 1")
        if batches < 1 or batch_size < 1:
            raise ValueError(f"prune_init batches={batches}, batch_size={batch_size}; both >= 1")
        self.score, self.q, self.scope, self.kind = score, float(q), scope, kind
        self.batches, self.batch_size, self.reinit = int(batches), int(batch_size), reinit
        self.temperature, self.iterations, self.normalize = temperature, int(iterations), normalize
        self.grad_stats, self.store = grad_stats, store
        self.classes, self.class_seed = classes, class_seed

    def calibration(self, ctx):
        known = None
        if self.classes is not None:  # T: `classes` labels, the same for every run seed
            labels = ctx.data.train.y.unique().cpu()
            if self.classes > len(labels):
                raise ValueError(f"prune_init classes={self.classes}: the data have "
                                 f"{len(labels)} labels")
            perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(
                self.class_seed))
            known = labels[perm[:self.classes]]
        x, y = ctx.calibration_batch(self.batches * self.batch_size, known)
        return list(zip(x.split(self.batch_size), y.split(self.batch_size)))

    def keep(self, ctx, batches, d: int) -> Dict[str, torch.Tensor]:
        """{weight name: bool mask} keeping exactly d entries (COPS overrides this)."""
        s = pruning.scores(self.score, ctx.model, batches, loss_fn=ctx.loss_fn, gen=ctx.gen,
                           temperature=self.temperature, d=d, iterations=self.iterations,
                           scope=self.scope, normalize=self.normalize)
        return pruning.top_d(s, d, self.scope)

    def setup(self, ctx) -> None:
        model, batches = ctx.model, self.calibration(ctx)
        named = pruning.weights(model)
        d = keep_count(sum(p.numel() for _, p in named), exact_density(self.q), "floor")
        keep = self.keep(ctx, batches, d)
        self.seed = ctx.seed  # the seed that draws the initialization the frozen entries keep
        if self.reinit:
            self.seed = int(torch.randint(0, 2**62, (1,), generator=ctx.gen))
            fresh = storage.tensors(ctx.build_model(self.seed))
            with torch.no_grad():
                for name, t in storage.tensors(model).items():
                    t.copy_(fresh[name])
        dense_flow = pruning.mean_abs_gradient(model, batches, loss_fn=ctx.loss_fn)
        for name, k in keep.items():
            if not bool(k.all()):
                ctx.masks.set(name, k, self.kind)
        flow = pruning.mean_abs_gradient(model, batches, keep, ctx.loss_fn)
        self.metrics = {**pruning.sparsity(model, ctx.masks),
                        "grad_flow": float(flow / dense_flow) if dense_flow > 0 else float("nan")}
        self._w = [p for _, p in named]
        self._keep = [keep[n].to(p.dtype) for n, p in named]
        self._n = max(self.metrics["weights_trained"], 1)
        self._conv = kxk_weights(model)
        self._bases = filter_bases(model)
        # sum |g|, sum g^2, steps, sum lr ||g|| of the KxK convolutions, of the filter bases
        self._sums = torch.zeros(5, device=ctx.device)

    def before_step(self, ctx) -> None:
        if not self.grad_stats:
            return
        gs = [(p.grad, k, id(p) in self._conv) for p, k in zip(self._w, self._keep)
              if p.grad is not None]
        if not gs:
            return
        g = torch._foreach_mul([g for g, _, _ in gs], [k for _, k, _ in gs])  # m * grad (Alg. 3.1)
        one = torch.stack(torch._foreach_norm(g, 1)).sum()
        each = torch.stack(torch._foreach_norm(g, 2)).pow(2)
        conv = [i for i, (_, _, c) in enumerate(gs) if c]
        conv_sq = torch.stack([each[i] for i in conv]).sum() if conv else torch.zeros_like(one)
        fb = [b.grad for b in self._bases if b.grad is not None]
        fb_sq = torch.stack(torch._foreach_norm(fb, 2)).pow(2).sum() if fb else torch.zeros_like(one)
        lr = ctx.optimizer.param_groups[0]["lr"]
        self._sums += torch.stack([one, each.sum(), torch.ones_like(one), lr * conv_sq.sqrt(),
                                   lr * fb_sq.sqrt()]).float()

    def on_epoch_end(self, ctx) -> Dict[str, float]:
        if not self.grad_stats:
            return {}
        s1, s2, steps, conv, fb = self._sums.tolist()
        self._sums.zero_()
        n = self._n * max(steps, 1)
        mean = s1 / n
        out = {"grad_abs_mean": mean, "grad_abs_std": max(s2 / n - mean * mean, 0.0) ** 0.5,
               "grad_norm_lr": conv / max(steps, 1)}
        if self._bases:
            out["grad_norm_lr_fb"] = fb / max(steps, 1)
        return out

    def on_phase_end(self, ctx) -> Dict[str, float]:
        out = dict(self.metrics)
        if self.store and self.kind != "frozen_wd" and ctx.phase_index == ctx.num_phases - 1:
            blob = storage.pack(ctx.model, ctx.masks, self.seed)
            back = storage.unpack(blob, ctx.build_model)
            out.update(stored_bytes=storage.nbytes(blob),
                       dense_bytes=storage.nbytes(ctx.model.state_dict()),
                       storage_exact=int(storage.identical(ctx.model, back)))
        return out


def kxk_weights(model) -> set:
    """ids of the stored weights of the KxK (K > 1) convolutions: the coefficients of the filter
    basis layers, and the spatial weights of the square KxK convolutions without one."""
    coef = {id(m.parametrizations.weight.original) for m in model.modules()
            if parametrize.is_parametrized(m, "weight")
            and isinstance(m.parametrizations.weight[0], FilterBasis)}
    return coef | {id(m.weight) for m in fb_convs(model, None)}
