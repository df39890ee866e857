"""A phase's data as the trainer stages them: the reader's arrays (their labels, source, seed
interpolation, smoke data), the cache of arrays and of prepared inputs and its memory budget,
streamed readers, the subset, continual chunks and validation split of a phase, normalization
and augmentation, and the one-line errors of readers, subsets and labels that refuse.

The data are `tiny_images`: uint8 one-channel 2x2 images whose pixel value is the sample's index.
"""
import re

import pytest
import torch
from omegaconf import OmegaConf

from runner.context import Phase
from runner.data import transforms
from runner.data.tensors import Arrays, Pipeline, Split, Splits
from runner.errors import ConfigError, DataError, RunnerError
from runner.results import RunRecorder
from runner.targets import register
from runner.train import Trainer
from runner.training.data import check_labels
from trainer_fixtures import base_cfg, make_phase, trainer, with_  # noqa: F401


# -- a tiny image reader and a Trainer reading it ----------------------------------------------
def tiny_images(n_train=16, n_test=4, fail=False, start=0, source=None, classes=2):
    """A reader: uint8 one-channel 2x2 images, pixel value = `start` + the sample's index."""
    if fail:
        raise ValueError("no such files")
    x = (torch.arange(n_train + n_test) + start).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    y = torch.arange(n_train + n_test) % classes
    return Arrays(x[:n_train].clone(), y[:n_train], x[n_train:].clone(), y[n_train:], source=source)


register("reader", tiny_images)


class Add:
    """An augmentation: adds `v` (to inputs already in [0, 1])."""

    def __init__(self, v):
        self.v = v

    def __call__(self, x, gen):
        return x + self.v


register("transform", Add)


def image_trainer(base_cfg, tmp_path, reader=(), **keys):
    cfg = with_(base_cfg, dataset__shape=[1, 2, 2], dataset__num_classes=2, dataset__dtype="uint8",
                **{"train__val_fraction": 0.0, **keys})
    OmegaConf.update(cfg, "dataset.reader", {"_target_": f"{__name__}.tiny_images", **dict(reader)},
                     merge=False)
    return Trainer(cfg, RunRecorder(tmp_path, {"name": "images"}))


def unnamed(trainer, drop=("name",)):
    """The trainer's dataset config without its `name` (or the keys in `drop`)."""
    node = OmegaConf.to_container(trainer.cfg.dataset)
    trainer.cfg.dataset = OmegaConf.create({k: v for k, v in node.items() if k not in drop})
    return trainer.cfg.dataset


# -- the reader's arrays: labels, source, seed, smoke data -------------------------------------
def labelled(source=None, **parts):
    a = {"x_train": torch.zeros(4, 3), "y_train": torch.tensor([0, 1, 2, 9]),
         "x_test": torch.zeros(3, 3), "y_test": torch.tensor([9, 0, 5])}
    return Arrays(**{**a, **parts}, source=source)


@pytest.mark.parametrize("part", ["train", "test"])
def test_check_labels_names_the_part_and_the_files(part):
    check_labels(labelled(), 10, "digits")  # labels 0 and 9 of 10 classes are fine
    check_labels(labelled(x_test=torch.zeros(0, 3), y_test=torch.zeros(0, dtype=torch.long)), 10, "d")
    n, y = (4, [0, 1, 2, 9]) if part == "train" else (3, [9, 0, 5])
    short = {f"y_{part}": torch.tensor(y[:-1])}
    with pytest.raises(DataError, match=re.escape(
            f"digits: {n} {part} images but {n - 1} labels (in /d); the files do not belong together")):
        check_labels(labelled("/d", **short), 10, "digits")
    with pytest.raises(DataError, match=f"^digits: {n} {part} images but {n - 1} labels; the files"):
        check_labels(labelled(**short), 10, "digits")
    for bad, span in ((10, "[0, 10]"), (-1, "[-1, 9]")):
        labels = torch.tensor([bad if v == (9 if bad > 0 else 0) else v for v in y])
        with pytest.raises(DataError, match=re.escape(
                f"digits: {part} labels span {span}, outside [0, 10) (num_classes=10); files in /d")):
            check_labels(labelled("/d", **{f"y_{part}": labels}), 10, "digits")
    with pytest.raises(DataError, match=r"outside \[0, 10\) \(num_classes=10\)$"):
        check_labels(labelled(**{f"y_{part}": torch.tensor([10] * n)}), 10, "digits")


