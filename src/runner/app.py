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
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.core.plugins import Plugins
from omegaconf import DictConfig, OmegaConf

from runner import config as schema
from runner import distributed, extras, hydra_keys, options, rundir, targets
from runner.errors import ConfigError, DatasetMissing, DownloadFailed, Interrupted, RunnerError
from runner.report import format_table, table_from_results
from runner.training.lifecycle import run

# Hydra's plugin scan re-imports its core sweeper module; scan first, so that the runner's sweeper
# subclasses the BasicSweeper that stays (the scan misses it under `pip install -e .`).
Plugins.instance()
from hydra_plugins.runner_sweeper import runner_sweeper  # noqa: E402

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
runner_sweeper.register()
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
    """One line on stderr and the exit status (a single run: printed once, as `error: ...`,
    and written to the run's log file); in a sweep the job's result.json holds the status, the
    line is logged and the sweep goes on."""
    if not single:
        log.error("%s", message)
        return
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers + log.handlers:  # the log files, not the console
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    if run_dir is not None and not any((run_dir / f).exists() for f in rundir.RUN_FILES):
        shutil.rmtree(run_dir, ignore_errors=True)  # only Hydra's record of a run never started
        for parent in _new_dirs:  # and the empty folders Hydra made for it (outputs/runs/NAME)
            with contextlib.suppress(OSError):
                parent.rmdir()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def execute(cfg: DictConfig, out_dir: Path, overrides: List[str], choices: Dict[str, str],
            single: bool, job: int = 0, search_root: Optional[Path] = None) -> Optional[float]:
    """One run (`single`) or one sweep job in `out_dir`. A single run prints its table; its
    errors are one line on stderr and an exit status: 2 for a bad config (the directory Hydra
    made for it is removed), 1 for a failed or diverged run, 128 + signal when interrupted. A
    sweep job's result.json records its status and the sweep goes on, except after a signal."""
    fresh_dir = out_dir if cfg.resume in (None, "auto") else None  # Hydra made it for this command
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
    except (ConfigError, DatasetMissing, DownloadFailed) as e:  # before the run wrote anything
        return fail(single, EXIT_CONFIG, str(e), fresh_dir)
    except RunnerError as e:
        return fail(single, 1, str(e))
    except Exception as e:
        if single:
            raise  # not a user error: the traceback is the report
        log.exception("job failed: %s", e)  # the sweep goes on; result.json says failed
        return None
    results = result if isinstance(result, list) else [result]  # fused seeds: one per seed
    if single and distributed.rank() == 0:
        print(format_table(table_from_results(results), cfg.report.metric))
        print(f"run directory: {out_dir}")
        for r in results:
            if r["status"] != "completed":
                fail(single, 1, f"the run {r['status']}: {r.get('error')}")
    return results[0].get("summary", {}).get(cfg.report.metric)


_started = []  # Hydra composed the command line (a run or a sweep started)
_new_dirs: List[Path] = []  # the folders above a new run's directory that Hydra is to make


