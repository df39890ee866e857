"""The COPS method (methods.cops): its mask is Algorithm 4.1 on the negated, L1-normalized scores
of runner.sparse.pruning, set in ctx.masks as `pruned`; variants, alpha per q; U-COPS's class subset T
and its USNIP labels, uniform over all classes."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import assert_same_selection, context
from methods.cops import Cops
from runner.data.tensors import Split, Splits
from runner.sparse import cops, pruning
from runner.sparse.keep import exact_density, keep_count


def make_ctx(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.arange(64) % 4
    data = Splits(Split(x, y), Split(x[:0], y[:0]), Split(x[:8], y[:8]))
    return context(model, data, seed=seed)


def flat(masks, names):
    return torch.cat([masks[n].keep.flatten() for n in names])


@pytest.mark.parametrize("control,side", [("grasp", "plus"), ("magnitude", "midpoint")])
def test_mask_is_algorithm_4_1_on_the_negated_normalized_scores(control, side):
    ctx = make_ctx()
    method = Cops(control=control, alpha=0.9, q=0.8, batches=2, batch_size=16, side=side,
                  store=False)
    batches = method.calibration(ctx)
    score = lambda kind: pruning.scores(kind, ctx.model, batches, normalize=True,  # noqa: E731
                                        temperature=method.temperature)  # GraSP's 200
    target, ctrl = score("snip"), score(control)
    names = list(target)
    s0 = -torch.cat([target[n].flatten() for n in names])
    s1 = -torch.cat([ctrl[n].flatten() for n in names])
    d = keep_count(s0.numel(), exact_density(0.8), "floor")
    want = cops.cops(s0, s1, d, 0.9, side=side)
    method.setup(ctx)
    assert set(ctx.masks.names()) == set(names)
    assert all(ctx.masks[n].kind == "pruned" for n in names)
    got = flat(ctx.masks, names)
    assert torch.equal(got, want.keep) and int(got.sum()) == d
    for n, p in ctx.model.named_parameters():
        if n in names:
            assert (p[~ctx.masks[n].keep] == 0).all()
    m = method.metrics
    assert m["cops_lambda"] == want.lam and m["cops_kappa"] == pytest.approx(want.kappa)
    assert m["cops_s1"] == pytest.approx(float(s1[want.keep].sum()))
    if side == "plus":
        assert m["cops_s1"] <= m["cops_kappa"] + 1e-6  # m+ meets the constraint
    assert m["sim_target"] == pytest.approx(cops.similarity(want.keep, cops.select(s0, s1, 0, d)))
    assert 0 <= m["sim_control"] <= 1 and m["q"] == pytest.approx(0.8, abs=1e-3)


def test_linear_baseline_alpha_per_q_and_errors():
    ctx = make_ctx()
    lin = Cops(lam=3.0, q=0.8, batches=1, batch_size=16, store=False)
    lin.setup(ctx)
    batches = lin.calibration(ctx)
    target = pruning.scores("snip", ctx.model, batches, normalize=True)
    names = list(target)
    assert int(flat(ctx.masks, names).sum()) == keep_count(
        sum(t.numel() for t in target.values()), exact_density(0.8), "floor")
    assert lin.metrics["cops_lambda"] == 3.0
    assert Cops(alpha={"0.9": 0.1, "0.99": 0.99999}, q=0.99).alpha == 0.99999
    with pytest.raises(ValueError, match="no value for q=0.95"):
        Cops(alpha={"0.9": 0.1}, q=0.95)
    with pytest.raises(ValueError, match="alpha=1.0"):
        Cops(alpha=1.0)
    with pytest.raises(ValueError, match="control='hessian'"):
        Cops(control="hessian")


def test_u_cops_is_cops_on_the_class_subset_t_with_labels_uniform_over_all_classes():
    """U-COPS (Sec. 4.4.3): both scores use only samples of the k known classes T, in data order;
    S0 = SNIP with their true labels, S1 = USNIP, labels uniform over all 4 classes; the mask is
    Algorithm 4.1 on those scores, computed here by hand from autograd, and keeps exactly d."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(64) % 4
    centers = torch.randn(4, 8, generator=g) * 2  # classes differ, so T changes the scores
    x = centers[y] + torch.randn(64, 8, generator=g)
    data = Splits(Split(x, y), Split(x[:0], y[:0]), Split(x[:8], y[:8]))
    sets, masks = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
        ctx = context(model, data, seed=seed)
        start = [p.detach().clone() for p in model.parameters()]
        calls = []  # (inputs, labels) of every loss the method evaluates
        model.register_forward_pre_hook(lambda m, a: calls.append([a[0].detach()]))
        ctx.loss_fn = lambda out, lab: (calls[-1].append(lab.clone()),
                                        F.cross_entropy(out, lab))[1]
        method = Cops(control="usnip", classes=2, class_seed=5, alpha=0.9, q=0.8, batches=2,
                      batch_size=8, store=False)
        method.setup(ctx)

        rows = [(xb[:, None] == x[None]).all(-1).int().argmax(1) for xb, _ in calls]
        assert all(torch.equal(x[r], xb) for r, (xb, _) in zip(rows, calls))
        t = set(y[torch.cat(rows)].tolist())  # the classes of every scored sample
        assert len(t) == 2
        sets.append(t)
        first = (torch.isin(y, torch.tensor(sorted(t)))).nonzero().squeeze(1)[:16]
        assert all(torch.equal(r, first[:8]) or torch.equal(r, first[8:]) for r in rows)
        true = [lab for (_, lab), r in zip(calls, rows) if torch.equal(lab, y[r])]
        rand = [(r, lab) for (_, lab), r in zip(calls, rows) if not torch.equal(lab, y[r])]
        assert len(rand) == 2 and len(true) == 6  # USNIP's 2 batches; SNIP, grad flow x2
        rand_labels = torch.cat([lab for _, lab in rand])
        assert set(rand_labels.tolist()) - t and set(rand_labels.tolist()) <= set(range(4))

        # by hand: the weights at initialization, the mean gradient over the 2 batches
        net = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
        with torch.no_grad():
            for p, s in zip(net.parameters(), start):
                p.copy_(s)
        ws = [net[0].weight, net[2].weight]

        def snip(pairs):  # -|g * w| / L1 over all weights (the thesis's minimized sign)
            gs = [torch.autograd.grad(F.cross_entropy(net(x[r]), lab), ws) for r, lab in pairs]
            s = torch.cat([((a + b) / 2 * w).abs().flatten() for a, b, w in zip(*gs, ws)])
            s = s.detach()
            return -s / s.sum()

        s0 = snip([(first[:8], y[first[:8]]), (first[8:], y[first[8:]])])
        s1 = snip(rand)
        d = keep_count(s0.numel(), exact_density(0.8), "floor")
        res = cops.cops(s0, s1, d, 0.9)
        want = res.keep
        got = flat(ctx.masks, ["0.weight", "2.weight"])
        # the method's gradients sum in another order than these: near-ties may flip, and the
        # objectives (the scores summed over the kept entries) agree
        assert_same_selection(got, want, s0 + res.lam * s1)
        assert float(s0[got].sum()) == pytest.approx(float(s0[want].sum()), rel=1e-4)
        assert float(s1[got].sum()) == pytest.approx(float(s1[want].sum()), rel=1e-4)
        masks.append(got)
        # the check can fail: all classes' first 16 samples (true labels) give another mask
        s0_all = snip([(torch.arange(8), y[:8]), (torch.arange(8, 16), y[8:16])])
        with pytest.raises(AssertionError, match="more than a near-tie"):
            assert_same_selection(cops.cops(s0_all, s1, d, 0.9).keep, want, s0 + res.lam * s1)
    assert sets[0] == sets[1]  # T comes from class_seed, not from the run's seed


