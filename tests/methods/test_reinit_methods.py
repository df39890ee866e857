"""The reinitialization methods' masks and LW's rescaling / normalization, on a small MLP."""
import copy

import pytest
import torch

from methods.dsd import DSD
from methods.fc import FC
from methods.lw import LW
from methods.reinit_common import Standardize, random_masks, smallest_masks
from methods.wels import WELS
from methods.welsr import WELSR
from runner.data.synthetic import reinit_task
from runner.data.tensors import Split, Splits
from runner.context import Phase
from runner.models.params import select, snapshot
from runner.training.build import Parts


@pytest.fixture
def make_ctx(compose_cfg):
    def _make(hidden=(16, 12, 10)):
        cfg = compose_cfg(["experiment=reinit_table1", f"model.hidden=[{','.join(map(str, hidden))}]",
                           "seed=3", "device=cpu"])
        ctx = Parts(cfg).ctx
        a = reinit_task(n_train=64, n_test=8, alpha=1.0, seed=0)
        ctx.data = Splits(Split(a.x_train, a.y_train), Split(a.x_train[:0], a.y_train[:0]),
                          Split(a.x_test, a.y_test))
        ctx.pipeline = lambda x, train, gen: x
        ctx.init_state = snapshot(ctx.model)
        ctx.reset_optimizer()
        return ctx
    return _make


def start_round(method, ctx, index):
    ctx.phase = Phase(index, index, f"round{index + 1}", None)
    method.on_phase_start(ctx)


def fill(ctx, value=1.0):
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.fill_(value)


def zero_pattern(ctx, params=("weights", "biases")):
    return {n: (p == 0).clone() for n, p in select(ctx.model, list(params))}


def test_random_masks_have_exact_size():
    p = torch.nn.Parameter(torch.zeros(7, 9))
    m = random_masks([("w", p)], 0.2, torch.Generator().manual_seed(0))["w"]
    assert m.shape == p.shape and int(m.sum()) == round(0.2 * 63)


def test_wels_reuses_one_mask(make_ctx):
    ctx = make_ctx()
    wels = WELS(fraction=0.2, params=["weights", "biases"], eta="zeros")
    wels.setup(ctx)
    patterns = []
    for r in (1, 2, 3):
        fill(ctx)
        start_round(wels, ctx, r)
        patterns.append(zero_pattern(ctx))
    for name, s in patterns[0].items():
        assert int(s.sum()) == round(0.2 * s.numel())
        assert all(torch.equal(s, other[name]) for other in patterns[1:])


def test_welsr_draws_a_new_mask_each_round(make_ctx):
    ctx = make_ctx()
    welsr = WELSR(fraction=0.2, params=["weights", "biases"], eta="zeros")
    patterns = []
    for r in (1, 2):
        fill(ctx)
        start_round(welsr, ctx, r)
        patterns.append(zero_pattern(ctx))
    for name, s in patterns[0].items():
        assert int(s.sum()) == int(patterns[1][name].sum()) == round(0.2 * s.numel())
    big = max(patterns[0], key=lambda n: patterns[0][n].numel())
    assert not torch.equal(patterns[0][big], patterns[1][big])


def test_first_round_is_left_alone(make_ctx):
    ctx = make_ctx()
    before = copy.deepcopy(ctx.model.state_dict())
    start_round(WELSR(eta="zeros"), ctx, 0)
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in before.items())


def test_dsd_picks_exactly_the_smallest_fifth(make_ctx):
    ctx = make_ctx()
    with torch.no_grad():
        for p in ctx.model.parameters():  # distinct magnitudes with random signs
            mags = torch.randperm(p.numel()).float() + 1
            p.copy_((mags * torch.sign(torch.randn(p.numel()))).view(p.shape))
    before = {n: p.detach().clone() for n, p in select(ctx.model, "weights")}
    start_round(DSD(fraction=0.2, params="weights", eta="zeros"), ctx, 1)
    for name, p in select(ctx.model, "weights"):
        k = round(0.2 * p.numel())
        expect = before[name].abs() <= k  # magnitudes are 1..n: the k smallest are 1..k
        assert torch.equal(p == 0, expect)
        assert torch.equal(p[~expect], before[name][~expect])


