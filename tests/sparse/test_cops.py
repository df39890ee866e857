"""COPS mask math (runner.sparse.cops): Algorithm 4.1 against the LP it relaxes (scipy's linprog) and
against a plain sort-per-step bisection; the bounds of Theorem 4.3.1; the errors."""
import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from conftest import assert_same_selection
from runner.sparse import cops

# cops() orders entries by lerp(s0, s1, w) (w = lam / (1 + lam)), select() by s0 + lam s1: the
# same order in exact arithmetic, but rounded differently (and differently per torch version and
# SIMD kernel), so their masks may differ at near-ties of the combined score (float64: far below
# this fraction of its range)
TIE = 1e-9


def instance(gen, n):
    """SNIP-like target (all < 0), GraSP-like control (both signs), L1-normalized, float64."""
    s0 = -torch.rand(n, generator=gen, dtype=torch.float64) * torch.rand(n, generator=gen,
                                                                          dtype=torch.float64)
    s1 = torch.randn(n, generator=gen, dtype=torch.float64) * torch.rand(n, generator=gen,
                                                                         dtype=torch.float64)
    return s0 / s0.abs().sum(), s1 / s1.abs().sum()


def lp_optimum(s0, s1, d, kappa):
    """min <s0, m> s.t. <1, m> = d, <s1, m> <= kappa, 0 <= m <= 1 (the relaxation, 4.13)."""
    n = s0.numel()
    res = linprog(s0.numpy(), A_ub=s1.numpy()[None], b_ub=[kappa], A_eq=np.ones((1, n)),
                  b_eq=[d], bounds=(0, 1), method="highs")
    assert res.status == 0, res.message
    return res.fun


def test_mask_keeps_d_meets_constraint_and_brackets_the_lp_optimum():
    gen = torch.Generator().manual_seed(0)
    swaps = 0
    for i in range(50):
        n = (12, 100, 1000)[i % 3]
        s0, s1 = instance(gen, n)
        d = int(torch.randint(1, n, (1,), generator=gen))
        alpha = float(torch.rand((), generator=gen)) * 0.999
        if float(torch.topk(s1, d, largest=False).values.sum()) >= 0:
            continue  # kappa_min >= 0: refused (test_errors)
        r = cops.cops(s0, s1, d, alpha, side="plus")
        plus = r.keep
        minus = cops.select(s0, s1, r.lam_minus, d)
        assert int(plus.sum()) == d and int(minus.sum()) == d
        assert_same_selection(plus, cops.select(s0, s1, r.lam_plus, d), s0 + r.lam_plus * s1,
                              rtol=TIE)
        kappa_min = float(torch.topk(s1, d, largest=False).values.sum())
        assert r.kappa_min == pytest.approx(kappa_min, rel=1e-12)
        assert r.kappa == pytest.approx(alpha * kappa_min, rel=1e-12)
        S0 = lambda m: float(s0[m].sum())  # noqa: E731
        S1 = lambda m: float(s1[m].sum())  # noqa: E731
        tol = 1e-12
        assert S1(plus) <= r.kappa + tol  # m+ is feasible
        p_star = lp_optimum(s0, s1, d, r.kappa)
        if r.lam_plus == 0:  # lambda* = 0: the target mask solves both problems (Thm 4.3.1)
            assert S0(plus) == pytest.approx(p_star, abs=1e-9)
            assert torch.equal(plus, cops.select(s0, s1, 0.0, d))
            continue
        # Theorem 4.3.1: S1(m+) <= kappa <= S1(m-), S0(m-) <= S0(m*) <= S0(m+) (4.25)
        assert S1(minus) >= r.kappa - tol
        assert S0(minus) - 1e-9 <= p_star <= S0(plus) + 1e-9
        assert r.lam_plus - r.lam_minus <= 2e-6  # eps = 1e-6
        only_plus, only_minus = plus & ~minus, minus & ~plus
        if int(only_plus.sum()) == 1:  # (4.26): m+, m- differ in one index i+ / i- each
            swaps += 1
            gap = float(s0[only_plus].sum() - s0[only_minus].sum())
            assert S0(plus) - p_star <= gap + 1e-9 and p_star - S0(minus) <= gap + 1e-9
        # strong duality: g(lambda) at the bracket's end is the LP optimum up to eps * |g'|
        g = S0(plus) + r.lam_plus * (S1(plus) - r.kappa)
        assert g == pytest.approx(p_star, abs=1e-5)
        mid = cops.cops(s0, s1, d, alpha).keep  # Algorithm 4.1's own choice: m- or m+
        assert torch.equal(mid, plus) or torch.equal(mid, minus)
    assert swaps >= 25  # the single-swap case of Theorem 4.3.1 is the usual one