def test_labels_outside_the_classes_name_the_dataset(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, reader={"classes": 3}, dataset__name="tiny")
    with pytest.raises(DataError, match=r"^tiny: train labels span \[0, 2\], outside \[0, 2\)"):
        trainer.data.arrays(trainer.cfg.dataset)


def test_an_unnamed_dataset_is_called_the_dataset_in_errors(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path / "labels", reader={"classes": 3})
    with pytest.raises(DataError, match=r"^dataset: train labels span \[0, 2\]"):
        trainer.data.arrays(unnamed(trainer))
    trainer = image_trainer(base_cfg, tmp_path / "subset")
    unnamed(trainer)
    with pytest.raises(ConfigError, match=r"exceeds the 16 training samples of the dataset; lower it$"):
        trainer.data.load_phase_data(make_phase(trainer, subset__n=99))


def test_a_reader_refusing_its_options_is_named(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, reader={"fail": True})
    with pytest.raises(RunnerError, match=r"^dataset\.reader: no such files \(calling"):
        trainer.data.load_phase_data(trainer.parts.phases[0])


def test_reader_options_interpolating_the_seed_read_again(base_cfg, tmp_path):
    firsts = []
    for seed in (0, 1, 0):
        trainer = image_trainer(base_cfg, tmp_path / str(seed), reader={"start": "${seed}"}, seed=seed)
        firsts.append(int(trainer.data.arrays(trainer.cfg.dataset).x_train[0, 0, 0, 0]))
    assert firsts == [0, 1, 0]


def test_the_data_source_is_recorded_under_the_datasets_name(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path / "named", reader={"source": "/data/tiny"},
                            dataset__name="tiny")
    trainer.data.arrays(trainer.cfg.dataset)
    assert trainer.rec.result["data"] == {"tiny": "/data/tiny"}
    later = OmegaConf.merge(trainer.cfg.dataset, {"name": "later", "reader": {"source": "/data/later"}})
    trainer.data.arrays(later)  # a phase's other dataset: recorded beside the first
    assert trainer.rec.result["data"] == {"tiny": "/data/tiny", "later": "/data/later"}
    trainer = image_trainer(base_cfg, tmp_path / "unnamed", reader={"source": "/data/tiny2"})
    trainer.data.arrays(unnamed(trainer))
    assert trainer.rec.result["data"] == {"dataset": "/data/tiny2"}
    trainer = image_trainer(base_cfg, tmp_path / "none")
    trainer.data.arrays(trainer.cfg.dataset)
    assert "data" not in trainer.rec.result  # no files read: nothing to record


def test_smoke_data_follow_the_seed_bitwise(base_cfg, tmp_path):
    from runner import ci
    from runner.data.synthetic import shapes_only
    for seed in (0, 1):
        cfg = ci.apply(with_(base_cfg, ci__level="smoke", seed=seed))
        got = Trainer(cfg, RunRecorder(tmp_path / str(seed), {"name": "smoke"})).data.arrays(cfg.dataset)
        want = shapes_only(cfg.dataset.shape, cfg.dataset.num_classes, cfg.ci.n_train, cfg.ci.n_test,
                           seed=seed, dtype=cfg.dataset.dtype)
        assert torch.equal(got.x_train, want.x_train) and torch.equal(got.y_test, want.y_test)
    assert not torch.equal(got.x_train, shapes_only(cfg.dataset.shape, cfg.dataset.num_classes,
                                                    cfg.ci.n_train, cfg.ci.n_test, seed=0,
                                                    dtype=cfg.dataset.dtype).x_train)


