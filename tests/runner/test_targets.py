"""Typed targets (runner.targets): the slot a node sits in decides the kind of object its
`_target_` may name, and the object itself (its defining module, its registration) decides."""
import pytest

from methods.base import Method
from runner import hydra_keys, targets
from runner.errors import ConfigError


class Mine(Method):
    """A user's method in an allowed module."""


def reader():
    """A user's reader, registered below."""


def unregistered():
    """Never registered: no slot takes it."""


targets.register("reader", reader)


@pytest.mark.parametrize("path,kind", [
    ("method", "method"), ("extra_methods.3", "method"), ("model", "model"),
    ("model_transforms.0", "model_transform"), ("dataset.reader", "reader"),
    ("datasets.later.reader", "reader"), ("dataset.augment.1", "transform"),
    ("phases.2.transform.0", "transform"), ("phases.0.augment.4", "transform"),
    ("ci.overrides.dataset.reader", "reader"), ("ci.sizes_overrides.model", "model"),
    ("tuned.x", None), ("method.inner", None), ("dataset", None), ("phases.0", None)])
def test_each_slot_has_its_kind(path, kind):
    assert targets.slot_kind(path) == kind


@pytest.mark.parametrize("target,kind,allow,why", [
    ("os.system", "method", (), "its module is outside the allowed ones"),
    ("runner.checkpoint.shutil.rmtree", "method", (), "cannot be imported"),
    ("runner.checkpoint.torch", "model", (), "not a callable defined in runner.checkpoint"),
    ("runner.report.Path", "callback", (), "not a callable defined in runner.report"),
    ("methods.base.Method", "method", (), "another kind"),
    ("methods.vanilla.Vanilla", "model", (), "another kind"),
    ("runner.data.readers.mnist", "transform", (), "another kind"),
    ("runner.data.readers.nothing", "reader", (), "defines no nothing"),
    ("torch.save", "reader", ("torch",), "not a callable defined in torch"),
    ("torch.serialization.save", "reader", ("torch",), "another kind"),
    ("test_targets.unregistered", "reader", ("test_targets",), "another kind"),
    ("test_targets.reader", "reader", (), "outside the allowed"),
    ("os.system", "method", ("os",), "target_allowlist.0='os' is refused"),
    ("a.b", "method", ("a;b",), "target_allowlist.0='a;b' is refused"),
    ("system", "method", (), "not a dotted path"),
    ("runner..x", "method", (), "not a dotted path"),
])
def test_refused_targets_name_the_slot_and_what_it_allows(target, kind, allow, why):
    with pytest.raises(ConfigError) as e:
        targets.resolve(target, "slot", kind, allow)
    assert why in str(e.value) and "\n" not in str(e.value)
    if "target_allowlist" not in why:
        assert str(e.value).startswith(f"slot._target_={target!r} is refused: ")
        assert f"allowed at slot: {targets.KINDS[kind]}" in str(e.value)


def test_allowed_targets_are_the_objects_themselves():
    assert targets.resolve("methods.vanilla.Vanilla", "method", "method").__name__ == "Vanilla"
    assert targets.resolve("methods.scale_once.ScaleOnce", "method", "method").__name__ == "ScaleOnce"
    assert targets.resolve("test_targets.Mine", "m", "method", ["test_targets"]) is Mine
    assert targets.resolve("test_targets.reader", "r", "reader", ["test_targets"]) is reader
    assert targets.resolve("test_targets.reader", "tuned.x", "any", ["test_targets"]) is reader


def test_an_entry_point_admits_its_component_for_its_kind_only(monkeypatch):
    monkeypatch.setattr(targets, "_entry_points", lambda: {"test_targets.reader": {"reader"}})
    assert targets.resolve("test_targets.reader", "dataset.reader", "reader") is reader
    with pytest.raises(ConfigError, match="outside the allowed"):
        targets.resolve("test_targets.reader", "model", "model")


def test_a_nested_target_and_a_bad_kind_are_refused():
    with pytest.raises(ConfigError, match=r"^method\.inner holds a nested _target_"):
        targets.check_tree({"method": {"_target_": "methods.vanilla.Vanilla",
                                       "inner": [{"_target_": "methods.vanilla.Vanilla"}]}}, [])
    with pytest.raises(ValueError, match="kind 'method'"):
        targets.register("method", Mine)


@pytest.mark.parametrize("hydra,names", [
    ({"callbacks": {"x": {"_target_": "os.system"}}}, "hydra.callbacks.x._target_='os.system'"),
    ({"callbacks": {"x": "runner.report.AggregateOnMultirunEnd"}}, "hydra.callbacks.x is refused"),
    ({"callbacks": {"x": {"_target_": "runner.report.AggregateOnMultirunEnd",
                          "a": {"_target_": "os.system"}}}}, "hydra.callbacks.x holds a nested"),
    ({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                   "x": {"_target_": "os.system"}}}, "hydra.launcher.x._target_"),
    ({"job_logging": {"formatters": {"f": {"()": "os.system"}}}}, "hydra.job_logging.formatters.f.()"),
    ({"hydra_logging": {"handlers": {"h": {"class": "logging.handlers.SocketHandler"}}}},
     "hydra.hydra_logging.handlers.h.class"),
    ({"job_logging": {"handlers": {"h": {"class": "logging.FileHandler", "filename": "/tmp/x"}}}},
     "hydra.job_logging.handlers.h.filename"),
    ({"job_logging": {"handlers": {"h": {"class": "logging.FileHandler",
                                         "filename": "${hydra.runtime.output_dir}/../x.log"}}}},
     "hydra.job_logging.handlers.h.filename"),
    ({"job_logging": {"handlers": {"h": {"stream": "ext://subprocess.call"}}}}, "hydra.job_logging"),
    ({"job": {"env_set": {"CC": "x"}}}, "hydra.job.env_set"),
    ({"job": {"env_copy": ["HOME"]}}, "hydra.job.env_copy"),
])
def test_hydras_instantiating_keys_are_checked(hydra, names):
    with pytest.raises(ConfigError) as e:
        hydra_keys.check(hydra)
    assert str(e.value).startswith(names) and "refused" in str(e.value)


def test_hydras_default_keys_pass(compose_cfg):
    hydra_keys.check(compose_cfg(["experiment=fmnist_mlp"], hydra=True).hydra)
