"""Masked, frozen and reparametrized weights: the parameter-access module and the runner's masks
under every optimizer, and every method on masked models (issue: first-class masked weights)."""
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn
from torch.nn.utils import parametrize

from conftest import CONF, assert_same_selection, context
from methods.lw import LW
from methods.swr import SWR
from runner.models import params
from runner.models.mlp import mlp
from runner.models.transforms import filter_basis
from runner.results import RunRecorder
from runner.train import Trainer

SRC = Path(__file__).resolve().parents[2] / "src"
OPTIMIZERS = {"sgd": ["optim=sgd", "optim.momentum=0.9", "optim.weight_decay=0.1"],
              "adam": ["optim=adam", "optim.weight_decay=0.01"],
              "adamw": ["optim=adam", "optim.name=adamw", "optim.weight_decay=0.01"]}


def optimizer(name, ps, lr=0.1):
    return {"sgd": lambda: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=0.1),
            "adam": lambda: torch.optim.Adam(ps, lr=lr, weight_decay=1e-2),
            "adamw": lambda: torch.optim.AdamW(ps, lr=lr, weight_decay=1e-2)}[name]()


def train_steps(model, ctx, steps=3):
    for _ in range(steps):
        ctx.optimizer.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        ctx.masks.mask_grads()
        ctx.optimizer.step()
        ctx.masks.project()


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_pruned_stay_zero_and_frozen_stay_bitwise_under_every_optimizer(opt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    ctx = context(model)
    ctx.optimizer = optimizer(opt, model.parameters())
    keep = torch.rand(5, 3) < 0.5
    start = model[2].weight.detach().clone()
    ctx.masks.set("0.weight", keep, "pruned")
    ctx.masks.set("2.weight", torch.rand(2, 5) < 0.5, "frozen")
    frozen = ~ctx.masks["2.weight"].keep
    assert (model[0].weight[~keep] == 0).all()  # zero in the forward pass at once
    train_steps(model, ctx)
    assert (model[0].weight[~keep] == 0).all()
    assert torch.equal(model[2].weight[frozen], start[frozen])
    assert not torch.equal(model[0].weight[keep], torch.zeros_like(model[0].weight[keep]))


def test_frozen_wd_moves_by_weight_decay_alone():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    ctx = context(model)
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    ctx.masks.set("weight", torch.tensor([[True, False]]), "frozen_wd")
    ctx.optimizer.zero_grad()
    model(torch.tensor([[1.0, 1.0]])).sum().backward()  # gradient 1 for both entries
    ctx.masks.mask_grads()
    ctx.optimizer.step()
    ctx.masks.project()
    w = model.weight.detach()[0]
    assert w[1].item() == pytest.approx(1.0 - 0.1 * 0.5 * 1.0)  # decay only
    assert w[0].item() == pytest.approx(1.0 - 0.1 * (1.0 + 0.5))  # gradient and decay


def test_changing_a_mask_clears_optimizer_state_where_it_changed():
    model = nn.Linear(4, 1, bias=False)
    ctx = context(model)
    ctx.optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    ctx.optimizer.step()
    state = ctx.optimizer.state[model.weight]
    assert (state["exp_avg"] != 0).all()
    ctx.masks.set("weight", torch.tensor([[True, True, False, False]]), "pruned")
    assert (state["exp_avg"][0, 2:] == 0).all() and (state["exp_avg"][0, :2] != 0).all()
    assert (state["exp_avg_sq"][0, 2:] == 0).all()


def test_writes_reach_the_stored_tensors_under_a_parametrization():
    class Mask(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.register_buffer("m", m)

        def forward(self, w):
            return w * self.m

        def right_inverse(self, w):
            return w

    conv = nn.Conv2d(2, 3, 3)
    parametrize.register_parametrization(conv, "weight", Mask((torch.rand(3, 2, 3, 3) < 0.5).float()))
    slot = next(s for s in params.slots(conv) if s.local == "weight")
    before = slot.value().clone()
    params.scale_([slot], torch.tensor([3.0]))
    assert torch.allclose(conv.weight, 3 * before)
    assert [n for n, _ in params.select(conv, "weights")] == ["parametrizations.weight.original"]


def test_two_tensor_parametrization_selects_builds_an_optimizer_and_keeps_the_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    filter_basis()(model)
    assert torch.allclose(model(x), before, atol=1e-5)
    names = [n for n, _ in params.select(model, "weights")]
    assert names == ["0.parametrizations.weight.original", "0.parametrizations.weight.0.basis",
                     "3.weight"]
    from runner.config import OptimConfig
    from runner.optim import build_optimizer
    opt = build_optimizer(model, OptimConfig(name="sgd"), 0.1, 1e-4)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5
    snap = params.snapshot(model)
    assert set(n for n, _ in params.select(model)) == set(snap)
    slot = next(s for s in params.slots(model) if s.parametrized)
    w = slot.value().clone()
    slot.assign(w + 1.0)
    assert torch.allclose(slot.value(), w + 1.0, atol=1e-5)


def make_trainer(tmp_path, overrides, method="vanilla", kind="pruned", transforms=False):
    """A smoke-size trainer of `method` with a random 90 % mask of `kind` stacked after it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fmnist_mlp", "ci=smoke", "device=cpu",
                                           f"method={method}", "train.max_batches=3", *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.extra_methods = [{"_target_": "methods.random_mask.RandomMask", "density": 0.1,
                              "kind": kind}]
        if transforms:
            cfg.model_transforms = [{"_target_": "runner.models.transforms.filter_basis"}]
    from runner import ci
    cfg = ci.apply(cfg)
    return Trainer(cfg, RunRecorder(tmp_path, {}))


MODELS = {"mlp": ["model=mlp"], "swr_cnn_bn": ["model=swr_cnn_bn"],
          "resnet18_cifar": ["model=resnet18_cifar", "model.widths=[4,8,8,8]"],
          "torchvision": ["model=resnet18", "model.in_shape=[1,28,28]"],
          "basis": ["model=swr_cnn_bn"]}
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml") if p.stem != "random_mask")
MATRIX = [(m, model, opt) for m in METHODS for model in MODELS for opt in OPTIMIZERS]
# everyday: every method once, on the cheap models and the optimizers in turn, and torchvision's
# ResNet under three methods; the rest of the matrix runs under `-m slow`
CHEAP = [m for m in MODELS if m != "torchvision"]
EVERYDAY = [(m, CHEAP[i % len(CHEAP)], list(OPTIMIZERS)[i % len(OPTIMIZERS)])
            for i, m in enumerate(METHODS)]
EVERYDAY += [(m, "torchvision", opt) for m, opt in (("swr", "sgd"), ("snip", "adam"),
                                                     ("rigl", "adamw"))]


# sparse-training methods act within the few steps of a test run (mask updates, rewinding);
# SynFlow's 100 pruning rounds (10 s on the ResNet) shrink to 2
ACTING = {"set": ["method.t_p=1", "method.stop=1.0"], "rigl": ["method.t_p=1", "method.stop=1.0"],
          "gmp": ["method.t_p=1", "method.t0=0", "method.t1=4"], "lth": ["method.rewind_step=1"],
          "synflow": ["method.iterations=2"]}


def check_masked_run(tmp_path, method, model, opt):
    kind = "pruned" if (METHODS.index(method) + list(MODELS).index(model)) % 2 else "frozen"
    extra = ["phases.0.repeat=2", "train.max_repeat=2",  # a second phase: phase-start methods act
             *ACTING.get(method, [])]
    t = make_trainer(tmp_path, [*MODELS[model], *OPTIMIZERS[opt], *extra], method, kind,
                     transforms=model == "basis")
    t.fit()
    masks = t.ctx.masks  # keyed by the names at setup (LW may wrap blocks later)
    assert len(masks) > 0
    for name in masks.names():
        m, p = masks[name], masks.params[name].detach()
        if kind == "pruned":
            assert (p[~m.keep] == 0).all(), name
        else:
            assert torch.equal(p[~m.keep], m.fill[~m.keep]), name


@pytest.mark.parametrize("method,model,opt", EVERYDAY)
def test_every_method_on_masked_models(tmp_path, method, model, opt):
    check_masked_run(tmp_path, method, model, opt)


@pytest.mark.slow
@pytest.mark.parametrize("method,model,opt", [c for c in MATRIX if c not in EVERYDAY])
def test_every_method_on_masked_models_full_matrix(tmp_path, method, model, opt):
    check_masked_run(tmp_path, method, model, opt)


def masked_mlp(kind="pruned"):
    torch.manual_seed(0)
    model = mlp([1, 4, 4], 5, hidden=[8, 6])
    ctx = context(model)
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for name, p in params.select(model, "weights"):
        ctx.masks.set(name, torch.rand(p.shape) < 0.3, kind)
    return model, ctx


def test_swr_keeps_the_predictions_of_a_masked_model():
    model, ctx = masked_mlp()
    x = torch.randn(16, 1, 4, 4)
    swr = SWR(lam=0.5)
    swr.setup(ctx)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.7)
    ctx.masks.project()
    before = model(x).detach()
    swr.after_step(ctx)
    ctx.masks.project()
    after = model(x).detach()
    ratio = after / before
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)
    # the same predictions: each sample's top logit, up to near-ties that rounding may flip
    for a, b in zip(after, before):
        top = torch.arange(len(b))
        assert_same_selection(top == a.argmax(), top == b.argmax(), -b, rtol=1e-4)
    for name in ctx.masks.names():
        assert (dict(model.named_parameters())[name][~ctx.masks[name].keep] == 0).all()


def test_lw_restores_the_initial_norms_of_a_masked_model():
    from runner.data.tensors import Split, Splits
    model, ctx = masked_mlp()
    x = torch.randn(32, 1, 4, 4)
    ctx.data = Splits(Split(x, torch.zeros(32, dtype=torch.long)), Split(x[:0], x[:0]), Split(x, x))
    lw = LW(n=1, normalize=False, reinit=False)
    lw.setup(ctx)
    init = params.norms(params.slots(model, "weights")).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    lw.on_phase_start(ctx)
    now = params.norms(params.slots(model, "weights"))
    k = lw.stem + lw.k
    assert torch.allclose(now[:k], init[:k], rtol=1e-5)


def test_methods_never_read_the_config_and_only_the_core_knows_the_test_level():
    methods = "\n".join(p.read_text() for p in (SRC / "methods").glob("*.py"))
    assert "ctx.cfg" not in methods
    outside = [p for p in SRC.rglob("*.py") if p.name != "ci.py"
               and re.search(r"ci\.(enabled|level|active)\b", p.read_text())]
    assert not outside, outside
    loop = [SRC / "runner" / n for n in ("train.py", "context.py")]  # the training loop reads
    loop += [*(SRC / "runner" / "training").glob("*.py")]
    loop += [*(SRC / "runner" / "data").glob("*.py"), *(SRC / "methods").glob("*.py")]  # options only
    asks = [p for p in loop if re.search(r"from runner import ([\w, ]*\b)?ci\b|runner\.ci\b|\bci\.\w",
                                         p.read_text())]
    assert not asks, asks
    assert not list(re.finditer(r"\$\{if:", "\n".join(p.read_text() for p in CONF.rglob("*.yaml"))))


def test_random_mask_keeps_exactly_its_density_of_every_weight_tensor():
    from methods.random_mask import RandomMask
    torch.manual_seed(0)
    model = mlp([1, 4, 4], 5, hidden=[8, 6])
    ctx = context(model)
    RandomMask(density=0.25, kind="frozen").setup(ctx)
    for name, p in params.select(model, "weights"):
        assert int(ctx.masks[name].keep.sum()) == round(0.25 * p.numel()), name
        assert ctx.masks[name].kind == "frozen"
    assert not any(n in ctx.masks for n, _ in params.select(model, "biases"))


@pytest.mark.parametrize("params_,basis", [("weights", False), ("weights", True),
                                           ("biases", False)])
def test_random_mask_draws_its_entries_from_the_run_generator(params_, basis):
    """Each chosen tensor (weights: every conv / linear weight, never a filter basis; or the
    `params` kinds) keeps exactly round(density n) entries: the first of
    torch.randperm(n, ctx.gen), tensor after tensor; `trained_share` is kept / total."""
    from methods.random_mask import RandomMask
    from runner.models.transforms import filter_bases, prunable
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(12, 5))
    if basis:
        filter_basis(sharing="coarse")(model)
    ctx = context(model, seed=6)
    torch.manual_seed(1)  # the global random state plays no part
    method = RandomMask(density=0.3, kind="frozen", params=params_)
    method.setup(ctx)
    chosen = prunable(model) if params_ == "weights" else params.select(model, params_)
    assert sorted(ctx.masks.names()) == sorted(n for n, _ in chosen)
    assert not {id(b) for b in filter_bases(model)} & {id(p) for _, p in chosen}
    g = torch.Generator().manual_seed(6)
    kept = 0
    for name, p in chosen:
        k = round(0.3 * p.numel())
        want = torch.zeros(p.numel(), dtype=torch.bool)
        want[torch.randperm(p.numel(), generator=g)[:k]] = True
        assert torch.equal(ctx.masks[name].keep.flatten(), want), name
        assert ctx.masks[name].kind == "frozen"
        kept += k
    total = sum(p.numel() for _, p in chosen)
    assert method.on_phase_end(ctx) == {"trained_share": kept / total}


def test_random_mask_density_is_checked_and_its_ends_allowed():
    from methods.random_mask import RandomMask
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"^random_mask density={bad}; valid: \[0, 1\]$"):
            RandomMask(density=bad)
    assert RandomMask(density=0).density == 0.0 and RandomMask(density=1).density == 1.0
