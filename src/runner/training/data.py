"""A phase's data on the device: the reader's arrays (a bounded cache of those read from
files), train / val / test splits, the phase's subset and its pipeline."""
from __future__ import annotations

import gc
from collections import OrderedDict
from typing import Optional

import torch
from omegaconf import OmegaConf

from runner.context import Phase
from runner.data.stream import stream_splits
from runner.data.tensors import (Arrays, Pipeline, Splits, check_shape, split_train_val,
                                 subset_indices)
from runner.errors import ConfigError, DataError, RunnerError
from runner.instantiate import instantiate
from runner.results import Recorder


class ArraysCache:
    """The last `size` arrays read from files, by reader options (most recent kept)."""

    def __init__(self, size: int):
        self.size, self.entries = size, OrderedDict()

    def get(self, key: str) -> Optional[Arrays]:
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, key: str, arrays: Arrays) -> None:
        self.entries[key] = arrays
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def pop(self, key: str) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()


ARRAYS = ArraysCache(4)  # shared by the runs of one process (the jobs of a sweep)


def check_labels(arrays: Arrays, classes: int, name: str) -> None:
    """Labels are integers in [0, classes), as many as the images."""
    for part in ("train", "test"):
        x, y = getattr(arrays, f"x_{part}"), getattr(arrays, f"y_{part}")
        if len(x) != len(y):
            raise DataError(f"{name}: {len(x)} {part} images but {len(y)} labels"
                            + (f" (in {arrays.source})" if arrays.source else "")
                            + "; the files do not belong together")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise DataError(f"{name}: {part} labels span [{int(y.min())}, {int(y.max())}], outside "
                            f"[0, {classes}) (num_classes={classes})"
                            + (f"; files in {arrays.source}" if arrays.source else ""))


def read_ahead(cfg) -> None:
    """Read (or download) every dataset the run's phases name, before the run's directory is
    written, so that missing data stop the run in one line; the arrays read from files wait in
    `ARRAYS` for the trainer. Streamed datasets are read by their workers later."""
    keys = dict.fromkeys(phase.get("dataset") for phase in cfg.phases)
    for key in keys:
        ds = cfg.dataset if key is None else cfg.datasets.get(key)
        if ds is None or ds.get("stream") is not None:
            continue
        reader = OmegaConf.to_yaml(ds.reader, resolve=True)
        if ARRAYS.get(reader) is None:
            arrays = instantiate(ds.reader, "dataset.reader", "reader", cfg.target_allowlist)
            check_labels(arrays, ds.num_classes, ds.get("name", "dataset"))
            check_shape(arrays, ds.shape, ds.get("name", "dataset"))
            ARRAYS.put(reader, arrays)  # generated arrays: for this run only (`DataStager.arrays`)


def check_split_sizes(splits: Splits, phase: Phase, val_fraction: float, available: int) -> None:
    """A phase trains on at least one sample, and validates on one when asked to."""
    if len(splits.train) == 0:
        sub = {k: v for k, v in phase.cfg.subset.items() if v is not None and k != "access"}
        raise ConfigError(f"phase {phase.name!r} (repeat {phase.repeat}) has no training samples: "
                          f"{available} after train.val_fraction={val_fraction}, then subset "
                          f"{sub or 'none'}; give a larger subset, fewer chunks or a smaller "
                          f"val_fraction")
    if val_fraction > 0 and len(splits.val) == 0:
        raise ConfigError(f"train.val_fraction={val_fraction} leaves no validation sample in phase "
                          f"{phase.name!r}; raise it, or set 0 for no validation")


