"""Dynamic and iterative sparse training (Wimmer's thesis Sec. 5.5.1): SET, RigL, GMP, LTH, FT."""
import math

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
from runner.context import Phase
from runner.models.transforms import filter_bases, filter_basis, prunable
from runner.sparse.keep import layer_counts


def small_cnn(basis=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    return filter_basis(sharing="coarse")(model) if basis else model


def step(ctx, method, x, y):
    """One training step as the trainer makes it (runner.training.loop.Loop.train_step)."""
    ctx.optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(ctx.model(x), y).backward()
    ctx.optimizer.step()
    ctx.masks.project()
    method.after_step(ctx)
    ctx.masks.project()
    ctx.step += 1


def set_up(method, basis=False, total_steps=40):
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
    ctx = set_up(method, basis)
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
    ctx = set_up(method, total_steps=10)
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
    ctx = set_up(method)
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
    ctx = set_up(method)
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
    ctx = set_up(method, basis)
    saved = None
    for i in range(8):
        step(ctx, method, *data(i))
        if i + 1 == 3:
            saved = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    ctx.phase = Phase(1, 1, "round2", None)
    method.on_phase_start(ctx)
    named = dict(prunable(ctx.model))
    total = sum(p.numel() for p in named.values())
    kept = sum(ctx.masks[n].keep.sum().item() for n in named)
    first = total - math.ceil(0.2 * total)  # OpenLTH prunes ceil(0.2 x kept): 287 of 1432
    assert kept == first
    for n, p in ctx.model.named_parameters():
        keep = ctx.masks[n].keep if n in ctx.masks else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[keep], saved[n][keep]), n  # bitwise
        assert (p.detach()[~keep] == 0).all()
    assert not ctx.optimizer.state  # a fresh optimizer
    ctx.phase = Phase(2, 2, "round3", None)
    method.on_phase_start(ctx)
    assert sum(ctx.masks[n].keep.sum().item() for n in named) == first - math.ceil(0.2 * first)
    summary = method.on_phase_end(ctx)
    assert abs(summary["sparsity"] - 0.36) < 1e-3
    assert summary["layer_density"] == {n: ctx.masks[n].keep.sum().item() / p.numel()
                                        for n, p in named.items()}


def test_finetune_prunes_the_smallest_magnitudes_at_its_phase():
    method = FineTune(sparsity=0.75, at_phase=1, scope="global")
    ctx = set_up(method)
    assert not len(ctx.masks)
    ctx.phase = Phase(1, 0, "finetune", None)
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
    counts = layer_counts(shapes, 0.1, "erk", "round")
    sizes = [s.numel() for s in shapes]
    assert abs(sum(counts) - 0.1 * sum(sizes)) <= 2
    densities = [c / n for c, n in zip(counts, sizes)]
    assert densities[0] >= densities[2] > densities[1] and densities[0] == 1.0
    assert layer_counts(shapes, 0.1, "uniform", "round") == [round(0.1 * n) for n in sizes]


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
    ctx = set_up(method, basis)
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

    ctx.phase = Phase(1, 0, "finetune", None)
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
    from runner.training.lifecycle import paper_value
    cfg = compose_cfg(["experiment=wimmer_table5_2", f"method={method}", "space=ip_coarse",
                       "tuned.q=0.35"], hydra=True)
    assert cfg.method[key] == 0.35
    assert ("t_p" in cfg.method) == (method == "set")  # no SET option reaches SNIP
    assert paper_value(cfg, dict(cfg.hydra.runtime.choices)) == paper
    assert list(cfg.report.cols) == ["tuned.q"] and list(cfg.report.rows) == ["method", "space"]


# -- runner.sparse.training and runner.sparse.keep by hand --------------------------------------
def test_check_accepts_the_valid_range_and_names_the_bad_value():
    from runner.sparse.training import check
    for ok in (0.0, 0.5, 0.999):
        check(ok)  # the default distribution and scope are valid ones
    check(0.5, "erk", "global")
    for bad, match in [(dict(sparsity=1.0), r"sparsity=1.0; valid: \[0, 1\)"),
                       (dict(sparsity=-0.1), "sparsity=-0.1"),
                       (dict(sparsity=0.5, distribution="er"),
                        "distribution='er'; valid: uniform, erk"),
                       (dict(sparsity=0.5, scope="net"), "scope='net'; valid: global, layer")]:
        with pytest.raises(ValueError, match=match):
            check(**bad)