def test_dsd_global_scope_ranks_across_tensors():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    b = torch.nn.Parameter(torch.tensor([-0.5, 10.0, 20.0, 30.0, 40.0]))
    m = smallest_masks([("a", a), ("b", b)], 0.2, scope="global")
    assert m["a"].tolist() == [True, False, False, False, False]
    assert m["b"].tolist() == [True, False, False, False, False]


def test_eta_is_a_fresh_draw_of_the_initializer(make_ctx):
    ctx = make_ctx()
    gen_state = ctx.gen.get_state()
    welsr = WELSR(fraction=0.2, params="weights", eta="fresh")
    twin = torch.Generator().set_state(gen_state)
    before = {n: p.detach().clone() for n, p in select(ctx.model, "weights")}
    start_round(welsr, ctx, 1)
    # replay: the mask comes from ctx.gen first, then the fresh model's seed
    masks = random_masks(list(select(ctx.model, "weights")), 0.2, twin)
    ctx2 = copy.copy(ctx)
    ctx2.gen = twin
    fresh = dict(select(ctx2.build_model(), "weights"))
    for name, p in select(ctx.model, "weights"):
        s = masks[name]
        assert torch.equal(p[s], fresh[name][s]) and torch.equal(p[~s], before[name][~s])
        assert not torch.equal(p[s], before[name][s])


def test_eta_scale_multiplies_eta(make_ctx):
    ctx = make_ctx()
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(1.0)  # away from the initial weights
    wels = WELS(fraction=0.3, params="weights", eta="init", eta_scale=0.5)
    wels.setup(ctx)
    before = {n: p.detach().clone() for n, p in select(ctx.model, "weights")}
    start_round(wels, ctx, 1)
    for name, p in select(ctx.model, "weights"):
        s = wels.fixed[name]
        assert torch.equal(p[s], 0.5 * ctx.init_state[name][s])
        assert torch.equal(p[~s], before[name][~s])


def test_torch_init_redraws_torch_default_bounds():
    from runner.models.init import initialize

    layer = torch.nn.Linear(128, 32)
    torch.nn.init.constant_(layer.weight, 5.0)
    initialize(layer, "torch")
    bound = 1 / 128 ** 0.5  # kaiming_uniform(a=sqrt 5) on fan_in 128
    assert layer.weight.abs().max() <= bound and layer.weight.std() > 0.5 * bound / 3 ** 0.5


def test_fc_reinitializes_the_head_only(make_ctx):
    ctx = make_ctx()
    with torch.no_grad():  # trained weights: biases away from their zero init
        for p in ctx.model.parameters():
            p.add_(0.1)
    before = copy.deepcopy(ctx.model.state_dict())
    start_round(FC(params="all", eta="fresh"), ctx, 1)
    after = ctx.model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]) != k.startswith("head.")


