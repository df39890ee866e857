"""`python -m runner`: the Hydra application."""
from __future__ import annotations

import difflib
import logging
import sys
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner import config as schema
from runner import distributed
from runner.errors import RunnerError
from runner.report import format_table, table_from_results
from runner.train import run

log = logging.getLogger("runner")


def conf_dir() -> Path:
    """`conf/` of a checkout (src layout), else the copy packaged inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "conf", here / "conf"):
        if (candidate / "config.yaml").exists():
            return candidate
    raise RuntimeError(f"runner's conf/ not found next to {here}")


schema.register()
OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)
# ${job_tag:N}: "[job N]" in a sweep's log lines, nothing in a single run's (N null)
OmegaConf.register_new_resolver("job_tag", lambda num: "" if num is None else f"[job {num}]",
                                replace=True)


def job_choices(choices) -> Dict[str, str]:
    """The config-group choices of a job, without Hydra's own groups."""
    return {k: str(v) for k, v in choices.items() if not k.startswith("hydra") and v is not None}


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    try:
        result = run(cfg, hc.runtime.output_dir, choices=job_choices(hc.runtime.choices),
                     overrides=list(hc.overrides.task), job=0 if single else int(hc.job.num))
    except RunnerError as e:
        log.error("%s", e)
        if single:
            sys.exit(f"error: {e}")
        raise
    if single and distributed.rank() == 0:
        print(format_table(table_from_results([result]), cfg.report.metric))
        print(f"run directory: {hc.runtime.output_dir}")
    return result.get("summary", {}).get(cfg.report.metric)


def explain_failed_overrides(args: List[str]) -> None:
    """After Hydra rejected a command line: name the valid keys next to each unknown one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a])
    except Exception:
        return
    groups = [o for o in parsed if "." not in o.key_or_group and "/" not in o.key_or_group
              and not o.is_add() and not o.is_delete()]

    def composed(with_sweeps: bool):
        chosen = [f"{o.key_or_group}={next(iter(o.sweep_iterator())) if o.is_sweep_override() else o.value()}"
                  for o in groups if with_sweeps or not o.is_sweep_override()]
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=chosen)

    try:
        cfg = composed(with_sweeps=True)
        base = composed(with_sweeps=False) if {"-m", "--multirun"} & set(args) else cfg
    except Exception:
        return
    for o in parsed:
        key = o.key_or_group
        if "." not in key or o.is_add() or o.is_delete():
            continue
        parent, leaf = key.rsplit(".", 1)
        node = OmegaConf.select(cfg, parent, default=None)
        if not isinstance(node, DictConfig):
            continue
        if leaf not in node:
            near = difflib.get_close_matches(leaf, list(node.keys()), n=1)
            hint = f" (did you mean {parent}.{near[0]}?)" if near else ""
            print(f"error: unknown key '{key}'{hint}; valid keys of '{parent}': "
                  f"{', '.join(map(str, node.keys()))}", file=sys.stderr)
            continue
        base_node = OmegaConf.select(base, parent, default=None)
        if not o.is_sweep_override() and (not isinstance(base_node, DictConfig) or leaf not in base_node):
            print(f"error: in a sweep (-m), Hydra applies '{key}' to the config composed without the "
                  f"swept groups, where it does not exist; sweep it as well: "
                  f"{key}='choice({o.get_value_element_as_str()})'", file=sys.stderr)


def cli() -> None:
    """The command line of both entry points, `python -m runner` and the `runner` script: the
    Hydra app, and after Hydra rejected the command line, the valid keys beside each unknown one."""
    sys.argv += distributed.worker_overrides()  # torchrun ranks > 0 write no files
    try:
        main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            explain_failed_overrides(sys.argv[1:])
        raise


def compose_and_run(overrides: List[str], out_dir) -> dict:
    """Compose the config with `overrides` and run it in `out_dir` (tests, benchmarks)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    choices = job_choices(cfg.hydra.runtime.choices)
    with_hydra = OmegaConf.to_container(cfg)
    with_hydra.pop("hydra")
    return run(OmegaConf.create(with_hydra), out_dir, choices=choices, overrides=overrides)
