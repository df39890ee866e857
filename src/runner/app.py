"""`python -m runner`: the Hydra application."""
from __future__ import annotations

import contextlib
import difflib
import logging
import shutil
import sys
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner import config as schema
from runner import distributed, extras, hydra_keys, options, rundir
from runner.errors import ConfigError, Interrupted, RunnerError
from runner.report import format_table, table_from_results
from runner.training.lifecycle import run

log = logging.getLogger("runner")


def conf_dir() -> Path:
    """`conf/` of a checkout (src layout), else the copy packaged inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "conf", here / "conf"):
        if (candidate / "config.yaml").exists():
            return candidate
    raise RuntimeError(f"runner's conf/ not found next to {here}")


schema.register()
options.register()
hydra_keys.install()  # Hydra's own instantiating keys pass the runner's target rules
OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)
# ${job_tag:N}: "[job N]" in a sweep's log lines, nothing in a single run's (N null)
OmegaConf.register_new_resolver("job_tag", lambda num: "" if num is None else f"[job {num}]",
                                replace=True)
# ${resumed:${resume},A,B}: A when `resume` names a run directory, else B (hydra.run.dir: a
# resumed run continues in its own directory, and Hydra leaves its .hydra/ record alone)
OmegaConf.register_new_resolver(
    "resumed", lambda resume, a, b: a if resume not in (None, "auto") else b, replace=True)


def job_choices(choices) -> Dict[str, str]:
    """The config-group choices of a job, without Hydra's own groups."""
    return {k: str(v) for k, v in choices.items()
            if not k.startswith(("hydra", options.GROUP)) and v is not None}


EXIT_CONFIG = 2  # a bad config, found before anything ran (as a usage error)


def resumed_config(run_dir: str, extra: List[str]):
    """`resume=DIR`: the config of the run in DIR (composed from the overrides its result.json
    records, checked as if typed: `runner.rundir`) with the command line's other overrides;
    returns (cfg, choices, overrides)."""
    from hydra import compose

    overrides = rundir.resume_overrides(run_dir, rundir.read_record(run_dir), extra)
    try:
        cfg = compose("config", overrides=overrides + [f"resume={run_dir}"], return_hydra_config=True)
    except ConfigError:
        raise
    except Exception as e:  # what DIR records does not compose
        raise ConfigError(f"resume={run_dir}: its recorded overrides do not compose "
                          f"({' '.join(str(e).split())[:200]})") from None
    choices = job_choices(cfg.hydra.runtime.choices)
    plain = OmegaConf.to_container(cfg)
    plain.pop("hydra")
    return OmegaConf.create(plain), choices, overrides


def fail(single: bool, code: int, message: str, run_dir: Optional[Path] = None) -> None:
    """One line on stderr and the exit status (a single run); in a sweep the job's result.json
    holds the status and the sweep goes on."""
    log.error("%s", message)
    if single:
        if run_dir is not None and not any((run_dir / f).exists() for f in rundir.RUN_FILES):
            shutil.rmtree(run_dir, ignore_errors=True)  # only Hydra's record of a run never started
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)


def execute(cfg: DictConfig, out_dir: Path, overrides: List[str], choices: Dict[str, str],
            single: bool, job: int = 0, search_root: Optional[Path] = None) -> Optional[float]:
    """One run (`single`) or one sweep job in `out_dir`. A single run prints its table; its
    errors are one line on stderr and an exit status: 2 for a bad config (the directory Hydra
    made for it is removed), 1 for a failed or diverged run, 128 + signal when interrupted. A
    sweep job's result.json records its status and the sweep goes on, except after a signal."""
    fresh_dir = out_dir if cfg.resume is None else None  # Hydra made it for this command
    try:
        if not single and cfg.resume not in (None, "auto"):
            raise ConfigError(f"resume={cfg.resume} continues one run; a sweep takes resume=auto")
        if single and cfg.resume not in (None, "auto"):
            cfg, choices, overrides = resumed_config(cfg.resume, overrides)
            out_dir = Path(cfg.resume)
        owner = distributed.rank() == 0  # the rank that writes the run's files
        if owner and fresh_dir is not None:
            rundir.check_fresh(out_dir)
        with rundir.owned(out_dir) if owner else contextlib.nullcontext():
            result = run(cfg, out_dir, choices=choices, overrides=overrides, job=job,
                         record_invalid=not single, search_root=search_root)
    except Interrupted as e:
        log.error("%s", e)
        if distributed.rank() == 0:  # the rank that writes the run's record
            launcher = "torchrun ... -m runner" if cfg.distributed.enabled else "python -m runner"
            print(f"error: {e}; the run is recorded as interrupted in {out_dir}; continue it with "
                  f"{launcher} resume={out_dir}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ConfigError as e:
        return fail(single, EXIT_CONFIG, str(e), fresh_dir)
    except RunnerError as e:
        return fail(single, 1, str(e))
    except Exception as e:
        if single:
            raise  # not a user error: the traceback is the report
        log.exception("job failed: %s", e)  # the sweep goes on; result.json says failed
        return None
    if single and distributed.rank() == 0:
        print(format_table(table_from_results([result]), cfg.report.metric))
        print(f"run directory: {out_dir}")
        if result["status"] != "completed":
            fail(single, 1, f"the run {result['status']}: {result.get('error')}")
    return result.get("summary", {}).get(cfg.report.metric)


_started = []  # main() was entered: Hydra accepted the command line


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    _started.append(True)
    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    out_dir = Path(hc.runtime.output_dir)
    return execute(cfg, out_dir, list(hc.overrides.task), job_choices(hc.runtime.choices), single,
                   job=0 if single else int(hc.job.num),
                   search_root=out_dir.parent if single else Path(hc.sweep.dir).parent)


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
    try:
        extras.check_command_line(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    sys.argv += distributed.worker_overrides()  # torchrun ranks > 0 write no files
    _started.clear()
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C between a sweep's jobs (inside a run: `Interrupted`)
        print("error: interrupted by SIGINT", file=sys.stderr)
        sys.exit(130)
    except SystemExit as exit_:
        if exit_.code not in (0, None) and not _started:
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
