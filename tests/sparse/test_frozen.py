"""Counting mutually frozen weights (runner.models.frozen) on hand-built networks whose frozen
rows and columns are known."""
import pytest
import torch
from torch import nn

from runner.models.base import Network
from runner.models.fisher import class_fisher
from runner.models.frozen import count_frozen, pair_norms, trace_layers


def mlp(bias=False):
    return Network([nn.Sequential(nn.Linear(4, 3, bias=bias), nn.ReLU()),
                    nn.Sequential(nn.Linear(3, 3, bias=bias), nn.ReLU())], nn.Linear(3, 2, bias=bias))


@torch.no_grad()
def test_linear_double_and_triple():
    net = mlp()
    l1, l2, head = net.blocks[0][0], net.blocks[1][0], net.head
    l1.weight[1] = 0  # row 1 of layer 1: 4 weights
    l2.weight[:, 1] = 0  # column 1 of layer 2: 3 weights -> unit 1 double-frozen (7)
    c = count_frozen(net)
    assert (c["units"], c["double"], c["triple"], c["filters"]) == (1, 7, 0, 1)
    head.weight[:, 1] = 0  # column 1 of the layer after: the triple adds its 2 weights
    c = count_frozen(net)
    assert (c["units"], c["double"], c["triple"]) == (1, 7, 9)
    assert c["layers"]["head"] == {"weights": 6, "countable_units": 0, "double": 0, "triple": 2,
                                   "units": 0, "filters": 0}  # the output's units never count
    assert (c["weights"], c["countable_units"]) == (12 + 9 + 6, 3 + 3)  # the denominators
    # unit 1 of layer 2 is now double-frozen as well only once its row is zero (shares l2[1, 1])
    l2.weight[1] = 0
    c = count_frozen(net)
    assert (c["units"], c["double"]) == (2, 7 + 2 + 2)  # row 1 of l2 adds 2 new, head col 1 adds 2


@torch.no_grad()
def test_cutoff_is_on_the_l2_norm():
    net = mlp()
    net.blocks[0][0].weight[0] = torch.tensor([0.006, 0.0, 0.008, 0.0])  # norm 0.01: not below
    net.blocks[1][0].weight[:, 0] = 0
    assert count_frozen(net)["units"] == 0
    net.blocks[0][0].weight[0] = torch.tensor([0.006, 0.0, 0.0079, 0.0])  # norm < 0.01
    assert count_frozen(net)["units"] == 1
    assert count_frozen(net, cutoff=1e-3)["units"] == 0


@torch.no_grad()
def test_conv_into_linear_after_flatten():
    conv1, conv2 = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Conv2d(3, 4, 3, padding=1, bias=False)
    head = nn.Linear(4 * 5 * 5, 2, bias=False)
    net = Network([nn.Sequential(conv1, nn.ReLU()), nn.Sequential(conv2, nn.ReLU(), nn.Flatten())], head)
    conv1.weight[0] = 0  # 2*3*3 = 18
    conv2.weight[:, 0] = 0  # 4*3*3 = 36
    conv2.weight[2] = 0  # unit 2 of conv2: 3*3*3 = 27 (shares conv2[2, 0] with the column above)
    head.weight[:, 2 * 25:3 * 25] = 0  # channel 2's 25 positions in the head: 2*25 = 50
    c = count_frozen(net)
    assert c["units"] == 2
    assert c["double"] == 18 + 36 + 27 - 9 + 50
    assert c["triple"] == 0  # channel 0's block in the head is not zero
    head.weight[:, 0:25] = 0
    c = count_frozen(net)
    assert c["triple"] == 18 + 36 + 50
    assert c["layers"]["head"]["triple"] == 50


@torch.no_grad()
def test_batch_norm_frozen_filters():
    conv1, bn, conv2 = nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3, bias=False)
    net = Network([nn.Sequential(conv1, bn, nn.ReLU()), nn.Sequential(conv2, nn.ReLU())],
                  nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)))
    layers = trace_layers(net)
    assert layers["blocks.0.0"].norm is bn and layers["blocks.1.0"].norm is None
    bn.weight[1] = 0.0
    bn.weight[3] = 1e-3
    conv2.weight[:, [1, 3]] = 0
    c = count_frozen(net)
    assert c["filters"] == 2  # the norm weights and the next columns are zero ...
    assert c["units"] == 0 and c["double"] == 0  # ... but the conv rows are not
    conv1.weight[3] = 0
    c = count_frozen(net)
    assert (c["filters"], c["units"], c["double"]) == (2, 1, 9 + 18)


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 1, bias=False), nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


