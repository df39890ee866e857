"""A method node's options and the `tuned` block, checked against the methods' constructor
signatures (runner.options), before a run: each a one-line `ConfigError`."""
from __future__ import annotations

import difflib
import functools
import re
from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from runner import options
from runner.config import invalid
from runner.errors import ConfigError


def check_method(node: Any, where: str) -> None:
    """A method node's keys are options of its constructor, each inside the range annotated
    beside the parameter (`Annotated[float, NON_NEGATIVE]`, runner.options)."""
    if not isinstance(node, dict) or "_target_" not in node:
        return
    try:
        params = options.parameters(options.target_callable(str(node["_target_"])))
    except Exception:  # not importable: instantiate names it
        return
    for k, v in node.items():
        if k in ("_target_", options.LABEL):
            continue
        k = options.option_name(k)  # `lam` is `lambda`, as instantiate passes it
        if k not in params and not options.takes_any(options.target_callable(str(node["_target_"]))):
            near = difflib.get_close_matches(k, list(params), n=1)
            hint = f" (did you mean {where}.{near[0]}?)" if near else ""
            raise ConfigError(f"{where}.{k} is not an option of {node['_target_']}{hint}; valid: "
                              f"{', '.join(params)}")
        rule = params.get(k, (None, None))[1]
        if rule is not None and v is not None and not rule.ok(v):
            raise invalid(f"{where}.{k}", v, rule)


def _tuned_reads(node: Any, found: set) -> set:
    """The first keys after `tuned.` in every string of `node` (interpolations, report keys)."""
    if isinstance(node, dict):
        for v in node.values():
            _tuned_reads(v, found)
    elif isinstance(node, list):
        for v in node:
            _tuned_reads(v, found)
    elif isinstance(node, str):
        found.update(re.findall(r"\btuned\.(\w+)", node))
    return found


@functools.lru_cache(maxsize=1)
def _conf_tuned_reads() -> frozenset:
    """The `tuned` keys that any file of conf/ reads."""
    from runner.app import conf_dir
    return frozenset(_tuned_reads([p.read_text() for p in conf_dir().rglob("*.yaml")], set()))


def check_tuned(cfg: DictConfig, resolved: Dict[str, Any]) -> None:
    """`tuned` holds a method's options under its name (`tuned.l2.lambda`: an option of the
    constructor conf/method/l2.yaml names; applied when that method runs, under the command
    line's `method.lambda=...`) and knobs the config reads (`${tuned.rounds}`, a method config's
    `${oc.select:tuned.q,0.9}`, `report.rows: [tuned.setting]`). Any other key is refused: one
    line naming it and the valid ones. A knob that some file of conf/ reads passes too (a base's
    knob that an experiment built on it does not use)."""
    methods = options.method_configs()
    plain = OmegaConf.to_container(cfg, resolve=False)
    reads = _tuned_reads({k: v for k, v in plain.items() if k != "tuned"}, set())
    reads |= _conf_tuned_reads()  # knobs of the methods and bases an experiment may use
    for key, value in (resolved.get("tuned") or {}).items():
        key = str(key)
        if key in methods:
            valid = list(options.options(key))
            if not isinstance(value, dict):
                raise ConfigError(f"tuned.{key}={value!r} is invalid: tuned.{key} holds options of "
                                  f"method {key} (tuned.{key}.OPTION); valid: {', '.join(valid)}")
            for option in value:
                if option not in valid:
                    near = difflib.get_close_matches(str(option), valid, n=1)
                    hint = f" (did you mean tuned.{key}.{near[0]}?)" if near else ""
                    raise ConfigError(f"tuned.{key}.{option} is not an option of method {key}{hint}; "
                                      f"valid: {', '.join(valid)}")
        elif key not in reads:
            known = sorted(reads - set(methods))
            near = difflib.get_close_matches(key, list(methods) + known, n=1)
            hint = f" (did you mean tuned.{near[0]}?)" if near else ""
            raise ConfigError(f"tuned.{key} is unknown{hint}; valid: a method's name with its "
                              f"options (tuned.METHOD.OPTION) or a key the config reads "
                              f"({', '.join(known) or 'none'})")
