"""Where Wimmer's thesis is silent, its experiments default to the public code of the setups they
follow (docs/wimmer.md, "Choices the thesis leaves open"): GraSP's temperature (GraSP's and
Synaptic-Flow's code), SET / RigL's drop fraction, schedule and drop-count rounding (Liu et al.
2021's code), ERK densities on the spatial shapes under the interspace, LTH as OpenLTH."""
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from conftest import context, run_cli
from methods.cops import Cops
from methods.prune_init import PruneAtInit
from methods.set import SET
from runner.instantiate import instantiate
from runner.models.transforms import filter_basis, prunable
from runner.sparse.keep import layer_counts

ROOT = Path(__file__).resolve().parents[2]
LIU = dict(fraction=0.5, fraction_end=0.005, stop=1.0, rounding="ceil", distribution="erk",
           erk_shapes="spatial")
OPENLTH = dict(prune_fraction=0.2, rewind_step=500, scope="global", continue_schedule=True,
               rewind_buffers=True, prune_head=False, rounding="ceil")
THESIS = [  # (experiment, method, the options it must default to)
    ("wimmer_table3_3", "grasp", dict(temperature=200.0)),
    ("wimmer_table4_1", "grasp", dict(temperature=200.0)),
    ("wimmer_table4_1", "g_cops", dict(temperature=200.0)),
    ("wimmer_table4_2_cifar100", "g_cops", dict(temperature=200.0)),
    ("wimmer_fig5_5", "grasp", dict(temperature=200.0)),
    ("wimmer_table5_2", "set", dict(LIU, t_p=1500)),
    ("wimmer_table5_3_cifar", "set", dict(LIU, t_p=1500)),
    ("wimmer_table5_1_rigl", "rigl", dict(LIU, t_p=4000)),
    ("wimmer_lth_cifar10", "lth", OPENLTH),
]


@pytest.mark.parametrize("experiment,method,want", THESIS)
def test_thesis_experiments_default_to_the_public_code(compose_cfg, experiment, method, want):
    cfg = compose_cfg([f"experiment={experiment}", f"method={method}"])
    got = OmegaConf.to_container(cfg.method, resolve=True)
    assert {k: got[k] for k in want} == want


def test_constructors_hold_the_same_defaults():
    """The thesis experiments set none of these values: the constructors do (one place)."""
    assert PruneAtInit().temperature == Cops().temperature == 200.0
    s = SET()
    assert (s.fraction, s.fraction_end, s.stop, s.rounding, s.erk_shapes) == \
        (0.5, 0.005, 1.0, "ceil", "spatial")


@pytest.mark.e2e
def test_cfg_job_prints_the_public_code_defaults():
    out = run_cli("experiment=wimmer_table5_2", "--cfg", "job", "--resolve", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    method = yaml.safe_load(out.stdout)["method"]
    assert {k: method[k] for k in LIU} == LIU
    out = run_cli("experiment=wimmer_lth_cifar10", "--cfg", "job", "--resolve", cwd=ROOT)
    assert {k: yaml.safe_load(out.stdout)["method"][k] for k in OPENLTH} == OPENLTH


def test_the_other_readings_stay_options(compose_cfg):
    cfg = compose_cfg(["experiment=wimmer_table5_2", "method.fraction=0.3", "method.stop=0.75",
                       "method.fraction_end=0", "method.rounding=round",
                       "method.erk_shapes=stored"])
    set_ = instantiate(cfg.method, "method", "method")
    assert isinstance(set_, SET) and set_.rounding == "round"
    cfg = compose_cfg(["experiment=wimmer_lth_cifar10", "method.continue_schedule=false",
                       "method.rewind_buffers=false", "method.prune_head=true"])
    assert (cfg.method.continue_schedule, cfg.method.rewind_buffers, cfg.method.prune_head) == \
        (False, False, True)
    assert compose_cfg(["experiment=wimmer_table4_1", "method=grasp",
                        "method.temperature=1"]).method.temperature == 1


# -- ERK under the interspace ------------------------------------------------------------------
def stem_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 7, padding=3), nn.ReLU(), nn.Conv2d(16, 32, 3),
                         nn.ReLU(), nn.Conv2d(32, 32, 1), nn.Flatten(), nn.LazyLinear(10))


def counts_of(model, **options):
    model(torch.zeros(1, 3, 8, 8))  # materialize the lazy head
    method = SET(sparsity=0.9, distribution="erk", **options)
    ctx = context(model)
    method.setup(ctx)
    return [int(ctx.masks[n].keep.sum()) for n, _ in prunable(model)]


def test_erk_under_the_interspace_keeps_the_spatial_budgets_by_default():
    """IP (fine sharing, a 7x7 stem with its own FB) keeps exactly SP's count in every layer;
    `erk_shapes: stored` computes ERK on the coefficients (out, in, K*K) instead, which gives
    the 7x7 stem more (its raw ERK score (16 + 3 + 49) / n instead of (16 + 3 + 7 + 7) / n)."""
    sp = counts_of(stem_net())
    shapes = [(16, 3, 7, 7), (32, 16, 3, 3), (32, 32, 1, 1), (10, 32 * 6 * 6)]
    assert sp == layer_counts([torch.Size(s) for s in shapes], 0.1, "erk", "round")
    assert counts_of(filter_basis(sharing="fine")(stem_net())) == sp
    stored = counts_of(filter_basis(sharing="fine")(stem_net()), erk_shapes="stored")
    assert stored != sp and stored[0] > sp[0]
    assert sum(stored) == pytest.approx(sum(sp), abs=len(sp))  # the same total budget
    coef = [(16, 3, 49), (32, 16, 9), (32, 32, 1, 1), (10, 32 * 6 * 6)]
    assert stored == layer_counts([torch.Size(s) for s in coef], 0.1, "erk", "round")