def test_erk_counts_by_hand_with_layers_made_dense_in_two_rounds():
    """Density 0.4 over 4 + 49 + 484 entries (budget 214.8), raw sum(shape) / n = 1, 2/7, 1/11.
    Round 1: eps = 214.8 / 62, eps * 1 > 1: the first layer is dense. Round 2: eps = 210.8 / 58,
    eps * 2/7 = 1.038 > 1: the second too. Round 3: eps = 161.8 / 44, the last keeps 161.8."""
    shapes = [torch.Size([2, 2]), torch.Size([7, 7]), torch.Size([22, 22])]
    assert layer_counts(shapes, 0.4, "erk", "round") == [4, 49, 162]
    # one round: 0.5 of 12 + 100 (budget 56); eps = 56 / 27 makes the first dense, then 2.2
    assert layer_counts([torch.Size([4, 3]), torch.Size([10, 10])], 0.5, "erk", "round") == [12, 44]
    # nothing over 1: eps = 0.1 * 218 / (9 + 30), counts eps * 9 = 5.03 and eps * 30 = 16.8
    assert layer_counts([torch.Size([3, 6]), torch.Size([10, 20])], 0.1, "erk", "round") == [5, 17]
    assert layer_counts([torch.Size([3, 6]), torch.Size([10, 20])], 0.25, "uniform", "round") == [4, 50]


def test_top_k_is_an_exact_bool_mask_on_the_scores_device():
    from runner.sparse.keep import top_k
    score = torch.tensor([[0.3, 0.9, 0.1], [0.5, 0.2, 0.8]])
    assert top_k(score, 1).tolist() == [[False, True, False], [False] * 3]
    m = top_k(score, 3)
    assert m.dtype == torch.bool and m.shape == score.shape
    assert m.tolist() == [[False, True, False], [True, False, True]]
    assert not top_k(score, 0).any() and top_k(score, 6).all()
    assert top_k(torch.empty(5, device="meta"), 2).device.type == "meta"  # built where the score is


def test_magnitude_masks_never_return_pruned_entries_per_layer_and_globally():
    from runner.sparse.training import magnitude_masks
    a = nn.Parameter(torch.tensor([[0.5, -0.05], [0.3, 0.2]]))
    b = nn.Parameter(torch.tensor([0.4, -0.6, 0.01]))
    named = [("a", a), ("b", b)]
    keep = {"a": torch.tensor([[False, True], [True, True]])}  # 0.5 was pruned earlier (frozen)
    layer = magnitude_masks(named, keep, [2, 1], "layer")
    assert layer["a"].tolist() == [[False, False], [True, True]]  # not 0.5: it never returns
    assert layer["b"].tolist() == [False, True, False]
    glob = magnitude_masks(named, keep, 3, "global")
    assert glob["a"].tolist() == [[False, False], [True, False]]  # 0.6, 0.4, 0.3
    assert glob["b"].tolist() == [True, True, False]
    assert magnitude_masks(named, {}, 1, "global")["b"].tolist() == [False, True, False]
    # every kept entry smaller than 1: the pruned one stays out even with count = all kept
    assert magnitude_masks(named, keep, [3, 3], "layer")["a"].tolist() == [[False, True],
                                                                           [True, True]]


def test_cosine_fraction_by_hand():
    from runner.sparse.training import cosine_fraction
    assert cosine_fraction(0.3, 0, 100) == pytest.approx(0.3)
    assert cosine_fraction(0.3, 50, 100) == pytest.approx(0.15)
    assert cosine_fraction(0.3, 25, 100) == pytest.approx(0.15 * (1 + 2 ** -0.5))
    assert cosine_fraction(0.3, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_fraction(0.3, 200, 100) == 0.0 and cosine_fraction(0.3, 150, 100) == 0.0


# -- the methods' options, picks and counts -----------------------------------------------------
@pytest.mark.parametrize("bad,match", [
    (dict(t_p=0), "t_p=0"), (dict(fraction=-0.1), "fraction=-0.1"),
    (dict(fraction=1.5), "fraction=1.5"), (dict(stop=-0.5), r"stop=-0.5 \(in \[0, 1\]\)"),
    (dict(stop=1.5), "stop=1.5"), (dict(sparsity=1.0), "sparsity=1.0"),
    (dict(distribution="er"), "distribution='er'")])
def test_set_refuses_bad_options_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        SET(**bad)
    for ok in (dict(t_p=1, fraction=0.0, stop=0.0), dict(fraction=1.0, stop=1.0)):
        SET(**ok)


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))  # 20 and 10 weights


