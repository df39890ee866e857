"""The sweeper of `python -m runner -m`: Hydra's basic sweeper (the cartesian product of the
comma-separated values), where each experiment declares its own sweep.

An experiment's `hydra.sweeper.params` (e.g. the methods, signal strengths and seeds of a paper's
table) is the sweep of `-m experiment=NAME`; the command line's sweeps narrow or extend it key by
key (`seed=0,1`). Without `experiment=` on the command line the default experiment is one run
of the sweep's values. A sweep over several experiments (`experiment=a,b`) runs each with its own
declared sweep. Before anything runs, the sweeper prints the number of runs and the cost the
experiment estimates (`hydra.sweeper.run_minutes` on `hydra.sweeper.run_on`);
`hydra.sweeper.dry=true` stops there. All jobs share one directory,
`outputs/multirun/<experiment>/<time>_<id>/` (several experiments: their names joined by `+`),
whose `multirun.yaml` keeps the plan (`hydra.sweeper.plan`): the tables count its jobs that left
no result and order their rows and columns as the experiments declare the swept values.
"""

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra._internal.core_plugins import basic_sweeper
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from runner import ci
from runner.results import SWEEP_FILE


@dataclass
class SweeperConf:
    _target_: str = "hydra_plugins.runner_sweeper.runner_sweeper.ExperimentSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None  # the experiment's own sweep (KEY: comma-separated values)
    run_minutes: Optional[float] = None  # the experiment's estimate of one run, in minutes ...
    run_on: str = ""  # ... on this hardware ("one CPU thread", "one GPU")
    dry: bool = False  # true: print the number of runs and the cost, run nothing
    plan: Optional[Dict[str, Any]] = None  # not an option: what the sweeper runs (`record`)


def register() -> None:
    """The config node and the class, before each command line. Hydra's scan of `hydra_plugins`
    misses packages installed in editable mode (`pip install -e .`), so the class is registered
    by hand; a later scan (a fresh plugin registry) re-executes Hydra's basic sweeper module,
    after which this module is re-executed too, to subclass the BasicSweeper that is current."""
    ConfigStore.instance().store(group="hydra/sweeper", name="runner", node=SweeperConf)
    plugins = Plugins.instance()
    module = sys.modules[__name__]
    if module.ExperimentSweeper.__base__ is not basic_sweeper.BasicSweeper:
        importlib.reload(module)
    plugins.register(module.ExperimentSweeper)


def duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


class ExperimentSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 run_minutes: Optional[float] = None, run_on: str = "", dry: bool = False,
                 plan: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.dry = dry  # the cost is read from each experiment's config (`announce`)

    def plan(self, arguments: List[str]) -> List[Tuple[str, List[List[str]], DictConfig]]:
        """(experiment, its jobs' overrides, its config) for each experiment of the sweep."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(arguments)
        chosen = [o for o in parsed if o.key_or_group == "experiment" and o.package is None]
        if not chosen or not chosen[-1].is_sweep_override():
            name = str(self.config.hydra.runtime.choices.get("experiment"))
            # the default experiment is one run (one cell of its table) unless named
            params = [f"{k}={v}" for k, v in (self.params or {}).items()] if chosen else []
            jobs = self.split_arguments(parser.parse_overrides(params + arguments), None)[0]
            return [(name, jobs, self.config)]
        rest = [a for a, o in zip(arguments, parsed) if o is not chosen[-1]]
        plan = []
        for name in dict.fromkeys(chosen[-1].sweep_string_iterator()):
            cfg = self.hydra_context.config_loader.load_configuration(
                config_name=self.config.hydra.job.config_name, run_mode=RunMode.MULTIRUN,
                overrides=list(self.config.hydra.overrides.hydra) + rest + [f"experiment={name}"])
            params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
            jobs = self.split_arguments(
                parser.parse_overrides(params + rest + [f"experiment={name}"]), None)[0]
            plan.append((name, jobs, cfg))
        return plan

    def announce(self, plan) -> None:
        """The number of runs and the experiments' cost estimates, before anything runs."""
        total = sum(len(jobs) for _, jobs, _ in plan)
        parts = []
        for name, jobs, cfg in plan:
            level = ci.level_of(cfg)
            minutes = OmegaConf.select(cfg, "hydra.sweeper.run_minutes", default=None)
            on = OmegaConf.select(cfg, "hydra.sweeper.run_on", default="")
            if level:
                cost = f"test level ci={level}"
            elif minutes is None:
                cost = "no cost estimate in the experiment file"
            else:
                cost = (f"estimated {duration(minutes)} a run on {on}, "
                        f"{duration(minutes * len(jobs))} in all")
            parts.append(f"{name}: {len(jobs)} runs, {cost}")
        print(f"sweep of {total} runs ({'; '.join(parts)})", flush=True)

    def pin_directory(self, plan) -> None:
        """One directory for every job: the primary config's, named after the swept
        experiments (a job's config would otherwise resolve `${name}` to its own)."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        given = any(o.split("=", 1)[0].lstrip("+~") == "hydra.sweep.dir"
                    for o in self.config.hydra.overrides.hydra)
        names = [name for name, _, _ in plan]
        if not given and len(names) > 1 and sweep_dir.parent.name == str(self.config.name):
            sweep_dir = sweep_dir.parent.parent / "+".join(names) / sweep_dir.name
        with open_dict(self.config):
            self.config.hydra.sweep.dir = str(sweep_dir)
            self.config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{sweep_dir}'")

    def check_job_dirs(self, plan) -> None:
        """No job starts in a directory that holds another run or that a running process owns
        (Hydra would rewrite its `.hydra/` record before the job could refuse): one line, exit 2,
        before anything is written."""
        from runner.errors import ConfigError
        from runner.rundir import check_new

        sweep_dir, num = Path(str(self.config.hydra.sweep.dir)), 0
        for _, jobs, cfg in plan:
            subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
            for job in jobs:
                if subdir == "${hydra.job.num}":
                    job_dir = sweep_dir / str(num)
                else:  # the job's own config says where (as the launcher resolves it)
                    job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
                    with open_dict(job_cfg):
                        job_cfg.hydra.job.num, job_cfg.hydra.job.id = num, num
                    job_dir = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
                try:
                    check_new(job_dir)
                except ConfigError as e:
                    print(f"error: job {num}: {e}", file=sys.stderr)
                    raise SystemExit(2) from None
                num += 1

    def record(self, plan) -> None:
        """The plan, in the config the callbacks share (`runner.report`): `jobs`, how many jobs
        it makes, and `order`, the values of each key that an experiment declares a sweep over,
        in the order it declares them (the command line's order does not count)."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        order: Dict[str, List[str]] = {}
        for _, _, cfg in plan:
            for key, value in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items():
                values = order.setdefault(str(key), [])
                for job in self.split_arguments(parser.parse_overrides([f"{key}={value}"]), None)[0]:
                    one = job[0].partition("=")[2]
                    if one not in values:
                        values.append(one)
        with open_dict(self.config):  # (replaces whatever a command line put there)
            self.config.hydra.sweeper.plan = {
                "jobs": sum(len(jobs) for _, jobs, _ in plan),
                "order": {k: v for k, v in order.items() if len(v) > 1}}

    def sweep(self, arguments: List[str]) -> Any:
        plan = self.plan(arguments)
        self.announce(plan)
        if self.dry:
            return []
        self.pin_directory(plan)
        self.check_job_dirs(plan)
        self.record(plan)
        jobs = [job for _, experiment_jobs, _ in plan for job in experiment_jobs]
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        self.params = {}  # already in the jobs' overrides
        return self.launch_batches()

    def launch_failed(self, e: Exception) -> None:
        """The launcher stopped (joblib: a worker process was killed): one line; the runs that its
        dead workers left `running` are recorded `interrupted`; the sweep then ends with its table
        (the callback `runner.report.AggregateOnMultirunEnd` counts what did not complete)."""
        from runner.rundir import settle_dead

        text = " ".join(str(e).split())
        codes = text.find("The exit codes of the workers are")
        cause = f"a worker process died ({text[codes + 4:].split('Detailed')[0].strip()})" \
            if codes >= 0 else f"{type(e).__name__}: {text[:200]}"
        sweep_dir = Path(self.config.hydra.sweep.dir)
        settled = settle_dead(sweep_dir, f"its process ended without recording a result: {cause}")
        print(f"error: the sweep stopped: {cause}; {settled} run(s) it left running recorded "
              f"interrupted (continue one with python -m runner resume=DIR)", file=sys.stderr)

    def launch_batches(self) -> Any:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / SWEEP_FILE)
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            try:
                results = self.launcher.launch(batch, initial_job_idx=first)
            except Exception as e:  # not a job's error (jobs record theirs): a worker died
                self.launch_failed(e)
                break
            for r in results:
                _ = r.return_value  # raises where a job raised
            first += len(batch)
            returns.append(results)
        return returns
