"""Dynamic and iterative sparse training (Wimmer's thesis Sec. 5.5.1): SET, RigL, GMP, LTH, FT."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import context
from methods.finetune import FineTune
from methods.gmp import GMP, gmp_sparsity
from methods.lth import LTH
from methods.rigl import RigL
from methods.set import SET
from methods.sparse_common import layer_counts
from runner.context import Stage
from runner.models.transforms import filter_bases, filter_basis, prunable


def small_cnn(basis=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    return filter_basis(sharing="coarse")(model) if basis else model


def step(ctx, method, x, y):
    """One training step as the trainer makes it (runner.train.Trainer.train_step)."""
    ctx.optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(ctx.model(x), y).backward()
    ctx.optimizer.step()
    ctx.masks.project()
    method.after_step(ctx)
    ctx.masks.project()
    ctx.step += 1


def setup(method, basis=False, total_steps=40):
    model = small_cnn(basis)
    ctx = context(model, total_steps=total_steps)
    method.setup(ctx)
    ctx.reset_optimizer()
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method.on_phase_start(ctx)
    return ctx


def data(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("cls", [SET, RigL])
@pytest.mark.parametrize("basis", [False, True])
def test_set_and_rigl_keep_the_number_of_nonzeros_constant_at_every_step(cls, basis):
    method = cls(sparsity=0.7, t_p=2, fraction=0.5, stop=1.0, distribution="erk")
    ctx = setup(method, basis)
    named = prunable(ctx.model)
    counts = [ctx.masks[n].keep.sum().item() for n, _ in named]
    assert counts == method.counts and abs(sum(counts) / sum(p.numel() for _, p in named) - 0.3) < 0.01
    masks = [ctx.masks[n].keep.clone() for n, _ in named]
    changed = 0
    for i in range(12):
        step(ctx, method, *data(i))
        now = [ctx.masks[n].keep for n, _ in named]
        assert [m.sum().item() for m in now] == counts, f"step {i}"
        assert all((p.detach()[~m] == 0).all() for (_, p), m in zip(named, now))
        changed += sum((a != b).any().item() for a, b in zip(masks, now))
        masks = [m.clone() for m in now]
    assert method.updates == 6 and changed >= 6  # every update moved some mask


def test_rigl_regrows_the_largest_gradients_and_set_regrows_at_random():
    method = RigL(sparsity=0.5, t_p=1, fraction=0.3, stop=1.0, distribution="uniform")
    ctx = setup(method, total_steps=10)
    name, p = prunable(ctx.model)[1]
    before = ctx.masks[name].keep.clone()
    x, y = data()
    ctx.optimizer.zero_grad()
    F.cross_entropy(ctx.model(x), y).backward()
    grad = p.grad.abs().clone()
    method.after_step(ctx)
    after = ctx.masks[name].keep
    grown = after & ~before
    assert grown.sum() > 0
    inactive = ~before  # regrowth candidates include those not kept before the update
    assert grad[grown].min() >= grad[inactive & ~after].max()


def test_gmp_sparsity_follows_its_cubic_schedule():
    method = GMP(sparsity=0.8, t_p=2, t0=4, t1=10, scope="layer")
    ctx = setup(method)
    named = prunable(ctx.model)
    for i in range(14):
        step(ctx, method, *data(i))
        t = i + 1
        last_update = t - t % 2
        q = gmp_sparsity(0.8, last_update, 4, 10)
        for name, p in named:
            kept = ctx.masks[name].keep.sum().item() if name in ctx.masks else p.numel()
            assert kept == round((1 - q) * p.numel()), f"step {t}, {name}"
    assert [round(gmp_sparsity(0.8, t, 4, 16), 4) for t in (3, 4, 10, 16, 20)] == \
        [0.0, 0.0, 0.7, 0.8, 0.8]


def test_gmp_never_regrows_a_pruned_weight():
    method = GMP(sparsity=0.9, t_p=1, t0=0, t1=10, scope="global")
    ctx = setup(method)
    pruned = {}
    for i in range(12):
        step(ctx, method, *data(i))
        for n in ctx.masks.names():
            now = ~ctx.masks[n].keep
            if n in pruned:
                assert (now | ~pruned[n]).all()
            pruned[n] = now.clone()


@pytest.mark.parametrize("basis", [False, True])
def test_lth_rewinds_exactly_to_the_saved_iteration_and_prunes_20_percent(basis):
    method = LTH(prune_fraction=0.2, rewind_step=3, scope="global")
    ctx = setup(method, basis)
    saved = None
    for i in range(8):
        step(ctx, method, *data(i))
        if i + 1 == 3:
            saved = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    ctx.stage = Stage(1, 1, "round2", None)
    method.on_phase_start(ctx)
    named = dict(prunable(ctx.model))
    total = sum(p.numel() for p in named.values())
    kept = sum(ctx.masks[n].keep.sum().item() for n in named)
    assert kept == round(0.8 * total)
    for n, p in ctx.model.named_parameters():
        keep = ctx.masks[n].keep if n in ctx.masks else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[keep], saved[n][keep]), n  # bitwise
        assert (p.detach()[~keep] == 0).all()
    assert not ctx.optimizer.state  # a fresh optimizer
    ctx.stage = Stage(2, 2, "round3", None)
    method.on_phase_start(ctx)
    assert sum(ctx.masks[n].keep.sum().item() for n in named) == round(0.8 * round(0.8 * total))
    summary = method.on_phase_end(ctx)
    assert abs(summary["sparsity"] - 0.36) < 1e-3
    assert summary["layer_density"] == {n: ctx.masks[n].keep.sum().item() / p.numel()
                                        for n, p in named.items()}


def test_finetune_prunes_the_smallest_magnitudes_at_its_phase():
    method = FineTune(sparsity=0.75, at_phase=1, scope="global")
    ctx = setup(method)
    assert not len(ctx.masks)
    ctx.stage = Stage(1, 0, "finetune", None)
    method.on_phase_start(ctx)
    named = prunable(ctx.model)
    kept = torch.cat([p.detach()[ctx.masks[n].keep].abs() for n, p in named])
    total = sum(p.numel() for _, p in named)
    assert len(kept) == round(0.25 * total)
    assert kept.min() > 0
    all_abs = torch.cat([p.detach().flatten().abs() for _, p in named])
    assert kept.min() >= all_abs.sort(descending=True).values[len(kept) - 1]


def test_erk_densities_meet_the_budget_and_keep_small_layers_denser():
    shapes = [torch.Size([16, 3, 3, 3]), torch.Size([64, 64, 3, 3]), torch.Size([10, 64])]
    counts = layer_counts(shapes, 0.1, "erk")
    sizes = [s.numel() for s in shapes]
    assert abs(sum(counts) - 0.1 * sum(sizes)) <= 2
    densities = [c / n for c, n in zip(counts, sizes)]
    assert densities[0] >= densities[2] > densities[1] and densities[0] == 1.0
    assert layer_counts(shapes, 0.1, "uniform") == [round(0.1 * n) for n in sizes]


@pytest.mark.parametrize("bad", [dict(sparsity=1.0), dict(distribution="er"), dict(t_p=0)])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        SET(**bad)


@pytest.mark.parametrize("basis", [False, True])
def test_finetune_keeps_the_top_d_magnitudes_and_pruned_weights_stay_zero_under_momentum(basis):
    """FT: a dense phase (no mask), then at phase 1 exactly the d = round((1 - q) D) largest |w|
    over all prunable weights (coefficients under IP; the basis is never masked) stay; the
    pruned ones are 0 and stay 0 under SGD with momentum and weight decay, the dense phase's
    momentum included (cleared at the pruned entries)."""
    method = FineTune(sparsity=0.75, at_phase=1, scope="global")
    ctx = setup(method, basis)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.05, momentum=0.9,
                                    weight_decay=5e-4)
    for i in range(4):
        step(ctx, method, *data(i))
    assert not len(ctx.masks) and method.on_phase_end(ctx) == {"sparsity": 0.0}
    named = prunable(ctx.model)
    magnitudes = torch.cat([p.detach().abs().flatten() for _, p in named])
    d = round(0.25 * magnitudes.numel())
    top = torch.zeros_like(magnitudes, dtype=torch.bool)
    top[magnitudes.topk(d).indices] = True
    bases = {id(b) for b in filter_bases(ctx.model)}
    assert len(bases) == int(basis)
    before = {id(p): p.detach().clone() for p in ctx.model.parameters()}

    ctx.stage = Stage(1, 0, "finetune", None)
    method.on_phase_start(ctx)
    assert sorted(ctx.masks.names()) == sorted(n for n, _ in named)  # never a basis
    keep = torch.cat([ctx.masks[n].keep.flatten() for n, _ in named])
    assert torch.equal(keep, top) and int(keep.sum()) == d
    for n, p in named:
        m = ctx.masks[n].keep
        assert (p.detach()[~m] == 0).all() and torch.equal(p.detach()[m], before[id(p)][m])
        assert (ctx.optimizer.state[p]["momentum_buffer"][~m] == 0).all()
    for i in range(6):
        step(ctx, method, *data(10 + i))
        for n, p in named:
            m = ctx.masks[n].keep
            assert (p.detach()[~m] == 0).all(), f"step {i}, {n}"
    assert all((p.detach()[ctx.masks[n].keep] != before[id(p)][ctx.masks[n].keep]).all()
               for n, p in named)  # the survivors fine-tune
    assert all(not torch.equal(b.detach(), before[id(b)]) for b in filter_bases(ctx.model))
    assert method.on_phase_end(ctx) == {"sparsity": 0.75}


def test_finetune_experiment_has_two_equal_phases_with_the_same_schedule(compose_cfg):
    """wimmer_table5_1_ft: dense then fine-tune, each train.epochs = 100 long, the pruning at
    the second phase's start, a fresh optimizer there, and the same learning-rate schedule
    (5 warm-up epochs, x 0.1 at 30 / 60 / 90) restarting in each phase (rewinding)."""
    from runner.optim import Schedule
    cfg = compose_cfg(["experiment=wimmer_table5_1_ft"])
    assert [p.name for p in cfg.phases] == ["dense", "finetune"]
    assert cfg.train.epochs == 100 and all(p.epochs is None for p in cfg.phases)
    assert cfg.method.at_phase == 1 and cfg.phases[1].reset_optimizer
    assert all(p.lr is None and p.milestones is None for p in cfg.phases)
    lrs = [Schedule(cfg.schedule, cfg.optim.lr).lr(e) for e in (0, 4, 5, 29, 30, 60, 90, 99)]
    assert lrs == pytest.approx([0.02, 0.1, 0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4])


@pytest.mark.parametrize("method,key,paper", [("snip", "q", 0.937), ("set", "sparsity", 0.939)])
def test_table5_2_one_knob_sets_q_of_snip_and_set_and_picks_their_paper_cell(compose_cfg, method,
                                                                          key, paper):
    """Table 5.2's sweep sets `tuned.q`; SNIP reads it as `q`, SET as `sparsity`, and the paper
    value of the cell (method, space, q) is the thesis's (IP-coarse, q = 0.35)."""
    from runner.train import paper_value
    cfg = compose_cfg(["experiment=wimmer_table5_2", f"method={method}", "space=ip_coarse",
                       "tuned.q=0.35"], hydra=True)
    assert cfg.method[key] == 0.35
    assert ("t_p" in cfg.method) == (method == "set")  # no SET option reaches SNIP
    assert paper_value(cfg, dict(cfg.hydra.runtime.choices)) == paper
    assert list(cfg.report.cols) == ["tuned.q"] and list(cfg.report.rows) == ["method", "space"]
