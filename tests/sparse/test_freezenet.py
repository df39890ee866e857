"""FreezeNet and pruning at initialization in the trainer (Wimmer's thesis, Ch. 3): masks under
SGD with momentum and weight decay, FreezeNet-WD's decay-only frozen entries, storage as (trained
entries, mask, seed), the exact count columns of Tables 3.1, 3.2 and 3.4, the step_iter schedule."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF
from runner import ci
from runner.analysis import freezenet as fz
from runner.models.transforms import filter_bases
from runner.results import RunRecorder
from runner.sparse import pruning, storage
from runner.sparse.keep import exact_density, keep_count
from runner.train import Trainer

WD, LR, MOMENTUM = 0.05, 0.1, 0.9


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke-size LeNet-5-Caffe runs at q = 0.9 (SGD, momentum, weight decay), one per method,
    trained once for the module."""
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = trained(tmp_path_factory.mktemp(method), method)
        return cache[method]
    return get


def trained(tmp_path, method, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=wimmer_table3_2", "ci=smoke", "device=cpu", f"method={method}",
            "method.q=0.9", "train.max_batches=4", f"optim.weight_decay={WD}", f"optim.lr={LR}",
            *overrides])
    GlobalHydra.instance().clear()
    t = Trainer(ci.apply(cfg), RunRecorder(tmp_path, {}))
    t.fit()
    return t


@pytest.mark.parametrize("method", ["snip", "freezenet", "freezenet_reinit"])
def test_pruned_stay_zero_and_frozen_keep_their_initial_value_bitwise(runs, method):
    t = runs(method)
    ctx = t.ctx
    init = dict(ctx.build_model(t.parts.methods.methods[0].seed).named_parameters())  # the seed's draw
    assert len(ctx.masks) == 4  # every weight tensor of LeNet-5-Caffe
    for name in ctx.masks.names():
        m, p = ctx.masks[name], ctx.masks.params[name].detach()
        if method == "snip":
            assert (p[~m.keep] == 0).all(), name
        else:
            assert torch.equal(p[~m.keep], init[name].detach()[~m.keep]), name
        assert not torch.equal(p[m.keep], init[name].detach()[m.keep]), name  # the rest trained
    opt = ctx.optimizer
    assert opt.param_groups[0]["momentum"] == MOMENTUM and opt.param_groups[0]["weight_decay"] == WD


def test_freezenet_wd_frozen_entries_move_by_weight_decay_alone(runs):
    t = runs("freezenet_wd")
    ctx = t.ctx
    steps = ctx.step
    for name in ctx.masks.names():
        m, p = ctx.masks[name], ctx.masks.params[name].detach()
        w0 = ctx.init_state[name][~m.keep]
        w, buf = w0.clone(), torch.zeros_like(w0)  # SGD: buf = mu buf + wd w; w -= lr buf
        for _ in range(steps):
            buf = MOMENTUM * buf + WD * w
            w = w - LR * buf
        torch.testing.assert_close(p[~m.keep], w, rtol=1e-5, atol=1e-8)
        assert not torch.equal(p[~m.keep], w0)


@pytest.mark.parametrize("method", ["snip", "freezenet", "freezenet_reinit"])
def test_stored_network_reloads_bitwise_from_trained_entries_mask_and_seed(runs, method):
    t = runs(method)
    ctx, m = t.ctx, t.parts.methods.methods[0]
    blob = storage.pack(ctx.model, ctx.masks, m.seed)
    back = storage.unpack(blob, ctx.build_model)
    assert storage.identical(ctx.model, back)
    back_sd = back.state_dict()
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, back_sd[k]), k
    stored, dense = storage.nbytes(blob), storage.nbytes(ctx.model.state_dict())
    assert stored < dense / 3  # q = 0.9: 10 % of the weights and a 1-bit mask
    values = sum(x["values"].numel() for x in blob["masked"].values())
    assert values == keep_count(430_500, exact_density(0.9), "floor")
    summary = t.rec.result["phases"][-1]
    assert summary["storage_exact"] == 1 and summary["stored_bytes"] == stored


def test_freezenet_wd_cannot_be_stored_by_seed(runs):
    t = runs("freezenet_wd")
    with pytest.raises(ValueError, match="frozen_wd"):
        storage.pack(t.ctx.model, t.ctx.masks, 0)


def test_grad_flow_and_gradient_statistics_are_recorded(runs):
    t = runs("freezenet")
    phase = t.rec.result["phases"][-1]
    assert phase["grad_flow"] > 0 and phase["empty_layers"] == 0
    assert phase["nonzero_weights_forward"] == 430_500  # FreezeNet computes densely (Table 3.1)
    snip = runs("snip").rec.result["phases"][-1]
    assert snip["nonzero_weights_forward"] == snip["weights_trained"] == 43_050