def test_smoke_inputs_are_bytes_unless_the_dataset_says_otherwise(base_cfg, tmp_path):
    from runner import ci
    cfg = with_(base_cfg, ci__level="smoke")
    assert ci.apply(cfg).dataset.reader.dtype == "float32"  # reinit_synthetic's features
    del cfg.dataset.dtype
    trainer = Trainer(ci.apply(cfg), RunRecorder(tmp_path, {"name": "bytes"}))
    assert trainer.data.arrays(trainer.cfg.dataset).x_train.dtype == torch.uint8


# -- caches and their budgets ------------------------------------------------------------------
def test_the_input_cache_budget(trainer, monkeypatch):
    trainer.parts.opts.cache_mb = 3
    assert trainer.data.cache_bytes() == 3 * 2**20  # the CPU: the configured MB
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return 2 * 2**20 + 1, 8 * 2**30  # free, total
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    trainer.parts.device = torch.device("cuda:1")  # a GPU: at most half of its free memory
    assert trainer.data.cache_bytes() == 2**20 and isinstance(trainer.data.cache_bytes(), int)
    trainer.parts.opts.cache_mb = 0.5
    assert trainer.data.cache_bytes() == 2**19 and asked == [torch.device("cuda:1")] * 3


def test_float_bytes_counts_every_split_after_the_deterministic_transforms(trainer):
    def split(n):
        return Split(torch.zeros(n, 1, 4, 5, dtype=torch.uint8), torch.zeros(n, dtype=torch.long))
    splits = Splits(split(6), split(2), split(3))
    gray = Pipeline([0.5], [0.5], [], [], "cpu")
    rgb = Pipeline([0.5], [0.5], [transforms.ToRGB()], [], "cpu")
    assert trainer.data.float_bytes(splits, gray) == 4 * 11 * 20
    assert trainer.data.float_bytes(splits, rgb) == 4 * 11 * 60


@pytest.mark.parametrize("budget, cached", [(1000, True), (999, False)])
def test_inputs_are_prepared_once_when_they_fit_the_cache_budget(base_cfg, tmp_path, monkeypatch, budget, cached):
    trainer = image_trainer(base_cfg, tmp_path)
    monkeypatch.setattr(trainer.data, "float_bytes", lambda splits, pipe: 1000)
    monkeypatch.setattr(trainer.data, "cache_bytes", lambda: budget)  # exactly the size still fits
    trainer.data.load_phase_data(trainer.parts.phases[0])
    assert trainer.ctx.data.train.x.dtype == (torch.float32 if cached else torch.uint8)


def test_the_arrays_cache_keeps_the_most_recently_used_entries():
    from runner.training.data import ArraysCache
    cache = ArraysCache(2)
    cache.put("a", "A"), cache.put("b", "B")
    assert cache.get("a") == "A"  # used: "b" is now the oldest
    cache.put("c", "C")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    cache.clear()
    assert cache.get("a") is None


def test_phases_on_the_same_dataset_share_its_device_splits(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path)
    first = trainer.data.device_splits(trainer.cfg.dataset)
    assert trainer.data.device_splits(trainer.cfg.dataset) is first  # not split again


def test_each_phase_loads_its_data_once(trainer):
    loaded, load = [], trainer.data.load_phase_data
    trainer.data.load_phase_data = lambda phase: loaded.append(phase.name) or load(phase)
    trainer.parts.opts.epochs = 1
    trainer.fit()
    assert loaded == ["a", "b1", "b2", "b3", "c"]


