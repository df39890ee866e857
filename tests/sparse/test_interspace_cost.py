"""Cost accounting of interspace pruning (thesis Sec. 5.4.4.1, Figs. 5.4, 5.8 a), Theorem 5.3.1 and
the gradient norms of Fig. 5.6 a."""
import math
from pathlib import Path

import pytest
import torch

from runner.analysis import interspace as ip


def test_speedups_match_the_closed_forms_of_fig_5_4():
    """Fig. 5.4 (Wimmer's thesis, Sec. 5.5): K = 3, c_out = 64 -> IP 0.88 / 2.94 / 4.16 / 6.64
    at q = 0 / 0.8 / 0.9 / 0.99;
    c_out = 512 -> 0.98 / 4.6 / 8.5 / 36.3; SP 5 / 10 / 100."""
    qs = (0.0, 0.8, 0.9, 0.99)
    assert [round(ip.speedup_ip(q, 64), 2) for q in qs] == [0.88, 2.94, 4.16, 6.64]
    assert [round(ip.speedup_ip(q, 512), 1) for q in qs] == [1.0, 4.6, 8.5, 36.3]
    assert [round(ip.speedup_sp(q)) for q in qs[1:]] == [5, 10, 100]
    for c_in, c_out, d, q in [(3, 64, 34, 0.5), (64, 512, 6, 0.9), (16, 32, 10, 0.99)]:
        dense = ip.sp_flops(c_in, c_out, 3, d, d, 0.0)
        assert math.isclose(dense / ip.sp_flops(c_in, c_out, 3, d, d, q), ip.speedup_sp(q))
        assert math.isclose(dense / ip.ip_flops(c_in, c_out, 3, d, d, q), ip.speedup_ip(q, c_out))
        ratio = ip.ip_flops(c_in, c_out, 3, d, d, q) / ip.sp_flops(c_in, c_out, 3, d, d, q)
        assert math.isclose(ratio, 1 + 9 / (c_out * (1 - q)))  # Eq. (5.15)
    assert ip.speedup_ip(9 / 64 - 1e-9, 64) < 1 < ip.speedup_ip(9 / 64 + 1e-3, 64)


def test_theorem_bound_matches_fig_5_3():
    """Fig. 5.3 (Wimmer's thesis, Ch. 5): D2 = 8 -> 9.4e-11, 10 -> 1.4e-11, 100 -> 9.8e-20;
    eps = 0 unless
    D1 divides d; the worst d is D1: eps_max = D2 / C(9 D2, 9)."""
    assert [float(f"{ip.max_bound(n):.1e}") for n in (8, 10, 100)] == [9.4e-11, 1.4e-11, 9.8e-20]
    assert ip.theorem_bound(9, 10, 10) == 0.0
    assert ip.max_bound(10) == pytest.approx(10 / math.comb(90, 9))


def test_interspace_beats_spatial_magnitude_pruning_on_the_same_support():
    """Theorem 5.3.1 (2) on a random R (9 x D2): fitting the basis T with S on SP's support
    (alternating least squares) gives a strictly smaller error than SP."""
    torch.manual_seed(0)
    r = torch.randn(9, 12, dtype=torch.float64)
    d = 40
    keep = torch.zeros(r.numel(), dtype=torch.bool)
    keep[r.abs().flatten().topk(d).indices] = True
    keep = keep.view(r.shape)
    s = r * keep
    rho_sp = torch.linalg.norm(r - s)
    t = torch.eye(9, dtype=torch.float64)
    for _ in range(20):
        t = r @ s.T @ torch.linalg.pinv(s @ s.T)
        for j in range(r.shape[1]):
            rows = keep[:, j]
            s[:, j] = 0
            s[rows, j] = torch.linalg.lstsq(t[:, rows], r[:, j:j + 1]).solution[:, 0]
    assert torch.linalg.norm(r - t @ s) < rho_sp - 1e-3


