"""The one keep count of runner.sparse.keep and the rounding rule of each caller: cases where
floor, round and ceil disagree (no single value separates all three: floor < round = ceil above
a half, floor = round < ceil below it), so each caller's rule is pinned by one that differs."""
from fractions import Fraction

import pytest
import torch
from torch import nn

from conftest import context
from methods.finetune import FineTune
from methods.random_mask import RandomMask
from methods.reinit_common import smallest_masks
from methods.set import SET
from runner.context import Phase
from runner.sparse.keep import exact_density, keep_count, layer_counts, top_k

RULES = ("floor", "round", "ceil")


@pytest.mark.parametrize("n, density, want", [
    (10, 0.25, (2, 2, 3)),  # 2.5: round halves to even
    (10, 0.37, (3, 4, 4)),  # 3.7
    (10, 0.32, (3, 3, 4)),  # 3.2
    (10, exact_density(0.65), (3, 4, 4)),  # exactly 3.5: round to even, 4
    (10, Fraction(1, 4), (2, 2, 3)),
    (430_500, exact_density(0.9), (43_050, 43_050, 43_050)),  # the float product: 43049.99...
    (430_500, 1 - 0.9, (43_049, 43_050, 43_050)),
])
def test_keep_count_applies_the_rule_it_is_given(n, density, want):
    assert tuple(keep_count(n, density, rule) for rule in RULES) == want
    with pytest.raises(ValueError, match="rounding='nearest'; valid: floor, round, ceil"):
        keep_count(n, density, "nearest")


def ten():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 1, bias=False))  # one prunable tensor of 10 entries


def kept(ctx) -> int:
    return int(ctx.masks["0.weight"].keep.sum())


@pytest.mark.parametrize("density, want", [(0.37, 4), (0.25, 2)])  # floor 3, ceil 3
def test_random_masks_round(density, want):
    ctx = context(ten())
    RandomMask(density=density).setup(ctx)
    assert kept(ctx) == want


def test_set_budgets_round():
    ctx = context(ten())
    method = SET(sparsity=0.63, distribution="uniform")  # 0.37 of 10: floor 3, round 4
    method.setup(ctx)
    assert method.counts == [4] and kept(ctx) == 4
    assert layer_counts([torch.Size([10])], 1 - 0.63, "uniform", "round") == [4]


def test_finetune_rounds():
    ctx = context(ten(), num_phases=2)
    ctx.phase = Phase(1, 0, "finetune", None)
    FineTune(sparsity=0.63, at_phase=1, scope="layer").on_phase_start(ctx)
    assert kept(ctx) == 4  # floor 3


def test_reinitialization_masks_round():
    p = nn.Parameter(torch.arange(10.0))
    assert int(smallest_masks([("w", p)], 0.37)["w"].sum()) == 4  # floor 3
    assert int(smallest_masks([("w", p)], 0.25)["w"].sum()) == 2  # ceil 3


def test_pruning_at_init_floors_exactly():
    # prune_init, COPS and the FreezeNet tables: d = floor((1 - q) D), q read as a decimal
    assert keep_count(10, exact_density(0.63), "floor") == 3  # round 4
    assert keep_count(430_500, exact_density(0.9), "floor") == 43_050


def test_top_k_both_tie_rules_keep_exactly_k_on_the_device():
    s = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, 0.0])
    first = top_k(s, 2, ties="first")
    assert first.tolist() == [False, True, True, False, False, False]
    assert top_k(s, 1, largest=False, ties="first").tolist() == [False] * 3 + [True] + [False] * 2
    for ties in ("any", "first"):
        for k in range(7):
            for largest in (True, False):
                m = top_k(s, k, largest, ties)
                assert int(m.sum()) == k
                if 0 < k < 6:
                    hi, lo = (s[m].min(), s[~m].max()) if largest else (s[~m].min(), s[m].max())
                    assert hi >= lo
        assert top_k(torch.ones(4, device="meta"), 2, ties=ties).is_meta
