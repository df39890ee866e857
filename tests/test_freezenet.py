"""FreezeNet and pruning at initialization in the trainer (Wimmer's thesis, Ch. 3): masks under
SGD with momentum and weight decay, FreezeNet-WD's decay-only frozen entries, storage as (trained
entries, mask, seed), the exact count columns of Tables 3.1, 3.2 and 3.4, the step_iter schedule."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF
from runner import ci, pruning, storage
from runner.analysis import freezenet as fz
from runner.results import RunRecorder
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
            "experiment=thesis_table32", "ci=smoke", "device=cpu", f"method={method}",
            "method.q=0.9", "ci.max_batches=4", f"optim.weight_decay={WD}", f"optim.lr={LR}",
            *overrides])
    GlobalHydra.instance().clear()
    t = Trainer(ci.apply(cfg), RunRecorder(tmp_path, {}))
    t.fit()
    return t


@pytest.mark.parametrize("method", ["snip", "freezenet", "freezenet_reinit"])
def test_pruned_stay_zero_and_frozen_keep_their_initial_value_bitwise(runs, method):
    t = runs(method)
    ctx = t.ctx
    init = dict(ctx.build_model(t.methods.methods[0].seed).named_parameters())  # the seed's draw
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
    ctx, m = t.ctx, t.methods.methods[0]
    blob = storage.pack(ctx.model, ctx.masks, m.seed)
    back = storage.unpack(blob, ctx.build_model).state_dict()
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, back[k]), k
    stored, dense = storage.nbytes(blob), storage.nbytes(ctx.model.state_dict())
    assert stored < dense / 3  # q = 0.9: 10 % of the weights and a 1-bit mask
    values = sum(x["values"].numel() for x in blob["masked"].values())
    assert values == pruning.keep_count(430_500, 0.9)
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
        D, d = r["D"], pruning.keep_count(r["D"], 0.99)
        assert (r["standard_nonzero"], r["standard_stored"]) == (D, D)
        assert (r["pruned_nonzero"], r["pruned_stored"]) == (d, d)
        assert (r["freezenet_nonzero"], r["freezenet_stored"]) == (D, d)
    weights = {r["model"]: r["D"] for r in rows}
    assert weights == {"lenet300_100": 266_200, "lenet5_caffe": 430_500,
                       "vgg16_thesis": 15_239_872, "resnet34": 21_366_464}


def test_table31_measured_on_lenet5():
    r = fz.table31_row("thesis_table32", q=0.99, check=True)
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
