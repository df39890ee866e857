"""The COPS method (methods.cops): its mask is Algorithm 4.1 on the negated, L1-normalized scores
of runner.pruning, set in ctx.masks as `pruned`; variants, alpha per q, the class subset T."""
import pytest
import torch
from torch import nn

from conftest import context
from methods.cops import Cops
from runner import cops, pruning
from runner.data.tensors import Split, Splits


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
    score = lambda kind: pruning.scores(kind, ctx.model, batches, normalize=True)  # noqa: E731
    target, ctrl = score("snip"), score(control)
    names = list(target)
    s0 = -torch.cat([target[n].flatten() for n in names])
    s1 = -torch.cat([ctrl[n].flatten() for n in names])
    d = pruning.keep_count(s0.numel(), 0.8)
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
    assert int(flat(ctx.masks, names).sum()) == pruning.keep_count(
        sum(t.numel() for t in target.values()), 0.8)
    assert lin.metrics["cops_lambda"] == 3.0
    assert Cops(alpha={"0.9": 0.1, "0.99": 0.99999}, q=0.99).alpha == 0.99999
    with pytest.raises(ValueError, match="no value for q=0.95"):
        Cops(alpha={"0.9": 0.1}, q=0.95)
    with pytest.raises(ValueError, match="alpha=1.0"):
        Cops(alpha=1.0)
    with pytest.raises(ValueError, match="control='hessian'"):
        Cops(control="hessian")


def test_u_cops_scores_on_the_known_classes_only_the_same_set_for_every_seed():
    seen = []
    for seed in (0, 1):
        ctx = make_ctx(seed)
        method = Cops(control="usnip", classes=2, class_seed=5, q=0.8, batches=2, batch_size=8,
                      store=False)
        labels = torch.cat([y for _, y in method.calibration(ctx)])
        assert len(labels) == 16 and len(labels.unique()) == 2
        seen.append(set(labels.tolist()))
        method.setup(ctx)
    assert seen[0] == seen[1]
