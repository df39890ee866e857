"""Every registered method survives a checkpoint (the protocol of `methods.base`): a run stopped
between epochs or between phases and resumed as `Trainer.restore` does it (fresh model from the
seed, `setup`, then the methods', model's, masks', optimizer's and random states loaded) ends
bitwise as the run that never stopped, with the same metrics; `load_state_dict` puts back exactly
what `state_dict` gave, whatever its own `setup` saw; the states load with weights_only=True.

The trainer is mimicked in a few lines (tests/runner/test_resume.py runs the real one, killed, under the
`sizes` stage); every method runs with options that make it act within the test's 12 steps."""
import copy
import functools
import inspect
import io

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_method
from omegaconf import OmegaConf

from conftest import CONF, load_yaml
from methods.base import Method, MethodStack
from runner.context import RunContext, Phase
from runner.data.tensors import Split, Splits
from runner.instantiate import instantiate
from runner.models import params
from runner.models.cnn import swr_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
# options that make a method act within 3 phases x 2 epochs x 1 step (and stay cheap)
ACTING = {"set": {"t_p": 1, "stop": 1.0}, "rigl": {"t_p": 1, "stop": 1.0},
          "gmp": {"t_p": 3, "t0": 0, "t1": 6}, "lth": {"rewind_step": 1},
          "synflow": {"iterations": 2}, "rescale": {"schedule": [4, 4, 4]},
          "frozen_probe": {"every_epoch": True, "per_layer": True, "pairs": 2,
                           "fisher_samples": 8, "fisher_classes": 3, "cutoff": 0.5},
          "reinit_probe": {"sigmas": [0.1], "draws": 2, "margins": 5, "batch": 8},
          "sparse_init": {"noise_std": 1e-4}}
PHASES, EPOCHS, STEPS, BATCH = 3, 2, 1, 8
# the checkpoint: inside phase 1, after its first epoch (the resumed run starts phase 2 itself)
STOP = (1, 1)
LRS = (0.1, 0.05, 0.02)  # a decreasing rate per phase (SWR + re-init acts on a decrease)
GEN = torch.Generator().manual_seed(5)
X = torch.randn(48, 1, 8, 8, generator=GEN)
Y = torch.randint(0, 3, (48,), generator=GEN)
DATA = Splits(Split(X[:32], Y[:32]), Split(X[32:40], Y[32:40]), Split(X[40:], Y[40:]))


def method_node(name: str) -> dict:
    """conf/method/NAME.yaml with the files it extends merged in (the defaults list)."""
    raw, node = load_yaml(CONF / "method" / f"{name}.yaml"), {}
    for base in raw.get("defaults", []):
        if base != "_self_":
            node.update(method_node(base))
    node.update({k: v for k, v in raw.items() if k != "defaults"})
    return node


@functools.lru_cache(maxsize=None)
def method_options(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.create({**method_node(name), **ACTING.get(name, {})}),
                                  resolve=True)


def build_method(name: str) -> Method:
    return instantiate(copy.deepcopy(method_options(name)), f"method {name}", "method")


def make_model():
    return swr_cnn([1, 8, 8], 3, channels=2, kernel=3, hidden=6, norm="batch")


def optimizer(model, lr, wd):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                           momentum=0.9, weight_decay=wd)