# -- exact cells ------------------------------------------------------------------------------
def test_table32_size_q_beta_and_compression_columns():
    rows = {r["q"]: r for r in fz.table32_rows()}
    assert rows[0.0]["size_kb"] == pytest.approx(1683.906, abs=1e-3)  # 431,080 x 4 B / 1024
    expect = {0.9: (43_630, 0.8988, 170.43, 9.880), 0.99: (4_885, 0.9887, 19.08, 88.246),
              0.995: (2_732, 0.9937, 10.67, 157.79), 0.999: (1_010, 0.9977, 3.95, 426.81)}
    for q, (params_, q_beta, size, factor) in expect.items():
        r = rows[q]
        assert r["params_trained"] == params_
        assert r["q_beta"] == pytest.approx(q_beta, abs=5e-5)
        assert r["size_kb"] == pytest.approx(size, abs=5e-3)
        assert r["compression_factor"] == pytest.approx(factor, abs=5e-3)


def test_table34_trained_parameter_column():
    got = {(c, r["q"]): r["params_trained"] for c, rows in fz.table34_rows().items() for r in rows}
    assert [got[(100, q)] for q in (0.0, 0.9, 0.95, 0.99, 0.995)] == \
        [15_301_796, 1_544_439, 780_141, 168_703, 92_273]  # printed: 15.3mio 1.5mio 780k 169k 92k
    assert [got[(10, q)] for q in (0.0, 0.9, 0.95, 0.99, 0.995)] == \
        [15_255_626, 1_539_741, 777_747, 168_152, 91_953]


def test_table31_counts_on_every_model():
    rows = fz.table31_rows(q=0.99)
    assert {r["model"] for r in rows} == set(fz.TABLE31_MODELS)
    for r in rows:
        D, d = r["D"], keep_count(r["D"], exact_density(0.99), "floor")
        assert (r["standard_nonzero"], r["standard_stored"]) == (D, D)
        assert (r["pruned_nonzero"], r["pruned_stored"]) == (d, d)
        assert (r["freezenet_nonzero"], r["freezenet_stored"]) == (D, d)
    weights = {r["model"]: r["D"] for r in rows}
    assert weights == {"lenet300_100": 266_200, "lenet5_caffe": 430_500,
                       "vgg16_thesis": 15_239_872, "resnet34": 21_366_464}


def test_table31_measured_on_lenet5():
    r = fz.table31_row("wimmer_table3_2", q=0.99, check=True)
    D, d = 430_500, 4_305
    assert (r["standard_nonzero"], r["standard_stored"]) == (D, D)
    assert (r["pruned_nonzero"], r["pruned_stored"]) == (d, d)
    assert (r["freezenet_nonzero"], r["freezenet_stored"]) == (D, d)
    assert 0 < r["pruned_moved"] <= d and 0 < r["freezenet_moved"] <= d  # sparse gradients
    assert r["standard_moved"] > d
    assert r["standard_flow"] == pytest.approx(1.0)


def test_step_iter_schedule_decays_every_step_size_iterations():
    from omegaconf import OmegaConf
    from runner.config import ScheduleConfig
    from runner.optim import Schedule
    s = Schedule(OmegaConf.structured(ScheduleConfig(name="step_iter", gamma=0.1, step_size=3)), 1.0)
    assert [s.at_step(i) for i in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])


# -- PruneAtInit by hand, without the trainer ---------------------------------------------------
def tiny_conv_net(basis=False):
    from torch import nn

    from runner.models.transforms import filter_basis
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.Flatten(),
                          nn.Linear(8, 4))  # a 3x3 conv (KxK), a 1x1 conv, a linear layer
    return filter_basis(sharing="coarse")(model) if basis else model


def prune_ctx(seed=0, basis=False, n=24, **fields):
    from conftest import context
    from runner.data.tensors import Split, Splits
    g = torch.Generator().manual_seed(seed + 100)
    x, y = torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 4
    torch.manual_seed(seed)
    ctx = context(tiny_conv_net(basis), Splits(Split(x, y), Split(x[:0], y[:0]), Split(x, y)),
                  seed=seed, **fields)
    ctx._build_model = lambda: tiny_conv_net(basis)
    return ctx


def smoothed(out, y):  # a loss whose gradients rank the weights unlike cross-entropy's
    return torch.nn.functional.cross_entropy(out, y, label_smoothing=0.6)


