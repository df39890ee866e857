"""Objects from config nodes: a node's `_target_` called with its other keys."""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from runner import options, targets
from runner.errors import RunnerError


def instantiate(node, where: str, kind: str, allowlist: Sequence[str] = ()) -> Any:
    """Call the `_target_` of a config node with its other keys. The target must be a component
    of `kind` (`runner.targets.resolve`, checked again here as with the config before the run).
    A bad target or argument names `where`, and so does a `ValueError` (a constructor's way of
    refusing an option); other errors inside the target propagate unchanged.
    """
    kwargs = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    target = kwargs.pop("_target_", None)
    if kind == "method":
        kwargs.pop(options.LABEL, None)  # the table's name for it
    if target is None:
        raise RunnerError(f"{where} has no _target_ (keys: {sorted(kwargs)})")
    fn = targets.resolve(target, where, kind, allowlist)
    if "lambda" in kwargs:  # Python reserves the word; constructors take `lam`
        kwargs["lam"] = kwargs.pop("lambda")
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
    allow = cfg.get("target_allowlist") or ()
    model = instantiate(cfg.model, "model", "model", allow)
    for i, t in enumerate(cfg.get("model_transforms") or []):
        model = instantiate(t, f"model_transforms.{i}", "model_transform", allow)(model) or model
    return model
