"""The interspace representation (Wimmer's thesis, Sec. 5.4): filter bases on KxK convolutions."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_selection, context
from methods.prune_init import PruneAtInit
from runner.data.tensors import Split, Splits
from runner.models import params
from runner.models.torchvision_resnet import torchvision_resnet
from runner.models.transforms import filter_bases, filter_basis, prunable
from runner.models.vgg import vgg

TINY_VGG = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M")
MEDIUM = [2, 2, 3, 3, 3]  # thesis Sec. 5.4.3: VGG-16's five medium groups


def twins(**fb):
    torch.manual_seed(0)
    sp = vgg([3, 32, 32], 10, layers=TINY_VGG, classifier=[])
    ip = vgg([3, 32, 32], 10, layers=TINY_VGG, classifier=[])
    ip.load_state_dict(sp.state_dict())
    return sp, filter_basis(**fb)(ip)


@pytest.mark.parametrize("fb", [dict(sharing="fine"), dict(sharing="coarse"),
                                dict(sharing="medium", groups=MEDIUM),
                                dict(sharing="in_nc", nc=3), dict(sharing="out_nc", nc=3),
                                dict(sharing="coarse", init="orthonormal"),
                                dict(sharing="out_nc", nc=2, init="orthonormal")])
def test_ip_network_computes_what_its_spatial_twin_computes_at_init(fb):
    sp, ip = twins(**fb)
    x = torch.randn(4, 3, 32, 32)
    sp.eval(), ip.eval()
    assert torch.allclose(ip(x), sp(x), atol=1e-5, rtol=1e-4)
    convs = list(zip(*([m for m in net.modules() if isinstance(m, nn.Conv2d)] for net in (sp, ip))))
    assert len(convs) == 13 and all(torch.allclose(b.weight, a.weight, atol=1e-6) for a, b in convs)


def test_sharing_counts_the_bases_of_the_thesis():
    counts = {}
    for name, fb in [("coarse", {}), ("medium", dict(groups=MEDIUM)), ("fine", {})]:
        _, ip = twins(sharing=name, **fb)
        counts[name] = len(filter_bases(ip))
    assert counts == {"coarse": 1, "medium": 5, "fine": 13}
    _, ip = twins(sharing="out_nc", nc=3)
    assert [tuple(b.shape) for b in filter_bases(ip)][:3] == [(2, 9, 9), (2, 9, 9), (3, 9, 9)]


def test_resnet50_fine_has_17_bases_and_its_1x1_convs_stay_spatial():
    """Thesis Table A.7: one FB per 3x3 layer (16) plus one for the 7x7 stem."""
    net = filter_basis(sharing="fine")(torchvision_resnet([3, 32, 32], 10, arch="resnet50"))
    shapes = [tuple(b.shape) for b in filter_bases(net)]
    assert len(shapes) == 17 and shapes[0] == (1, 49, 49) and shapes.count((1, 9, 9)) == 16
    one_by_one = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert one_by_one and not any(hasattr(m, "parametrizations") for m in one_by_one)


def test_resnet18_imagenet_stem_keeps_the_standard_basis():
    """Thesis Table A.5: coarse sharing; the 7x7 stem and 1x1 shortcuts stay spatial."""
    net = filter_basis(sharing="coarse", kernels=[3])(torchvision_resnet([3, 64, 64], 10, "resnet18"))
    stem = net.blocks[0][0]
    assert stem.kernel_size == (7, 7) and not hasattr(stem, "parametrizations")
    assert len(filter_bases(net)) == 1


def test_interspace_conv_equals_the_spatial_conv_forward_and_backward():
    """Eqs. (5.7)-(5.10): grad beta_i = <F_i, grad phi>, grad F_i = sum beta_i grad phi."""
    torch.manual_seed(1)
    conv = filter_basis(sharing="fine", init="random")(nn.Conv2d(3, 5, 3, padding=1))
    coef = conv.parametrizations.weight.original
    basis = conv.parametrizations.weight[0].basis
    x = torch.randn(2, 3, 8, 8)
    g = torch.randn(2, 5, 8, 8)
    (conv(x) * g).sum().backward()
    w = (coef.detach() @ basis.detach()[0]).view(5, 3, 3, 3).requires_grad_()
    out = F.conv2d(x, w, conv.bias.detach(), padding=1)
    (out * g).sum().backward()
    assert torch.allclose(conv(x), out, atol=1e-5)
    grad_phi = w.grad.reshape(5, 3, 9)
    assert torch.allclose(coef.grad, grad_phi @ basis.detach()[0].T, atol=1e-5)
    assert torch.allclose(basis.grad[0], torch.einsum("oin,oik->nk", coef.detach(), grad_phi),
                          atol=1e-5)


@pytest.mark.parametrize("n", [5, 9, 13])
def test_random_basis_gives_unit_sum_of_squares_per_position(n):
    """Algorithm 5.1 (sigma, not sigma^2): sum_k F_k,ij^2 = 1 and mean_k F_k,ij = 1/n."""
    torch.manual_seed(0)
    conv = filter_basis(init="random", n_filters=n)(nn.Conv2d(16, 32, 3))
    basis = conv.parametrizations.weight[0].basis.detach()[0]
    assert basis.shape == (n, 9)
    assert torch.allclose(basis.pow(2).sum(0), torch.ones(9), atol=1e-5)
    assert torch.allclose(basis.mean(0), torch.full((9,), 1 / n), atol=1e-6)
    std = conv.weight.detach().std().item()
    assert abs(std / (2 / (16 * 9)) ** 0.5 - 1) < 0.1  # Kaiming-normal spatial weights


def test_pruning_coefficients_leaves_the_spatial_filters_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4))
    filter_basis(init="orthonormal")(model)
    ctx = context(model)
    ctx.reset_optimizer()
    names = [n for n, _ in prunable(model)]
    assert names == ["0.parametrizations.weight.original", "3.weight"]
    coef = dict(model.named_parameters())[names[0]]
    keep = torch.rand(coef.shape) < 0.2
    ctx.masks.set(names[0], keep)
    assert (coef.detach()[~keep] == 0).all()
    alive = keep.any(-1)  # filters with a coefficient left: all their K*K weights are non-zero
    assert alive.float().mean() > 0.5 and (model[0].weight.detach()[alive] != 0).all()
    assert (keep.sum() / keep.numel()) < 0.25 and (model[0].weight.detach()[alive] == 0).sum() == 0
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    F.cross_entropy(model(x), y).backward()
    ctx.optimizer.step()
    ctx.masks.project()
    assert (coef.detach()[~keep] == 0).all() and (model[0].weight.detach()[alive] != 0).all()


@pytest.mark.parametrize("kind", ["pruned", "frozen"])  # IP-SNIP, IP-FreezeNet
def test_snip_and_freezenet_in_the_interspace_mask_the_coefficients_and_train_the_basis(kind):
    torch.manual_seed(0)
    model = filter_basis(sharing="coarse")(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5)))  # standard FB init: W = C at initialization
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 6, 6, generator=g), torch.randint(0, 5, (32,), generator=g)
    ctx = context(model, Splits(Split(x, y), Split(x[:0], y[:0]), Split(x, y)))
    named, (basis,) = prunable(model), filter_bases(model)
    # SNIP's scores by hand on the calibration batch (the first 16 samples): |dL/dC * C| over
    # the coefficients and the linear weight, never the basis
    grads = torch.autograd.grad(F.cross_entropy(model(x[:16]), y[:16]), [p for _, p in named])
    s = torch.cat([(gr * p.detach()).abs().flatten() for gr, (_, p) in zip(grads, named)])
    total, d = s.numel(), s.numel() // 4  # q = 0.75: floor(0.25 D), D without the basis
    top = torch.zeros(total, dtype=torch.bool)
    top[s.topk(d).indices] = True
    init, basis0 = {n: p.detach().clone() for n, p in named}, basis.detach().clone()

    method = PruneAtInit(score="snip", q=0.75, kind=kind, batch_size=16)
    method.setup(ctx)
    assert sorted(ctx.masks.names()) == sorted(n for n, _ in named)  # the basis is not masked
    keep = torch.cat([ctx.masks[n].keep.flatten() for n, _ in named])
    # the method's scores and these by-hand ones may round differently: equal up to near-ties
    assert int(keep.sum()) == d
    assert_same_selection(keep, top, -s)  # top keeps the largest s: the smallest of -s
    assert method.metrics["q"] == 1 - d / total and method.metrics["weights"] == total
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if kind == "pruned":  # at init (standard FB) the spatial filters are as sparse as C
        assert sum(int(c.weight.count_nonzero()) for c in convs) == sum(
            int(ctx.masks[n].keep.sum()) for n, _ in named[:2])

    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        ctx.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ctx.optimizer.step()
        ctx.masks.project()
    assert not torch.equal(basis.detach(), basis0)  # the basis trains
    for n, p in named:
        m, now = ctx.masks[n].keep, p.detach()
        assert torch.equal(now[~m], torch.zeros_like(now[~m]) if kind == "pruned" else init[n][~m])
        assert (now[m] != init[n][m]).all(), n  # the kept entries train
    for conv, (n, coef) in zip(convs, named):
        w, alive = conv.weight.detach(), ctx.masks[n].keep.any(-1)
        if kind == "frozen":
            alive = torch.ones_like(alive)  # frozen coefficients keep their initial values
        assert (w[alive] != 0).all() and (w[~alive] == 0).all()  # every live filter is dense
        assert int(w.count_nonzero()) == 9 * int(alive.sum())
        if kind == "pruned":  # more spatial non-zeros than kept coefficients
            assert 9 * int(alive.sum()) > int(coef.count_nonzero())


def test_shared_basis_is_one_parameter_to_the_optimizer_and_assign_keeps_it():
    _, ip = twins(sharing="coarse")
    stored = [p for _, p in params.select(ip, "weights")]
    assert len(stored) == len({id(p) for p in stored}) == 13 + 1 + 1  # coefficients, FB, head
    slot = next(s for s in params.slots(ip) if s.parametrized)
    w = slot.value().clone()
    slot.assign(2 * w)
    assert torch.allclose(slot.value(), 2 * w, atol=1e-5)


@pytest.mark.parametrize("bad,msg", [(dict(sharing="medium"), "groups"),
                                     (dict(init="standard", n_filters=5), "init=random"),
                                     (dict(sharing="wide"), "valid")])
def test_bad_options_name_what_to_fix(bad, msg):
    with pytest.raises(ValueError, match=msg):
        twins(**bad)