@pytest.mark.parametrize("score,options", [
    ("snip", dict(scope="layer")), ("grasp", dict(temperature=3.0)),
    ("synflow", dict(iterations=3, scope="layer")), ("random", dict()), ("usnip", dict())])
def test_prune_init_mask_is_top_d_of_the_score_on_the_first_batches(score, options):
    """The mask keeps the top d = floor((1 - q) D) of `score` computed, with the method's
    options and the run's loss and generator, on the first batches x batch_size training
    samples in batches of batch_size."""
    from methods.prune_init import PruneAtInit
    ctx = prune_ctx()
    ctx.loss_fn = smoothed
    x, y = ctx.data.train.x, ctx.data.train.y
    batches = [(x[:5], y[:5]), (x[5:10], y[5:10])]
    named = pruning.weights(ctx.model)
    d = keep_count(sum(p.numel() for _, p in named), exact_density(0.6), "floor")
    gen = torch.Generator().manual_seed(0)
    opts = {**dict(temperature=1.0, iterations=100, scope="global"), **options}
    want = pruning.top_d(pruning.scores(score, ctx.model, batches, loss_fn=smoothed, gen=gen,
                                        d=d, **opts), d, opts["scope"])
    if score in ("snip", "grasp"):  # the run's loss matters: cross-entropy keeps another mask
        ce = pruning.top_d(pruning.scores(score, ctx.model, batches, d=d, **opts), d, opts["scope"])
        assert any(not torch.equal(want[n], ce[n]) for n in want)
    method = PruneAtInit(score=score, q=0.6, batches=2, batch_size=5, store=False, **options)
    method.setup(ctx)
    assert all(torch.equal(ctx.masks[n].keep, want[n]) for n, _ in named)
    assert sum(int(ctx.masks[n].keep.sum()) for n, _ in named) == d


def test_prune_init_options_are_checked_with_one_clear_line():
    from methods.prune_init import PruneAtInit
    for bad, match in [(dict(score="snipp"), "score='snipp'; valid: random, magnitude"),
                       (dict(scope="net"), "scope='net'; valid: global, layer"),
                       (dict(kind="gone"), "kind='gone'; valid: pruned, frozen"),
                       (dict(q=1.5), r"q=1.5; valid: \[0, 1\]"), (dict(q=-0.1), "q=-0.1"),
                       (dict(classes=0), "classes=0; valid: null"),
                       (dict(batches=0), "batches=0, batch_size=100; both >= 1"),
                       (dict(batch_size=0), "batches=1, batch_size=0")]:
        with pytest.raises(ValueError, match=match):
            PruneAtInit(**bad)
    for ok in (dict(q=0.0, classes=1, batches=1, batch_size=1), dict(q=1.0)):
        PruneAtInit(**ok)


def test_prune_init_class_subset_is_drawn_from_class_seed_and_checked():
    from methods.prune_init import PruneAtInit
    ctx = prune_ctx()
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global random state plays no part
    (x, y), = PruneAtInit(classes=2, class_seed=7, batch_size=10).calibration(ctx)
    assert set(y.tolist()) == set(perm[:2].tolist()) and len(y) == 10
    train = ctx.data.train
    rows = torch.isin(train.y, perm[:2]).nonzero().flatten()[:10]
    assert torch.equal(x, train.x[rows])
    (_, y), = PruneAtInit(classes=4, batch_size=24).calibration(ctx)  # all labels: allowed
    assert torch.equal(y, train.y)
    with pytest.raises(ValueError, match="classes=5: the data have 4 labels"):
        PruneAtInit(classes=5).calibration(ctx)


def test_prune_init_q0_masks_nothing_and_grad_flow_is_measured_by_hand():
    import copy

    from methods.prune_init import PruneAtInit
    ctx = prune_ctx()
    PruneAtInit(q=0.0, batch_size=8, store=False).setup(ctx)
    assert not len(ctx.masks)
    ctx = prune_ctx()
    dense = copy.deepcopy(ctx.model)
    method = PruneAtInit(score="magnitude", q=0.5, batch_size=8, store=False)
    method.setup(ctx)
    x, y = ctx.data.train.x[:8], ctx.data.train.y[:8]

    def grads(model):
        ws = [p for _, p in pruning.weights(model)]
        return torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), ws)
    g0 = torch.cat([g.abs().flatten() for g in grads(dense)]).mean()
    keep = torch.cat([ctx.masks[n].keep.flatten() for n, _ in pruning.weights(ctx.model)])
    g1 = torch.cat([g.abs().flatten() for g in grads(ctx.model)])[keep].mean()
    assert method.metrics["grad_flow"] == pytest.approx(float(g1 / g0), rel=1e-5)
    assert method.metrics["weights_trained"] == int(keep.sum()) == keep.numel() // 2


