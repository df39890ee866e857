"""Building a run: the device (and each sweep job's), seeds and determinism flags, targets
instantiated from the config, the loss options, the model's transforms and layout, compile,
mixed precision, distributed training (joining it, steps through the wrapped model), and configs
or methods that are refused.
"""
import json
import math
import os
import platform
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from methods.base import Method
from runner.errors import ConfigError, RunnerError
from runner.instantiate import instantiate
from runner.results import RunRecorder
from runner.targets import register
from runner.train import Trainer
from runner.training.build import cross_entropy, expand_phases, mse_one_hot, resolve_device
from trainer_fixtures import BASE, Compiled, base_cfg, make_phase, trainer, with_  # noqa: F401


# -- devices -----------------------------------------------------------------------------------
def test_the_device_of_each_sweep_job(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto", 5) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [str(resolve_device("auto", j)) for j in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda:2") == torch.device("cuda:2") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=re.escape(
            "device='cuda:3' is not available here (3 GPUs visible); use device=cpu or device=auto")):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device='cuda' is not available here \(1 GPUs visible\)"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device='mps' is not available here; use device=cpu or device=auto$"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match=r"^device='banana' is not a device; valid: auto, cpu, cuda, cuda:N$"):
        resolve_device("banana")
    with pytest.raises(ConfigError, match=r"^device='meta' is not supported; valid: auto, cpu, cuda, cuda:N$"):
        resolve_device("meta")


def test_an_apple_gpu_is_a_device_where_it_is_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")


def test_the_sweep_job_number_picks_the_device(compose_cfg, tmp_path, monkeypatch):
    import runner.training.build as build
    from runner.training.lifecycle import run
    asked = []
    monkeypatch.setattr(build, "resolve_device",
                        lambda name, job=0: asked.append((name, job)) or torch.device("cpu"))
    cfg = compose_cfg(BASE + ["train.epochs=1"])
    Trainer(cfg, RunRecorder(tmp_path / "t", {"name": "t"}), job=3)
    Trainer(cfg, RunRecorder(tmp_path / "t", {"name": "t"}))  # not a sweep: job 0
    assert asked == [("cpu", 3), ("cpu", 0)]
    asked.clear()  # run: the device is resolved once, before anything is built, and passed on
    assert run(cfg, tmp_path / "r", job=5)["status"] == "completed"
    assert asked == [("cpu", 5)]


def test_the_model_is_moved_to_the_trainers_device(trainer):
    trainer.parts.device = torch.device("meta")  # stands for a GPU
    model = trainer.parts.prepare_model(torch.nn.Linear(3, 2))
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_the_run_context_carries_the_trainers_device(trainer):
    assert trainer.ctx.device == trainer.parts.device == torch.device("cpu")


# -- seeds and determinism flags ---------------------------------------------------------------
def test_seeds_above_numpys_range_seed_everything():
    import numpy as np
    from runner.training.build import seed_everything
    seed_everything(2**32 + 5)
    a = np.random.rand()
    seed_everything(5)
    assert np.random.rand() == a


def test_every_seed_gives_numpy_its_own_state():
    import numpy as np
    from runner.training.build import seed_everything
    draws = []
    for seed in (0, 2, 64):
        seed_everything(seed)
        draws.append(np.random.rand())
    assert len(set(draws)) == 3


