"""SWR, L2, L2 Init, Shrink & Perturb and head reset against hand computations and invariants."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import assert_same_selection
from methods.head_reset import HeadReset
from methods.l2 import L2
from methods.l2_init import L2Init
from methods.shrink_perturb import ShrinkPerturb
from methods.swr import SWR, classifier_modules
from runner.models.base import Network
from runner.models.mlp import mlp


def context(model, lr=1e-3, seed=0, builder=None):
    """The parts of the trainer's RunContext these methods use."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def build_model():  # as RunContext.build_model: torch's RNG seeded from the method generator
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        return builder()

    return SimpleNamespace(model=model, optimizer=opt, phase_index=0, device=torch.device("cpu"),
                           build_model=build_model)


def make_mlp(seed=0, norm=None):
    if seed is not None:
        torch.manual_seed(seed)
    return mlp([1, 4, 4], 5, hidden=[8, 6], norm=norm)


def make_cnn_bn(seed=0):
    """conv (bias) -> BN -> ReLU -> pool, conv (bias) -> ReLU -> conv -> BN -> ReLU, FC, head."""
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
              nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten()),
              nn.Sequential(nn.Linear(5 * 4 * 4, 7), nn.ReLU())]
    return Network(blocks, nn.Linear(7, 3))


def grow(model, gen_seed=1, scale=3.0):
    """Move every parameter far from its initialization (as long training does)."""
    g = torch.Generator().manual_seed(gen_seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale).add_(torch.randn(p.shape, generator=g))


def layer_weights(model):
    return [m.weight for m in model.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d))]


@pytest.mark.parametrize("builder,shape", [(make_mlp, (1, 4, 4)),
                                           (lambda: make_mlp(norm="batch"), (1, 4, 4)),
                                           (make_cnn_bn, (3, 8, 8))],
                         ids=["mlp_bias", "mlp_bias_bn", "cnn_bias_bn"])
def test_swr_keeps_network_proportional_and_pulls_norms_to_init(builder, shape):
    model = builder()
    ctx = context(model)
    swr = SWR(lam=0.3)
    swr.setup(ctx)
    n_init = [w.detach().norm().item() for w in layer_weights(model)]
    grow(model)
    n_before = [w.detach().norm().item() for w in layer_weights(model)]
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(2))
    model.train()  # batch statistics: normalization layers are scale invariant
    with torch.no_grad():
        before = model(x).double()
    swr.after_step(ctx)
    with torch.no_grad():
        after = model(x).double()
    ratio = after / before
    k = ratio.median()
    assert k > 0
    assert torch.allclose(ratio, k.expand_as(ratio), rtol=1e-3), "logits not a common multiple"
    # the same predictions: each sample's top logit, up to near-ties that rounding may flip
    for a, b in zip(after, before):
        top = torch.arange(len(b))
        assert_same_selection(top == a.argmax(), top == b.argmax(), -b, rtol=1e-3)
    for n0, nb, w in zip(n_init, n_before, layer_weights(model)):
        # Eq. 5: ||W|| - ||W^c|| = lam (||W|| - ||W0||), so the norm moves 30 % toward ||W0||
        assert w.norm().item() == pytest.approx(0.3 * n0 + 0.7 * nb, rel=1e-5)


@pytest.mark.parametrize("unit", [1.0, 0.01])  # norms above and below 1
def test_swr_hand_computed_single_layer(unit):
    model = Network([], nn.Linear(2, 1))
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[3.0, 4.0]]) * unit)  # norm 5 unit
        model.head.bias.fill_(2.0)
    ctx = context(model)
    swr = SWR(lam=0.5)
    swr.setup(ctx)
    with torch.no_grad():
        model.head.weight.mul_(3.0)  # norm 15 unit
    swr.after_step(ctx)
    c = (0.5 * 5 + 0.5 * 15) / 15  # = 2/3
    assert torch.allclose(model.head.weight, torch.tensor([[9.0, 12.0]]) * unit * c)
    assert model.head.bias.item() == pytest.approx(2.0 * c)


