"""Pruning scores at initialization and their masks (runner.sparse.pruning; Wimmer's thesis Ch. 2-4):
each score against a hand computation, exact top-d masks, the exact keep counts."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runner.models.transforms import filter_basis
from runner.sparse import pruning
from runner.sparse.keep import exact_density, keep_count, split_count


def tiny_net(bn=False, dtype=torch.float32):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.BatchNorm1d(8) if bn else nn.Identity(), nn.Tanh(),
              nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(dtype)


def batch(n=16, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randint(3, (n,), generator=g)


def hand_snip(model, batches):
    ws = [model[0].weight, model[3].weight]
    grads = [torch.zeros_like(w) for w in ws]
    for x, y in batches:
        for acc, g in zip(grads, torch.autograd.grad(F.cross_entropy(model(x), y), ws)):
            acc += g / len(batches)
    return {"0.weight": (grads[0] * ws[0]).abs().detach(), "3.weight": (grads[1] * ws[1]).abs().detach()}


@pytest.mark.parametrize("n_batches", [1, 3])
def test_snip_scores_are_g_times_theta_over_one_or_n_batches(n_batches):
    model = tiny_net()
    batches = [batch(seed=s) for s in range(n_batches)]
    s = pruning.scores("snip", model, batches)
    assert list(s) == ["0.weight", "3.weight"]  # weights only: biases are never scored
    for name, t in hand_snip(model, batches).items():
        torch.testing.assert_close(s[name], t)


@pytest.mark.parametrize("d", [0, 1, 7, 30, 72])
def test_snip_keeps_exactly_the_top_d_globally(d):
    model = tiny_net()
    s = pruning.scores("snip", model, [batch()])
    keep = pruning.top_d(s, d, "global")
    flat_s = torch.cat([t.flatten() for t in s.values()])
    flat_k = torch.cat([k.flatten() for k in keep.values()])
    assert int(flat_k.sum()) == d
    assert set(flat_k.nonzero().flatten().tolist()) == set(flat_s.argsort(descending=True)[:d].tolist())


@pytest.mark.parametrize("d", [1, 10, 40])
def test_snip_keeps_exactly_the_top_d_per_layer(d):
    model = tiny_net()
    s = pruning.scores("snip", model, [batch()])
    keep = pruning.top_d(s, d, "layer")
    counts = split_count({n: t.numel() for n, t in s.items()}, d)
    assert sum(counts.values()) == d
    for n, t in s.items():
        assert int(keep[n].sum()) == counts[n]
        if 0 < counts[n] < t.numel():
            assert t[keep[n]].min() >= t[~keep[n]].max()
    per = pruning.top_d(s, {"0.weight": 3, "3.weight": 0}, "layer")
    assert int(per["0.weight"].sum()) == 3 and int(per["3.weight"].sum()) == 0


def test_split_count_is_proportional_with_largest_remainders():
    assert split_count({"a": 48, "b": 24}, 7) == {"a": 5, "b": 2}  # 4.67, 2.33
    assert split_count({"a": 10, "b": 10, "c": 10}, 2) == {"a": 1, "b": 1, "c": 0}


def test_ties_go_to_the_earlier_entry():
    s = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    keep = pruning.top_d(s, 7)
    assert keep["a"].all() and keep["b"].tolist() == [True, False, False, False]
    layer = pruning.top_d(s, 4, "layer")  # counts 2 and 2 (2.4 and 1.6, remainder to b)
    assert layer["a"].tolist() == [[True, True, False], [False] * 3]
    assert layer["b"].tolist() == [True, True, False, False]


def test_bad_inputs_give_one_clear_error():
    s = {"a": torch.tensor([1.0, float("nan")])}
    with pytest.raises(ValueError, match="NaN"):
        pruning.top_d(s, 1)
    with pytest.raises(ValueError, match="valid: 0..2"):
        pruning.top_d({"a": torch.ones(2)}, 3)
    with pytest.raises(ValueError, match="valid: global, layer"):
        pruning.top_d({"a": torch.ones(2)}, 1, "net")
    with pytest.raises(ValueError, match="valid: random"):
        pruning.scores("snipp", tiny_net())


def test_keep_count_is_exact_for_decimal_rates():
    # LeNet-5-Caffe's 430,500 weights at Table 3.2's rates; (1 - 0.9) * 430500 is 43049.99... in floats
    assert [keep_count(430_500, exact_density(q), "floor")
            for q in (0.9, 0.99, 0.995, 0.999, 1.0, 0.0)] == \
        [43_050, 4_305, 2_152, 430, 0, 430_500]


def test_grasp_hessian_gradient_matches_finite_differences():
    model = tiny_net(dtype=torch.float64)
    batches = [batch(dtype=torch.float64, seed=s) for s in range(2)]
    T = 2.0
    hg = pruning.hessian_gradient(model, batches, temperature=T)
    g = pruning.gradients(model, batches, temperature=T)
    ps = dict(model.named_parameters())
    eps = 1e-6

    def grads_at(sign):  # gradient of the weights with the weights moved by sign * eps * g
        with torch.no_grad():
            for n in g:
                ps[n].add_(sign * eps * g[n])
        out = pruning.gradients(model, batches, temperature=T)
        with torch.no_grad():
            for n in g:
                ps[n].sub_(sign * eps * g[n])
        return out

    plus, minus = grads_at(1.0), grads_at(-1.0)
    for n in g:
        torch.testing.assert_close(hg[n], (plus[n] - minus[n]) / (2 * eps), rtol=1e-5, atol=1e-8)
    s = pruning.scores("grasp", model, batches, temperature=T)
    for n in g:
        torch.testing.assert_close(s[n], hg[n] * ps[n].detach())
    assert (torch.cat([t.flatten() for t in s.values()]) < 0).any()  # signed


def test_synflow_equals_its_closed_form_on_a_two_layer_linear_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 3, bias=False))
    w1, w2 = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    s = pruning.scores("synflow", model, input_shape=(4,), d=20, iterations=1)
    # R = 1^T |W2| |W1| 1: dR/dW1_ij = sum_k |W2|_ki, dR/dW2_ki = sum_j |W1|_ij
    torch.testing.assert_close(s["0.weight"], w1.abs() * w2.abs().sum(0)[:, None])
    torch.testing.assert_close(s["1.weight"], w2.abs() * w1.abs().sum(1)[None, :])
    assert torch.equal(model[0].weight, w1)  # the model is left as it was


def test_synflow_iterative_prunes_to_d_and_is_data_free():
    model = tiny_net(bn=True)
    s = pruning.scores("synflow", model, [batch()], d=9, iterations=5)
    keep = pruning.top_d(s, 9)
    assert sum(int(k.sum()) for k in keep.values()) == 9
    assert sum(int((t > 0).sum()) for t in s.values()) >= 9  # earlier rounds' pruned score 0
    s1 = pruning.scores("synflow", model, [(batch()[0] * 5, batch()[1])], d=9, iterations=5)
    assert all(torch.equal(s[n], s1[n]) for n in s)  # only the input's shape is used


def test_usnip_uses_random_labels_and_random_scores_follow_the_generator():
    model = tiny_net()
    b = [batch()]
    u1 = pruning.scores("usnip", model, b, gen=torch.Generator().manual_seed(3))
    u2 = pruning.scores("usnip", model, b, gen=torch.Generator().manual_seed(3))
    snip = pruning.scores("snip", model, b)
    assert all(torch.equal(u1[n], u2[n]) for n in u1)
    assert not all(torch.equal(u1[n], snip[n]) for n in u1)
    r = pruning.scores("random", model, gen=torch.Generator().manual_seed(0))
    assert all((t >= 0).all() for t in r.values())
    m = pruning.scores("magnitude", model)
    torch.testing.assert_close(m["0.weight"], model[0].weight.detach().abs())


def test_l1_normalization_and_model_left_unchanged():
    model = tiny_net(bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    s = pruning.scores("snip", model, [batch()], normalize=True)
    assert float(sum(t.abs().sum() for t in s.values())) == pytest.approx(1.0)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scores_reach_the_stored_tensors_of_parametrized_weights():
    torch.manual_seed(0)
    model = filter_basis()(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)))
    x, y = torch.randn(4, 1, 4, 4), torch.randint(3, (4,))
    s = pruning.scores("snip", model, [(x, y)])
    assert set(s) == {"0.parametrizations.weight.original", "2.weight"}  # not the basis
    assert s["0.parametrizations.weight.original"].shape == (2, 1, 9)


def test_gradient_flow_over_kept_entries():
    model = tiny_net()
    b = [batch()]
    g = pruning.gradients(model, b)
    keep = {n: torch.zeros_like(t, dtype=torch.bool) for n, t in g.items()}
    keep["3.weight"][0, :2] = True
    flow = pruning.mean_abs_gradient(model, b, keep)
    torch.testing.assert_close(flow, g["3.weight"][0, :2].abs().mean())
    dense = pruning.mean_abs_gradient(model, b)
    torch.testing.assert_close(dense, torch.cat([t.abs().flatten() for t in g.values()]).mean())