def scores_of(ctx, method, kind, d=None):
    batches = method.calibration(ctx)
    return pruning.scores(kind, ctx.model, batches, loss_fn=ctx.loss_fn, gen=ctx.gen,
                          temperature=method.temperature, d=d, iterations=method.iterations,
                          normalize=True)


def flat_of(masks, names):
    return torch.cat([masks[n].flatten() for n in names])


def smoothed(out, y):  # a loss whose gradients rank the weights unlike cross-entropy's
    return F.cross_entropy(out, y, label_smoothing=0.6)


@pytest.mark.parametrize("control,options", [
    ("grasp", dict(temperature=3.0, eps=1e-3, lambda_plus=2.0, search=False, side="plus")),
    ("synflow", dict(iterations=3, side="minus")), ("usnip", dict())])
def test_every_option_reaches_algorithm_4_1_and_every_metric_is_the_masks(control, options):
    """The mask and all metrics against Algorithm 4.1 run by hand on the negated, normalized
    scores computed with the method's options, the run's loss and its generator."""
    ctx = make_ctx()
    ctx.loss_fn = smoothed
    method = Cops(control=control, alpha=0.7, q=0.75, batches=2, batch_size=16, store=False,
                  **options)
    names = [n for n, _ in pruning.weights(ctx.model)]
    D = sum(p.numel() for _, p in pruning.weights(ctx.model))
    d = keep_count(D, exact_density(0.75), "floor")
    gen = ctx.gen.get_state()
    target = scores_of(ctx, method, "snip", d)
    ctrl = scores_of(ctx, method, control, d)
    ctx.gen.set_state(gen)
    s0 = -torch.cat([target[n].flatten() for n in names])
    s1 = -torch.cat([ctrl[n].flatten() for n in names])
    args = {k: options.get(k, v) for k, v in
            dict(eps=1e-6, lambda_plus=1.0, search=True, side="midpoint").items()}
    want = cops.cops(s0, s1, d, 0.7, **args)
    method.setup(ctx)
    assert torch.equal(flat(ctx.masks, names), want.keep)
    m = method.metrics
    assert {k: m[k] for k in ("cops_lambda", "cops_kappa", "cops_kappa_min", "cops_evaluations")} \
        == {"cops_lambda": want.lam, "cops_kappa": want.kappa, "cops_kappa_min": want.kappa_min,
            "cops_evaluations": want.evaluations}
    assert m["cops_s0"] == pytest.approx(float(s0[want.keep].sum()), rel=1e-5)
    assert m["cops_s1"] == pytest.approx(float(s1[want.keep].sum()), rel=1e-5)
    for key, s in (("sim_target", target), ("sim_control", ctrl)):
        top = pruning.top_d(s, d)
        assert m[key] == pytest.approx(cops.similarity(want.keep, flat_of(top, names))), key
    assert m["q"] == pytest.approx(0.75, abs=1e-2)


