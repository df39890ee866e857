"""Zilly et al. 2021: the resetting intervention, sparsity at initialization, the Fisher score,
the probe in a run and the figures."""
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from methods.dirac_reset import DiracReset, add_identity, identity_like
from methods.sparse_init import SparseInit
from runner.models.base import Network
from runner.models.fisher import class_fisher, fisher_score
from runner.models.frozen import count_frozen


def ctx_for(model, index=1, seed=0):
    return SimpleNamespace(model=model, phase_index=index, lr=0.1, gamma=None, weight_decay=0.0,
                           gen=torch.Generator().manual_seed(seed), reset_optimizer=lambda: None)


@torch.no_grad()
def test_zero_conv_plus_dirac_maps_x_to_alpha_x():
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    conv.weight.zero_()
    add_identity(conv, 0.3)
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(conv(x), 0.3 * x)
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
    grouped.weight.zero_()
    add_identity(grouped, 0.5)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(grouped(x), 0.5 * x)
    lin = nn.Linear(3, 5, bias=False)  # rectangular: the first 3 outputs copy the input
    lin.weight.zero_()
    add_identity(lin, 2.0)
    x = torch.randn(4, 3)
    assert torch.allclose(lin(x), torch.cat([2 * x, torch.zeros(4, 2)], 1))


@torch.no_grad()
def test_one_dimensional_tensors_add_or_set():
    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        m[1].weight.copy_(torch.tensor([0.0, 0.7]))
        return m

    before, added, setto = net(), net(), net()
    add_identity(added, 0.2, "add")
    add_identity(setto, 0.4, "set", value=1.0)
    assert torch.allclose(added[1].weight, torch.tensor([0.2, 0.9]))
    assert torch.allclose(added[1].bias, before[1].bias + 0.2)
    assert torch.allclose(added[0].bias, before[0].bias + 0.2)
    assert torch.equal(setto[1].weight, torch.ones(2)) and torch.equal(setto[4].bias, torch.ones(2))
    assert torch.allclose(setto[4].weight, before[4].weight + 0.4 * torch.eye(2, 8))
    only_norm = net()
    add_identity(only_norm, 0.2, "add", params="norm")
    assert torch.equal(only_norm[0].weight, before[0].weight)
    assert torch.allclose(only_norm[1].weight, torch.tensor([0.2, 0.9]))


@torch.no_grad()
def test_dirac_reset_acts_at_task_changes_and_sets_the_retraining_hyperparameters():
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    model[0].weight.zero_()
    method = DiracReset(alpha=0.5, lr=0.05, gamma=0.93, weight_decay=1e-3)
    ctx = ctx_for(model, index=0)
    method.on_phase_start(ctx)
    assert torch.equal(model[0].weight, torch.zeros(2, 2)) and ctx.lr == 0.1
    ctx = ctx_for(model, index=1)
    method.on_phase_start(ctx)
    assert torch.equal(model[0].weight, 0.5 * torch.eye(2))
    assert (ctx.lr, ctx.gamma, ctx.weight_decay) == (0.05, 0.93, 1e-3)
    at_start = DiracReset(alpha=1.0, phases=[0])
    at_start.on_phase_start(ctx_for(model, index=0))
    at_start.on_phase_start(ctx_for(model, index=1))
    assert torch.equal(model[0].weight, 1.5 * torch.eye(2))
    with pytest.raises(ValueError):
        DiracReset(one_d="double")


def test_dirac_reset_phases_and_optimizer_reset():
    assert [DiracReset().acts(i) for i in range(3)] == [False, True, True]
    assert [DiracReset(phases=[0, 2]).acts(i) for i in range(3)] == [True, False, True]
    for reset in (False, True):
        resets = []
        ctx = ctx_for(nn.Linear(2, 2), index=1)
        ctx.reset_optimizer = lambda: resets.append(1)
        DiracReset(reset_optimizer=reset).on_phase_start(ctx)
        assert resets == [1] * reset


