"""A method's options are its constructor's parameters: their defaults and ranges live there.

`register()` stores, for every conf/method/NAME.yaml, a config `method_options/NAME` that the
root config composes onto the chosen method (`- method_options@method: ${method}`): every
parameter of the `_target_`'s signature, as

    OPTION: ${oc.select:tuned.NAME.OPTION,VALUE}

where VALUE is what the method's YAML (and the YAMLs it extends) writes, else the constructor's
default. So `--cfg job` shows every option; an experiment's `tuned.NAME.OPTION` applies when NAME
runs; an experiment's own `method.OPTION` and the command line's `method.OPTION=...` replace it.
A parameter named `lam` is the option `lambda` (a reserved word in Python).

Ranges: a parameter annotated `Annotated[float, NON_NEGATIVE]` (runner.ranges) is checked by
`runner.config.validate` before anything is built.
"""
from __future__ import annotations

import importlib
import inspect
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

GROUP = "method_options"
LABEL = "label"  # a method YAML's name for tables (`BL`, `S&P`): not an option, not part of a run


def option_name(param: str) -> str:
    return "lambda" if param == "lam" else param


def target_callable(target: str) -> Callable:
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _own_params(fn: Callable) -> Tuple[List[inspect.Parameter], bool]:
    params = list(inspect.signature(fn).parameters.values())
    more = any(p.kind is p.VAR_KEYWORD for p in params)
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)], more


@lru_cache(maxsize=None)
def parameters(fn: Callable) -> Dict[str, Tuple[Any, Any]]:
    """{option: (default, rule or None)} of a callable; a class's `**kwargs` passed on to its
    bases adds theirs (as DSD and FC extend MaskedReinit)."""
    out: Dict[str, Tuple[Any, Any]] = {}
    owners = [c for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    for owner in owners:
        init = owner.__init__ if inspect.isclass(owner) else owner
        if init is object.__init__:
            break
        params, more = _own_params(init)
        try:
            hints = typing.get_type_hints(init, include_extras=True)
        except Exception:
            hints = {}
        for p in params:
            if p.name == "self" or option_name(p.name) in out:
                continue
            rule = next((m for m in getattr(hints.get(p.name), "__metadata__", ())
                         if hasattr(m, "ok")), None)
            default = p.default if p.default is not p.empty else "???"
            out[option_name(p.name)] = (default, rule)
        if not more:
            break
    return out


def _one_interpolation(v: str) -> bool:
    """`v` is a single `${...}` (nested ones inside allowed)."""
    if not v.startswith("${"):
        return False
    depth = 0
    for i, c in enumerate(v[1:], start=1):
        depth += c == "{"
        depth -= c == "}"
        if depth == 0:
            return i == len(v) - 1
    return False


def takes_any(fn: Callable) -> bool:
    """`fn` takes keyword arguments besides those `parameters` names (a `**kwargs` that no
    base class's constructor spells out)."""
    owners = [c for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    for owner in owners:
        init = owner.__init__ if inspect.isclass(owner) else owner
        if init is object.__init__:
            return True
        if not _own_params(init)[1]:
            return False
    return True


def _literal(v: Any) -> str:
    """`v` as the default argument of `oc.select`."""
    if isinstance(v, str):
        if _one_interpolation(v):
            return v
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_literal(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no config literal for {v!r}")


def method_dir() -> Path:
    from runner.app import conf_dir
    return conf_dir() / "method"


def _chain(name: str, where: Path) -> Dict[str, Any]:
    """The keys conf/method/NAME.yaml sets, after those of the method configs it extends."""
    node = OmegaConf.load(where / f"{name}.yaml")
    out: Dict[str, Any] = {}
    for entry in node.get("defaults", []):
        if entry != "_self_":
            out.update(_chain(str(entry), where))
    out.update({k: v for k, v in OmegaConf.to_container(node).items() if k != "defaults"})
    return out


@lru_cache(maxsize=None)
def method_configs(where: Optional[Path] = None) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """{choice: (target, {option: value of its YAML chain})} of conf/method/."""
    where = where or method_dir()
    out = {}
    for path in sorted(where.glob("*.yaml")):
        keys = _chain(path.stem, where)
        out[path.stem] = (keys.pop("_target_"), keys)
    return out


def options(choice: str) -> Dict[str, Tuple[Any, Any]]:
    """{option: (constructor default, rule)} of method choice `choice`."""
    return parameters(target_callable(method_configs()[choice][0]))


def node(choice: str) -> Dict[str, Any]:
    """The generated config of method choice `choice` (see the module's docstring)."""
    target, written = method_configs()[choice]
    unknown = sorted(set(written) - set(options(choice)) - {LABEL})
    if unknown:
        raise ValueError(f"conf/method/{choice}.yaml sets {', '.join(unknown)}, which {target} "
                         f"does not take; its options: {', '.join(options(choice))}")
    out: Dict[str, Any] = {"_target_": target}
    for key, (default, _) in options(choice).items():
        value = written.get(key, default)
        out[key] = f"${{oc.select:tuned.{choice}.{key},{_literal(value)}}}"
    return out


def register() -> None:
    cs = ConfigStore.instance()
    for choice in method_configs():
        cs.store(group=GROUP, name=choice, node=node(choice))