def test_linear_baseline_is_the_d_smallest_of_s0_plus_lambda_s1_and_q0_keeps_all():
    ctx = make_ctx()
    method = Cops(control="magnitude", lam=0.5, q=0.8, batches=1, batch_size=16, store=False)
    names = [n for n, _ in pruning.weights(ctx.model)]
    target, ctrl = scores_of(ctx, method, "snip"), scores_of(ctx, method, "magnitude")
    s0 = -torch.cat([target[n].flatten() for n in names])
    s1 = -torch.cat([ctrl[n].flatten() for n in names])
    d = keep_count(s0.numel(), exact_density(0.8), "floor")
    want = cops.select(s0, s1, 0.5, d)
    method.setup(ctx)
    assert torch.equal(flat(ctx.masks, names), want)
    assert method.metrics["cops_lambda"] == 0.5 and "cops_kappa" not in method.metrics
    assert method.metrics["cops_s0"] == pytest.approx(float(s0[want].sum()), rel=1e-5)
    ctx = make_ctx()
    dense = Cops(q=0.0, batches=1, batch_size=16, store=False)
    dense.setup(ctx)
    assert not len(ctx.masks) and "cops_lambda" not in dense.metrics
    assert dense.metrics["sim_target"] == dense.metrics["sim_control"] == 1.0


def test_prune_init_options_reach_the_cops_run():
    """Storage, gradient statistics and the class subset pass through to prune_init."""
    ctx = make_ctx()
    method = Cops(control="magnitude", q=0.8, batches=1, batch_size=16, classes=4)
    method.setup(ctx)
    assert method.classes == 4 and "stored_bytes" in method.on_phase_end(ctx)
    assert "grad_abs_mean" in method.on_epoch_end(ctx)
    off = Cops(control="magnitude", q=0.8, batches=1, batch_size=16, store=False,
               grad_stats=False)
    off.setup(make_ctx())
    assert "stored_bytes" not in off.on_phase_end(ctx) and off.on_epoch_end(ctx) == {}
    assert (off.batches, off.batch_size, off.kind, off.scope) == (1, 16, "pruned", "global")


@pytest.mark.parametrize("bad,match", [
    (dict(alpha={"0.9": 0.1, "0.99": 0.5}, q=0.95), r"it lists q = 0.9, 0.99 \(or set method"),
    (dict(alpha=-0.1), r"alpha=-0.1; valid: \[0, 1\)"), (dict(alpha=1.5), "alpha=1.5"),
    (dict(lam=-1.0), r"lambda=-1.0; valid: null \(COPS\) or >= 0"),
    (dict(lam=float("inf")), "lambda=inf"), (dict(side="up"), "side='up'; valid: midpoint, plus"),
    (dict(control="hessian"), "control='hessian'; valid: random, magnitude, snip"),
    (dict(target="hessian"), "score='hessian'")])
def test_cops_options_are_checked_with_one_clear_line(bad, match):
    with pytest.raises(ValueError, match=match):
        Cops(**bad)
    for ok in (dict(alpha=0.0, lam=0.0, side="minus"), dict(lam=0.5), dict(alpha={0.9: 0.3})):
        Cops(**ok)
    assert Cops(alpha={0.9: 0.3}).alpha == 0.3 and Cops(lam=0.5).lam == 0.5
