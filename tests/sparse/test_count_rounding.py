"""Which way each sparse method rounds its counts, at counts where the rules disagree, and the
optimizer state of an entry whose mask status changes.

floor(x) <= round(x) <= ceil(x), and for a non-integer x round is one of the other two, so no one
product tells three rules apart: every case below pairs a product with fractional part below
1/2 (floor = round < ceil) with one above it (floor < round = ceil)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import context
from methods.finetune import FineTune
from methods.gmp import GMP
from methods.lth import LTH
from methods.prune_init import PruneAtInit
from methods.set import SET
from runner.context import Phase
from runner.models.transforms import prunable

pytestmark = pytest.mark.usefixtures("one_thread")

RULES = {"floor": math.floor, "round": round, "ceil": math.ceil}


def mlp(widths=(4, 5, 2)):
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths, widths[1:])])


def kept(ctx, model):
    return [int(ctx.masks[n].keep.sum()) if n in ctx.masks else p.numel()
            for n, p in prunable(model)]


def assert_tells_rules_apart(products):
    fractions = [x - math.floor(x) for x in products]
    assert any(0 < f < 0.5 for f in fractions) and any(0.5 < f < 1 for f in fractions)


@pytest.mark.parametrize("q,want", [(0.59, 12), (0.61, 11)])
def test_pruning_at_init_keeps_floor_of_the_density_times_all_weights(q, want):
    """d = floor((1 - q) D), D = 30: 12.3 -> 12 (ceil 13), 11.7 -> 11 (round 12)."""
    assert_tells_rules_apart([(1 - q) * 30 for q in (0.59, 0.61)])
    model = mlp()
    ctx = context(model)
    ctx.calibration_batch = lambda n, known=None: (torch.randn(n, 4), torch.randint(0, 2, (n,)))
    PruneAtInit(score="magnitude", q=q, batch_size=4).setup(ctx)
    assert sum(kept(ctx, model)) == want


def test_set_keeps_round_of_the_density_times_each_layer():
    """Uniform density 0.33 of 20 and 10 weights: 6.6 and 3.3 -> [7, 3] (floor [6, 3], ceil
    [7, 4])."""
    assert_tells_rules_apart([0.33 * 20, 0.33 * 10])
    model = mlp()
    ctx = context(model)
    SET(sparsity=0.67, distribution="uniform").setup(ctx)
    assert kept(ctx, model) == [7, 3]


@pytest.mark.parametrize("rounding,want", [("ceil", [13, 6]), ("round", [13, 7]),
                                           ("floor", [14, 7])])
def test_lth_prunes_its_rounding_of_the_fraction_times_the_kept(rounding, want):
    """Per layer, 0.33 of 20 and 10 kept weights: 6.6 and 3.3 pruned, ceil by default
    (OpenLTH): 7 and 4, leaving [13, 6]."""
    model = mlp()
    method = LTH(prune_fraction=0.33, rewind_step=0, scope="layer", rounding=rounding)
    ctx = context(model, total_steps=4)
    method.setup(ctx)
    ctx.reset_optimizer()
    ctx.phase = Phase(1, 1, "round2", None)
    method.on_phase_start(ctx)
    assert kept(ctx, model) == want
    if rounding == "ceil":
        assert LTH().rounding == "ceil"


def test_gmp_keeps_round_of_its_cubic_density():
    """GMP at t1 (sparsity 0.67 per layer): round(0.33 x 20) = 7, round(0.33 x 10) = 3."""
    model = mlp()
    method = GMP(sparsity=0.67, t_p=1, t0=0, t1=1, scope="layer")
    ctx = context(model, total_steps=4)
    method.setup(ctx)
    ctx.reset_optimizer()
    method.on_phase_start(ctx)
    method.after_step(ctx)
    assert kept(ctx, model) == [7, 3]


@pytest.mark.parametrize("scope,want", [("layer", [7, 3]), ("global", [10])])
def test_finetune_keeps_round_of_the_density(scope, want):
    """One-shot pruning to sparsity 0.67: per layer round(6.6), round(3.3); globally
    round(0.33 x 30) = round(9.9) = 10 (floor 9)."""
    model = mlp()
    method = FineTune(sparsity=0.67, at_phase=1, scope=scope)
    ctx = context(model)
    method.setup(ctx)
    ctx.phase = Phase(1, 0, "finetune", None)
    method.on_phase_start(ctx)
    got = kept(ctx, model)
    assert (got if scope == "layer" else [sum(got)]) == want


class NeverRegrow(SET):
    """SET whose regrowth prefers entries never kept before, so every dropped entry stays
    dropped and the mask change counts the drop exactly."""

    def grow_scores(self, ctx, p):
        return (~self.ever[id(p)]).float()


@pytest.mark.parametrize("rounding", [None, "floor", "round", "ceil"])
def test_dst_drop_counts_at_every_update_follow_the_rounding(rounding):
    """SET with t_p = 1 over a 12-step phase on 200 and 35 kept weights (q = 0.9): the update
    after step t drops rounding(f_t k) per layer, f_t = 0.005 + 0.495 / 2 (1 + cos(pi t / 12));
    ceil by default (Liu et al.'s code). Products at the later updates fall on both sides of
    1/2."""
    model = mlp((40, 50, 7))
    options = {} if rounding is None else {"rounding": rounding}
    method = NeverRegrow(sparsity=0.9, t_p=1, distribution="uniform", **options)
    ctx = context(model, total_steps=12)
    method.setup(ctx)
    ctx.reset_optimizer()
    method.on_phase_start(ctx)
    named = prunable(model)
    method.ever = {id(p): ctx.masks[n].keep.clone() for n, p in named}
    assert method.counts == [200, 35]
    rule = RULES[rounding or "ceil"]
    products = []
    for t in range(1, 12):
        before = {n: ctx.masks[n].keep.clone() for n, _ in named}
        ctx.step = t - 1
        method.after_step(ctx)
        ctx.masks.project()
        f = 0.005 + 0.495 / 2 * (1 + math.cos(math.pi * t / 12))
        for (n, p), k in zip(named, (200, 35)):
            after = ctx.masks[n].keep
            assert int((before[n] & ~after).sum()) == min(k, rule(f * k)), (t, n)
            assert int(after.sum()) == k
            method.ever[id(p)] |= after
            products.append(f * k)
    assert_tells_rules_apart(products[4:])  # the later updates too


# -- optimizer state at a mask change -----------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_changed_mask_clears_the_state_of_the_entries_it_changes_and_keeps_the_others(opt):
    """An existing mask changes: entry (0, 0) regrows, (0, 1) is dropped. Their momentum (Adam:
    both moments) restarts at 0; every other entry's state is bitwise what it was."""
    model = mlp()
    ctx = context(model)
    ctx.optimizer = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt == "sgd"
                     else torch.optim.Adam(model.parameters(), lr=0.01))
    name, p = prunable(model)[0]
    keep = torch.ones_like(p, dtype=torch.bool)
    keep[0, 0] = False
    ctx.masks.set(name, keep)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ctx.optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(8, 4, generator=g)),
                        torch.randint(0, 2, (8,), generator=g)).backward()
        ctx.optimizer.step()
        ctx.masks.project()
    state = {k: v.clone() for k, v in ctx.optimizer.state[p].items() if v.shape == p.shape}
    assert state and all((v[0, :2] != 0).all() for v in state.values())  # pruned ones' too
    new = keep.clone()
    new[0, 0], new[0, 1] = True, False
    ctx.masks.set(name, new)
    changed = torch.zeros_like(keep)
    changed[0, 0] = changed[0, 1] = True
    for key, before in state.items():
        now = ctx.optimizer.state[p][key]
        assert (now[changed] == 0).all(), key
        assert torch.equal(now[~changed], before[~changed]), key
    assert p.detach()[0, 0] == 0 and p.detach()[0, 1] == 0  # regrown at 0, dropped to 0