def test_prune_init_reinit_redraws_the_network_from_a_seed_of_the_run_generator():
    from methods.prune_init import PruneAtInit
    ctx = prune_ctx(seed=4)
    init = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    method = PruneAtInit(score="magnitude", q=0.5, kind="frozen", reinit=True, store=False)
    method.setup(ctx)
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(4)))
    assert method.seed == seed
    torch.manual_seed(seed)
    fresh = dict(tiny_conv_net().named_parameters())
    for n, p in ctx.model.named_parameters():
        assert torch.equal(p.detach(), fresh[n].detach()), n
    first = {k: init[k].abs() for k, _ in pruning.weights(ctx.model)}
    d = keep_count(sum(t.numel() for t in first.values()), exact_density(0.5), "floor")
    want = pruning.top_d(first, d)
    assert all(torch.equal(ctx.masks[n].keep, want[n]) for n in first)  # the first draw's mask


@pytest.mark.parametrize("basis", [False, True])
def test_prune_init_gradient_statistics_by_hand(basis):
    """Per epoch: mean and std of |m g| over the trained weight entries and the steps, and the
    mean over steps of lr ||m g||_2 over the KxK convolutions' trained entries (the 3x3 conv's
    weight, or its coefficients under IP; not the 1x1 conv) and over the filter bases."""
    from methods.prune_init import PruneAtInit
    ctx = prune_ctx(basis=basis)
    method = PruneAtInit(score="magnitude", q=0.5, batch_size=8)
    method.setup(ctx)
    named = pruning.weights(ctx.model)
    bases = filter_bases(ctx.model)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(9)
    trained, steps, conv, fb = [], 2, [], []
    for lr in (0.5, 0.25):
        ctx.optimizer.param_groups[0]["lr"] = lr
        for p in ctx.model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        method.before_step(ctx)
        mg = [p.grad * ctx.masks[n].keep for n, p in named]
        trained.append(torch.cat([t[ctx.masks[n].keep] for t, (n, _) in zip(mg, named)]))
        conv.append(lr * mg[0].norm())
        fb.append(lr * torch.cat([b.grad.flatten() for b in bases]).norm() if basis else 0.0)
    allg = torch.cat(trained).abs()
    out = method.on_epoch_end(ctx)
    assert out["grad_abs_mean"] == pytest.approx(float(allg.mean()), rel=1e-5)
    assert out["grad_abs_std"] == pytest.approx(float(allg.std(correction=0)), rel=1e-4)
    assert out["grad_norm_lr"] == pytest.approx(float(sum(conv) / steps), rel=1e-5)
    assert ("grad_norm_lr_fb" in out) == basis
    if basis:
        assert out["grad_norm_lr_fb"] == pytest.approx(float(sum(fb) / steps), rel=1e-5)
    method.before_step(ctx)  # an epoch of one step: the last step's gradients again
    out = method.on_epoch_end(ctx)
    assert out["grad_abs_mean"] == pytest.approx(float(trained[-1].abs().mean()), rel=1e-5)
    assert out["grad_norm_lr"] == pytest.approx(float(conv[-1]), rel=1e-5)
    if basis:
        assert out["grad_norm_lr_fb"] == pytest.approx(float(fb[-1]), rel=1e-5)
    off = PruneAtInit(score="magnitude", q=0.5, batch_size=8, grad_stats=False)
    off.setup(prune_ctx())
    off.before_step(ctx)
    assert off.on_epoch_end(ctx) == {}


@pytest.mark.parametrize("kind,store,phase,stored", [
    ("pruned", True, 1, True), ("frozen", True, 1, True), ("pruned", True, 0, False),
    ("frozen_wd", True, 1, False), ("pruned", False, 1, False)])
def test_prune_init_stores_the_network_at_the_end_of_the_last_phase_only(kind, store, phase,
                                                                         stored):
    from methods.prune_init import PruneAtInit
    from runner.context import Phase
    ctx = prune_ctx(num_phases=2)
    method = PruneAtInit(score="magnitude", q=0.5, kind=kind, batch_size=8, store=store)
    method.setup(ctx)
    ctx.phase = Phase(phase, 0, "train", None)
    out = method.on_phase_end(ctx)
    assert out["q"] == 0.5 and "grad_flow" in out
    assert ("stored_bytes" in out) == stored
    if stored:
        blob = storage.pack(ctx.model, ctx.masks, method.seed)
        assert out["stored_bytes"] == storage.nbytes(blob)
        assert out["dense_bytes"] == storage.nbytes(ctx.model.state_dict())
        assert out["storage_exact"] == 1
