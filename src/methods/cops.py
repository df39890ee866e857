"""COPS, controlled pruning before training (Wimmer's thesis, Ch. 4; Wimmer et al. 2021): prune
at initialization to the d = floor((1 - q) D) weights that minimize a target score S0 subject to
a control score S1 <= kappa = alpha_kappa * kappa_min (problem 4.11), solved through the dual of
its LP relaxation by Algorithm 4.1 (`runner.sparse.cops`). Variants, by `target` / `control`:
- G-COPS: snip / grasp;  M-COPS: snip / magnitude (Table 4.1);
- U-COPS: snip / usnip with `classes: k` (Sec. 4.4.3, Fig. 4.8): both scores from the samples
  of k known labels only, USNIP's labels drawn uniformly from all classes;
- `lambda` set: the "S0 + lambda S1" baseline of Table 4.3 (eq. 4.34), the d smallest entries of
  s0 + lambda s1 for the given lambda, instead of the constrained problem.
Scores come from `runner.sparse.pruning` (higher = keep), L1-normalized over all weights (App. A.4) and
negated: COPS minimizes s = -score (eqs. 4.1-4.5). The mask is global, over all weights;
everything else (calibration batches, masking, metrics) is `prune_init`'s.

Metrics added to prune_init's: `cops_lambda` (lambda of the mask), `cops_kappa`,
`cops_kappa_min`, `cops_s0` / `cops_s1` (S0, S1 of the mask), `cops_evaluations` (of g'), and the
mask similarities (eq. 4.29) `sim_target` = sim(m(0), m) and `sim_control` = sim(m(1), m) to the
masks of the target and the control score alone (Table 4.2's sim rows, Fig. 4.6).
"""
from __future__ import annotations

import math
from typing import Annotated, Dict, Mapping, Optional, Union

import torch

from methods.prune_init import PruneAtInit
from runner.sparse import cops, pruning
from runner.ranges import NON_NEGATIVE


class Cops(PruneAtInit):
    name = "cops"

    def __init__(self, target: str = "snip", control: str = "grasp",
                 alpha: Union[float, Mapping] = 0.5,
                 lam: Annotated[Optional[float], NON_NEGATIVE] = None, eps: float = 1e-6, lambda_plus: float = 1.0,
                 search: bool = True, side: str = "midpoint", q: float = 0.9,
                 batches: int = 100, batch_size: int = 128,
                 temperature: float = pruning.GRASP_TEMPERATURE,
                 iterations: int = 100, classes: Optional[int] = None, class_seed: int = 0,
                 grad_stats: bool = True, store: bool = True):
        super().__init__(score=target, q=q, scope="global", kind="pruned", batches=batches,
                         batch_size=batch_size, temperature=temperature, iterations=iterations,
                         normalize=True, grad_stats=grad_stats, store=store, classes=classes,
                         class_seed=class_seed)
        if control not in pruning.SCORES:
            raise ValueError(f"cops control={control!r}; valid: {', '.join(pruning.SCORES)}")
        if isinstance(alpha, Mapping):  # {q: alpha_kappa}: a table's choice per column
            by_q = {float(k): v for k, v in alpha.items()}
            if float(q) not in by_q:
                raise ValueError(f"cops alpha has no value for q={q}; it lists q = "
                                 f"{', '.join(map(str, by_q))} (or set method.alpha=VALUE)")
            alpha = by_q[float(q)]
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"cops alpha={alpha}; valid: [0, 1) (kappa = alpha * kappa_min)")
        if lam is not None and not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"cops lambda={lam}; valid: null (COPS) or >= 0 (S0 + lambda S1)")
        if side not in cops.SIDES:
            raise ValueError(f"cops side={side!r}; valid: {', '.join(cops.SIDES)}")
        self.control, self.alpha, self.lam, self.eps = control, float(alpha), lam, float(eps)
        self.lambda_plus, self.search, self.side = float(lambda_plus), search, side

    def keep(self, ctx, batches, d: int) -> Dict[str, torch.Tensor]:
        def score(kind):
            return pruning.scores(kind, ctx.model, batches, loss_fn=ctx.loss_fn, gen=ctx.gen,
                                  temperature=self.temperature, d=d, iterations=self.iterations,
                                  normalize=True)

        target, control = score(self.score), score(self.control)
        shapes = {n: t.shape for n, t in target.items()}
        # in the scores' dtype: sums are pairwise (relative error ~1e-7 in float32), fine for
        # the constraint's slack at alpha = 0.99999, 1e-5 of kappa_min
        s0 = -torch.cat([t.flatten() for t in target.values()])
        s1 = -torch.cat([control[n].flatten() for n in shapes])
        stats = {}
        if d == s0.numel():
            flat = torch.ones_like(s0, dtype=torch.bool)
        elif self.lam is None:
            r = cops.cops(s0, s1, d, self.alpha, self.eps, self.lambda_plus, self.search,
                          self.side)
            flat = r.keep
            stats = {"cops_lambda": r.lam, "cops_kappa": r.kappa, "cops_kappa_min": r.kappa_min,
                     "cops_evaluations": r.evaluations}
        else:
            flat = cops.select(s0, s1, float(self.lam), d)
            stats = {"cops_lambda": float(self.lam)}
        parts = flat.split([math.prod(s) for s in shapes.values()])
        keep = {n: k.view(shapes[n]) for n, k in zip(shapes, parts)}
        self.cops_metrics = {
            **stats, "cops_s0": float(s0[flat].sum()), "cops_s1": float(s1[flat].sum()),
            "sim_target": cops.similarity(keep, pruning.top_d(target, d)),
            "sim_control": cops.similarity(keep, pruning.top_d(control, d))}
        return keep

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.metrics.update(self.cops_metrics)
