"""Test levels (`ci=smoke`, `ci=sizes`): the one place that knows a run is a test.

`apply` turns a composed config into its test-level version before anything is built: the
experiment's own `ci.overrides` (and, at `sizes`, `ci.sizes_overrides`) are written into the
config, and at `sizes` the synthetic data are made larger than every sample count the config
names, so code that slices by those counts meets the sizes a real run meets. The trainer reads
the caps (`n_train`, `max_batches`, ...) through `caps`; methods never see the level.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from runner.errors import ConfigError

log = logging.getLogger("runner")

LEVELS = ("none", "smoke", "sizes")
# keys whose integer value is a number of samples: batch sizes, Fisher / calibration samples, ...
COUNT_KEY = re.compile(r"(^|_)(samples|batch|batch_size|calib_size|margins)$")


def active(cfg) -> bool:
    return cfg.ci.level != "none"


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


def apply(cfg: DictConfig) -> DictConfig:
    """The config of this test level (unchanged at level `none`)."""
    level = cfg.ci.level
    if level not in LEVELS:
        raise ConfigError(f"ci.level={level!r} is invalid; valid: one of {', '.join(LEVELS)}")
    if level == "none":
        return cfg
    changes = dict(cfg.ci.overrides)
    if level == "sizes":
        changes.update(cfg.ci.sizes_overrides)
    with open_dict(cfg):
        for key, value in changes.items():
            if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
                # an experiment that extends another may drop what the override changes
                log.info("ci: %s is not in this config; its test-level override is skipped", key)
                continue
            OmegaConf.update(cfg, key, value, merge=False)
        narrow(cfg.model, cfg.ci.width)
        cfg.train.checkpoint = cfg.train.checkpoint and cfg.ci.checkpoints
        if level == "sizes":
            n_train, n_test = sizes_data(cfg)
            cfg.ci.n_train = cfg.ci.n_train or n_train
            cfg.ci.n_test = cfg.ci.n_test or n_test
    return cfg


def cap(value: Optional[int], limit: Optional[int]) -> Optional[int]:
    """min(value, limit), where None means 'no limit' for the limit and 'all' for the value."""
    if limit is None:
        return value
    return limit if value is None else min(value, limit)
