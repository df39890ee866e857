"""Where each sample of a phase comes from: validation is held out of the training set (never the
test set) in every split mode, labels travel with their samples, and inputs are normalized with
the dataset's statistics.

The data are numbered: training sample i is the feature [i], test sample j is [TEST + j], and the
label of either is its number mod 10. A stacked test method records the numbers each phase sees.
"""
import pytest
import torch

from methods.base import Method
from runner.data.tensors import Arrays, Pipeline, Split
from runner.targets import register

N_TRAIN, N_TEST, TEST = 200, 40, 100_000
BASE = ["experiment=fmnist_mlp", f"target_allowlist=[{__name__}]", "dataset=reinit_synthetic", f"dataset.reader._target_={__name__}.numbered",
        "dataset.shape=[1]", "dataset.num_classes=10", "model=mlp", "model.hidden=[4]",
        "method=vanilla", "train.epochs=1", "train.batch_size=64", "train.val_fraction=0.2",
        "device=cpu", "threads=1", "progress=false",
        f"+extra_methods=[{{_target_: {__name__}.Seen}}]"]


def numbered(n_train: int = N_TRAIN, n_test: int = N_TEST, **unused) -> Arrays:
    xtr, xte = torch.arange(N_TRAIN, dtype=torch.float32), TEST + torch.arange(N_TEST).float()
    return Arrays(xtr[:, None], xtr.long() % 10, xte[:, None], xte.long() % 10)


register("reader", numbered)


class Seen(Method):
    """Records, at each phase's start, the sample numbers of train / val / test."""

    phases = []

    def __init__(self):
        Seen.phases = []

    def on_phase_start(self, ctx):
        parts = {}
        for name in ("train", "val", "test"):
            split = getattr(ctx.data, name)
            ids = split.x[:, 0].round().long()
            assert torch.equal(split.y, ids % 10), f"{name} labels do not follow their samples"
            parts[name] = ids.tolist()
        Seen.phases.append(parts)


def seen(run_cfg, overrides=()):
    result = run_cfg(BASE + list(overrides))
    assert result["status"] == "completed", result.get("error")
    return Seen.phases


def check_provenance(parts, n_val=40):
    train, val, test = (set(parts[k]) for k in ("train", "val", "test"))
    assert len(val) == len(parts["val"]) == n_val and len(train) == len(parts["train"])
    assert val <= set(range(N_TRAIN)), "validation samples outside the training set"
    assert not val & train, "validation samples also trained on"
    assert train <= set(range(N_TRAIN))
    assert test == set(range(TEST, TEST + N_TEST)) and len(parts["test"]) == N_TEST


@pytest.mark.parametrize("seed", [0, 1])
def test_per_seed_split(run_cfg, seed):
    [parts] = seen(run_cfg, [f"seed={seed}"])
    check_provenance(parts)
    assert set(parts["train"]) | set(parts["val"]) == set(range(N_TRAIN))


def test_the_split_follows_the_seed_or_val_seed(run_cfg):
    val = {s: set(seen(run_cfg, [f"seed={s}"])[0]["val"]) for s in (0, 1)}
    assert val[0] != val[1]
    fixed = [seen(run_cfg, [f"seed={s}", "train.val_seed=7"])[0] for s in (0, 1, 7)]
    for parts in fixed:
        check_provenance(parts)
    assert set(fixed[0]["val"]) == set(fixed[1]["val"]) == val_of_seed(run_cfg, 7)
    assert set(fixed[0]["val"]) != val[0]


def val_of_seed(run_cfg, seed):
    return set(seen(run_cfg, [f"seed={seed}"])[0]["val"])


def test_warm_start_subset_is_held_out_and_nested(run_cfg):
    phases = "+phases=[{name: half, subset: {fraction: 0.5}}, {name: all}]"
    half, full = seen(run_cfg, [phases])
    check_provenance(half)
    check_provenance(full)
    assert len(half["train"]) == 80 and len(full["train"]) == 160
    assert set(half["train"]) < set(full["train"])
    assert half["val"] == full["val"] and half["test"] == full["test"]


def test_subset_of_n_samples(run_cfg):
    [parts] = seen(run_cfg, ["phases.0.subset.n=25"])
    check_provenance(parts)
    assert len(parts["train"]) == 25


@pytest.mark.parametrize("access", ["full", "limited"])
def test_continual_chunks(run_cfg, access):
    phases = f"+phases=[{{name: chunk, repeat: 4, subset: {{chunks: 4, access: {access}}}}}]"
    chunks = seen(run_cfg, [phases])
    assert len(chunks) == 4
    for parts in chunks:
        check_provenance(parts)
        assert parts["val"] == chunks[0]["val"]
    sets = [set(p["train"]) for p in chunks]
    if access == "limited":  # disjoint pieces of 40 that together are the training set
        assert [len(s) for s in sets] == [40] * 4 and set().union(*sets) == set(range(N_TRAIN)) - set(
            chunks[0]["val"])
        assert all(not a & b for i, a in enumerate(sets) for b in sets[i + 1:])
    else:  # chunks 0..r: nested, growing by 40
        assert [len(s) for s in sets] == [40, 80, 120, 160]
        assert all(a < b for a, b in zip(sets, sets[1:]))