def test_measured_speedup_and_figures_run(tmp_path):
    res = ip.measure_speedup([0.0, 0.9], repeats=1, layers=(8, "M", 16))
    assert set(res) == {0.0, 0.9} and all(v["sp_speedup"] > 0 and v["ip_speedup"] > 0
                                          for v in res.values())
    assert ip.main(["fig5_3", "--out", str(tmp_path / "a.png")]) == 0
    assert ip.main(["fig5_4", "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").exists()


def fake_run(path, space, seed, phases, sparsity=None):
    import json
    path.mkdir(parents=True)
    result = {"status": "completed", "seed": seed, "choices": {"space": space, "method": "lth"},
              "config": {"tuned": {"q": sparsity}}, "phases": phases, "name": "x"}
    (path / "result.json").write_text(json.dumps(result))


def test_rounds_and_curve_figures_from_runs(tmp_path, capsys):
    for s, space in enumerate(["sp", "ip_medium"]):
        phases = [{"name": f"round{r + 1}", "sparsity": 1 - 0.8 ** r,
                   "end": {"test_acc": 0.9 - 0.01 * r}} for r in range(3)]
        fake_run(tmp_path / "runs" / str(s), space, 0, phases, sparsity=0.5)
    assert ip.main(["rounds", str(tmp_path / "runs"), "--out", str(tmp_path / "r.png")]) == 0
    assert ip.main(["curve", str(tmp_path / "runs"), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "r.png").exists() and (tmp_path / "c.png").exists()
    fake_run(tmp_path / "bad" / "0", "sp", 0, [{"name": "train", "end": {"test_acc": 0.5}}])
    assert ip.main(["rounds", str(tmp_path / "bad")]) == 2
    assert "sparsity" in capsys.readouterr().err


def test_linear_warmup_and_label_smoothing(compose_cfg, tmp_path):
    import torch.nn.functional as F

    from runner import ci
    from runner.training.build import Parts

    from runner.config import ScheduleConfig
    from runner.optim import Schedule
    s = Schedule(ScheduleConfig(name="step", gamma=0.1, milestones=[3], warmup_epochs=2), 0.1)
    assert [round(s.lr(e), 6) for e in range(5)] == [0.05, 0.1, 0.1, 0.01, 0.01]
    out, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    cfg = compose_cfg(["experiment=fmnist_mlp", "ci=smoke", "device=cpu",
                       "train.label_smoothing=0.1"])
    loss = Parts(ci.apply(cfg)).loss_fn
    assert torch.isclose(loss(out, y), F.cross_entropy(out, y, label_smoothing=0.1))
    assert not torch.isclose(loss(out, y), F.cross_entropy(out, y))


# -- Fig. 5.8 a: FLOPs of a network from its per-layer densities --------------------------------
def hand_cnn(sharing=None, nc=1):
    from torch import nn

    from runner.models.transforms import filter_basis
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 5))
    return filter_basis(sharing=sharing, nc=nc)(model) if sharing else model


def test_network_flops_equal_a_hand_count_in_sp_and_ip():
    """3x8x8 input: conv 3->8 (pad 1: 8x8 = 64 positions), conv 8->16 (no pad: 6x6 = 36), linear
    576->5, at densities 0.5 / 0.25 / 0.1. Dense: 2 (216 * 64 + 1152 * 36 + 2880) = 116,352.
    SP: 2 (0.5 * 216 * 64 + 0.25 * 1152 * 36 + 0.1 * 2880) = 2 (6,912 + 10,368 + 288) = 35,136. IP adds the basis convs,
    2 c_in 9 * 9 positions: 2 * 3 * 81 * 64 = 31,104 and 2 * 8 * 81 * 36 = 46,656; out_nc with
    nc = 4 multiplies them by the bases per layer, 2 and 4."""
    sp = ip.layer_costs(hand_cnn(), [3, 8, 8])
    density = {"0.weight": 0.5, "2.weight": 0.25, "5.weight": 0.1}
    assert ip.network_flops(sp, density) == (116_352, 35_136)
    coef = {k.replace("weight", "parametrizations.weight.original") if k != "5.weight" else k: v
            for k, v in density.items()}
    assert ip.network_flops(ip.layer_costs(hand_cnn("fine"), [3, 8, 8]), coef) == (
        116_352, 35_136 + 31_104 + 46_656)
    assert ip.network_flops(ip.layer_costs(hand_cnn("out_nc", 4), [3, 8, 8]), coef) == (
        116_352, 35_136 + 2 * 31_104 + 4 * 46_656)
    assert ip.network_flops(sp, {})[1] == 116_352  # a layer not named is dense
    with pytest.raises(ip.AnalysisError, match="7.weight"):
        ip.network_flops(sp, {"7.weight": 0.5})


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99])
def test_one_layer_network_speedup_is_the_closed_form(q):
    from torch import nn

    from runner.models.transforms import filter_basis
    for c_in, c_out, side in [(16, 64, 10), (3, 512, 6)]:
        conv = nn.Sequential(nn.Conv2d(c_in, c_out, 3))
        costs = ip.layer_costs(conv, [c_in, side, side])
        dense, sparse = ip.network_flops(costs, {"0.weight": 1 - q})
        assert math.isclose(dense, ip.sp_flops(c_in, c_out, 3, side, side, 0.0))
        assert math.isclose(sparse, ip.sp_flops(c_in, c_out, 3, side, side, q))
        assert math.isclose(dense / sparse, ip.speedup_sp(q))
        costs = ip.layer_costs(filter_basis("fine")(conv), [c_in, side, side])
        dense, sparse = ip.network_flops(costs, {"0.parametrizations.weight.original": 1 - q})
        assert math.isclose(sparse, ip.ip_flops(c_in, c_out, 3, side, side, q))
        assert math.isclose(dense / sparse, ip.speedup_ip(q, c_out))