@torch.no_grad()
def test_dirac_reset_passes_one_d_value_and_params_on():
    for one_d, expect in (("add", 0.5 + 0.25), ("set", 2.0)):
        model = nn.Sequential(nn.Linear(2, 2))
        model[0].bias.fill_(0.25)
        weight = model[0].weight.clone()
        DiracReset(alpha=0.5, one_d=one_d, value=2.0, params="biases").on_phase_start(ctx_for(model))
        assert torch.equal(model[0].bias, torch.full((2,), expect)) and torch.equal(model[0].weight, weight)
    with pytest.raises(ValueError, match="one_d='double'; valid: add, set"):
        DiracReset(one_d="double")


def test_identity_on_the_weights_device():
    assert identity_like(torch.zeros(3, 2, dtype=torch.float64), nn.Linear(2, 3)).dtype == torch.float64
    for weight, module in ((torch.empty(3, 2, device="meta"), nn.Linear(2, 3)),
                           (torch.empty(2, 2, 3, 3, device="meta"), nn.Conv2d(2, 2, 3))):
        assert identity_like(weight, module).is_meta


def bn_net():
    torch.manual_seed(1)
    return Network([nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
                    nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())], nn.Linear(8, 4))


def test_mutual_sparsity_creates_frozen_units_the_counter_finds():
    net = bn_net()
    method = SparseInit("mutual", p=0.5)
    method.setup(ctx_for(net, seed=3))
    # the same draws, replayed: units chosen in conv 1, then in conv 2 (the head is not a unit)
    gen = torch.Generator().manual_seed(3)
    chosen = [int((torch.rand(8, generator=gen) < 0.5).sum()) for _ in range(2)]
    c = count_frozen(net)
    assert c["layers"]["blocks.0.0"]["units"] == chosen[0]
    assert c["layers"]["blocks.1.0"]["units"] == chosen[1]
    assert c["filters"] == sum(chosen)
    x = torch.randn(4, 3, 8, 8)
    net.train()
    out = net(x)
    out.sum().backward()
    frozen = net.blocks[0][0].weight.detach().flatten(1).norm(dim=1) == 0
    assert torch.all(net.blocks[0][0].weight.grad.flatten(1)[frozen] == 0)  # no gradient: frozen


def test_small_noise_instead_of_zeros_stays_below_the_cutoff():
    net = bn_net()
    SparseInit("mutual", p=1.0, noise_std=1e-4).setup(ctx_for(net))
    w = net.blocks[0][0].weight
    assert (w != 0).all() and w.abs().max() < 1e-3
    assert count_frozen(net)["units"] == 16


def test_double_and_mono_sparsity():
    net = bn_net()
    method = SparseInit("double", p=0.8)
    method.setup(ctx_for(net))
    assert 0.75 < method.sparsity < 0.85
    assert method.on_phase_end(None) == {"init_sparsity": method.sparsity}
    zero = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=False))
    SparseInit("mono", p=1.0).setup(ctx_for(zero))  # every weight masked, then identity added
    x = torch.randn(1, 2, 4, 4)
    assert torch.allclose(zero(x), x)


def test_fisher_score_by_hand():
    a = torch.tensor([[0.0], [2.0]])  # mean 1, variance 1
    b = torch.tensor([[4.0], [6.0]])  # mean 5, variance 1
    assert fisher_score(a, b) == pytest.approx(4.0 ** 4 / (16 + 16))
    feats = torch.cat([a, b])
    labels = torch.tensor([0, 0, 1, 1])
    assert class_fisher(feats, labels) == pytest.approx(8.0)
    assert class_fisher(3 * feats + 1, labels) == pytest.approx(8.0)  # invariant to scale and shift
    c = torch.tensor([[4.0, 1.0], [4.0, -1.0]])
    three = torch.cat([torch.cat([a, b]).expand(-1, 2) * torch.tensor([1.0, 0.0]), c])
    labels3 = torch.tensor([0, 0, 1, 1, 2, 2])
    pairs = [fisher_score(three[labels3 == i], three[labels3 == j]) for i, j in [(0, 1), (0, 2), (1, 2)]]
    assert class_fisher(three, labels3) == pytest.approx(sum(pairs) / 3)
    assert class_fisher(three, labels3, max_classes=2) == pytest.approx(pairs[0])