def test_swr_lambda_c_is_the_classifier_and_lambda_f_the_features():
    """The public code swaps the two for CNNs; here lambda_c acts on the head (MLP scope)."""
    model = make_mlp()
    ctx = context(model)
    swr = SWR(lam=0.5, lambda_f=0.0, lambda_c=1.0, classifier="head")
    swr.setup(ctx)
    head0 = model.head.weight.norm().item()
    grow(model)
    feats = [w.norm().item() for w in layer_weights(model.blocks)]
    swr.after_step(ctx)
    assert model.head.weight.norm().item() == pytest.approx(head0, rel=1e-5)
    assert [w.norm().item() for w in layer_weights(model.blocks)] == pytest.approx(feats, rel=1e-6)


def test_swr_without_rescale_norm_leaves_normalization_scales_and_reads_a_deep_head():
    model = make_cnn_bn()
    ctx = context(model)
    swr = SWR(lam=0.5, rescale_norm=False)
    swr.setup(ctx)
    grow(model)
    bn = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    conv = model.blocks[0][0].weight.norm().item()
    swr.after_step(ctx)
    assert all(torch.equal(m.weight, w) for m, w in
               zip([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)], bn))
    assert model.blocks[0][0].weight.norm().item() != pytest.approx(conv)
    deep = Network([nn.Linear(3, 4)], nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert classifier_modules(deep, "head") == [deep.head[0], deep.head[2]]
    with pytest.raises(ValueError, match="classifier scope 'last'; valid: linear, head"):
        classifier_modules(deep, "last")


def test_swr_leaves_layers_without_weight_norm_alone_and_stays_on_the_models_device():
    model = Network([nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False))],
                    nn.Linear(4, 2))
    with torch.no_grad():
        model.blocks[0][0].weight.zero_()  # norm 0: c = 1, its bias is kept
        model.blocks[0][0].bias.fill_(0.5)
    ctx = context(model)
    swr = SWR(lam=0.5)
    swr.setup(ctx)
    swr.after_step(ctx)
    assert torch.equal(model.blocks[0][0].bias, torch.full((4,), 0.5))
    meta = make_mlp().to("meta")
    ctx = context(meta)
    ctx.device = torch.device("meta")
    swr = SWR(lam=0.5)
    swr.setup(ctx)
    swr.after_step(ctx)
    assert all(t.is_meta for t in (swr.lam, swr.starts, swr.index, swr.n_init, swr.norms()))


def test_swr_reinit_resets_reference_norms_when_lr_decays():
    model = make_mlp()
    ctx = context(model, lr=1e-3)
    plain, reinit = SWR(lam=0.5), SWR(lam=0.5, reinit=True)
    for m in (plain, reinit):
        m.setup(ctx)
    grow(model)
    reinit.after_step(ctx)  # lr 1e-3: a normal step toward the initial norms
    norms = [w.norm().item() for w in layer_weights(model)]
    for g in ctx.optimizer.param_groups:
        g["lr"] = 1e-4
    reinit.after_step(ctx)  # decay: n_init <- current norms, so c = 1
    assert [w.norm().item() for w in layer_weights(model)] == pytest.approx(norms, rel=1e-6)
    grow(model, scale=1.0)
    now = [w.norm().item() for w in layer_weights(model)]
    reinit.after_step(ctx)  # later steps pull toward the norms at the decay, not the init
    expected = [0.5 * a + 0.5 * b for a, b in zip(norms, now)]
    assert [w.norm().item() for w in layer_weights(model)] == pytest.approx(expected, rel=1e-5)
    assert not torch.allclose(plain.n_init, reinit.n_init)


