"""Balancedness (SWR paper Fig. 5), the one-shot scaling of Fig. 1, and the figure commands."""
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import context
from runner.context import Phase
from runner.data.tensors import Splits
from torch import nn

from methods import balancedness as bal
from methods.scale_once import ScaleOnce
from runner.analysis import swr as analysis
from runner.data.tensors import Split
from runner.models.base import Network
from runner.models.mlp import mlp


def test_balancedness_of_one_hidden_unit_by_hand():
    """W1 = [4], W2 = [1]: ||theta||^2 = 17, the minimum over a > 0 of (4a)^2 + (1/a)^2 is 8."""
    model = Network([nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU())], nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model.blocks[0][0].weight.fill_(4.0)
        model.head.weight.fill_(1.0)
    assert bal.balancedness(model) == pytest.approx(math.sqrt(17 / 8), rel=1e-6)


def test_balancing_keeps_the_function_and_is_invariant_to_unit_rescaling():
    torch.manual_seed(0)
    model = mlp([6], 3, hidden=[5, 4])
    x = torch.randn(16, 6)
    with torch.no_grad():
        reference = model(x)
    balanced = bal.balance(model)
    copy = mlp([6], 3, hidden=[5, 4])
    with torch.no_grad():
        for m, layer in zip(bal.linear_chain(copy), balanced):
            m.weight.copy_(layer["w"])
            m.bias.copy_(layer["b"])
        assert torch.allclose(copy(x), reference, atol=1e-5)
    assert bal.balancedness(copy) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # unit 0 of the first layer x 10, its outgoing weights / 10: same function
        first, second = bal.linear_chain(model)[:2]
        first.weight[0] *= 10
        first.bias[0] *= 10
        second.weight[:, 0] /= 10
        assert torch.allclose(model(x), reference, atol=1e-5)
    assert bal.balancedness(model) > 1.5
    assert bal.total(bal.balance(model), 2) == pytest.approx(bal.total(balanced, 2), rel=1e-6)


@pytest.mark.parametrize("proportional", [True, False])
def test_scale_once_with_and_without_proportionality(proportional):
    torch.manual_seed(0)
    model = mlp([4], 3, hidden=[6])
    x = torch.randn(64, 4)
    with torch.no_grad():
        before = model(x)
        # the labels: the predictions in the probe's eval batches of 16 (one batch of 64 may
        # round otherwise); scaling by powers of two is exact, so the proportionally scaled
        # network's predictions in those batches are these, bitwise
        labels = torch.cat([model(b) for b in x.split(16)]).argmax(1)
    ctx = context(model, Splits(Split(x[:0], x[:0]), Split(x[:0], x[:0]), Split(x, labels)),
                  eval_batch_size=16, phase=Phase(1, 0, "second", None))
    probe = ScaleOnce(factor=0.5, proportional=proportional)
    probe.on_phase_start(ctx)
    with torch.no_grad():
        after = model(x)
    if proportional:  # two layers: logits x 0.25, predictions unchanged
        assert torch.allclose(after, 0.25 * before, atol=1e-6)
        assert probe.on_phase_end(ctx) == {"test_acc_after_scaling": 1.0}
    else:
        assert not torch.allclose(after, 0.25 * before, atol=1e-3)


def test_figures_from_smoke_runs(run_cfg, tmp_path):
    common = ["ci=smoke", "device=cpu"]
    probe = "extra_methods=[{_target_:methods.balancedness.BalancednessProbe}]"
    gen = [run_cfg(["experiment=swr_gen_fmnist_mlp", f"method={m}", probe, *common])
           for m in ("vanilla", "swr")]
    assert all(r["status"] == "completed" for r in gen)
    dirs = [tmp_path / "run0", tmp_path / "run1"]
    assert analysis.balance_figure(dirs, str(tmp_path / "fig5.png")).stat().st_size > 0
    warm = [run_cfg(["experiment=swr_warm_mnist_mlp", f"method={m}", *common])
            for m in ("vanilla", "shrink_perturb")]
    assert all(r["status"] == "completed" for r in warm)
    out = analysis.warm_start_figure([tmp_path / "run2", tmp_path / "run3"], [dirs[0]],
                                     str(tmp_path / "fig2.png"))
    assert out.stat().st_size > 0
    scaled = [run_cfg(["experiment=swr_fig1_cifar10_cnn", "dataset=mnist", f"method.proportional={p}",
                       *common]) for p in ("true", "false")]
    assert all("test_acc_after_scaling" in r["phases"][1] for r in scaled)
    table = analysis.scaling_table([tmp_path / "run4", tmp_path / "run5"])
    assert sorted(table.proportional) == [False, True]
    assert analysis.scaling_figure([tmp_path / "run4", tmp_path / "run5"],
                                   str(tmp_path / "fig1.png")).stat().st_size > 0