def test_probe_and_intervention_in_a_run(run_cfg, tmp_path):
    result = run_cfg(["experiment=fmnist_blur_to_sharp", "ci=smoke", "ci.width=1", "device=cpu",  # full width
                      "method=dirac_reset", "method.lr=0.0123",
                      "method.gamma=0.5", "train.max_epochs=2", "train.eval_every=1",
                      "extra_methods.0.every_epoch=true", "extra_methods.0.fisher_samples=32"])
    assert result["status"] == "completed", result.get("error")
    first, second = result["phases"]
    for key in ("frozen_filters", "frozen_units", "frozen_double", "frozen_triple",
                "start_frozen_filters", "fisher", "frozen_layers"):
        assert key in second
    assert second["start_frozen_filters"] == 0  # alpha = 0.2 lifts every norm weight past 1e-2
    # denominators: the units of CNN-BN's two convs (16 each) and of its dense layer (100) can
    # freeze, not the head's; double / triple frozen weights are out of all layers' weights
    assert second["totals"]["frozen_filters"] == second["totals"]["start_frozen_filters"] == 132
    assert second["totals"]["frozen_double"] == sum(
        v["weights"] for v in second["frozen_layers"].values())
    assert "frozen_weights" not in second  # it held the total, not a count of frozen weights
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    metrics = pd.read_csv(run_dir / "metrics.csv", comment="#")
    lrs = metrics[metrics.phase == 1]["lr"].tolist()
    assert lrs == pytest.approx([0.0123, 0.0123 * 0.5])
    assert "frozen_filters" in metrics.columns
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_cifar_blur_to_sharp_without_cifar10_says_how_to_get_it(run_cfg):
    from runner.errors import DatasetMissing

    with pytest.raises(DatasetMissing, match="download=true"):
        run_cfg(["experiment=cifar_blur_to_sharp", "device=cpu", "dataset.reader.download=false"])


def test_pareto_front_by_hand():
    from runner.analysis.zilly_figures import front

    xs, ys = [0, 1, 2, 3, 4], [5.0, 4.0, 4.5, 1.0, 2.0]
    assert front(xs, ys, larger_x=False) == [0, 1, 3]  # fewer frozen filters and lower loss
    assert front(xs, ys, larger_x=True) == [3, 4]  # higher score and lower loss


def fake_run(root, i, wd, method, n, loss, frozen, fisher):
    d = root / f"r{i}"
    d.mkdir()
    end = {"test_acc": 0.5 + 0.01 * i, "test_loss": loss}
    result = {"status": "completed", "seed": i % 2, "name": "x", "choices": {"method": method},
              "overrides": [f"optim.weight_decay={wd}", f"seed={i % 2}"],
              "config": {"optim": {"weight_decay": wd}, "phases": [{"subset": {"n": n}}]},
              "phases": [{"end": end, "frozen_filters": frozen}, {"end": end, "fisher": fisher}]}
    (d / "result.json").write_text(json.dumps(result))
    pd.DataFrame({"phase": [0, 0, 1], "epoch": [1, 2, 1], "test_acc": [0.1, 0.2, 0.3],
                  "pair/blocks.0.0/0": [1.0, 0.1, 0.0], "pair/blocks.0.0/1": [1.0, 0.9, 0.8]}
                 ).to_csv(d / "metrics.csv", index=False)