@pytest.fixture
def torch_flags():
    """The global flags set_determinism changes, restored afterwards."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark, cuda.allow_tf32, cudnn.allow_tf32)
    yield cuda, cudnn
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    cudnn.deterministic, cudnn.benchmark, cuda.allow_tf32, cudnn.allow_tf32 = saved[2:]


def test_determinism_sets_the_kernel_flags_and_the_cublas_workspace(torch_flags, monkeypatch):
    from runner.training.build import set_determinism
    cuda, cudnn = torch_flags
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so that the test's value is undone
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    set_determinism(True, torch.device("cpu"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's deterministic setting
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert cudnn.deterministic and not cudnn.benchmark and not cuda.allow_tf32 and not cudnn.allow_tf32
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_determinism(True, torch.device("cpu"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's own value stays
    set_determinism(False, torch.device("cuda"))  # fast: autotuned convolutions and TF32
    assert not torch.are_deterministic_algorithms_enabled() and not cudnn.deterministic
    assert cudnn.benchmark and cuda.allow_tf32 and cudnn.allow_tf32
    set_determinism(False, torch.device("cpu"))
    assert not cudnn.benchmark


# -- targets instantiated from the config ------------------------------------------------------
class Box:
    """A callable target: keeps its arguments; refuses `bad` as a constructor does."""

    def __init__(self, v=None, inner=None, bad=None):
        if bad is not None:
            raise ValueError(f"bad   option\n  {bad}")
        self.v, self.inner = v, inner


register("model", Box)  # a component the tests' configs may name (with target_allowlist)


def test_instantiate_names_where_a_value_is_refused_and_refuses_untyped_targets():
    box = instantiate({"_target_": f"{__name__}.Box", "v": {"k": 1}}, "model", "model", [__name__])
    assert isinstance(box, Box) and box.v == {"k": 1}
    with pytest.raises(RunnerError, match=re.escape(f"model: bad option x (calling {__name__}.Box)")):
        instantiate({"_target_": f"{__name__}.Box", "bad": "x"}, "model", "model", [__name__])
    with pytest.raises(RunnerError, match=r"^m\._target_='len' is refused: not a dotted path"):
        instantiate({"_target_": "len"}, "m", "model")
    with pytest.raises(RunnerError, match=r"^m\._target_=.*Box' is refused: .*outside the allowed"):
        instantiate({"_target_": f"{__name__}.Box"}, "m", "model")  # not in target_allowlist
    with pytest.raises(RunnerError, match=r"^m\._target_=.*Box' is refused: a component of another "
                       r"kind.*allowed at m: a registered dataset reader"):
        instantiate({"_target_": f"{__name__}.Box"}, "m", "reader", [__name__])
    with pytest.raises(RunnerError, match="^m has no _target_"):
        instantiate(OmegaConf.create({"v": 1}), "m", "model")


def test_instantiate_gives_targets_plain_resolved_values_from_a_config():
    root = OmegaConf.create({"n": 2, "m": {"_target_": f"{__name__}.Box", "v": [1, "${n}"],
                                           "inner": {"a": "${n}"}}})
    box = instantiate(root.m, "m", "model", [__name__])
    assert type(box.v) is list and box.v == [1, 2]
    assert type(box.inner) is dict and box.inner == {"a": 2}


def test_an_unimportable_target_is_named():
    with pytest.raises(RunnerError, match=r"(?s)^model\._target_='nowhere\.Net' is refused: module "
                       r"nowhere cannot be imported \(.*No module named 'nowhere'"):
        instantiate({"_target_": "nowhere.Net"}, "model", "model", ["nowhere"])


# -- the trainer's parts: phases, options, loss, model, methods --------------------------------
def test_repeated_phases_expand_into_numbered_phases(base_cfg):
    phases = expand_phases(base_cfg)
    assert [(s.index, s.repeat, s.name, s.cfg.name) for s in phases] == [
        (0, 0, "a", "a"), (1, 0, "b1", "b"), (2, 1, "b2", "b"), (3, 2, "b3", "b"), (4, 0, "c", "c")]
    capped = expand_phases(with_(base_cfg, train__max_repeat=2))
    assert [(s.index, s.name) for s in capped] == [(0, "a"), (1, "b1"), (2, "b2"), (3, "c")]


def test_train_options_are_resolved_and_progress_is_taken_from_the_config(base_cfg, tmp_path):
    for progress in (True, False, None):
        cfg = with_(base_cfg, train__patience="${train.epochs}", progress=progress)
        trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "opts"}))
        assert trainer.parts.opts.patience == 10 and trainer.parts.progress is progress


def test_the_loss_options(base_cfg, tmp_path):
    out, y = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]), torch.tensor([1, 0])
    # squared distance to the one-hot target: 0.25 + 4 + 4 and 1 (class 2 has no sample)
    assert mse_one_hot(out, y).item() == pytest.approx(4.625)
    assert mse_one_hot(out, y, reduction="sum").item() == pytest.approx(9.25)
    rec = RunRecorder(tmp_path, {"name": "loss"})
    assert Trainer(with_(base_cfg, train__loss="mse"), rec).parts.loss_fn is mse_one_hot
    smooth = Trainer(with_(base_cfg, train__label_smoothing=0.2), rec).parts.loss_fn
    lse = math.log(math.exp(2) + 2)  # logits [2, 0, 0], class 0: (1 - e) CE + e mean_k(-log p_k)
    assert smooth(torch.tensor([[2.0, 0, 0]]), torch.tensor([0])).item() == pytest.approx(
        0.8 * (lse - 2) + 0.2 * (lse - 2 / 3))
    with pytest.raises(RunnerError, match=r"^train\.label_smoothing needs train\.loss=cross_entropy$"):
        Trainer(with_(base_cfg, train__label_smoothing=0.2, train__loss="mse"), rec)


@pytest.mark.parametrize("classes", [2, 10, 16, 100])
def test_the_cross_entropy_is_torchs_in_either_layout(classes):
    """Evaluation outputs of few classes go in as [1, C, N]: the same values and shapes."""
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(300, classes, generator=g), torch.randint(classes, (300,), generator=g)
    for kw in ({}, {"reduction": "none"}, {"reduction": "sum"}, {"label_smoothing": 0.1}):
        want = torch.nn.functional.cross_entropy(out, y, **kw)
        for given in (out, out.clone().requires_grad_()):
            got = cross_entropy(given, y, **kw)
            assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-6, atol=1e-6)


FAULTS = """
import resource, sys, torch
from runner.training.build import keep_freed_memory
if sys.argv[1] == "kept":
    keep_freed_memory()
