"""A run-level option typed on the command line reaches every phase, or the run is refused in
one line naming the phase keys to set."""
import pandas as pd
import pytest

SMOKE = ["ci=smoke", "threads=1", "device=cpu"]


def test_train_epochs_reaches_a_phase_that_inherits_it(hydra_cli, tmp_path, capsys):
    out = tmp_path / "run"
    assert hydra_cli("experiment=swr_gen_fmnist_mlp", *SMOKE, "train.epochs=3",
                     "train.max_epochs=null", f"hydra.run.dir={out}") == 0
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_train_epochs_shadowed_by_a_phase_is_refused_in_one_line(hydra_cli, tmp_path, capsys):
    out = tmp_path / "run"
    assert hydra_cli("experiment=swr_fig1_cifar10_cnn", *SMOKE, "train.epochs=6",
                     f"hydra.run.dir={out}") == 2
    err = capsys.readouterr().err
    assert err == ("error: train.epochs=6 does not reach every phase: phases.0.epochs=100, "
                   "phases.1.epochs=50 set their own; add phases.0.epochs=6 phases.1.epochs=6 "
                   "(phases without their own epochs follow train.epochs)\n")
    assert not out.exists()


@pytest.mark.parametrize("phase", ["phases.1.epochs=2", "phases.1.epochs=${train.epochs}"])
def test_the_suggested_phase_keys_are_accepted(hydra_cli, tmp_path, capsys, phase):
    out = tmp_path / "run"  # the phase's own value agrees, or it interpolates train.epochs
    assert hydra_cli("experiment=fmnist_blur_to_sharp", *SMOKE, "train.epochs=2",
                     phase, "train.max_epochs=null", "train.eval_every=1",
                     f"hydra.run.dir={out}") == 0
    assert pd.read_csv(out / "metrics.csv")["phase"].value_counts().to_dict() == {0: 2, 1: 2}


def test_a_phase_value_typed_beside_the_run_level_one_is_meant(compose_cfg):
    from runner.checks import check_shadowed
    from runner.errors import ConfigError
    typed = ["experiment=fmnist_blur_to_sharp", "train.epochs=6", "phases.1.epochs=5"]
    check_shadowed(compose_cfg(typed), typed)  # phase 0 inherits; phase 1 is typed: no refusal
    with pytest.raises(ConfigError, match=r"phases\.1\.epochs=3 sets its own"):
        check_shadowed(compose_cfg(typed[:2]), typed[:2])


def test_the_swr_from_scratch_reference_trains_what_it_says(compose_cfg):
    """docs/swr.md, Fig. 2: `experiment=swr_gen_mnist_mlp method=vanilla train.epochs=100`."""
    cfg = compose_cfg(["experiment=swr_gen_mnist_mlp", "method=vanilla", "train.epochs=100"])
    assert cfg.train.epochs == 100 and all(p.epochs is None for p in cfg.phases)


@pytest.mark.sizes  # every experiment composed (about 15 s)
def test_only_experiments_with_their_own_phase_epochs_refuse_train_epochs(compose_cfg):
    from conftest import EXPERIMENTS
    from runner.checks import check_shadowed
    from runner.errors import ConfigError

    refused = set()
    for name in EXPERIMENTS:
        try:
            check_shadowed(compose_cfg([f"experiment={name}", "train.epochs=7"]), ["train.epochs=7"])
        except ConfigError:
            refused.add(name)
    # two phases of different lengths (Fig. 1: 100 + 50; 4 blurred + 3 sharp; SVHN 100 epochs)
    assert refused == {"swr_fig1_cifar10_cnn", "fmnist_blur_to_sharp", "zilly_svhn_to_cifar10"}
