"""The synthetic task's encoding and the Sec. 4 probe (margins, weight size, noise)."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import context
from methods.reinit_probe import ReinitProbe
from runner.data.synthetic import reinit_task
from runner.data.tensors import Split, Splits
from runner.models.base import Network


def test_synthetic_task_encodes_the_label_in_binary():
    a = reinit_task(n_train=400, n_test=50, alpha=0.5, dim=128, seed=1)
    assert a.x_train.shape == (400, 128) and a.x_test.shape == (50, 128)
    five = a.x_train[a.y_train == 5][0, :3]
    assert five.tolist() == [0.5, -0.5, 0.5]  # "class 5 would have (1, -1, 1)", times alpha
    zero = a.x_train[a.y_train == 0][0, :3]
    assert zero.tolist() == [-0.5, -0.5, -0.5]
    noise = a.x_train[:, 3:]
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
    assert set(a.y_train.tolist()) == set(range(8))


def test_synthetic_task_follows_its_seed_alone_bitwise_and_defaults_to_the_papers_setup(compose_cfg):
    def draw(seed, global_seed):
        torch.manual_seed(global_seed)  # the global generator must not matter
        return reinit_task(n_train=16, n_test=8, dim=5, seed=seed)

    a, again, other = draw(0, 1), draw(0, 2), draw(1, 1)
    for part in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, part), getattr(again, part)), part
        assert not torch.equal(getattr(a, part), getattr(other, part)), part
    cfg = compose_cfg(["dataset=reinit_synthetic", "seed=0"]).dataset.reader  # Sec. 1.1
    paper = reinit_task(**{k: v for k, v in cfg.items() if k != "_target_"})
    default = reinit_task()
    assert default.x_train.shape == (256, 128) and default.x_test.shape == (10000, 128)
    for part in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(default, part), getattr(paper, part)), part


def Ctx(model, x, y):
    return context(model, Splits(Split(x, y), Split(x[:0], y[:0]), Split(x, y)))


def test_probe_margins_and_weight_size_by_hand():
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    model = Network([nn.Identity()], head)
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1])  # the third example is misclassified: negative margin
    probe = ReinitProbe(margins=2, sigmas=[0.0], draws=1, batch=3)
    out = probe.on_phase_end(Ctx(model, x, y))
    p = torch.softmax(x, 1)
    expect = sorted([(p[0, 0] - p[0, 1]).item(), (p[1, 1] - p[1, 0]).item(),
                     (p[2, 1] - p[2, 0]).item()])[:2]
    assert torch.allclose(torch.tensor(out["margins"]), torch.tensor(expect))
    assert abs(out["weight_size"] - x.norm().item() * 2 ** 0.5) < 1e-5  # ||X||_F * ||I||_F
    loss = nn.functional.cross_entropy(x, y).item()
    assert abs(out["perturb"]["0.0"]["loss"] - loss) < 1e-6  # sigma 0: the unperturbed loss


def test_probe_weight_size_on_a_random_batch_and_noise_on_a_copy():
    torch.manual_seed(0)
    model = Network([nn.Sequential(nn.Linear(3, 4), nn.ReLU())], nn.Linear(4, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    ctx = Ctx(model, x, y)
    ctx.seed = 7
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = ReinitProbe(margins=4, sigmas=[0.0, 3.0], draws=2, batch=5)
    out = probe.on_phase_end(ctx)
    idx = torch.randperm(16, generator=torch.Generator().manual_seed(7))[:5]  # the seed's batch
    with torch.no_grad():
        inputs = model.blocks[0](x[idx])
    assert out["weight_size"] == pytest.approx((inputs.norm() * model.head.weight.norm()).item())
    clean = nn.functional.cross_entropy(model(x), y).item()
    assert out["perturb"]["0.0"]["loss"] == pytest.approx(clean)
    assert out["perturb"]["3.0"]["loss"] != pytest.approx(clean)  # noisy copies were evaluated
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not the model


def test_sweep_jobs_get_their_own_synthetic_data(compose_cfg):
    """The reader cache shared by a sweep's jobs keys on resolved options (alpha, seed)."""
    from runner.training.data import DataStager

    def data(*overrides):
        cfg = compose_cfg(["experiment=reinit_table1", "dataset.reader.n_test=10", *overrides])
        return DataStager(SimpleNamespace(cfg=cfg), None).arrays(cfg.dataset)

    a, b, c = data("dataset.alpha=0.5"), data("dataset.alpha=2.0"), data("dataset.alpha=0.5", "seed=1")
    assert a.x_train[:, :3].abs().max() == 0.5 and b.x_train[:, :3].abs().max() == 2.0
    assert not torch.equal(a.x_train, c.x_train)


def test_probe_noise_is_normal_with_std_sigma_from_the_seed_and_each_draw_is_scored():
    """Every parameter + N(0, sigma^2) (Figure 5), from the run's seed alone (not the global
    generator); "loss" and "acc" are the means over the draws of each noisy copy's loss and
    accuracy."""
    class Seen(ReinitProbe):
        def outputs(self, ctx, model):
            self.seen.append(copy.deepcopy(model))
            return super().outputs(ctx, model)

    torch.manual_seed(0)
    model = Network([nn.Sequential(nn.Linear(40, 50), nn.ReLU())], nn.Linear(50, 3))
    x, y = torch.randn(30, 40), torch.randint(0, 3, (30,))

    def run(global_seed):
        torch.manual_seed(global_seed)
        probe = Seen(sigmas=[0.5], draws=3)
        probe.seen = []
        ctx = Ctx(model, x, y)
        ctx.seed = 5
        return probe.perturb(ctx), probe.seen

    out, seen = run(1)
    again, seen_again = run(2)
    assert again == out and len(seen) == 3
    orig = dict(model.named_parameters())
    noise = [torch.cat([(p - orig[n]).flatten() for n, p in m.named_parameters()]) for m in seen]
    for i, d in enumerate(noise):
        assert abs(d.mean().item()) < 0.05 and d.std().item() == pytest.approx(0.5, rel=0.05)
        assert torch.equal(d, torch.cat([(p - orig[n]).flatten()
                                         for n, p in seen_again[i].named_parameters()]))
    assert not torch.equal(noise[0], noise[1])  # fresh noise per draw
    with torch.no_grad():
        logits = [m(x) for m in seen]
    loss = sum(nn.functional.cross_entropy(z, y).item() for z in logits) / 3
    acc = sum((z.argmax(1) == y).float().mean().item() for z in logits) / 3
    assert set(out["0.5"]) == {"loss", "acc"}
    assert out["0.5"]["loss"] == pytest.approx(loss) and out["0.5"]["acc"] == pytest.approx(acc)
    assert 0 < acc < 1


def test_probe_weight_size_uses_the_eval_pipeline():
    """The batch goes through the pipeline without augmentation (train=False)."""
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    x, y = torch.tensor([[3.0, 4.0]]), torch.tensor([0])
    ctx = Ctx(Network([nn.Identity()], head), x, y)
    ctx.pipeline = lambda x, train, gen: x * 10 if train else x
    assert ReinitProbe(batch=1).weight_size(ctx) == pytest.approx(5.0 * 2 ** 0.5)