def test_flops_figure_of_an_lth_run(run_cfg, tmp_path, capsys):
    """One IP-LTH run (smoke: 2 rounds): every round's `layer_density` is its masks' kept share,
    and the printed speed-up is the hand-built count of its model; other runs are refused."""
    import json
    d = run_cfg(["experiment=wimmer_lth_cifar10", "ci=smoke", "device=cpu", "threads=1"])["_dir"]
    r = json.loads((Path(d) / "result.json").read_text())
    phases = r["phases"]
    assert set(phases[0]["layer_density"].values()) == {1.0}  # round 1: dense
    costs = ip.run_costs(r)
    pruned = [c for c in costs if not c.name.startswith("head.")]  # LTH keeps the output layer
    assert len(pruned) == len(costs) - 1
    assert all(phases[1]["layer_density"][c.name] == 1.0 for c in costs if c not in pruned)
    kept = sum(c.entries * phases[1]["layer_density"][c.name] for c in pruned)
    assert math.isclose(1 - kept / sum(c.entries for c in pruned), phases[1]["sparsity"])
    dense, sparse = ip.network_flops(costs, phases[1]["layer_density"])
    capsys.readouterr()
    assert ip.main(["flops", d, "--out", str(tmp_path / "f.png")]) == 0
    assert f"| {dense / sparse:.2f} |" in capsys.readouterr().out
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    fake_run(tmp_path / "other" / "0", "sp", 0, [{"name": "train", "end": {"test_acc": 0.5}}])
    assert ip.main(["flops", str(tmp_path / "other")]) == 2
    assert "layer_density" in capsys.readouterr().err


# -- Fig. 5.6 a: lr x ||g|| per epoch -----------------------------------------------------------
def test_recorded_gradient_norm_times_lr_is_the_length_of_the_sgd_step(tmp_path, capsys):
    """IP-SNIP (fine sharing), plain SGD (no momentum, no weight decay), one step in the epoch:
    lr ||m * g|| of the KxK coefficients is the norm of their change, lr ||g_F|| that of the
    filter bases'; `gradnorm` plots it, and refuses runs without it."""
    import pandas as pd
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF
    from runner import ci
    from runner.models.transforms import filter_bases
    from runner.results import RunRecorder
    from runner.train import Trainer
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=wimmer_fig5_5", "space=ip_fine", "tuned.q=0.5", "ci=smoke", "device=cpu",
            "threads=1", "train.max_batches=1", "ci.width=1.0", "train.epochs=1", "optim.momentum=0",
            "optim.weight_decay=0", "optim.lr=0.05"])
    GlobalHydra.instance().clear()
    t = Trainer(ci.apply(cfg), RunRecorder(tmp_path, {}))
    t.fit()
    ctx = t.ctx
    assert ctx.step == 1
    convs = {n: p for n, p in ctx.model.named_parameters()
             if n.endswith("parametrizations.weight.original")}
    moved = torch.cat([(p.detach() - ctx.init_state[n])[ctx.masks[n].keep if n in ctx.masks
                                                        else slice(None)].flatten()
                       for n, p in convs.items()])
    names = {id(p): n for n, p in ctx.model.named_parameters()}
    bases = torch.cat([(b.detach() - ctx.init_state[names[id(b)]]).flatten()
                       for b in filter_bases(ctx.model)])
    row = pd.read_csv(tmp_path / "metrics.csv").iloc[-1]
    assert len(convs) == 13 and moved.norm() > 0 and bases.norm() > 0
    assert math.isclose(row.grad_norm_lr, float(moved.norm()), rel_tol=1e-4)
    assert math.isclose(row.grad_norm_lr_fb, float(bases.norm()), rel_tol=1e-4)
    t.rec.finish("completed")
    capsys.readouterr()
    assert ip.main(["gradnorm", str(tmp_path), "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    fake_run(tmp_path / "other" / "0", "sp", 0, [{"name": "train", "end": {"test_acc": 0.5}}])
    (tmp_path / "other" / "0" / "metrics.csv").write_text("phase,epoch,test_acc\n0,1,0.5\n")
    assert ip.main(["gradnorm", str(tmp_path / "other")]) == 2
    assert "method.grad_stats=true" in capsys.readouterr().err
