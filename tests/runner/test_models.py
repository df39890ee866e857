"""The zoo: every model config builds and trains one step at its paper input size; parameter
counts match the papers; blocks and head compose to the whole model."""
import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF
from runner.models.cnn import lenet5_caffe
from runner.models.mlp import mlp
from runner.models.resnet import resnet
from runner.models.torchvision_resnet import torchvision_resnet
from runner.models.vgg import vgg

pytestmark = pytest.mark.usefixtures("one_thread")

# Each model config at the input shape and class count of the paper experiment that uses it.
PAPER_INPUT = {
    "mlp": ([1, 28, 28], 10),  # SWR: MNIST
    "lenet300_100": ([1, 28, 28], 10),  # thesis: MNIST
    "lenet5_caffe": ([1, 28, 28], 10),
    "swr_cnn": ([3, 32, 32], 10),  # SWR: CIFAR-10
    "swr_cnn_bn": ([3, 32, 32], 100),  # SWR: CIFAR-100
    "vgg16_swr": ([3, 64, 64], 200),  # SWR: Tiny ImageNet
    "vgg16_thesis": ([3, 32, 32], 10),  # thesis: CIFAR-10
    "vgg16_lth": ([3, 32, 32], 10),
    "resnet18_cifar": ([3, 32, 32], 10),  # Zilly: CIFAR-10
    "resnet34": ([3, 64, 64], 200),  # thesis: Tiny ImageNet
    "wrn18_2": ([3, 64, 64], 200),
    "allcnn": ([3, 32, 32], 10),  # Zilly: CIFAR-10
    "resnet18": ([3, 224, 224], 1000),  # thesis: ImageNet
    "resnet50": ([3, 224, 224], 10),  # Zilly: Fashion-MNIST at 224, RGB
    "scnn": ([3, 224, 224], 37),  # reinitialization paper: Oxford-IIIT Pets at 224
    "vgg16_ln": ([3, 224, 224], 37),
    "mobilenet_v1": ([3, 224, 224], 37),
}
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def build(name, shape, classes):
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    cfg.in_shape, cfg.num_classes = shape, classes
    return instantiate(cfg)


def test_every_model_config_has_a_paper_input():
    assert sorted(PAPER_INPUT) == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_one_step_at_paper_input(name):
    torch.manual_seed(0)
    shape, classes = PAPER_INPUT[name]
    model = build(name, shape, classes)
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) >= 1
    n = 2 if any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()) else 1
    x, y = torch.randn(n, *shape), torch.tensor([classes - 1, 0][:n])
    out = model(x)
    assert out.shape == (n, classes)
    torch.testing.assert_close(model.head(model.features(x)), out)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0 if hasattr(model.head, "weight") else True


@pytest.mark.parametrize("build_fn,expected", [
    (lambda: mlp([1, 28, 28], 10, hidden=[300, 100]), 266_610),  # thesis Table A.1
    (lambda: lenet5_caffe([1, 28, 28], 10), 431_080),  # Table A.2
    (lambda: vgg([3, 32, 32], 10, fc_norm="batch"), 15_255_626),  # Table A.3
    (lambda: vgg([3, 32, 32], 100, fc_norm="batch"), 15_301_796),
    (lambda: vgg([3, 32, 32], 10, classifier=[]), 14_728_266),  # VGG-16-LTH
    (lambda: resnet([3, 64, 64], 200, depths=[3, 4, 6, 3], first_stride=2), 21_383_816),  # A.6
    (lambda: torchvision_resnet([3, 224, 224], 1000, "resnet18"),
     n_params(torchvision.models.resnet18())),
    (lambda: torchvision_resnet([3, 224, 224], 1000, "resnet50"),
     n_params(torchvision.models.resnet50())),
])
def test_parameter_counts_match_the_papers(build_fn, expected):
    assert n_params(build_fn()) == expected


def test_configs_give_the_papers_counts():
    assert n_params(build("lenet300_100", [1, 28, 28], 10)) == 266_610
    assert n_params(build("vgg16_thesis", [3, 32, 32], 10)) == 15_255_626
    assert n_params(build("vgg16_lth", [3, 32, 32], 10)) == 14_728_266
    assert n_params(build("resnet34", [3, 64, 64], 200)) == 21_383_816


def test_swr_cnn_counts_by_hand():
    # conv 3->16 (5x5) + conv 16->16 + fc 576->100 (32x32: 30 -> 15 -> 13 -> 6) + fc 100->10
    assert n_params(build("swr_cnn", [3, 32, 32], 10)) == (3 * 16 * 25 + 16) + (
        16 * 16 * 25 + 16) + (576 * 100 + 100) + (100 * 10 + 10)
    # CNN-BN: bias-free convs, each with a BN (16 weights + 16 biases)
    assert n_params(build("swr_cnn_bn", [3, 32, 32], 10)) == (3 * 16 * 25 + 32) + (
        16 * 16 * 25 + 32) + (576 * 100 + 100) + (100 * 10 + 10)


def test_torchvision_split_computes_torchvision_function():
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=7).eval()
    ours = torchvision_resnet([3, 64, 64], 7, "resnet18").eval()
    ours.load_state_dict(dict(zip(ours.state_dict(), ref.state_dict().values())))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x))
    assert len(ours.blocks) == 1 + 8 + 1  # stem, 8 residual blocks, pooling


def test_resnet_v1_moves_the_stride_to_the_1x1_conv():
    m = torchvision_resnet([3, 224, 224], 10, "resnet50", stride_on="1x1")
    first = m.blocks[1 + 3]  # stem, 3 blocks of stage 1, then the first block of stage 2
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert m.features(torch.zeros(1, 3, 224, 224)).shape == (1, 2048)


def test_norm_options_change_the_layers():
    ln = build("vgg16_ln", [3, 32, 32], 10)
    kinds = {type(m).__name__ for m in ln.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds
    gn = build("resnet18_cifar", [3, 32, 32], 10)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    none = resnet([3, 32, 32], 10, norm="none")
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in none.modules())


def test_he_uniform_init_bound():
    torch.manual_seed(0)
    m = build("resnet34", [3, 64, 64], 200)
    w = m.blocks[0][0].weight  # 3x3 conv, fan_in 27: U(-sqrt(6/27), sqrt(6/27))
    bound = (6 / 27) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_vgg_rejects_too_small_inputs_with_a_clear_message():
    with pytest.raises(ValueError, match="at least 32x32"):
        vgg([1, 28, 28], 10)
