"""Cost accounting of interspace pruning (thesis Sec. 5.4.4.1, Fig. 5.4) and Theorem 5.3.1."""
import math

import pytest
import torch

from runner.analysis import interspace as ip


def test_speedups_match_the_closed_forms_of_fig_5_4():
    """Notes 3.7: K = 3, c_out = 64 -> IP 0.88 / 2.94 / 4.16 / 6.64 at q = 0 / 0.8 / 0.9 / 0.99;
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
    """Notes 3.8 / Fig. 5.3: D2 = 8 -> 9.4e-11, 10 -> 1.4e-11, 100 -> 9.8e-20; eps = 0 unless
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
    from runner.distributed import Silent
    from runner.train import Trainer

    from runner.config import ScheduleConfig
    from runner.optim import Schedule
    s = Schedule(ScheduleConfig(name="step", gamma=0.1, milestones=[3], warmup_epochs=2), 0.1)
    assert [round(s.lr(e), 6) for e in range(5)] == [0.05, 0.1, 0.1, 0.01, 0.01]
    out, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    cfg = compose_cfg(["experiment=fmnist_mlp", "ci=smoke", "device=cpu",
                       "train.label_smoothing=0.1"])
    loss = Trainer(ci.apply(cfg), Silent(None, {})).loss_fn
    assert torch.isclose(loss(out, y), F.cross_entropy(out, y, label_smoothing=0.1))
    assert not torch.isclose(loss(out, y), F.cross_entropy(out, y))