class Run:
    """A model, its methods and their context, trained the way `runner.train.Trainer` does."""

    def __init__(self, names, model_seed=0, device="cpu"):
        torch.manual_seed(model_seed)
        model = make_model().to(device)
        self.stack = MethodStack([build_method(n) for n in names])
        self.ctx = ctx = RunContext(
            device=torch.device(device), model=model, seed=0, loss_fn=F.cross_entropy,
            num_phases=PHASES, eval_batch_size=16, build_model=make_model,
            make_optimizer=optimizer, lr=LRS[0], weight_decay=1e-3)
        ctx.data, ctx.pipeline = DATA, (lambda x, train, gen: x)
        ctx.steps_per_epoch, ctx.total_steps = STEPS, STEPS * EPOCHS
        ctx.init_state = params.snapshot(model)
        ctx.phase = Phase(0, 0, "p0", None)
        self.hook("setup")
        ctx.reset_optimizer()
        self.log = []  # (where, the methods' metrics) in order

    def hook(self, name):
        self.stack.call(name, self.ctx)
        if len(self.ctx.masks):
            self.ctx.masks.project()

    def step(self):
        ctx, stack, masks = self.ctx, self.stack, self.ctx.masks
        i = (ctx.step * BATCH) % len(DATA.train)
        x, y = DATA.train.x[i:i + BATCH], DATA.train.y[i:i + BATCH]
        ctx.batch = (x, y)
        out = ctx.outputs = ctx.model(x)
        loss = F.cross_entropy(out, y)
        term = stack.loss_term(ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        (loss if term is None else loss + term).backward()
        masks.mask_grads()
        stack.call("before_step", ctx)
        ctx.optimizer.step()
        masks.project()
        self.hook("after_step")
        ctx.step += 1

    def phase(self, index, first_epoch=0):
        """Phase `index` from `first_epoch` (> 0: resumed inside it); the checkpoint at STOP is
        kept in `saved` (and the number of log entries before it in `logged`)."""
        ctx = self.ctx
        ctx.phase = Phase(index, index, f"p{index}", None)
        if first_epoch == 0:
            ctx.epoch, ctx.lr, ctx.weight_decay, ctx.gamma = 0, LRS[index], 1e-3, None
            self.hook("on_phase_start")
            for g in ctx.optimizer.param_groups:
                g["lr"], g["weight_decay"] = ctx.lr, ctx.weight_decay
        for epoch in range(first_epoch, EPOCHS):
            if (index, epoch) == STOP and first_epoch == 0:
                self.saved, self.logged = self.checkpoint(index, epoch), len(self.log)
            ctx.epoch = epoch
            for _ in range(STEPS):
                self.step()
            self.log.append((f"epoch {index}.{epoch}", self.stack.collect("on_epoch_end", ctx)))
        self.log.append((f"phase {index}", self.stack.collect("on_phase_end", ctx)))

    def fit(self):
        for index in range(PHASES):
            self.phase(index)

    def checkpoint(self, index, epoch):
        """What `Trainer.save_checkpoint` saves; the methods' states through torch.save and
        torch.load(weights_only=True), the rest copied."""
        ctx, model = self.ctx, self.ctx.model
        names = {id(p): n for n, p in model.named_parameters()}
        buf = io.BytesIO()
        torch.save(self.stack.state_dict(), buf)
        return {"position": (index, epoch), "plain": plain(self.stack.methods), **copy.deepcopy({
            "model": model.state_dict(), "masks": ctx.masks.state_dict(),
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "optimizer_params": [names[id(p)] for g in ctx.optimizer.param_groups
                                 for p in g["params"]],
            "optimizer": ctx.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "method": ctx.gen.get_state()},
            "context": {"step": ctx.step, "epoch": ctx.epoch, "lr": ctx.lr,
                        "weight_decay": ctx.weight_decay, "gamma": ctx.gamma}}),
            "methods": torch.load(io.BytesIO(buf.getvalue()), weights_only=True)}

    def restore(self, state):
        """`Trainer.restore`, then the rest of the run."""
        ctx = self.ctx
        self.stack.load_state_dict(state["methods"], ctx)
        ctx.model.load_state_dict(state["model"])
        ctx.masks.load_state_dict(state["masks"])
        named = dict(ctx.model.named_parameters())
        for n, p in named.items():
            p.requires_grad_(n in state["optimizer_params"])
        ctx.reset_optimizer()
        for n, p in named.items():
            p.requires_grad_(state["requires_grad"][n])
        ctx.optimizer.load_state_dict(state["optimizer"])
        for k, v in state["context"].items():
            setattr(ctx, k, v)
        torch.set_rng_state(state["rng"]["torch"])
        ctx.gen.set_state(state["rng"]["method"])

    def resume(self, state):
        index, epoch = state["position"]
        if epoch:
            self.phase(index, first_epoch=epoch)
            index += 1
        for i in range(index, PHASES):
            self.phase(i)