def check_run_dir(config: DictConfig) -> None:
    """A new run (not `resume=DIR`) whose directory holds another run, or is owned by a running
    process, is refused before Hydra's `run_job` writes its `.hydra/` record and log there: one
    line and exit status 2; so is `resume=DIR` with another `hydra.run.dir`. Notes the folders
    above a new run's directory that do not exist yet."""
    _new_dirs.clear()
    if distributed.rank() != 0:
        return
    try:
        out_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
    except Exception:  # unresolvable: Hydra reports it
        return
    try:
        if config.resume not in (None, "auto"):
            if out_dir.resolve() != Path(str(config.resume)).resolve():
                raise ConfigError(f"resume={config.resume} continues the run in its own directory; "
                                  f"drop hydra.run.dir={OmegaConf.select(config, 'hydra.run.dir')}")
            return
        _new_dirs.extend(p for p in out_dir.parents if not p.exists())
        rundir.check_new(out_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def composed() -> None:
    """Hydra accepted the command line: what is written to stderr from now on passes."""
    _started.append(True)
    if isinstance(sys.stderr, HeldStderr):
        sys.stderr.release()


class Composed(Callback):
    """Hydra callback (conf/config.yaml): a run or a sweep starts, so the command line composed
    (a sweep's jobs may run in other processes, where `main` is called)."""

    def on_run_start(self, config, **kwargs) -> None:
        composed()
        check_run_dir(config)

    def on_multirun_start(self, config, **kwargs) -> None:
        composed()


targets.register("callback", Composed)  # conf/config.yaml's hydra.callbacks may name it


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    composed()
    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    out_dir = Path(hc.runtime.output_dir)
    return execute(cfg, out_dir, list(hc.overrides.task), job_choices(hc.runtime.choices), single,
                   job=0 if single else int(hc.job.num),
                   search_root=out_dir.parent if single else Path(hc.sweep.dir).parent)


class HeldStderr:
    """sys.stderr while Hydra composes: what Hydra writes is held until the app starts (then
    passed on) or Hydra gave up (then replaced by the runner's one line)."""

    def __init__(self, stream):
        self.stream, self.held, self.passing = stream, [], False

    def write(self, text: str) -> int:
        if self.passing:
            return self.stream.write(text)
        self.held.append(text)
        return len(text)

    def release(self) -> None:
        self.passing = True
        self.stream.write("".join(self.held))
        self.held.clear()

    def __getattr__(self, name):
        return getattr(self.stream, name)


# lines of Hydra's composition errors that repeat the key or give advice of their own
_HYDRA_NOISE = ("Set the environment variable HYDRA_FULL_ERROR", "To append to your config",
                "full_key:", "reference_type=", "object_type=", "Available options in",
                "Config search path", "\t", "  ")


def hydra_message(text: str) -> str:
    """Hydra's composition error as one line, without its advice (`+key` appends a key the
    schema refuses anyway) and the option lists (the runner names the valid choices)."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(_HYDRA_NOISE)
             and not line.strip().startswith(_HYDRA_NOISE[:5])]
    message = "; ".join(lines) or "the command line was refused"
    return message[len("error: "):] if message.startswith("error: ") else message


def config_groups() -> Dict[str, List[str]]:
    """The runner's config groups (folders of conf/) and their options."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(conf_dir().iterdir()) if d.is_dir() and d.name != "hydra"}


def unknown_group_option(args: List[str]) -> Optional[str]:
    """A `GROUP=OPTION` (each value of a sweep) that names no file of conf/GROUP/: one line with
    a did-you-mean and the valid choices; None when every option exists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.lstrip("+").startswith("hydra.searchpath") for a in args):
        return None  # other config folders join the groups: Hydra checks the options
    groups = config_groups()
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:
        return None  # Hydra names the syntax error
    for o in parsed:
        if o.key_or_group not in groups or o.is_delete():
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            if not isinstance(value, str) or value in groups[o.key_or_group]:
                continue
            choices = groups[o.key_or_group]
            near = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f" (did you mean {o.key_or_group}={near[0]}?)" if near else ""
            listed = ", ".join(choices) if len(choices) <= 50 or not near else \
                f"the {len(choices)} names that `python -m runner --help` lists"
            return (f"{o.key_or_group}={value} is no option of '{o.key_or_group}'{hint}; "
                    f"valid: {listed}")
    return None


def explain_failed_overrides(args: List[str]) -> List[str]:
    """After Hydra rejected a command line: one line per unknown key, naming the valid keys."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a])
    except Exception:
        return []
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
        return []
    lines = []
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
            lines.append(f"unknown key '{key}'{hint}; valid keys of '{parent}': "
                         f"{', '.join(map(str, node.keys()))}")
            continue
        base_node = OmegaConf.select(base, parent, default=None)
        if not o.is_sweep_override() and (not isinstance(base_node, DictConfig) or leaf not in base_node):
            lines.append(f"in a sweep (-m), Hydra applies '{key}' to the config composed without "
                         f"the swept groups, where it does not exist; sweep it as well: "
                         f"{key}='choice({o.get_value_element_as_str()})'")
    return lines


def cli() -> None:
    """The command line of both entry points, `python -m runner` and the `runner` script: the
    Hydra app. A command line that Hydra cannot compose (a wrong group option, key or value type)
    is one line on stderr, with the valid choices or a did-you-mean, and exit status 2."""
    args = sys.argv[1:]
    try:
        extras.check_command_line(args)
        wrong = unknown_group_option(args)
        if wrong:
            raise ConfigError(wrong)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    sys.argv += distributed.worker_overrides()  # torchrun ranks > 0 write no files
    runner_sweeper.register()
    _started.clear()
    stderr = sys.stderr
    held = sys.stderr = HeldStderr(stderr)
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C between a sweep's jobs (inside a run: `Interrupted`)
        print("error: interrupted by SIGINT", file=sys.stderr)
        sys.exit(130)
    except SystemExit as exit_:
        if exit_.code in (0, None) or _started:
            raise
        sys.stderr, held.passing = stderr, True  # Hydra's own text is replaced by ours
        lines = explain_failed_overrides(args) or [hydra_message("".join(held.held))]
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    finally:
        if not held.passing:
            held.release()  # --help, --cfg and the like print nothing to stderr but pass it on
        sys.stderr = stderr


def compose_and_run(overrides: List[str], out_dir) -> dict:
    """Compose the config with `overrides` and run it in `out_dir` (tests, benchmarks)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    choices = job_choices(cfg.hydra.runtime.choices)
    with_hydra = OmegaConf.to_container(cfg)
    with_hydra.pop("hydra")
    return run(OmegaConf.create(with_hydra), out_dir, choices=choices, overrides=overrides)
