"""What makes two runs the same run (`run_identity`), for tables that count each run once
(`deduplicate`) and for resume, which reuses a completed run of the same config."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

from runner.options import LABEL

IGNORED = {"seed", "device", "progress", "data_root", "threads", "logger", "resume"}  # swept keys that do not define a cell


def _without_root(value: Any, root: Any) -> Any:
    """`value` with the data directory `root` at the start of its paths written as `${data_root}`."""
    if isinstance(value, dict):
        return {k: _without_root(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_root(v, root) for v in value]
    if isinstance(root, str) and root and isinstance(value, str) and \
            (value == root or value.startswith(root.rstrip("/") + "/")):
        return "${data_root}" + value[len(root.rstrip("/")):]
    return value


def run_identity(result: Dict[str, Any]) -> str:
    """What makes two runs the same run: the group choices and the resolved config (seed
    included) without the execution settings (nor the data directory inside paths), or, without
    a config, the command line."""
    cfg = result.get("config")
    choices = {k: v for k, v in (result.get("choices") or {}).items() if k not in IGNORED}
    if cfg:
        kept = {k: v for k, v in cfg.items() if k not in IGNORED - {"seed"}}
        if isinstance(kept.get("method"), dict):  # a method's label names it, nothing more
            kept["method"] = {k: v for k, v in kept["method"].items() if k != LABEL}
        return json.dumps([choices, _without_root(kept, cfg.get("data_root")),
                           result.get("seed", cfg.get("seed"))], sort_keys=True, default=str)
    overrides = sorted(o for o in result.get("overrides", [])
                       if o.lstrip("+~").split("=")[0].split(".")[0] not in IGNORED - {"seed"})
    return json.dumps([choices, overrides, result.get("seed")], default=str)


def deduplicate(results: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], int]:
    """One result per (config, seed): a completed run over any other, else the later one."""
    chosen: Dict[str, Dict[str, Any]] = {}
    for r in results:
        key = run_identity(r)
        old = chosen.get(key)
        if old is None or not (old.get("status") == "completed" and r.get("status") != "completed"):
            chosen[key] = r
    return list(chosen.values()), len(results) - len(chosen)