def cycle():  # three 12 MB temporaries, as a large step or evaluation makes them
    ts = [torch.ones(3 * 2**20) for _ in range(3)]
for _ in range(3):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_freed_memory_is_kept_for_the_next_allocation():
    """Without it, glibc hands the freed top of the heap back and every cycle faults its pages
    in again (about 6,400 page faults a cycle with torch 2.14, 600 with torch 2.11; none kept)."""
    faults = {how: int(subprocess.run([sys.executable, "-c", FAULTS, how], capture_output=True,
                                      text=True, check=True).stdout) for how in ("default", "kept")}
    assert faults["kept"] < 20 < faults["default"] / 5, faults


def scaled_by(k):
    """A model transform: multiplies the model's weights by `k`."""
    def apply(model):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(k)
    return apply


register("model_transform", scaled_by)


def test_the_model_gets_its_transforms_and_the_trainer_its_methods(base_cfg, tmp_path):
    from methods.vanilla import Vanilla
    rec = RunRecorder(tmp_path, {"name": "built"})
    plain = Trainer(base_cfg, rec)
    assert [type(m) for m in plain.parts.methods.methods] == [Vanilla]
    cfg = with_(base_cfg, method=None)
    OmegaConf.update(cfg, "model_transforms", [{"_target_": f"{__name__}.scaled_by", "k": 3.0}], merge=False)
    scaled = Trainer(cfg, rec)  # same seed: the same initial weights, then x 3
    assert scaled.parts.methods.methods == []
    torch.testing.assert_close(scaled.ctx.model.head[1].weight, 3 * plain.ctx.model.head[1].weight)


def test_channels_last_models_keep_their_weights_channels_last(trainer):
    trainer.parts.opts.channels_last = True
    model = trainer.parts.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


# -- compile, precision and distributed training -----------------------------------------------
def test_compile_runs_the_compiled_model(trainer, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(Compiled(model)) or compiled[-1])
    trainer.parts.opts.compile, trainer.parts.opts.epochs = True, 1
    trainer.parts.phases = trainer.parts.phases[:1]
    trainer.fit()
    assert len(compiled) == 1 and trainer.ctx.model is compiled[0] and trainer.ctx.step == 3