def test_lw_round_schedule():
    lw = LW(n=3)
    lw.K = 3
    assert [lw.block_of_round(r) for r in range(10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    lw = LW(schedule=[1, 1, 2, 2, 3])
    assert [lw.block_of_round(r) for r in range(6)] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("k_round", [(1, 1), (2, 3), (3, 4)])
def test_lw_rescales_normalizes_and_reinitializes(make_ctx, k_round):
    k, r = k_round
    ctx = make_ctx(hidden=(16, 12, 10))
    lw = LW(n=2, calib_size=32)
    lw.setup(ctx)
    init = {n: p.detach().norm().item() for n, p in select(ctx.model, "weights")}
    start_round(lw, ctx, 0)
    with torch.no_grad():  # training moved the weights: scale them and shift them
        for p in ctx.model.parameters():
            p.mul_(2.5).add_(0.1)
    units = list(lw.units)
    kept = {id(p) for u in units[:k] for p in u.parameters()}
    before = {id(p): p.detach().clone() for p in ctx.model.parameters()}
    start_round(lw, ctx, r)
    assert lw.k == k
    for u in units[:k]:  # blocks 1..k: their weights at their initial norms
        for name, p in select(u, "weights"):
            assert p.norm().item() == pytest.approx(float(lw.init_norms[id(p)]), rel=1e-5)
    assert sorted(map(float, lw.init_norms.values())) == pytest.approx(sorted(
        v for n, v in init.items() if not n.startswith("head")))
    for u in units[k:]:  # everything above block k: a new draw
        for p in u.parameters():
            assert id(p) not in kept and not torch.allclose(p, before[id(p)])
    # the normalization after block k: zero mean, unit std on its calibration batch
    z = ctx.data.train.x[lw.calib_index]
    with torch.no_grad():
        for block in ctx.model.blocks[:k]:
            z = block(z)
    assert isinstance(ctx.model.blocks[k - 1][-1], Standardize)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert sum(isinstance(m, Standardize) for m in ctx.model.modules()) == len(lw.norms)
    assert ctx.model(ctx.data.test.x).shape == (8, 8)


def test_lw_head_as_block_rescales_everything_and_keeps_the_head(make_ctx):
    ctx = make_ctx(hidden=(32, 32))
    lw = LW(n=1, head_as_block=True)
    lw.setup(ctx)
    assert lw.K == 3
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.mul_(3.0)
    head_bias = ctx.model.head.bias.detach().clone()
    start_round(lw, ctx, 2)
    for _, p in select(ctx.model, "weights"):
        assert p.norm().item() == pytest.approx(float(lw.init_norms[id(p)]), rel=1e-5)
    assert torch.equal(ctx.model.head.bias, head_bias)  # nothing above the last block
    assert not isinstance(ctx.model.head, torch.nn.Sequential)


def test_lw_freeze_ablation_freezes_earlier_blocks(make_ctx):
    ctx = make_ctx()
    lw = LW(n=1, freeze=True)
    lw.setup(ctx)
    start_round(lw, ctx, 2)  # block 3
    grads = [all(p.requires_grad for p in u.parameters()) for u in lw.units]
    assert grads == [False, False, True, True]


def small_ctx(hidden=(5, 4)):
    """A real RunContext around an MLP (no Trainer): `build_model` draws a new MLP."""
    from conftest import context
    from runner.models.mlp import mlp

    torch.manual_seed(0)
    model = mlp([6], 3, hidden=list(hidden))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return context(model, Splits(Split(x, y), Split(x[:0], y[:0]), Split(x, y)),
                   _build_model=lambda: mlp([6], 3, hidden=list(hidden)), init_state=snapshot(model))


def test_dsd_global_scope_reinitializes_the_globally_smallest():
    ctx = small_ctx()
    small, large = ctx.model.blocks[0][1].weight, ctx.model.head.weight
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.fill_(100.0)
        small.fill_(0.01)  # 30 weights, the smallest of all
    n = sum(p.numel() for _, p in select(ctx.model, "weights"))
    start_round(DSD(fraction=30 / n, scope="global", params="weights", eta="zeros"), ctx, 1)
    assert (small == 0).all() and (large == 100.0).all()  # a per-layer DSD zeroes some of both


def test_smallest_masks_break_ties_by_position_on_the_weights_device():
    p = torch.nn.Parameter(torch.ones(64))  # all magnitudes equal: the first ones are taken
    assert smallest_masks([("w", p)], 0.25)["w"].tolist() == [True] * 16 + [False] * 48
    meta = torch.nn.Parameter(torch.ones(8, device="meta"))
    for scope in ("layer", "global"):
        assert smallest_masks([("w", meta)], 0.5, scope)["w"].is_meta
    with pytest.raises(ValueError, match="scope='layers'; valid: global, layer"):
        smallest_masks([("w", p)], 0.5, "layers")


def test_fc_passes_its_options_on():
    ctx = small_ctx()
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.1)
    before = copy.deepcopy(ctx.model.state_dict())
    start_round(FC(params="weights", eta="zeros"), ctx, 1)
    after = ctx.model.state_dict()
    assert torch.equal(after["head.weight"], torch.zeros_like(after["head.weight"]))
    assert all(torch.equal(v, before[k]) for k, v in after.items() if k != "head.weight")


def test_eta_init_redraws_with_another_initializer():
    ctx = small_ctx()
    rng = torch.random.get_rng_state()
    start_round(WELSR(fraction=1.0, params="weights", eta="fresh", eta_init="pm_sigma"), ctx, 1)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the seed came from ctx.gen
    for name, p in select(ctx.model, "weights"):
        sigma = (2 / sum(p.shape)) ** 0.5  # pm_sigma: +-sqrt(2 / (fan_in + fan_out))
        assert torch.allclose(p.abs(), torch.full_like(p, sigma)), name


def test_lw_first_round_keeps_the_initialization():
    ctx = small_ctx()
    lw = LW(n=1)
    lw.setup(ctx)
    before = {id(p): p.detach().clone() for p in ctx.model.parameters()}
    start_round(lw, ctx, 0)  # block 1 kept at its norms, nothing above redrawn
    assert all(torch.equal(p, before[id(p)]) for p in ctx.model.parameters())
    assert lw.on_phase_end(ctx) == {"lw_block": 1}


def test_lw_freeze_keeps_the_stem_trainable_in_the_first_round():
    ctx = small_ctx(hidden=(5, 4, 4))
    lw = LW(n=1, stem=1, freeze=True)
    lw.setup(ctx)
    trainable = []
    for r in (0, 1):
        start_round(lw, ctx, r)
        trainable.append([all(p.requires_grad for p in u.parameters()) for u in lw.units])
    assert trainable == [[True] * 4, [False, False, True, True]]  # round 2: stem and block 1
    assert lw.on_phase_end(ctx) == {"lw_block": 2}


def test_reinit_rounds_are_counted_and_a_bad_eta_is_named():
    ctx = small_ctx()
    welsr = WELSR(eta="zeros")
    for r in range(3):  # rounds at the starts of phases 1 and 2
        start_round(welsr, ctx, r)
    assert welsr.on_phase_end(ctx) == {"reinit_rounds": 2}
    with pytest.raises(ValueError, match="eta='noise'; valid: fresh, init, zeros"):
        WELSR(eta="noise")


def test_eta_init_seeds_come_from_the_method_generator():
    from methods.reinit_common import eta_for
    from runner.models.init import initialize

    names = [n for n, _ in select(small_ctx().model, "weights")]
    draws = []
    for global_seed in (1, 2):  # the global random state plays no part
        ctx = small_ctx()
        torch.manual_seed(global_seed)
        draws.append(eta_for(ctx, names, "fresh", init="he_normal"))
    twin = small_ctx().gen  # replay: the fresh model's seed, then the initializer's, from ctx.gen
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=twin)))
    model = small_ctx()._build_model()
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=twin)))
    expect = dict(select(initialize(model, "he_normal"), "weights"))
    for name in names:
        assert torch.equal(draws[0][name], draws[1][name]) and torch.equal(draws[0][name], expect[name])
    with pytest.raises(ValueError, match="eta='noise'; valid: fresh, init, zeros"):
        eta_for(small_ctx(), names, "noise")