@torch.no_grad()
def test_residual_stream_consumers():
    stem, block, head = nn.Conv2d(1, 2, 1, bias=False), Residual(2), nn.Linear(2, 3, bias=False)
    net = Network([stem, block, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())], head)
    layers = trace_layers(net)
    consumers = {n: [q.name for q in l.consumers] for n, l in layers.items()}
    assert consumers == {"blocks.0": ["blocks.1.conv1", "head"], "blocks.1.conv1": ["blocks.1.conv2"],
                         "blocks.1.conv2": ["head"], "head": []}
    stem.weight[0] = 0
    block.conv1.weight[:, 0] = 0  # the next conv's column is zero, but the skip carries channel 0
    assert count_frozen(net)["units"] == 0
    head.weight[:, 0] = 0  # now every reader of the stem's channel 0 ignores it
    c = count_frozen(net)
    assert c["units"] == 1 and c["layers"]["blocks.0"]["units"] == 1
    assert c["double"] == 1 + 2 + 3


@torch.no_grad()
def test_concatenated_channels_are_never_counted():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2, bias=False), nn.Linear(4, 2, bias=False)

        def forward(self, x):
            return self.b(torch.cat([self.a(x), x], 1))

    net = Cat()
    net.a.weight[0] = 0
    net.b.weight[:, 0] = 0
    assert trace_layers(net)["a"].open
    assert count_frozen(net)["units"] == 0


@torch.no_grad()
def test_pair_norms_sum_row_and_columns():
    net = mlp()
    l1, l2 = net.blocks[0][0], net.blocks[1][0]
    l1.weight.fill_(0.0)
    l1.weight[0, 0] = 3.0
    l2.weight.fill_(0.0)
    l2.weight[:, 0] = torch.tensor([0.0, 3.0, 4.0])
    sums = pair_norms(trace_layers(net))
    assert set(sums) == {"blocks.0.0", "blocks.1.0"}
    assert torch.allclose(sums["blocks.0.0"], torch.tensor([8.0, 0.0, 0.0]))


@torch.no_grad()
def test_frozen_probe_reports_counts_at_start_and_end_with_their_denominators():
    from conftest import context
    from methods.frozen_probe import FrozenProbe
    from runner.data.tensors import Split, Splits

    torch.manual_seed(0)
    net = mlp()
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ctx = context(net, Splits(Split(x, y), Split(x, y), Split(x, y)))
    probe = FrozenProbe(cutoff=0.05, every_epoch=True, per_layer=True, fisher_samples=6,
                        fisher_classes=2)
    probe.setup(ctx)
    net.blocks[0][0].weight[1] = 0.01  # row norm 0.02: below the cutoff 0.05, above 1e-2
    net.blocks[1][0].weight[:, 1] = 0.01
    probe.on_phase_start(ctx)
    net.blocks[0][0].weight[1] = 1.0  # unfrozen by the end
    out = probe.on_phase_end(ctx)
    end = count_frozen(net, cutoff=0.05)
    assert {k: out[f"frozen_{k}"] for k in ("filters", "units", "double", "triple")} == {
        k: end[k] for k in ("filters", "units", "double", "triple")}
    assert (out["start_frozen_units"], out["start_frozen_double"], out["frozen_units"]) == (1, 7, 0)
    assert out["frozen_layers"] == end["layers"]
    totals = {"frozen_filters": 6, "frozen_units": 6, "frozen_double": 27, "frozen_triple": 27}
    assert out["totals"] == {**totals, **{f"start_{k}": v for k, v in totals.items()}}
    feats = net.features(x[:6])  # penultimate features of the first 6 test samples
    assert out["fisher"] == pytest.approx(class_fisher(feats, y[:6], 2))  # classes 0 and 1
    assert out["fisher"] != pytest.approx(class_fisher(feats, y[:6]))
    assert probe.on_epoch_end(ctx) == {f"frozen_{k}": end[k]
                                       for k in ("filters", "units", "double", "triple")}
    assert FrozenProbe().on_epoch_end(ctx) == {}