def same(a, b, where="state") -> None:
    """Bitwise equality of nested dicts / lists / tensors / numbers (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype)
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan()), where
    else:
        assert type(a) is type(b), (where, type(a), type(b))
        assert a == b or a != a and b != b, (where, a, b)  # NaN equals NaN


def leaves(x):
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [leaf for v in x for leaf in leaves(v)]
    return [x]


def plain(x):
    """The plain data among a method's attributes: numbers, strings, tensors that are not
    parameters, and lists and string-keyed dicts of them (modules, slots, masks, parameters and
    dicts keyed by object ids are left out: the model, masks and state_dict account for them)."""
    if isinstance(x, (list, tuple)):
        items = [plain(v) for v in x]
        return SKIP if any(v is SKIP for v in items) else items
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            return SKIP
        items = {k: plain(v) for k, v in x.items()}
        return {k: v for k, v in items.items() if v is not SKIP}
    if isinstance(x, Method):
        return plain(vars(x))
    if isinstance(x, torch.Tensor) and not isinstance(x, torch.nn.Parameter):
        return x.detach().clone()
    return x if x is None or isinstance(x, (bool, int, float, str)) else SKIP


SKIP = object()


def model_state(run):
    return {k: v for k, v in run.ctx.model.state_dict().items()}


@pytest.mark.parametrize("name", METHODS)
def test_a_resumed_method_ends_bitwise_as_the_uninterrupted_one(name):
    whole = Run([name])
    whole.fit()
    state = whole.saved
    resumed = Run([name])
    resumed.restore(state)
    same(resumed.stack.state_dict(), state["methods"], f"{name}: restored state")
    same(plain(resumed.stack.methods), state["plain"], f"{name}: restored attributes")
    resumed.resume(state)
    same(resumed.log, whole.log[whole.logged:], f"{name}: metrics after the checkpoint")
    same(model_state(resumed), model_state(whole), f"{name}: weights")
    same(resumed.ctx.masks.state_dict(), whole.ctx.masks.state_dict(), f"{name}: masks")
    same(resumed.stack.state_dict(), whole.stack.state_dict(), f"{name}: final state")
    # load_state_dict puts back what state_dict gave, whatever setup saw (another model draw);
    # a state can be taken right after setup too
    if state["methods"] == [{}]:
        return
    other = Run([name], model_seed=1)
    torch.save(other.stack.state_dict(), io.BytesIO())
    other.stack.load_state_dict(state["methods"], other.ctx)
    same(other.stack.state_dict(), state["methods"], f"{name}: loaded after another setup")
    # the state's weights and norms arrive on the CPU and go to the run's device ("meta" stands
    # for one; index tensors stay where the method draws them, LW's calibration batch)
    if any(isinstance(t, torch.Tensor) for t in leaves(state["methods"])):
        meta = Run([name], device="meta")
        meta.stack.load_state_dict(state["methods"], meta.ctx)
        tensors = [t for t in leaves(meta.stack.state_dict())
                   if isinstance(t, torch.Tensor) and t.is_floating_point()]
        assert tensors and all(t.is_meta for t in tensors), f"{name}: state left off the device"
        assert all(t.is_meta for t in meta.ctx.model.state_dict().values()), f"{name}: modules"


def test_a_stack_loads_each_state_into_its_method_and_refuses_another_stack():
    whole = Run(["swr", "frozen_probe"])
    whole.fit()
    resumed = Run(["swr", "frozen_probe"])
    resumed.restore(whole.saved)
    resumed.resume(whole.saved)
    same(resumed.log, whole.log[whole.logged:], "metrics after the checkpoint")
    same(resumed.stack.state_dict(), whole.stack.state_dict(), "final state")
    state = whole.stack.state_dict()
    for wrong in (state[:1], state + [{}]):
        with pytest.raises(ValueError):
            Run(["swr", "frozen_probe"]).stack.load_state_dict(wrong, resumed.ctx)


def test_l2_init_refuses_the_reference_of_another_parameter_selection():
    from methods.l2_init import L2Init
    run = Run(["l2_init"])
    weights_only = L2Init(params="weights")
    weights_only.setup(run.ctx)
    with pytest.raises(ValueError):
        run.stack.methods[0].load_state_dict(weights_only.state_dict(), run.ctx)


def target(name: str):
    return get_method(method_node(name)["_target_"])


# the configs named after their class (not its variants: freezenet, g_cops, swr_reinit, ...)
BASES = [n for n in METHODS if getattr(target(n), "name", None) == n and "__init__" in vars(target(n))]


def test_a_stack_adds_the_loss_terms_of_its_methods():
    run = Run(["l2", "vanilla", "l2_init"])
    l2, _, l2_init = run.stack.methods
    with torch.no_grad():
        for p in run.ctx.model.parameters():
            p.add_(0.5)
    total = run.stack.loss_term(run.ctx)
    assert total.item() == pytest.approx((l2.loss_term(run.ctx) + l2_init.loss_term(run.ctx)).item())
    assert l2_init.loss_term(run.ctx).item() > 0
    assert Run(["vanilla", "swr"]).stack.loss_term(run.ctx) is None