# -- normalization --------------------------------------------------------------------------
def test_pipeline_normalizes_by_hand():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    want = (torch.tensor([0, 51, 255]).float() / 255 - 0.5) / 0.25
    for augment in ([], [lambda x, gen: x]):  # normalized in the deterministic or random part
        pipe = Pipeline([0.5], [0.25], [], augment, "cpu")
        for train in (True, False):
            torch.testing.assert_close(pipe(x, train, None).flatten(), want)
            cached = pipe.prepare(Split(x, torch.zeros(3)))  # what the trainer keeps per phase
            torch.testing.assert_close(pipe.random(cached.x, train, None).flatten(), want)


def test_pipeline_applies_its_deterministic_transforms_before_normalizing():
    x = torch.tensor([0, 51], dtype=torch.uint8).view(2, 1, 1, 1)
    pipe = Pipeline([0.5], [0.25], [lambda x, gen: 2 * x], [], "cpu")
    torch.testing.assert_close(pipe(x, False, None).flatten(), (torch.tensor([0.0, 0.4]) - 0.5) / 0.25)


def test_batches_keep_their_order_unless_shuffled_and_a_whole_batch_draws_nothing():
    from runner.data.tensors import batches
    split = Split(torch.arange(6).view(6, 1), torch.arange(6))
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert [y.tolist() for _, y in batches(split, 4, gen, shuffle=False)] == [[0, 1, 2, 3], [4, 5]]
    assert [y.tolist() for _, y in batches(split, 6, gen)] == [[0, 1, 2, 3, 4, 5]]  # one batch
    assert torch.equal(gen.get_state(), state)  # nothing drawn: the next epochs' orders unchanged
    shuffled = [y for _, y in batches(split, 4, gen)]
    assert sorted(torch.cat(shuffled).tolist()) == list(range(6)) and not torch.equal(gen.get_state(), state)


def test_pipeline_normalizes_each_channel():
    x = torch.full((1, 3, 1, 1), 102, dtype=torch.uint8)  # 0.4
    pipe = Pipeline([0.1, 0.2, 0.3], [0.1, 0.2, 0.4], [], [], "cpu")
    torch.testing.assert_close(pipe(x, False, None).flatten(), torch.tensor([3.0, 1.0, 0.25]))
    gray_stats = Pipeline([0.2], [0.5], [], [], "cpu")  # one-channel stats of data made RGB
    torch.testing.assert_close(gray_stats(x, False, None).flatten(), torch.full((3,), 0.4))
    gray = pipe(x[:, :1], False, None)  # and the other way: the stats' averages, same shape
    assert gray.shape == (1, 1, 1, 1)
    torch.testing.assert_close(gray.flatten(), (0.4 - torch.tensor([0.2])) * (10 + 5 + 2.5) / 3)


def test_pipeline_augments_only_in_training_with_the_given_generator():
    x = torch.full((2, 1, 1, 1), 51, dtype=torch.uint8)  # 0.2
    seen = []

    def shift(x, gen):
        seen.append(gen)
        return x + 1

    pipe = Pipeline([0.0], [1.0], [], [shift], "cpu")
    gen = torch.Generator()
    torch.testing.assert_close(pipe(x, True, gen).flatten(), torch.full((2,), 1.2))
    torch.testing.assert_close(pipe(x, False, gen).flatten(), torch.full((2,), 0.2))
    assert seen == [gen]


class Inputs(Method):
    """Records the first training batch the model sees, as the trainer feeds it."""

    batch = None

    def setup(self, ctx):
        ctx.model.register_forward_pre_hook(self.keep)

    def keep(self, module, args):
        if Inputs.batch is None and module.training:
            Inputs.batch = args[0].detach().clone()


@pytest.mark.parametrize("augment", [False, True])
def test_the_model_sees_standardized_digits(run_cfg, augment):
    """scikit-learn's digits (real data, offline) through the trainer: the config's mean / std
    standardize what the model receives, with or without augmentation."""
    Inputs.batch = None
    more = ["+dataset.augment=[{_target_: runner.data.transforms.HFlip, p: 0.0}]"] if augment else []
    result = run_cfg(["experiment=fmnist_mlp", f"target_allowlist=[{__name__}]", "dataset=digits", "model=mlp", "model.hidden=[4]", "method=vanilla",
                      "train.epochs=1", "train.batch_size=1000", "device=cpu", "threads=1",
                      f"+extra_methods=[{{_target_: {__name__}.Inputs}}]"] + more)
    assert result["status"] == "completed"
    x = Inputs.batch
    assert x.shape == (1000, 1, 8, 8)
    assert x.mean().item() == pytest.approx(0.0, abs=0.03)
    assert x.std().item() == pytest.approx(1.0, abs=0.03)