def reference(s0, s1, d, alpha, eps=1e-6):
    """Algorithm 4.1 as printed, a full top-d per step; lambda+ doubled from 1."""
    kappa = alpha * float(torch.topk(s1, d, largest=False).values.sum())
    slope = lambda lam: float(s1[cops.select(s0, s1, lam, d)].sum()) - kappa  # noqa: E731
    lo = hi = lam = 0.0
    if slope(0.0) > 0:
        hi = 1.0
        while slope(hi) > 0:
            hi *= 2
        while True:
            lam = (lo + hi) / 2
            g = slope(lam)
            if g == 0:
                lo = hi = lam
                break
            lo, hi = (lam, hi) if g > 0 else (lo, lam)
            if hi - lo <= 2 * eps:
                break
    return lam, lo, hi


def test_narrowed_evaluations_follow_the_plain_bisection(monkeypatch):
    """The undecided-set narrowing and the sampled order statistics change nothing: the same
    midpoints, the same lambda, the same mask as a sort per step, up to near-ties of rounding
    (small SMALL / SAMPLE so that the sampled path runs on small vectors)."""
    monkeypatch.setattr(cops, "SMALL", 256)
    monkeypatch.setattr(cops, "SAMPLE", 64)
    gen = torch.Generator().manual_seed(1)
    for i in range(8):
        n = (1500, 6000)[i % 2]
        s0, s1 = instance(gen, n)
        d = int(torch.randint(1, n // 2, (1,), generator=gen))
        alpha = (0.1, 0.5, 0.9, 0.99999)[i % 4]
        lam, lo, hi = reference(s0, s1, d, alpha)
        sides = (("midpoint", lam), ("plus", hi), ("minus", lo))
        for side, want in sides if i < 2 else sides[:1]:
            r = cops.cops(s0, s1, d, alpha, side=side)
            # the same decisions give the same dyadic midpoints; g' computed two ways can only
            # disagree in sign at a near-tie at lambda*, and then each bisection ends within
            # 2 eps of that point: 4 eps apart at most
            assert (r.lam, r.lam_minus, r.lam_plus) == pytest.approx((want, lo, hi), rel=0,
                                                                     abs=4e-6)
            assert_same_selection(r.keep, cops.select(s0, s1, r.lam, d), s0 + r.lam * s1,
                                  rtol=TIE)


def test_alpha_moves_the_mask_from_the_target_to_the_control_mask():
    """alpha_kappa = 0 (constraint inactive here) is the target's mask m(0); alpha -> 1 reaches
    the control's mask m(1) (Sec. 4.3.4, Fig. 4.6)."""
    gen = torch.Generator().manual_seed(2)
    s0, s1 = instance(gen, 5000)
    d = 500
    target, control = cops.select(s0, s1, 0.0, d), cops.select(s1, s0, 0.0, d)
    sims = []
    for alpha in (0.0, 0.5, 0.9, 0.99, 0.99999):
        keep = cops.cops(s0, s1, d, alpha).keep
        sims.append((cops.similarity(keep, target), cops.similarity(keep, control)))
    assert sims[-1][1] > 0.99 and sims[-1][0] < sims[0][0]
    assert all(a[1] <= b[1] + 1e-9 for a, b in zip(sims, sims[1:]))


def test_similarity_eq_4_29():
    a = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 1, 0], dtype=torch.bool)
    assert cops.similarity(a, b) == pytest.approx(1 / 3)  # |a * b| = 1, max(3, 2) = 3
    assert cops.similarity(a, a) == 1.0
    assert cops.similarity(a, ~a) == 0.0
    parts = {"w1": a[:2], "w2": a[2:]}
    assert cops.similarity(parts, {"w1": b[:2], "w2": b[2:]}) == pytest.approx(1 / 3)


def test_errors_are_one_clear_line():
    s0, s1 = instance(torch.Generator().manual_seed(3), 50)
    with pytest.raises(ValueError, match="alpha_kappa=1.0"):
        cops.cops(s0, s1, 5, 1.0)
    with pytest.raises(ValueError, match="d=0"):
        cops.cops(s0, s1, 0, 0.5)
    with pytest.raises(ValueError, match="kappa_min < 0"):
        cops.cops(s0, s1.abs(), 5, 0.5)  # no negative control score: nothing to constrain
    with pytest.raises(ValueError, match="differ in shape"):
        cops.cops(s0, s1[:10], 5, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        cops.cops(s0, s1 * float("nan"), 5, 0.5)
    with pytest.raises(ValueError, match="side="):
        cops.cops(s0, s1, 5, 0.5, side="best")
    r = cops.cops(s0, s1, 5, 0.99999)
    assert r.lam > 1e-3
    with pytest.raises(ValueError, match="lambda_plus"):
        cops.cops(s0, s1, 5, 0.99999, lambda_plus=r.lam / 4, search=False)
