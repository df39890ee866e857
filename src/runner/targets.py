"""Typed targets: which callable a config's `_target_` may name, decided by the object itself.

Each slot of the config takes one kind of component (`SLOTS`): a method slot takes a subclass of
`methods.base.Method`; every other slot takes an object registered for its kind with
`register(kind, obj)` (called in the module that defines it). A target is imported only when its
module lies inside `runner`, `methods`, a module listed in `target_allowlist` (not the standard
library), or an installed entry point of the group `plasticity_runner` named `KIND.NAME`; the
object must then be defined in that very module (no re-exports: `runner.checkpoint.shutil.rmtree`
is refused) and be of the slot's kind. A `_target_` outside the slots (a `tuned` value that an
interpolation carries into one) must name a component of some kind; nothing calls it there.
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
from functools import lru_cache
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from runner.errors import ConfigError

OWN_PACKAGES = ("runner", "methods")
ENTRY_POINTS = "plasticity_runner"
KINDS = {
    "method": "a methods.base.Method subclass",
    "model": "a registered model",
    "model_transform": "a registered model transform",
    "reader": "a registered dataset reader",
    "transform": "a registered image transform",
    "callback": "a registered Hydra callback",
    "any": "a component of any kind (never called there)",  # e.g. `tuned` values read by slots
}
_REGISTRY: Dict[str, List[Any]] = {kind: [] for kind in KINDS if kind not in ("method", "any")}

_DATASET = r"(?:dataset|datasets\.[^.]+)"
SLOTS: Tuple[Tuple[str, str], ...] = (  # (dotted path of the node holding `_target_`, kind)
    (r"method", "method"),
    (r"extra_methods\.\d+", "method"),
    (r"model", "model"),
    (r"model_transforms\.\d+", "model_transform"),
    (_DATASET + r"\.reader", "reader"),
    (_DATASET + r"\.augment\.\d+", "transform"),
    (r"phases\.\d+\.(?:transform|augment)\.\d+", "transform"),
)
_CI = re.compile(r"ci\.(?:sizes_)?overrides\.")  # ci.overrides.KEY: the value of config key KEY


def register(kind: str, *objs: Any) -> None:
    """Declare `objs` components of `kind`, which config slots of that kind may then name."""
    if kind not in _REGISTRY:
        raise ValueError(f"register: kind {kind!r}; valid: {', '.join(_REGISTRY)}")
    _REGISTRY[kind].extend(o for o in objs if not any(o is r for r in _REGISTRY[kind]))


def slot_kind(path: str) -> Optional[str]:
    """The kind of component the config node at dotted `path` holds, None where no target may be."""
    path = _CI.sub("", path, count=1)
    return next((kind for pattern, kind in SLOTS if re.fullmatch(pattern, path)), None)


@lru_cache(maxsize=1)
def _entry_points() -> Dict[str, FrozenSet[str]]:
    """{dotted target: its kinds} of the installed entry points `KIND.NAME = module:object`."""
    from importlib.metadata import entry_points
    out: Dict[str, FrozenSet[str]] = {}
    for ep in entry_points(group=ENTRY_POINTS):
        kind = ep.name.split(".")[0]
        if kind in KINDS:
            target = ep.value.replace(":", ".").strip()
            out[target] = out.get(target, frozenset()) | {kind}
    return out


def _allowed_modules(allowlist: Iterable[str]) -> Tuple[str, ...]:
    return OWN_PACKAGES + tuple(str(m).rstrip(".") for m in allowlist or ())


def check_allowlist(allowlist: Sequence[str]) -> None:
    """`target_allowlist` names modules of the user's own code, never the standard library."""
    for i, entry in enumerate(allowlist or ()):
        name = str(entry).rstrip(".")
        top = name.split(".")[0]
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name) or top in sys.stdlib_module_names \
                or top in sys.builtin_module_names:
            raise ConfigError(f"target_allowlist.{i}={entry!r} is refused: list modules of your own "
                              f"code (a dotted module name outside the standard library)")


def _within(module: str, packages: Sequence[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _is_kind(obj: Any, kind: str) -> bool:
    if kind == "any":
        return any(_is_kind(obj, k) for k in KINDS if k != "any")
    if kind == "method":
        from methods.base import Method
        return inspect.isclass(obj) and issubclass(obj, Method) and obj is not Method
    return any(obj is r for r in _REGISTRY[kind])


def resolve(target: Any, where: str, kind: str, allowlist: Sequence[str] = ()) -> Callable:
    """The object `target` names, if slot `where` (of `kind`) may call it; else `ConfigError`
    naming the slot, the target and what is allowed there. Nothing outside the allowed modules is
    imported."""
    allowed = KINDS[kind]

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{where}._target_={target!r} is refused: {why}; allowed at {where}: "
                           f"{allowed} of runner, methods, target_allowlist or an entry point")

    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", target):
        raise refuse("not a dotted path module.object")
    module_name, name = target.rsplit(".", 1)
    from_entry_point = kind in _entry_points().get(target, ())
    if not from_entry_point:
        check_allowlist(allowlist)
        if not _within(module_name, _allowed_modules(allowlist)):
            raise refuse("its module is outside the allowed ones")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise refuse(f"module {module_name} cannot be imported ({e})") from None
    obj = vars(module).get(name)
    if obj is None:
        raise refuse(f"{module_name} defines no {name}")
    if getattr(obj, "__module__", None) != module_name or not callable(obj):
        raise refuse(f"it is not a callable defined in {module_name}")
    if not _is_kind(obj, kind):
        raise refuse("a component of another kind, or none")
    return obj


def check_tree(node: Any, allowlist: Sequence[str], path: str = "") -> None:
    """Every `_target_` in a resolved config tree names a callable of its slot's kind; outside the
    slots (values that interpolations carry into one) a component of any kind."""
    if isinstance(node, dict):
        if "_target_" in node:
            kind = slot_kind(path) or "any"
            obj = resolve(node["_target_"], path or "(top level)", kind, allowlist)
            if kind not in ("any", "method"):  # a method's options: runner.method_checks.check_method
                _check_arguments(obj, node, path)
            for k in node:
                if k != "_target_" and str(k).startswith("_") and str(k).endswith("_"):
                    raise ConfigError(f"{path}.{k} is refused: the runner calls {path}._target_ "
                                      f"with plain options only (no Hydra instantiation keys)")
            for k, v in node.items():
                if isinstance(v, (dict, list)) and _has_target(v):
                    raise ConfigError(f"{path}.{k} holds a nested _target_, which is refused: "
                                      f"give {path}.{k} plain values")
            return
        for k, v in node.items():
            check_tree(v, allowlist, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_tree(v, allowlist, f"{path}.{i}")


def _check_arguments(obj: Callable, node: Dict[str, Any], path: str) -> None:
    """The node's other keys are arguments `obj` takes (before anything runs)."""
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    try:
        inspect.signature(obj).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{path}: {e} (calling {node['_target_']}); fix or drop the key") from None
    except ValueError:  # no signature to check (a builtin): the call names it
        pass


def _has_target(node: Any) -> bool:
    if isinstance(node, dict):
        return "_target_" in node or any(_has_target(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_target(v) for v in node)
    return False