class DataStager:
    """Puts each phase's data and pipeline into the run's context (`parts.ctx`)."""

    def __init__(self, parts, rec: Recorder):
        self.parts, self.rec = parts, rec
        self.on_device = None  # (dataset config key, splits on the device) for reuse
        self.staged = None  # (phase config, data, pipeline): what the repeats of a phase share

    def dataset_cfg(self, key: Optional[str]):
        cfg = self.parts.cfg
        if key is None:
            return cfg.dataset
        if key not in cfg.datasets:
            raise RunnerError(f"phase dataset {key!r} is not in `datasets`; "
                              f"defined: {sorted(cfg.datasets)}")
        return cfg.datasets[key]

    def arrays(self, ds) -> Arrays:
        """The reader's arrays; those read from files (`source` set) are kept for the next run
        of the same reader options, generated ones (synthetic data) are drawn again: those that
        `read_ahead` drew for this run are taken out of the cache."""
        key = OmegaConf.to_yaml(ds.reader, resolve=True)  # interpolated options (seed) count
        arrays = ARRAYS.get(key)
        if arrays is not None and arrays.source is None:
            ARRAYS.pop(key)
        if arrays is None:
            arrays = instantiate(ds.reader, "dataset.reader", "reader", self.parts.cfg.target_allowlist)
            check_labels(arrays, ds.num_classes, ds.get("name", "dataset"))
            check_shape(arrays, ds.shape, ds.get("name", "dataset"))
            if arrays.source is not None:
                ARRAYS.put(key, arrays)
        if arrays.source is not None:
            self.rec.update(data={**self.rec.result.get("data", {}), ds.get("name", "dataset"): arrays.source})
        return arrays

    def device_splits(self, ds) -> Splits:
        """Train / val / test of a dataset on the device; reused while phases keep the dataset."""
        cfg, device = self.parts.cfg, self.parts.device
        tr = cfg.train
        key = OmegaConf.to_yaml(ds, resolve=True)
        if self.on_device is not None and self.on_device[0] == key:
            return self.on_device[1]
        self.on_device = None  # free the previous dataset before building the next
        self.free_device_memory()
        val_seed = cfg.seed if tr.val_seed is None else tr.val_seed
        if ds.get("stream") is not None:  # files read by workers
            splits = stream_splits(instantiate(ds.reader, "dataset.reader", "reader", cfg.target_allowlist),
                                   tr.val_fraction,
                                   val_seed, device, **OmegaConf.to_container(ds.stream, resolve=True))
        else:
            splits = split_train_val(self.arrays(ds), tr.val_fraction, val_seed, device)
        self.on_device = (key, splits)
        return splits

    def free_device_memory(self) -> None:
        if self.parts.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def release(self) -> None:
        """Drop the run's data (the end of `fit`)."""
        self.on_device = self.staged = None
        self.parts.ctx.data = None

    def load_phase_data(self, phase: Phase) -> None:
        """The phase's splits and pipeline into ctx; a repeat of the phase before, other than a
        continual chunk, reuses its data."""
        ctx, device, seed = self.parts.ctx, self.parts.device, self.parts.cfg.seed
        if self.staged is not None and self.staged[0] is phase.cfg and phase.cfg.subset.chunks is None:
            ctx.data, ctx.pipeline = self.staged[1:]
            return
        ds = self.dataset_cfg(phase.cfg.dataset)
        ctx.data = ctx.pipeline = self.staged = None
        base = self.device_splits(ds)
        splits = Splits(base.train, base.val, base.test)
        sub = phase.cfg.subset
        if sub.n is not None and sub.n > len(splits.train):
            raise ConfigError(f"subset.n={sub.n} of phase {phase.name!r} exceeds the {len(splits.train)} "
                              f"training samples of {ds.get('name', 'the dataset')}; lower it")
        idx = subset_indices(len(splits.train), seed, sub.fraction, sub.n, sub.chunks,
                             phase.repeat, sub.access)
        if idx is not None:
            splits.train = splits.train.take(idx.to(device))
        check_split_sizes(splits, phase, self.parts.cfg.train.val_fraction, len(base.train))
        augment = phase.cfg.augment if phase.cfg.augment is not None else ds.get("augment", [])
        allow = self.parts.cfg.target_allowlist
        pipe = Pipeline(ds.get("mean", [0.0]), ds.get("std", [1.0]),
                        [instantiate(t, f"{phase.name}.transform", "transform", allow)
                         for t in phase.cfg.transform],
                        [instantiate(t, f"{phase.name}.augment", "transform", allow) for t in augment],
                        device)
        ctx.pipeline = self.with_layout(pipe)
        streamed = hasattr(splits.train, "batches")
        if not streamed and self.float_bytes(splits, pipe) <= self.cache_bytes():
            splits = Splits(*(pipe.prepare(s) for s in (splits.train, splits.val, splits.test)))
            ctx.pipeline = self.with_layout(lambda x, train, gen: pipe.random(x, train, gen))
        ctx.data = splits
        self.staged = (phase.cfg, ctx.data, ctx.pipeline)

    def with_layout(self, pipe):
        """The pipeline, giving channels-last batches when the model is channels-last."""
        if not self.parts.opts.channels_last:
            return pipe
        return lambda x, train, gen: (lambda y: y.contiguous(memory_format=torch.channels_last)
                                      if y.dim() == 4 else y)(pipe(x, train, gen))

    def cache_bytes(self) -> int:
        device = self.parts.device
        limit = self.parts.opts.cache_mb * 2**20
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            limit = min(limit, free // 2)
        return limit

    @staticmethod
    def float_bytes(splits: Splits, pipe: Pipeline) -> int:
        """Size of the splits as float32 after the deterministic transforms."""
        probe = pipe.deterministic(splits.train.x[:1])
        n = len(splits.train) + len(splits.val) + len(splits.test)
        return 4 * n * probe[0].numel()