@pytest.mark.parametrize("convention,factor", [("code", 1.0), ("text", 0.5)])
def test_l2_init_gradient_matches_hand_computation(convention, factor):
    model = Network([], nn.Linear(2, 1))
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.head.bias.fill_(0.5)
    ctx = context(model)
    method = L2Init(lam=0.1, convention=convention)
    method.setup(ctx)
    loss = method.loss_term(ctx)
    loss.backward()  # at theta_0: no penalty, no gradient (and no NaN from the norm at zero)
    assert loss.item() == 0 and not model.head.weight.grad.any()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[3.0, 0.0]]))  # theta - theta0 = (2, 2)
        model.head.bias.fill_(-0.5)  # theta - theta0 = -1
    loss = method.loss_term(ctx)
    assert loss.item() == pytest.approx(factor * 0.1 * (4 + 4 + 1))
    loss.backward()  # gradient 2 * factor * lam * (theta - theta0)
    assert torch.allclose(model.head.weight.grad, torch.tensor([[0.4, 0.4]]) * factor)
    assert model.head.bias.grad.item() == pytest.approx(-0.2 * factor)


def line(weight=(1.0, -2.0), bias=0.5):
    model = Network([], nn.Linear(2, 1))
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([weight]))
        model.head.bias.fill_(bias)
    return model


@pytest.mark.parametrize("convention,factor", [("code", 1.0), ("text", 0.5)])
def test_l2_penalty_by_hand(convention, factor):
    model = line()
    ctx = context(model)
    for params, squares in (("all", 1 + 4 + 0.25), ("weights", 1 + 4)):
        method = L2(lam=0.1, params=params, convention=convention)
        method.setup(ctx)
        assert method.loss_term(ctx).item() == pytest.approx(factor * 0.1 * squares)
    with pytest.raises(ValueError, match="convention='half'; valid: code, text"):
        L2(convention="half")


def test_l2_init_penalizes_only_the_selected_parameters():
    model = line()
    ctx = context(model)
    method = L2Init(lam=0.1, params="weights")
    method.setup(ctx)
    with torch.no_grad():
        model.head.weight.add_(torch.tensor([[2.0, 2.0]]))
        model.head.bias.add_(5.0)  # not selected: no penalty
    assert method.loss_term(ctx).item() == pytest.approx(0.1 * (4 + 4))


@pytest.mark.parametrize("lam", [1.0, 0.25])
def test_shrink_perturb_interpolates_toward_init(lam):
    model = make_mlp(norm="batch")
    ctx = context(model)
    method = ShrinkPerturb(lam=lam)
    method.setup(ctx)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    grow(model)
    model.blocks[0][2].running_mean.fill_(7.0)  # buffers are not touched
    grown = {k: v.clone() for k, v in model.state_dict().items()}
    method.on_phase_start(ctx)  # phase 0: no data change yet, nothing happens
    assert all(torch.equal(v, grown[k]) for k, v in model.state_dict().items())
    ctx.phase_index = 1
    method.on_phase_start(ctx)
    params = dict(model.named_parameters())
    for k, v in model.state_dict().items():
        if k in params:
            assert torch.allclose(v, (1 - lam) * grown[k] + lam * init[k], atol=1e-6), k
        else:
            assert torch.equal(v, grown[k]), k


def test_shrink_perturb_fresh_variant_adds_a_new_initialization():
    model = make_mlp()
    ctx = context(model, seed=5, builder=lambda: make_mlp(seed=None))
    method = ShrinkPerturb(lam=0.6, variant="fresh", perturb=0.1)
    method.setup(ctx)
    before = [p.detach().clone() for p in model.parameters()]
    ctx.phase_index = 1
    method.on_phase_start(ctx)
    fresh = context(make_mlp(), seed=5, builder=lambda: make_mlp(seed=None)).build_model()
    for p, p_old, p_new in zip(model.parameters(), before, fresh.parameters()):
        assert torch.allclose(p, 0.4 * p_old + 0.1 * p_new, atol=1e-6)


