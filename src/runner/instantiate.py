"""Objects from config nodes: a node's `_target_` called with its other keys."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from hydra.utils import get_method
from omegaconf import OmegaConf

from runner.errors import RunnerError


def instantiate(node, where: str) -> Any:
    """Call the `_target_` of a config node with its other keys (nested `_target_`s are built
    first). A bad target or argument names `where`, and so does a `ValueError` (a constructor's
    way of refusing an option); other errors inside the target propagate unchanged. Which
    targets may be named is checked before (`runner.config.validate`).
    """
    kwargs = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    target = kwargs.pop("_target_", None)
    if target is None:
        raise RunnerError(f"{where} has no _target_ (keys: {sorted(kwargs)})")
    try:
        fn = get_method(target) if "." in target else None
    except Exception as e:
        raise RunnerError(f"{where}._target_={target!r} cannot be imported ({e})") from None
    if fn is None:
        raise RunnerError(f"{where}._target_={target!r} is not a dotted path to a callable")
    if "lambda" in kwargs:  # Python reserves the word; constructors take `lam`
        kwargs["lam"] = kwargs.pop("lambda")
    kwargs = {k: instantiate(v, f"{where}.{k}") if isinstance(v, dict) and "_target_" in v else v
              for k, v in kwargs.items()}
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise RunnerError(f"{where}: {e} (calling {target})") from None
    try:
        return fn(**kwargs)
    except ValueError as e:
        raise RunnerError(f"{where}: {' '.join(str(e).split())} (calling {target})") from e


def build_model(cfg) -> torch.nn.Module:
    """The configured model with its `model_transforms` applied (masks' structure, bases, ...)."""
    model = instantiate(cfg.model, "model")
    for i, t in enumerate(cfg.get("model_transforms") or []):
        model = instantiate(t, f"model_transforms[{i}]")(model) or model
    return model
