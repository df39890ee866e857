"""COPS, controlled pruning before training (Wimmer's thesis, Ch. 4; Wimmer et al. 2021): the mask
math over flat score vectors, no model.

Scores are *minimized* (the thesis's sign: SNIP is s = -|g * theta|, GraSP s = -(Hg) * theta,
magnitude s = -|theta|). Problem (4.11): keep the d entries that minimize the target score
S0(m) = <s0, m> subject to the control score S1(m) = <s1, m> <= kappa. Its LP relaxation over
m in [0, 1]^D with <1, m> = d is solved through the one-dimensional dual
g(lambda) = min_m S0(m) + lambda (S1(m) - kappa) (Lemma 4.3.1): m_lambda keeps the d smallest
entries of s0 + lambda s1, and S1(m_lambda) - kappa is a superderivative of the concave g
(Lemma 4.3.2, eq. 4.21), whose sign tells the bisection of Algorithm 4.1 where lambda* lies.

The budget is exact (<1, m> = d), as the thesis prunes "the weights with the D - d biggest scores"
(App. A.4); Lemma 4.3.1 states <1, m> <= d and keeps only negative combined scores, which is the
same mask whenever s0 + lambda s1 has at least d negative entries (SNIP targets: every s0 < 0).
kappa = alpha * kappa_min (eq. 4.28), kappa_min = S1 of the d smallest control scores (4.27).

Speed: the bisection evaluates g' at the same points as Algorithm 4.1, but each evaluation sorts
nothing. Entries whose combined score stays below (above) the d-th smallest one over the whole
bracket of lambda that is known to hold lambda* are counted once and dropped ("certainly in /
out"); the bracket halves every step, and so, roughly, does the set of undecided entries. An
order statistic of a large vector is bracketed from a strided sample and the bracket checked by
counting, so a pass over all D entries is a handful of elementwise operations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Union

import torch

from runner.sparse.keep import top_k

Masks = Union[torch.Tensor, Mapping[str, torch.Tensor]]

SIDES = ("midpoint", "plus", "minus")
SMALL = 1 << 18  # below this many entries an order statistic is taken exactly
SAMPLE = 1 << 16  # sample size for bracketing an order statistic of a larger vector


@dataclass
class CopsResult:
    keep: torch.Tensor  # bool, the scores' shape: exactly d entries True
    lam: float  # the lambda whose d smallest entries of s0 + lambda s1 are `keep`
    lam_minus: float  # the bisection's last lower end: g' > 0 there, m- (S1 > kappa)
    lam_plus: float  # its last upper end: g' <= 0 there, m+ is feasible (S1 <= kappa)
    # (both equal lam where lambda* = 0 or g' was exactly 0)
    kappa: float
    kappa_min: float
    evaluations: int  # evaluations of g' (lambda+ search and bisection)


def select(s0: torch.Tensor, s1: torch.Tensor, lam: float, d: int) -> torch.Tensor:
    """The mask m_lambda: the d smallest entries of s0 + lam * s1 (Lemma 4.3.1; with a fixed,
    user-chosen lam it is the "S0 + lambda S1" baseline of Table 4.3, eq. 4.34)."""
    return top_k(s0 + lam * s1, d, largest=False)


def similarity(m: Masks, other: Masks) -> float:
    """sim(m, m~) = ||m * m~||_0 / max(||m||_0, ||m~||_0) in [0, 1] (eq. 4.29), of two bool masks
    or of two {name: mask} dicts over the same tensors."""
    if isinstance(m, Mapping):
        both = sum(int((m[n] & other[n]).sum()) for n in m)
        sizes = sum(int(t.sum()) for t in m.values()), sum(int(t.sum()) for t in other.values())
    else:
        both, sizes = int((m & other).sum()), (int(m.sum()), int(other.sum()))
    return both / max(*sizes, 1)


def cops(s0: torch.Tensor, s1: torch.Tensor, d: int, alpha: float, eps: float = 1e-6,
         lambda_plus: float = 1.0, search: bool = True, side: str = "midpoint") -> CopsResult:
    """Algorithm 4.1: the COPS mask keeping exactly d entries, with kappa = alpha * kappa_min.

    lambda_plus: the bisection's upper bound (needs g'(lambda_plus) <= 0); with `search` it is
    doubled until it is one. side: which mask the bisection returns, `midpoint` (Algorithm 4.1,
    line 20: the last midpoint, m- or m+), `plus` (m+, always feasible) or `minus` (m-).
    """
    if s0.shape != s1.shape:
        raise ValueError(f"COPS scores differ in shape: target {tuple(s0.shape)}, "
                         f"control {tuple(s1.shape)}")
    n = s0.numel()
    if not 1 <= d <= n:
        raise ValueError(f"COPS keeps d={d} of {n} entries; valid: 1 <= d <= {n}")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"COPS balance factor alpha_kappa={alpha}; valid: [0, 1)")
    if not (eps > 0 and lambda_plus > 0):
        raise ValueError(f"COPS eps={eps}, lambda_plus={lambda_plus}; both must be > 0")
    if side not in SIDES:
        raise ValueError(f"COPS side={side!r}; valid: {', '.join(SIDES)}")
    if not (torch.isfinite(s0).all() and torch.isfinite(s1).all()):
        raise ValueError("COPS scores contain NaN or inf; check the scored model's loss")
    dual = _Dual(s0.flatten(), s1.flatten().to(s0.dtype), d)
    k_min = dual.s1_at(1.0)  # c(w = 1) = s1: kappa_min, eq. (4.27)
    if k_min >= 0:
        raise ValueError(f"COPS needs kappa_min < 0 (the d={d} smallest control scores sum to "
                         f"{k_min:.3g}); a control score is minimized: negate a keep-largest score")
    kappa = alpha * k_min

    def slope(lam: float) -> float:  # g'(lam), eq. (4.21); narrows `dual` to the known bracket
        w = lam / (1.0 + lam)
        g = dual.s1_at(w) - kappa
        dual.known(w, g > 0)
        return g

    lo = hi = lam = 0.0
    if slope(0.0) > 0:  # else lambda* = 0: the target mask already meets the constraint
        hi = lambda_plus
        while slope(hi) > 0:
            if not search:
                raise ValueError(f"COPS lambda_plus={lambda_plus} has g' > 0; raise it or set "
                                 "search=true (doubling)")
            if hi > 2.0 ** 64:
                raise ValueError(f"COPS found no lambda+ below {hi:.3g}")
            hi *= 2.0
        while True:  # Algorithm 4.1, lines 8-19, until |lambda+ - lambda-| <= 2 eps
            lam = 0.5 * (lo + hi)
            g = slope(lam)
            if g == 0:
                lo = hi = lam
                break
            if g > 0:
                lo = lam
            else:
                hi = lam
            if hi - lo <= 2 * eps:
                break
    chosen = {"midpoint": lam, "plus": hi, "minus": lo}[side]
    keep = dual.mask(chosen / (1.0 + chosen)).view(s0.shape)
    return CopsResult(keep, chosen, lo, hi, kappa, k_min, dual.evaluations - 1)


class _Dual:
    """S1(m_lambda) over the entries still undecided for the known bracket of lambda*.

    Works in w = lambda / (1 + lambda) in [0, 1]: c(w) = s0 + w (s1 - s0) orders entries as
    s0 + lambda s1 does and is linear in w, so over a bracket [w1, w2] every c_i lies between
    its two end values, also for the unbounded bracket [lambda, inf) of the lambda+ search.
    Work buffers are allocated once: allocating large tensors costs more than computing them.
    """

    def __init__(self, s0: torch.Tensor, s1: torch.Tensor, d: int):
        self.s0, self.s1 = s0, s1  # the undecided entries
        self.idx = None  # their positions in the full vector (None: all)
        self.k = d  # how many of them the mask still keeps
        self.n_full = n = s0.numel()
        self.in_sum = 0.0  # S1 of the entries kept for every lambda in the bracket
        self.in_mask = None  # those entries (bool, all D), once the first narrowing ran
        self.lo, self.hi = 0.0, 1.0  # the known bracket, in w
        self.evaluations = 0
        scale = sum(float(x.abs().max()) for x in torch.aminmax(s0) + torch.aminmax(s1))
        self.slack = 8 * torch.finfo(s0.dtype).eps * scale  # rounding of c(w), |c| <= scale
        self.f = [torch.empty(n, dtype=s0.dtype, device=s0.device) for _ in range(3)]
        self.m = [torch.empty(n, dtype=torch.bool, device=s0.device) for _ in range(2)]
        self.zero = torch.zeros((), dtype=s0.dtype, device=s0.device)

    def c(self, w: float, buf: int = 0) -> torch.Tensor:
        return torch.lerp(self.s0, self.s1, w, out=self.f[buf][:self.s0.numel()])

    def s1_at(self, w: float) -> float:
        """S1 of the d smallest entries of c(w) (exact; w in the known bracket)."""
        self.evaluations += 1
        if self.k == 0:
            return self.in_sum
        c = self.c(w)
        inside, band = self.split(c, c, self.k, 0.0)
        n = self.s0.numel()
        total = self.in_sum + float(torch.where(inside, self.s1, self.zero,
                                                out=self.f[1][:n]).sum())
        rest = self.k - int(torch.count_nonzero(inside))
        if rest:
            pos = band.nonzero().squeeze(1)
            top = torch.topk(c[pos], rest, largest=False, sorted=False).indices
            total += float(self.s1[pos[top]].sum())
        return total

    def known(self, w: float, positive: bool) -> None:
        """g' > 0 at w (lambda* >= lambda) or <= 0: shrink the bracket, and drop the entries it
        decides once a sample says that at most a quarter of them stay undecided."""
        if positive:
            self.lo = max(self.lo, w)
        else:
            self.hi = min(self.hi, w)
        n = self.s0.numel()
        if self.k == 0 or n <= 1024:
            return
        step = max(1, n // SAMPLE)
        a, b = self.s0[::step], self.s1[::step]
        c_lo, c_hi = torch.lerp(a, b, self.lo), torch.lerp(a, b, self.hi)
        low, high = torch.minimum(c_lo, c_hi), torch.maximum(c_lo, c_hi)
        r = min(max(1, round(self.k * a.numel() / n)), a.numel())
        kept = (low <= torch.kthvalue(high, r).values) & (high >= torch.kthvalue(low, r).values)
        if 4 * int(torch.count_nonzero(kept)) > a.numel():
            return
        c_lo, c_hi = self.c(self.lo, 0), self.c(self.hi, 1)
        low = torch.minimum(c_lo, c_hi, out=self.f[2][:n])
        high = torch.maximum(c_lo, c_hi, out=c_hi)
        inside, undecided = self.split(low, high, self.k, self.slack)
        if self.idx is None:  # the first narrowing: a mask over all entries (no index list)
            self.in_mask = inside.clone()
            self.in_sum += float(torch.where(inside, self.s1, self.zero, out=c_lo).sum())
            self.k -= int(torch.count_nonzero(inside))
        else:
            pos = inside.nonzero().squeeze(1)
            self.in_sum += float(self.s1[pos].sum())
            self.in_mask[self.idx[pos]] = True
            self.k -= pos.numel()
        keep = undecided.nonzero().squeeze(1)
        self.s0, self.s1 = self.s0.index_select(0, keep), self.s1.index_select(0, keep)
        self.idx = keep if self.idx is None else self.idx.index_select(0, keep)

    def mask(self, w: float) -> torch.Tensor:
        """The d smallest entries of c(w), w in the known bracket (bool, flat)."""
        keep = (torch.zeros(self.n_full, dtype=torch.bool, device=self.s0.device)
                if self.in_mask is None else self.in_mask.clone())
        if self.k:
            top = torch.topk(self.c(w), self.k, largest=False, sorted=False).indices
            keep[top if self.idx is None else self.idx[top]] = True
        return keep

    def split(self, low: torch.Tensor, high: torch.Tensor, k: int, slack: float):
        """(inside, undecided) masks for entries ranging over [low_i, high_i]: `inside` lie
        below the k-th smallest value whatever values they take in their ranges; `undecided`
        are the others that can reach it (a point, low is high and slack 0: fewer than k are
        inside, and inside plus undecided holds the k smallest)."""
        n = low.numel()
        m_in, m_un = self.m[0][:n], self.m[1][:n]
        if k >= n:
            return m_in.fill_(True), m_un.fill_(False)
        point = low is high and slack == 0
        t_low = self.kth_bound(low, k, True, m_in)
        if not (point and t_low.checked):
            torch.lt(high, t_low.value - slack, out=m_in)
        t_high = self.kth_bound(high, k, False, m_un)
        if not (point and t_high.checked):
            torch.le(low, t_high.value + slack, out=m_un)
        return m_in, torch.logical_xor(m_un, m_in, out=m_un)  # inside implies low <= t_high

    @staticmethod
    def kth_bound(x: torch.Tensor, k: int, below: bool, out: torch.Tensor) -> "_Bound":
        """A value <= (below) or >= the k-th smallest entry of x: exact for a small x, else a
        sample quantile a few standard deviations off, checked by counting the entries below
        (x < t, written to `out`) or not above (x <= t) it; exact if the check fails."""
        n = x.numel()
        if n > SMALL:
            sample = x[::n // SAMPLE]
            m, p = sample.numel(), k / n
            spread = 5 * math.sqrt(m * p * (1 - p)) + 2
            r = math.floor(p * m - spread) if below else math.ceil(p * m + spread)
            if not 1 <= r <= m:
                return _Bound(-math.inf if below else math.inf, False)
            t = float(torch.kthvalue(sample, r).values)
            if below and int(torch.count_nonzero(torch.lt(x, t, out=out))) < k:
                return _Bound(t, True)  # fewer than k entries below t: t <= the k-th smallest
            if not below and int(torch.count_nonzero(torch.le(x, t, out=out))) >= k:
                return _Bound(t, True)
        return _Bound(float(torch.kthvalue(x, k).values), False)


@dataclass
class _Bound:
    value: float
    checked: bool  # `out` of kth_bound holds x < value (below) or x <= value