@pytest.mark.parametrize("variant", ["init", "fresh"])
def test_shrink_perturb_touches_only_the_selected_parameters(variant):
    model = make_mlp()
    ctx = context(model, seed=5, builder=lambda: make_mlp(seed=None))
    method = ShrinkPerturb(lam=1.0, variant=variant, perturb=0.5, params="weights")
    method.setup(ctx)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    grow(model)
    grown = {k: v.detach().clone() for k, v in model.named_parameters()}
    ctx.phase_index = 1
    method.on_phase_start(ctx)
    fresh = dict(context(make_mlp(), seed=5, builder=lambda: make_mlp(seed=None))
                 .build_model().named_parameters())
    for k, v in model.named_parameters():
        if k.endswith("bias"):
            assert torch.equal(v, grown[k]), k
        else:  # lam = 1: theta_0, or perturb * theta_fresh
            assert torch.allclose(v, init[k] if variant == "init" else 0.5 * fresh[k]), k


def test_shrink_perturb_and_head_reset_name_a_bad_option():
    with pytest.raises(ValueError, match="variant 'ash'; valid: init, fresh"):
        ShrinkPerturb(variant="ash")
    with pytest.raises(ValueError, match="source 'zeros'; valid: init, fresh"):
        HeadReset(source="zeros")


def test_head_reset_fresh_draws_the_head_anew():
    model = make_mlp()
    ctx = context(model, seed=5, builder=lambda: make_mlp(seed=None))
    method = HeadReset(layers="head", source="fresh")
    method.setup(ctx)
    grow(model)
    grown = {k: v.clone() for k, v in model.state_dict().items()}
    ctx.phase_index = 1
    method.on_phase_start(ctx)
    fresh = context(make_mlp(), seed=5, builder=lambda: make_mlp(seed=None)).build_model()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k] if k.startswith("head.") else grown[k]), k


@pytest.mark.parametrize("layers,reset", [("head", ["head"]), ("linear", ["head", "blocks.0.1", "blocks.1.0"])])
def test_head_reset_restores_only_the_classifier(layers, reset):
    model = make_mlp()
    ctx = context(model)
    method = HeadReset(layers=layers)
    method.setup(ctx)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    grow(model)
    grown = {k: v.clone() for k, v in model.state_dict().items()}
    ctx.phase_index = 1
    method.on_phase_start(ctx)
    for k, v in model.state_dict().items():
        expected = init if k.rsplit(".", 1)[0] in reset else grown
        assert torch.equal(v, expected[k]), k


def test_swr_bounds_weight_norm_under_steady_growth():
    """Theorem 2: with a bounded growth per step the norm stays below sqrt(B)/lam + ||W0||."""
    model = Network([], nn.Linear(10, 1, bias=False))
    ctx = context(model)
    swr = SWR(lam=0.1)
    swr.setup(ctx)
    n0 = model.head.weight.norm().item()
    for _ in range(500):
        with torch.no_grad():  # each step adds 0.05 to the norm (an aligned gradient step)
            w = model.head.weight
            w.mul_(1 + 0.05 / w.norm())
        swr.after_step(ctx)
    # fixed point: n = 0.9 (n + 0.05) + 0.1 n0  =>  n = n0 + 0.45
    assert model.head.weight.norm().item() == pytest.approx(n0 + 0.45, rel=1e-3)


@pytest.mark.parametrize("proportional, bias_factors", [(True, [2.0, 6.0, 5.0]),
                                                        (False, [2.0, 3.0, 5.0])])
def test_rescale_multiplies_weights_by_c_and_biases_by_the_chain_product(proportional,
                                                                          bias_factors):
    """Linear, Linear, BatchNorm with c = (2, 3, 5): weights scale by c_l; a bias by the product
    of c since the last norm layer (proportional: 2, 2*3, 5) or by c_l alone."""
    from methods.swr import chain_starts, layer_slots, rescale_, rescale_layers
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[2].weight.uniform_(0.5, 1.5)
        model[2].bias.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = rescale_layers(model)
    starts = chain_starts([norm for _, norm in layers])
    assert starts.tolist() == [0, 0, 2]
    rescale_(*layer_slots(model, layers), torch.tensor([2.0, 3.0, 5.0]), starts, proportional)
    for i, (wf, bf) in enumerate(zip([2.0, 3.0, 5.0], bias_factors)):
        assert torch.allclose(model[i].weight, before[f"{i}.weight"] * wf)
        assert torch.allclose(model[i].bias, before[f"{i}.bias"] * bf)