def test_a_compiled_runs_saved_model_has_the_models_own_names(compose_cfg, tmp_path, monkeypatch):
    from runner import checkpoint
    from runner.training.lifecycle import run
    monkeypatch.setattr(torch, "compile", Compiled)
    cfg = compose_cfg(BASE + ["train.epochs=1", "train.compile=true", "train.save_model=true"])
    assert run(cfg, tmp_path)["status"] == "completed"
    assert list(checkpoint.load(tmp_path / checkpoint.MODEL_FILE)) == ["head.1.weight"]


def test_fp16_gets_a_gradient_scaler_on_a_gpu_only(base_cfg, tmp_path):
    trainer = Trainer(with_(base_cfg, train__precision="fp16"), RunRecorder(tmp_path, {"name": "fp16"}))
    assert trainer.parts.amp is torch.float16 and trainer.parts.scaler is None  # the CPU: autocast alone


def test_mixed_precision_computes_in_its_dtype_on_the_trainers_device(trainer):
    trainer.parts.amp = torch.bfloat16
    with trainer.parts.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    trainer.parts.amp = torch.float16  # fp16 kernels on a CPU need torch >= 2.4: check what is asked for
    cast = trainer.parts.autocast()
    assert (cast.device, cast.fast_dtype) == ("cpu", torch.float16)
    trainer.parts.amp = None
    with trainer.parts.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_the_trainer_joins_distributed_training_as_configured(base_cfg, tmp_path, monkeypatch):
    from runner import distributed
    asked = []
    monkeypatch.setattr(distributed, "setup", lambda cfg, device: asked.append((cfg, device)))
    trainer = Trainer(base_cfg, RunRecorder(tmp_path, {"name": "dist"}))
    assert asked == [(base_cfg.distributed, "cpu")] and trainer.parts.dist is None


def test_distributed_steps_go_through_the_wrapped_model(trainer):
    from runner.data.tensors import batches

    class Wrapped(torch.nn.Module):  # what DistributedDataParallel is to the step
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)
    wrapped = []
    trainer.parts.dist = SimpleNamespace(
        wrap=lambda m: wrapped.append(Wrapped(m)) or wrapped[-1], batches=batches,
        all_reduce=lambda t: None, check_same=lambda *a: checked.append(a))
    checked = []
    trainer.parts.phases = [make_phase(trainer, epochs=1)]
    trainer.fit()
    assert wrapped[0].inner is trainer.ctx.model and wrapped[0].calls == 3  # 48 samples / 16
    # every rank ends the phase with the same weights and masks
    assert checked == [(trainer.ctx.model, trainer.ctx.masks, "phase 's'")]


# -- refused configs and methods ---------------------------------------------------------------
def test_model_and_method_errors_name_their_config_group(base_cfg, tmp_path):
    for group, target in (("model", "runner.models.mlp.mlp"), ("method", "methods.l2.L2")):
        cfg = base_cfg.copy()
        OmegaConf.update(cfg, group, {"_target_": target, "nope": 1}, merge=False)
        with pytest.raises(RunnerError, match=rf"^{group}: .*\(calling {target}\)"):
            Trainer(cfg, RunRecorder(tmp_path, {"name": "m"}))


class Refuses(Method):
    def setup(self, ctx):
        raise ValueError("lam=-1 must be\n    positive")


def test_a_method_refusing_its_options_is_one_line(base_cfg, tmp_path):
    cfg = base_cfg.copy()
    OmegaConf.update(cfg, "extra_methods", [{"_target_": f"{__name__}.Refuses"}], merge=False)
    with pytest.raises(RunnerError, match=r"^method setup: lam=-1 must be positive$"):
        Trainer(cfg, RunRecorder(tmp_path, {"name": "refused"})).fit()


def test_a_refused_config_without_a_name_is_recorded_as_run(tmp_path, monkeypatch):
    import runner.training.lifecycle as lifecycle

    def refuse(cfg, job):
        raise ConfigError("optim.lr=-1: must be positive")
    monkeypatch.setattr(lifecycle, "prepare", refuse)
    with pytest.raises(ConfigError):
        lifecycle.run(OmegaConf.create({"seed": 3}), tmp_path, record_invalid=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["name"], result["seed"], result["status"]) == ("run", 3, "failed")
    assert result["error"] == "optim.lr=-1: must be positive"