def test_figures_are_written(tmp_path):
    from runner.analysis import zilly_figures as zf

    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(8):
        fake_run(runs, i, [1e-4, 1e-3][i // 4], ["vanilla", "dirac_reset"][i % 2],
                 [100, 1000][i // 2 % 2], 1.0 + 0.1 * i, i, 10.0 - i)
    for kind, args in [("boxplot", ["--by", "optim.weight_decay"]), ("pareto", []),
                       ("pairs", ["--by", "optim.weight_decay"]), ("samples", [])]:
        out = tmp_path / f"{kind}.png"
        assert zf.main([kind, str(runs), "--out", str(out), *args]) == 0
        assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    assert zf.main(["boxplot", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
    loaded = [json.loads((runs / f"r{i}" / "result.json").read_text()) for i in (0, 4)]
    assert zf.cells(loaded) == ["optim.weight_decay=0.0001", "optim.weight_decay=0.001"]


@torch.no_grad()
def biased_net():
    """bn_net with conv biases and non-zero normalization biases: every tensor silencing edits
    starts away from 0."""
    torch.manual_seed(2)
    net = Network([nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
                   nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())],
                  nn.Linear(4, 3))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("noise", [0.0, 1e-4])
def test_mutual_units_silence_exactly_their_row_bias_norm_and_columns(noise):
    """`units: 2`: units 0 and 1 of both convs (the head is no unit): their rows, biases,
    normalization weights and biases and their input columns in the consumer are 0 (or normal
    noise of std `noise`, drawn from ctx.gen: the same seed repeats it whatever the global
    random state); unit 2 onwards and everything else are untouched."""
    nets = []
    for global_seed in (0, 1):
        net = biased_net()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        torch.manual_seed(global_seed)
        method = SparseInit("mutual", units=2, noise_std=noise)
        method.setup(ctx_for(net, seed=5))
        sd = net.state_dict()
        silenced = {"blocks.0.0.weight": (slice(0, 2),), "blocks.0.0.bias": (slice(0, 2),),
                    "blocks.0.1.weight": (slice(0, 2),), "blocks.0.1.bias": (slice(0, 2),),
                    "blocks.1.0.weight": (slice(0, 2),), "blocks.1.0.bias": (slice(0, 2),),
                    "head.weight": (slice(None), slice(0, 2))}
        for k, v in sd.items():
            if "running" in k or "num_batches" in k:
                continue
            rest = torch.ones_like(v, dtype=torch.bool)
            if k in silenced:
                rest[silenced[k]] = False
                if k == "blocks.1.0.weight":  # its input columns 0, 1 (consumer of conv 1)
                    rest[:, :2] = False
                part = v[~rest]
                assert part.numel() and (part.abs().max() < 10 * noise if noise else
                                         (part == 0).all()), k
                if noise:
                    assert (part != 0).all(), k
            assert torch.equal(v[rest], before[k][rest]), k
        nets.append(sd)
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_sparse_init_names_a_bad_kind():
    with pytest.raises(ValueError,
                       match=r"^sparse_init kind='dense'; valid: mutual, double, mono$"):
        SparseInit("dense")


def test_add_identity_defaults_add_alpha_to_1d_tensors_and_set_to_one():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.zero_(), lin.bias.fill_(0.25)
    add_identity(lin, 0.5)  # default one_d: add
    assert torch.equal(lin.bias, torch.full((2,), 0.75)) and torch.equal(lin.weight, 0.5 * torch.eye(2))
    add_identity(lin, 0.5, "set")  # default value: 1.0
    assert torch.equal(lin.bias, torch.ones(2))


def test_mono_adds_one_to_every_1d_tensor_and_double_masks_follow_the_method_seed():
    net = bn_net()
    norm = {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("1.weight", "1.bias"))}
    SparseInit("mono", p=1.0).setup(ctx_for(net))
    for k, v in norm.items():  # BatchNorm weight (1) and bias (0): + 1.0, as one_d: add
        assert torch.equal(net.state_dict()[k], v + 1.0), k
    assert torch.equal(net.head.bias, bn_net().head.bias + 1.0)

    def double(global_seed, seed=3):
        torch.manual_seed(global_seed)  # the global generator must not matter
        n = bn_net()
        SparseInit("double", p=0.5).setup(ctx_for(n, seed=seed))
        return [w.detach() for w in (n.blocks[0][0].weight, n.blocks[1][0].weight, n.head.weight)]

    a, b, other = double(1), double(2), double(1, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, other))