def test_device_memory_is_given_back_on_a_gpu_only(trainer, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    trainer.data.free_device_memory()
    assert emptied == []
    trainer.parts.device = torch.device("cuda")
    trainer.data.free_device_memory()
    assert emptied == [1]


# -- streamed datasets -------------------------------------------------------------------------
class Streamed:
    """What a streamed split looks like to the trainer: it gives its own batches."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def batches(self, batch_size, gen, shuffle, limit):
        return iter(())


def test_streamed_datasets_get_their_options_and_are_not_cached(base_cfg, tmp_path, monkeypatch):
    import runner.training.data as data_module
    trainer = image_trainer(base_cfg, tmp_path)
    OmegaConf.update(trainer.cfg, "dataset.stream", {"size": 8, "workers": "${seed}"}, force_add=True)
    asked = []

    def stream_splits(files, val_fraction, seed, device, **opts):
        asked.append((files, val_fraction, seed, device, opts))
        if len(asked) == 1:
            raise OSError("unreadable")
        return Splits(Streamed(6), Streamed(0), Streamed(2))
    monkeypatch.setattr(data_module, "stream_splits", stream_splits)
    with pytest.raises(OSError):
        trainer.data.load_phase_data(trainer.parts.phases[0])
    trainer.data.load_phase_data(trainer.parts.phases[0])  # a failed build leaves nothing half-made
    files, val_fraction, seed, device, opts = asked[-1]
    assert isinstance(files, Arrays) and len(files.x_train) == 16  # the reader's output
    assert (val_fraction, seed, device, opts) == (0.0, trainer.cfg.seed, trainer.parts.device,
                                                  {"size": 8, "workers": trainer.cfg.seed})
    assert isinstance(trainer.ctx.data.train, Streamed)  # used as it is, not prepared


def test_a_streamed_reader_refusing_its_options_is_named(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, reader={"fail": True})
    OmegaConf.update(trainer.cfg, "dataset.stream", {"size": 8}, force_add=True)
    with pytest.raises(RunnerError, match=r"^dataset\.reader: no such files \(calling"):
        trainer.data.load_phase_data(trainer.parts.phases[0])


# -- a phase's data: dataset, subset, continual chunks, validation split -----------------------
def test_a_phase_trains_on_the_dataset_it_names(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path)
    OmegaConf.update(trainer.cfg, "datasets", {"later": {**OmegaConf.to_container(trainer.cfg.dataset),
                                                         "reader": {"_target_": f"{__name__}.tiny_images", "start": 100}}},
                     merge=False, force_add=True)
    trainer.data.load_phase_data(make_phase(trainer, dataset="later"))
    assert trainer.ctx.data.train.x.min().item() == pytest.approx(100 / 255)
    with pytest.raises(RunnerError, match=r"^phase dataset 'nope' is not in `datasets`; defined: \['later'\]"):
        trainer.data.load_phase_data(make_phase(trainer, dataset="nope"))


def test_a_subset_larger_than_the_training_set_names_the_dataset(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, dataset__name="tiny")
    with pytest.raises(ConfigError, match=r"subset.n=99 of phase 's' exceeds the 16 training "
                                          r"samples of tiny; lower it"):
        trainer.data.load_phase_data(make_phase(trainer, subset__n=99))


def test_the_smoke_level_caps_a_subset_at_the_training_set(base_cfg, tmp_path):
    from runner import ci
    cfg = with_(base_cfg, ci__level="smoke", ci__n_train=20, phases__0__subset__n=1000,
                phases__1__subset__n=15, phases__2__subset__n=14)
    cfg = ci.apply(cfg)  # 20 samples, 5 of them (val_fraction 0.25) held out
    assert [p.subset.n for p in cfg.phases] == [15, 15, 14]
    trainer = Trainer(cfg, RunRecorder(tmp_path, {"name": "subset"}))
    trainer.data.load_phase_data(trainer.parts.phases[0])
    assert len(trainer.ctx.data.train) == 15


@pytest.mark.parametrize("access, chunk", [("limited", slice(4, 8)), ("full", slice(0, 8))])
def test_a_continual_chunk_is_its_piece_of_the_seeds_order(base_cfg, tmp_path, access, chunk):
    from runner.data.tensors import subset_indices
    trainer = image_trainer(base_cfg, tmp_path)
    ph = make_phase(trainer, subset__chunks=4, subset__access=access)
    trainer.data.load_phase_data(make_phase(trainer))
    whole = trainer.ctx.data.train.x
    trainer.data.load_phase_data(Phase(1, 1, "s2", ph.cfg))  # the phase's second repeat: chunk 1
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(trainer.cfg.seed + 7919))
    assert torch.equal(subset_indices(16, trainer.cfg.seed, chunks=4), perm[:4])  # the seed's order
    assert torch.equal(trainer.ctx.data.train.x, whole[perm[chunk]])


def test_val_seed_fixes_the_validation_split_across_seeds(base_cfg, tmp_path):
    def val(seed, val_seed):
        trainer = image_trainer(base_cfg, tmp_path / f"{seed}-{val_seed}", seed=seed,
                                train__val_fraction=0.25, train__val_seed=val_seed)
        return sorted(trainer.data.device_splits(trainer.cfg.dataset).val.x[:, 0, 0, 0].tolist())
    assert val(0, 7) == val(1, 7) == val(7, None)
    assert val(0, None) != val(1, None)


# -- normalization, augmentation and layout ----------------------------------------------------
def test_inputs_are_normalized_by_the_datasets_mean_and_std(base_cfg, tmp_path):
    x = torch.arange(16, dtype=torch.float32) / 255  # the pixel values of tiny_images' training set
    for drop, want in (((), (x - 0.5) / 0.25), (("std",), x - 0.5), (("mean", "std"), x)):  # defaults 0, 1
        trainer = image_trainer(base_cfg, tmp_path, dataset__mean=[0.5], dataset__std=[0.25])
        unnamed(trainer, drop=drop)
        trainer.data.load_phase_data(trainer.parts.phases[0])
        got = trainer.ctx.data.train.x[:, 0, 0, 0]
        torch.testing.assert_close(got.sort().values, want)


def test_phase_data_takes_the_subset_and_the_phases_or_datasets_augmentation(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, dataset__augment=[{"_target_": f"{__name__}.Add", "v": 2.0}])
    ctx, x = trainer.ctx, torch.full((3, 1, 2, 2), 0.2)  # a batch of the cached (prepared) inputs
    for augment, added in ((None, 2.0), ([{"_target_": f"{__name__}.Add", "v": 1.0}], 1.0), ([], 0.0)):
        trainer.data.load_phase_data(make_phase(trainer, augment=augment))
        assert len(ctx.data.train) == 16
        torch.testing.assert_close(ctx.pipeline(x, True, trainer.parts.aug_gen), torch.full_like(x, 0.2 + added))
        torch.testing.assert_close(ctx.pipeline(x, False, trainer.parts.aug_gen), x)
    trainer.data.load_phase_data(make_phase(trainer, subset__n=5))
    assert len(ctx.data.train) == 5 and len(set(ctx.data.train.x[:, 0, 0, 0].tolist())) == 5


class SeeGen:
    """An augmentation that records the generator it draws from."""
    gens = []

    def __call__(self, x, gen):
        self.gens.append(gen)
        return x


register("transform", SeeGen)


def test_cached_inputs_are_augmented_with_the_trainers_generator(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path, dataset__augment=[{"_target_": f"{__name__}.SeeGen"}])
    trainer.data.load_phase_data(trainer.parts.phases[0])
    assert trainer.ctx.data.train.x.dtype == torch.float32  # cached: only the random part is left
    SeeGen.gens = []
    trainer.ctx.pipeline(trainer.ctx.data.train.x[:2], True, trainer.parts.aug_gen)
    assert SeeGen.gens == [trainer.parts.aug_gen]


def test_augmentations_and_transforms_refusing_an_option_name_the_phase(base_cfg, tmp_path):
    trainer = image_trainer(base_cfg, tmp_path)
    bad = [{"_target_": f"{__name__}.Add", "nope": 1}]
    for key in ("augment", "transform"):
        with pytest.raises(RunnerError, match=rf"^s\.{key}: .*\(calling {__name__}\.Add\)"):
            trainer.data.load_phase_data(make_phase(trainer, **{key: bad}))


def test_channels_last_layout_passes_the_generator_on(trainer):
    seen = []

    def pipe(x, train, gen):
        seen.append((train, gen))
        return x
    trainer.parts.opts.channels_last = True
    out = trainer.data.with_layout(pipe)(torch.zeros(2, 3, 4, 5), False, trainer.parts.aug_gen)
    assert out.is_contiguous(memory_format=torch.channels_last) and seen == [(False, trainer.parts.aug_gen)]
    assert trainer.data.with_layout(pipe)(torch.zeros(2, 3), True, None).shape == (2, 3)
