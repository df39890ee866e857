"""Families of experiments share a base (conf/family_*.yaml, outside every config group): each
member extends its family's base, a base is no experiment, and a value a base leaves to its
members (`???`) is set by every member, else the run refuses to start."""
import pytest
from hydra.errors import MissingConfigException

from conftest import CONF, EXPERIMENTS, extends, load_yaml
from runner.config import validate
from runner.errors import ConfigError

BASES = sorted(p.stem for p in CONF.glob("family_*.yaml"))
MEMBERS = {  # a base and the name prefix of its members (the longest matching prefix decides)
    "family_swr_gen": "swr_gen_", "family_swr_gen_decay": "swr_gen_decay_",
    "family_swr_warm": "swr_warm_", "family_swr_cl_full": "swr_cl_full_",
    "family_swr_cl_limited": "swr_cl_limited_", "family_zilly_imagenet": "zilly_imagenet_to_",
    "family_reinit_table2": "reinit_table2_"}
TASK_CHANGES = ("zilly_cifar10_to_cifar100", "zilly_cifar10_to_fmnist", "zilly_mnist_to_fmnist",
                "zilly_svhn_to_cifar10", "zilly_allcnn_blur_to_sharp", "zilly_cifar_shift",
                "cifar_blur_to_sharp")  # appendix Table 6, rows 1-7: family_zilly_task_change
OUTSIDE = {"swr_gen_fmnist_mlp"}  # ours: 20 epochs, no paper layout; extends family_swr only


def experiment_file(name):
    return CONF / "experiment" / f"{name}.yaml"


def unset(node, prefix=""):
    """The dotted keys of a YAML mapping whose value is `???`."""
    for k, v in (node or {}).items():
        if isinstance(v, dict):
            yield from unset(v, f"{prefix}{k}.")
        elif v == "???":
            yield prefix + k


def sets(node, key):
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node != "???"


def test_every_member_extends_its_family_base():
    assert sorted([*MEMBERS, "family_swr", "family_zilly_task_change"]) == BASES
    for e in TASK_CHANGES:
        assert load_yaml(experiment_file(e))["defaults"][0] == "/family_zilly_task_change", e
    for base, prefix in MEMBERS.items():
        members = [e for e in EXPERIMENTS if e not in OUTSIDE and e.startswith(prefix)
                   and max((p for p in MEMBERS.values() if e.startswith(p)), key=len) == prefix]
        assert members, base
        for e in members:
            defaults = load_yaml(experiment_file(e))["defaults"]
            assert defaults[0] == f"/{base}", f"{e}: its defaults list starts with {defaults[0]}"
    for e in EXPERIMENTS:  # every SWR experiment shares the SWR setup
        if e.startswith("swr_"):
            assert CONF / "family_swr.yaml" in extends(experiment_file(e)), e


def test_every_value_a_base_leaves_open_is_set_by_its_members():
    open_keys = {CONF / f"{b}.yaml": list(unset(load_yaml(CONF / f"{b}.yaml")))
                 for b in BASES}
    assert any(open_keys.values())
    for e in EXPERIMENTS:
        chain = [experiment_file(e), *extends(experiment_file(e))]
        for i, f in enumerate(chain):
            for key in open_keys.get(f, []):
                assert any(sets(load_yaml(g), key) for g in chain[:i]), \
                    f"{e}: {key} is ??? in {f.name} and set by no file that extends it"


def test_a_base_is_no_experiment(compose_cfg):
    assert not set(BASES) & set(EXPERIMENTS)
    with pytest.raises(MissingConfigException, match="experiment/family_swr_gen"):
        compose_cfg(["experiment=family_swr_gen"])


def test_a_value_left_unset_is_one_line_before_the_run(compose_cfg):
    cfg = compose_cfg(["experiment=zilly_imagenet_to_pcam", "method=dirac_reset"])
    validate(cfg)
    cfg.tuned.dirac_reset.lr = "???"
    with pytest.raises(ConfigError, match=r"^tuned\.dirac_reset\.lr is not set \(\?\?\? in the "):
        validate(cfg)
    cfg = compose_cfg(["experiment=reinit_table1"])
    cfg.dataset.alpha = "???"  # which the reader's alpha interpolates
    with pytest.raises(ConfigError, match=r"^dataset\.alpha is not set \(\?\?\? in the "):
        validate(cfg)