def test_lw_blocks_option_and_its_bounds():
    ctx = small_ctx()  # two blocks and the head
    lw = LW(blocks=1)
    lw.setup(ctx)
    assert lw.K == 1 and [lw.block_of_round(r) for r in range(3)] == [1, 1, 1]
    for options in ({"blocks": 4}, {"blocks": 3, "stem": 1}, {"blocks": 0}):
        with pytest.raises(ValueError, match=f"LW: {options['blocks']} blocks after a stem of "
                                             f"{options.get('stem', 0)} requested; the model has 2"):
            LW(**options).setup(ctx)


@pytest.mark.parametrize("method", ["lw", "welsr"])
def test_rounds_reset_the_optimizer_after_the_first_only_if_asked(method):
    for reset in (True, False):
        ctx, resets = small_ctx(), []
        ctx.reset_optimizer = lambda: resets.append(ctx.phase.index)
        m = LW(n=1, reset_optimizer=reset) if method == "lw" else WELSR(reset_optimizer=reset)
        m.setup(ctx)
        for r in range(3):
            start_round(m, ctx, r)
        assert resets == ([1, 2] if reset else []), (method, reset)
    assert (WELSR().fraction, WELSR().reset_optimizer) == (0.2, True)  # welsr.yaml's values


@pytest.mark.parametrize("eta,scale", [("zeros", 0.5), ("init", 2.0)])
def test_eta_scale_with_zeros_and_above_one(eta, scale):
    ctx = small_ctx()
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(1.0)
    start_round(WELSR(fraction=1.0, params="weights", eta=eta, eta_scale=scale), ctx, 1)
    for name, p in select(ctx.model, "weights"):
        assert torch.equal(p, scale * ctx.init_state[name] if eta == "init" else torch.zeros_like(p))
    meta = torch.nn.Parameter(torch.ones(8, device="meta"))
    assert random_masks([("w", meta)], 0.5, torch.Generator())["w"].is_meta


