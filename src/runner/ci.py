"""Test levels (`ci=smoke`, `ci=sizes`): the one place that knows a run is a test.

A level is ordinary options. Its file (conf/ci/*.yaml) sets the trainer's caps (`train.max_epochs`,
`train.max_batches`, ...), and `apply` writes the rest into a new config before anything is built
(`runner.config.prepare`): the experiment's own `ci.overrides` (and, at `sizes`,
`ci.sizes_overrides`), narrower layers, no checkpoints, and synthetic data of each dataset's shape
as that dataset's reader (in memory: no streaming workers), with every phase's `subset.n` clipped
to the synthetic training split. At `sizes` the synthetic data are larger than every sample count
the config names, so code that slices by those counts meets the sizes a real run meets. The
trainer and the methods read options only; none of them asks for the level.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from runner.data.tensors import val_count
from runner.errors import ConfigError

LEVELS = ("none", "smoke", "sizes")
# keys whose integer value is a number of samples: batch sizes, Fisher / calibration samples, ...
COUNT_KEY = re.compile(r"(^|_)(samples|batch|batch_size|calib_size|margins)$")
SYNTHETIC = "runner.data.synthetic.shapes_only"  # the reader of every dataset at a test level
_ABSENT = object()


def level_of(config: Any) -> str:
    """The test level a resolved config (a run's recorded `config`) ran at: `smoke`, `sizes`, or
    "" for the experiment as written."""
    level = ((config or {}).get("ci") or {}).get("level")
    return "" if level in (None, "none") else str(level)


def sample_counts(node: Any, key: str = "") -> Iterator[int]:
    """Every integer in `node` stored under a sample-count key, and every `subset.n`."""
    if isinstance(node, DictConfig):
        for k in node:
            v = node[k]
            if key == "subset" and k == "n" and isinstance(v, int):
                yield v
            else:
                yield from sample_counts(v, str(k))
    elif isinstance(node, ListConfig):
        for v in node:
            yield from sample_counts(v, key)
    elif isinstance(node, int) and not isinstance(node, bool) and COUNT_KEY.search(key):
        yield node


def sizes_data(cfg) -> tuple[int, int]:
    """(n_train, n_test) larger than every sample count in the config, after the validation split."""
    largest = max([1024, *sample_counts(cfg)])
    keep = 1.0 - cfg.train.val_fraction
    n_test = int(largest * 1.1) + 3  # not a multiple of any batch size: a ragged last batch
    return int(math.ceil(n_test / keep)) + 1, n_test


WIDTH_KEYS = ("widths", "layers", "classifier", "channels", "width")


def narrow(model: DictConfig, factor: float) -> None:
    """Multiply the model's width options by `factor` (at least 1 channel; 'M' pools kept)."""
    if factor == 1.0:
        return
    for key in WIDTH_KEYS:
        value = model.get(key)
        if isinstance(value, ListConfig):
            model[key] = [max(1, round(v * factor)) if isinstance(v, int) else v for v in value]
        elif isinstance(value, float):
            model[key] = value * factor
        elif isinstance(value, int) and not isinstance(value, bool):
            model[key] = max(1, round(value * factor))


def write_overrides(cfg: DictConfig, level: str) -> None:
    """The experiment's own changes for this level; each must name a key of the config."""
    changes = {k: ("ci.overrides", v) for k, v in cfg.ci.overrides.items()}
    if level == "sizes":
        changes.update({k: ("ci.sizes_overrides", v) for k, v in cfg.ci.sizes_overrides.items()})
    for key, (field, value) in changes.items():
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(
                f"{field} of {cfg.name} names {key!r}, which reaches nothing in this config; fix "
                f"the key, or override a node every run of the experiment has (a method's option "
                f"through a `tuned` value that its method config reads, as conf/method/set.yaml)")
        OmegaConf.update(cfg, key, value, merge=False)


def synthetic_reader(ds: DictConfig, n_train: int, n_test: int) -> dict:
    """The reader of synthetic data of the dataset's shape, classes and dtype (seeded by the run)."""
    return {"_target_": SYNTHETIC,
            "shape": OmegaConf.to_container(ds.shape, resolve=True),
            "num_classes": ds.num_classes, "n_train": n_train, "n_test": n_test,
            "seed": "${seed}", "dtype": ds.get("dtype", "uint8")}


def apply(cfg: DictConfig) -> DictConfig:
    """A new config: `cfg` at its test level (a copy of it at level `none`); `cfg` is unchanged."""
    level = cfg.ci.level
    if level not in LEVELS:
        raise ConfigError(f"ci.level={level!r} is invalid; valid: one of {', '.join(LEVELS)}")
    cfg = copy.deepcopy(cfg)
    if level == "none":
        return cfg
    with open_dict(cfg):
        write_overrides(cfg, level)
        narrow(cfg.model, cfg.ci.width)
        cfg.train.checkpoint = cfg.train.checkpoint and cfg.ci.checkpoints
        n_train, n_test = cfg.ci.n_train, cfg.ci.n_test
        if n_train is None or n_test is None:  # sizes: larger than every count
            larger_train, larger_test = sizes_data(cfg)
            n_train, n_test = n_train or larger_train, n_test or larger_test
        for ds in [cfg.dataset, *(cfg.datasets[k] for k in cfg.datasets)]:
            if ds is None:
                continue
            ds.reader = synthetic_reader(ds, n_train, n_test)
            if "stream" in ds:
                ds.stream = None  # in memory: no file-reading workers
        train_n = n_train - val_count(n_train, cfg.train.val_fraction)
        for phase in cfg.phases:  # every dataset now has train_n training samples
            if phase.subset.n is not None and phase.subset.n > train_n:
                phase.subset.n = train_n
    return cfg