def mlp_setup(method, total_steps=40):
    """`setup` on tiny_mlp: the method's setup, SGD, the phase start."""
    ctx = context(tiny_mlp(), total_steps=total_steps)
    method.setup(ctx)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
    method.on_phase_start(ctx)
    return ctx


def mlp_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)


@pytest.mark.parametrize("cls", [SET, RigL])
def test_set_and_rigl_pick_their_drops_and_growths_by_hand(cls):
    """Setup: in each layer the k entries of largest torch.rand(shape, ctx.gen) (uniform q = 0.5:
    k = 10, 5). An update at t = 1 of a phase (fraction 0.5 to 0, stop 1, 4 steps, the nearest
    count: rounding round): fraction 0.25 (1 + cos(pi / 4)) = 0.427, so n = 4 of 10 and 2 of
    5: the n kept entries of least |w|
    are dropped and n regrown, largest score first, among all entries not kept after the drop:
    SET's score is the next torch.rand(shape, ctx.gen), RigL's |grad|."""
    model = tiny_mlp()
    ctx = context(model, total_steps=4, seed=3)
    method = cls(sparsity=0.5, t_p=1, fraction=0.5, fraction_end=0.0, stop=1.0, rounding="round",
                 distribution="uniform")
    method.setup(ctx)
    named = prunable(model)
    g = torch.Generator().manual_seed(3)
    for name, p in named:
        r = torch.rand(p.shape, generator=g).flatten()
        want = torch.zeros(p.numel(), dtype=torch.bool)
        want[r.argsort(descending=True)[:p.numel() // 2]] = True
        assert torch.equal(ctx.masks[name].keep.flatten(), want), name
    assert method.counts == [10, 5]
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.step = 7  # the phase starts here: the first update comes after one step
    method.on_phase_start(ctx)
    x, y = torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)
    F.cross_entropy(model(x), y).backward()
    before = {n: ctx.masks[n].keep.clone() for n, _ in named}
    rand = torch.Generator()
    rand.set_state(ctx.gen.get_state())
    method.after_step(ctx)
    for (name, p), n in zip(named, (4, 2)):
        keep, w = before[name].flatten(), p.detach().abs().flatten()
        idx = keep.nonzero().flatten()
        dropped = idx[w[idx].argsort()[:n]]
        after = keep.clone()
        after[dropped] = False
        score = (torch.rand(p.shape, generator=rand) if cls is SET else p.grad.abs()).flatten()
        grown = score.masked_fill(after, -1.0).argsort(descending=True)[:n]
        after[grown] = True
        assert torch.equal(ctx.masks[name].keep.flatten(), after), name
        assert int(after.sum()) == int(keep.sum())
    assert method.on_phase_end(ctx) == {"mask_updates": 1, "density": 15 / 30}
    for s in (8, 9, 10):  # t = 2, 3: fractions 0.25 and 0.073 (n = 1 of 10); t = 4 = stop: none
        ctx.step = s
        method.after_step(ctx)
    assert method.on_phase_end(ctx)["mask_updates"] == 3


def test_rigl_names_a_weight_without_gradient():
    model = tiny_mlp()
    ctx = context(model, total_steps=4)
    method = RigL(sparsity=0.5, t_p=1, fraction=0.5, stop=1.0, distribution="uniform")
    method.setup(ctx)
    method.on_phase_start(ctx)
    with pytest.raises(RuntimeError,
                       match="^rigl: a prunable weight has no gradient at a mask update$"):
        method.after_step(ctx)


def test_one_weight_networks_report_their_density_and_share():
    from methods.random_mask import RandomMask
    model = nn.Linear(1, 1, bias=False)
    method = SET(sparsity=0.0, distribution="uniform")
    method.setup(context(model, total_steps=4))
    assert method.on_phase_end(None)["density"] == 1.0
    rm = RandomMask(density=1.0)
    rm.setup(context(model))
    assert rm.on_phase_end(None) == {"trained_share": 1.0}


@pytest.mark.parametrize("bad,match", [(dict(t_p=0), "t_p=0"), (dict(t0=-1), "t0=-1"),
                                       (dict(t0=5, t1=5), "t0=5 < t1=5"),
                                       (dict(t0=6, t1=5), "t0=6 < t1=5"),
                                       (dict(scope="net"), "scope='net'"),
                                       (dict(sparsity=1.0), "sparsity=1.0")])
def test_gmp_refuses_bad_options_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        GMP(**bad)
    GMP(t_p=1, t0=0, t1=1)


def test_gmp_schedule_at_hand_picked_steps_and_its_summary():
    """q_t = 0.9 (1 - (1 - (t - 10) / 20)^3) for 10 <= t <= 30: t = 20 -> 0.9 * 7/8 = 0.7875,
    t = 15 -> 0.9 (1 - 27/64), t = 25 -> 0.9 (1 - 1/64)."""
    assert gmp_sparsity(0.9, 9, 10, 30) == 0.0 and gmp_sparsity(0.9, 10, 10, 30) == 0.0
    assert gmp_sparsity(0.9, 20, 10, 30) == pytest.approx(0.7875)
    assert gmp_sparsity(0.9, 15, 10, 30) == pytest.approx(0.9 * 37 / 64)
    assert gmp_sparsity(0.9, 25, 10, 30) == pytest.approx(0.9 * 63 / 64)
    assert gmp_sparsity(0.9, 30, 10, 30) == pytest.approx(0.9)
    assert gmp_sparsity(0.9, 31, 10, 30) == 0.9
    method = GMP(sparsity=0.5, t_p=1, t0=0, t1=2, scope="global")
    ctx = mlp_setup(method)
    assert method.on_phase_end(ctx) == {"sparsity": 0.0}
    for i in range(3):
        step(ctx, method, *mlp_data(i))
    assert method.on_phase_end(ctx) == {"sparsity": 0.5}


@pytest.mark.parametrize("cls,bad,match", [
    ("LTH", dict(rewind_step=-1), r"rewind_step=-1; valid: >= 0"),
    ("LTH", dict(prune_fraction=1.0), "sparsity=1.0"), ("LTH", dict(scope="net"), "scope='net'"),
    ("FineTune", dict(scope="net"), "scope='net'"), ("FineTune", dict(sparsity=1.0), "sparsity=1.0")])
def test_lth_and_finetune_refuse_bad_options_naming_them(cls, bad, match):
    with pytest.raises(ValueError, match=match):
        {"LTH": LTH, "FineTune": FineTune}[cls](**bad)


def test_lth_rewinds_to_the_initialization_at_step_0_and_counts_its_rounds():
    method = LTH(prune_fraction=0.5, rewind_step=0, scope="layer")
    ctx = mlp_setup(method)
    init = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    for i in range(3):
        step(ctx, method, *mlp_data(i))
    assert method.on_phase_end(ctx)["lth_round"] == 0
    ctx.phase = Phase(1, 1, "round2", None)
    method.on_phase_start(ctx)
    named = prunable(ctx.model)
    for n, p in ctx.model.named_parameters():
        keep = ctx.masks[n].keep if n in ctx.masks else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[keep], init[n][keep]), n
    assert [int(ctx.masks[n].keep.sum()) for n, _ in named] == \
        [round(0.5 * p.numel()) for _, p in named]
    summary = method.on_phase_end(ctx)
    assert summary["lth_round"] == 1 and summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    ctx.phase = Phase(2, 2, "round3", None)
    method.on_phase_start(ctx)
    assert method.on_phase_end(ctx)["lth_round"] == 2  # rounds count up


def test_lth_names_a_rewind_step_it_never_reached():
    method = LTH(rewind_step=50)
    ctx = mlp_setup(method)
    step(ctx, method, *mlp_data(0))
    ctx.phase = Phase(1, 1, "round2", None)
    with pytest.raises(RuntimeError, match="rewind_step=50 was not reached"):
        method.on_phase_start(ctx)


def test_finetune_per_layer_keeps_each_tensors_largest_magnitudes():
    method = FineTune(sparsity=0.5, at_phase=2, scope="layer")
    ctx = mlp_setup(method)
    ctx.phase = Phase(1, 0, "dense2", None)
    method.on_phase_start(ctx)
    assert not len(ctx.masks) and method.on_phase_end(ctx) == {"sparsity": 0.0}
    named = prunable(ctx.model)
    before = {n: p.detach().abs().clone() for n, p in named}
    ctx.phase = Phase(2, 0, "finetune", None)
    method.on_phase_start(ctx)
    for n, p in named:
        keep = ctx.masks[n].keep
        assert int(keep.sum()) == round(0.5 * p.numel())
        assert before[n][keep].min() >= before[n][~keep].max()
    assert method.on_phase_end(ctx) == {"sparsity": 0.5}