def test_fc_blocks_adds_the_top_blocks():
    ctx = small_ctx(hidden=(5, 4, 4))
    before = copy.deepcopy(ctx.model.state_dict())
    start_round(FC(blocks=1, params="weights", eta="zeros"), ctx, 1)
    after = ctx.model.state_dict()
    for k in ("head.weight", "blocks.2.0.weight"):
        assert not after[k].any(), k
    assert all(torch.equal(v, before[k]) for k, v in after.items()
               if k not in ("head.weight", "blocks.2.0.weight"))


def test_wels_mask_covers_the_selected_parameters_and_comes_from_the_method_generator():
    masks = []
    for global_seed in (1, 2):
        ctx = small_ctx()
        torch.manual_seed(global_seed)
        wels = WELS(params="weights")
        wels.setup(ctx)
        masks.append(wels.fixed)
    assert list(masks[0]) == [n for n, _ in select(ctx.model, "weights")]
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_lw_rescales_shrunk_weights_up_and_calibrates_on_a_seeded_eval_batch(make_ctx):
    """Weights whose norm fell below 1 are scaled back up to their initial norms; the calibration
    batch comes from the method generator (not the global one) through the eval pipeline."""
    ctx = make_ctx()
    lw = LW(n=1, calib_size=16, reinit=False)
    lw.setup(ctx)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.mul_(1e-3)
    ctx.pipeline = lambda x, train, gen: x + 100.0 if train else x
    state = ctx.gen.get_state()
    torch.manual_seed(1)
    start_round(lw, ctx, 1)
    for u in lw.units[:1]:
        for _, p in select(u, "weights"):
            assert p.norm().item() == pytest.approx(float(lw.init_norms[id(p)]), rel=1e-5)
    first = lw.calib_index.clone()
    with torch.no_grad():  # round 2: block 2's output, normalized
        z = lw.units[1](ctx.model.blocks[0](ctx.data.train.x[first]))
    assert lw.norms[1].mean.item() == pytest.approx(z.mean().item(), abs=1e-5)
    ctx.gen.set_state(state)
    torch.manual_seed(2)
    lw.calibrate(ctx, 2)
    assert torch.equal(lw.calib_index, first)


def test_standardize_keeps_its_buffers_dtype():
    s = Standardize()
    s.calibrate(torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert s.mean.dtype == s.std.dtype == torch.float32
    assert (s.mean.item(), s.std.item()) == (2.0, 1.0)
