"""A method's options come from its constructor's signature (runner.options); `tuned.METHOD`
holds an experiment's values of them; both are checked before anything is built."""
import pytest
from omegaconf import OmegaConf

from conftest import CONF, load_yaml, run_cli
from runner import config as schema
from runner.errors import ConfigError

ROOT = CONF.parent


def test_cfg_job_shows_a_constructor_default_the_yaml_does_not_write(tmp_path):
    assert "convention" not in load_yaml(CONF / "method" / "l2.yaml")  # only the signature has it
    out = run_cli("method=l2", "--cfg", "job", "--resolve", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    method = OmegaConf.create(out.stdout).method
    assert method.convention == "code" and method.params == "all" and method["lambda"] == 1e-4


@pytest.mark.parametrize("typo,named", [("+tuned.l2_typo=1", "tuned.l2_typo"),
                                        ("+tuned.l2.lamda=1", "tuned.l2.lamda")])
def test_a_misspelt_tuned_key_exits_2_in_one_line(tmp_path, typo, named):
    out = run_cli("method=l2", typo, f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and named in lines[0] and "valid" in lines[0], out.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_method_value_exits_2_before_a_run_directory(tmp_path):
    out = run_cli("method=l2", "method.lambda=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: method.lambda=-1 is invalid; valid: >= 0"], out.stderr
    assert not (tmp_path / "run").exists()


def test_tuned_values_land_in_the_method_under_the_command_line(compose_cfg):
    cfg = compose_cfg(["experiment=swr_warm_mnist_mlp", "method=l2"])
    tuned = cfg.tuned.l2["lambda"]
    assert cfg.method["lambda"] == tuned != 1e-4  # the experiment's value, not the default
    cfg = compose_cfg(["experiment=swr_warm_mnist_mlp", "method=l2", "method.lambda=0.5",
                       "+tuned.l2.params=weights"])
    assert cfg.method["lambda"] == 0.5 and cfg.method.params == "weights"
    cfg = compose_cfg(["experiment=swr_warm_mnist_mlp", "method=l2_init"])
    assert cfg.method["lambda"] == cfg.tuned.l2_init["lambda"]  # tuned.l2 is l2's alone
    schema.validate(cfg)


def test_a_misspelt_tuned_key_in_an_experiment_file_is_refused(compose_cfg):
    """As an experiment file's `tuned:` block composes (no command-line `+`)."""
    cfg = compose_cfg(["experiment=swr_warm_mnist_mlp", "method=l2"])
    schema.validate(cfg)
    OmegaConf.set_struct(cfg, False)
    for typo, named in [({"l2": {"lamda": 1e-3}}, "tuned.l2.lamda"), ({"l2": 1e-3}, "tuned.l2="),
                        ({"swr_c": 1.0}, "tuned.swr_c")]:
        bad = OmegaConf.merge(cfg, {"tuned": typo})
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            schema.validate(bad)


def test_a_tuned_knob_the_config_reads_is_accepted(compose_cfg):
    cfg = compose_cfg(["experiment=wimmer_table5_2", "method=set"])
    assert "q" in cfg.tuned and cfg.method.sparsity == cfg.tuned.q
    schema.validate(cfg)


def test_a_method_key_the_constructor_does_not_take_is_refused(compose_cfg):
    cfg = compose_cfg(["method=l2"])
    OmegaConf.set_struct(cfg, False)
    bad = OmegaConf.merge(cfg, {"extra_methods": [{"_target_": "methods.l2.L2", "lamda": 1.0}]})
    with pytest.raises(ConfigError, match=r"extra_methods\.0\.lamda is not an option"):
        schema.validate(bad)
