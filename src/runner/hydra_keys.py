"""Hydra's own instantiating keys, checked as the runner's `_target_`s are (`runner.targets`).

Hydra builds callbacks, the launcher and the sweeper from `hydra.*` targets, configures logging
from `hydra.job_logging` / `hydra.hydra_logging` (whose `()` and `class` keys call any callable,
and whose file handlers write any path), and sets `hydra.job.env_set` in the job's environment.
An experiment file may set all of them. `install()` wraps Hydra's config loader so that every
config it composes (a run, a sweep's base and each sweep job) passes `check` before Hydra uses it:

- a callback is a registered `callback` component (`runner.targets.resolve`);
- the launcher and sweeper are Hydra plugins (Hydra's own rule) with no nested `_target_`;
- logging: no `()` factories, handler classes `logging.StreamHandler` / `logging.FileHandler`
  only, streams `ext://sys.stdout` / `ext://sys.stderr`, files inside the run's directory;
- `hydra.job.env_set` and `env_copy` empty.
"""
from __future__ import annotations

import re
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import targets
from runner.errors import ConfigError

LOG_CLASSES = ("logging.StreamHandler", "logging.FileHandler", "logging.Formatter")
STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
LOG_FILE = re.compile(r"\$\{hydra\.runtime\.output_dir\}/(\$\{hydra\.job\.name\}|[\w-])[\w.-]*")


def _walk(node: Any, path: str):
    """(dotted path, key, value) of every entry of a plain tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, str(k), v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}.{i}")


def _check_logging(node: Any, path: str) -> None:
    for where, key, value in _walk(node, path):
        if key == "()":
            raise ConfigError(f"{where}.()={value!r} is refused: logging factories run code; "
                              f"use class: {' or '.join(LOG_CLASSES[:2])}")
        if key == "class" and value not in LOG_CLASSES:
            raise ConfigError(f"{where}.class={value!r} is refused; allowed at {where}: "
                              f"{', '.join(LOG_CLASSES)}")
        if isinstance(value, str) and value.startswith("ext://") and value not in STREAMS:
            raise ConfigError(f"{where}.{key}={value!r} is refused; allowed: {', '.join(STREAMS)}")
        if key == "filename" and not (isinstance(value, str) and LOG_FILE.fullmatch(value)):
            raise ConfigError(f"{where}.filename={value!r} is refused: log files stay in the run's "
                              f"directory (${{hydra.runtime.output_dir}}/NAME.log)")


def check(hydra: Any) -> None:
    """Raise `ConfigError` (one line naming the key) where `hydra` (the `hydra` node, as composed,
    unresolved) would have Hydra call or write something that the runner does not allow."""
    plain = OmegaConf.to_container(hydra, resolve=False) if isinstance(hydra, DictConfig) else hydra
    for name, cb in (plain.get("callbacks") or {}).items():
        where = f"hydra.callbacks.{name}"
        if not isinstance(cb, dict) or "_target_" not in cb:
            raise ConfigError(f"{where} is refused: a callback is a node with a _target_")
        targets.resolve(cb["_target_"], where, "callback")
        if any(True for _, k, _ in _walk({k: v for k, v in cb.items() if k != "_target_"}, where)
               if k == "_target_"):
            raise ConfigError(f"{where} holds a nested _target_, which is refused")
    for key, value in plain.items():
        if key in ("launcher", "sweeper"):
            value = {k: v for k, v in (value or {}).items() if k != "_target_"}
        if key == "callbacks":
            continue
        for where, k, v in _walk(value, f"hydra.{key}"):
            if k == "_target_":
                raise ConfigError(f"{where}._target_={v!r} is refused: Hydra's keys take no target "
                                  f"there")
    for key in ("job_logging", "hydra_logging"):
        _check_logging(plain.get(key), f"hydra.{key}")
    job = plain.get("job") or {}
    for key in ("env_set", "env_copy"):
        if job.get(key):
            raise ConfigError(f"hydra.job.{key} is refused: a config may not set the job's "
                              f"environment variables; set them in the shell")


def install() -> None:
    """Check every config Hydra's loader composes (idempotent). From the command line (a run, a
    sweep and each of its jobs) a refusal is one line and exit status 2; the compose API raises."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    load = ConfigLoaderImpl.load_configuration
    if getattr(load, "checks_hydra_keys", False):
        return

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, **kwargs):
        cfg = load(self, config_name, overrides, run_mode, from_shell=from_shell, **kwargs)
        if "hydra" in cfg:
            try:
                check(cfg.hydra)
            except ConfigError as e:
                if not from_shell:  # Hydra's compose API: the caller handles it
                    raise
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
        return cfg

    load_configuration.checks_hydra_keys = True
    ConfigLoaderImpl.load_configuration = load_configuration
