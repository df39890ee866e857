"""Every `python -m runner...` command of the README and of every docs/*.md page runs, each page
in its own order, in-process (a command shown on an earlier page runs once, under that page's id;
README.md first, then docs/ by name).

A command is shortened, not rewritten: `ci=smoke` (and CPU, one thread, one joblib job), a seed
or two; a sweep of more than MAX_JOBS jobs runs its first value of every list (still as a sweep)
after every value of every list was checked to compose. Placeholders (PLACEHOLDERS): NAME is
fmnist_mlp, my_method (the method a reader adds) is l2 (a value a list then holds twice runs
once); an analysis command's DIR is the latest sweep before it on its page of the experiments it
reads (SOURCES), SCRATCH_DIR the latest generalization sweep; `[DIR]` / `[DIR ...]` are left out.
The paper-table sweeps (HEAVY) and the analyses of their directories run in the `sizes` stage,
among them the ImageNet sweeps of Wimmer's Table 5.1, whose SLURM launcher options are left out
(CLUSTER).
"""
import importlib
import json
import math
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import CONF

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))  # each page's commands run in its order
SMOKE = ["ci=smoke", "device=cpu", "threads=1"]
MAX_JOBS = 4
SOURCES = [  # (start of an analysis command, experiments its DIR holds), first match wins
    ("runner.analysis.cops table43", "wimmer_table4_3"),
    ("runner.analysis.cops fig47", "wimmer_table4_2_cifar100"),
    ("runner.analysis.cops fig48", "wimmer_fig4_8"),
    ("runner.analysis.swr warm", "swr_warm_"), ("runner.analysis.swr scaling", "swr_fig1_"),
    ("runner.analysis.swr balance", "swr_fig5_"), ("runner.analysis.reinit", "reinit_table2_"),
    ("runner.plots DIR --y frozen_filters", "zilly_frozen_counts"),
    ("runner.analysis.zilly_figures boxplot", "cifar_blur_to_sharp"),
    ("runner.analysis.freezenet", "wimmer_"), ("runner.plots DIR --hue method", ""),
    ("runner.plots", "swr_cl_"),
    ("runner.analysis.interspace curve", "wimmer_fig5_5"),
    ("runner.analysis.interspace gradnorm", "wimmer_fig5_5"),
    ("runner.analysis.interspace rounds", "wimmer_lth_"),
    ("runner.analysis.interspace flops", "wimmer_lth_"), ("runner.report", "")]
SCRATCH = "swr_gen_"
# The paper-table sweeps of SWR, Zilly et al. and Wimmer's thesis (2-6 s each; Table 2's 224x224
# models about 30 s): they and the analyses of their directories run in CI's second stage
# (`pytest -m sizes`, part of the README's test command), which keeps the everyday stage < 5 min.
# The everyday stage runs the quick-start and usage commands and Alabdulmohsin et al.'s Tables 1
# and 5. A new family of experiments adds its prefix here when its sweeps are heavy.
HEAVY = ("swr_", "zilly_", "cifar_blur_to_sharp", "reinit_table2_", "wimmer_")
# a SLURM sweep (hydra/launcher=submitit_slurm, distributed over its tasks) runs here as a local
# sweep of one process: the launcher's options and `distributed.enabled=true` are left out
CLUSTER = ("hydra/launcher=submitit_slurm", "hydra.launcher.", "distributed.enabled=true")
# analyses that score a model and solve many COPS problems (30-60 s on two loaded CPU cores), the
# streaming benchmark (DataLoader worker processes, about 5 s) and the gallery of every figure
# (about 40 smoke runs)
HEAVY_ANALYSES = ("runner.analysis.cops fig41", "runner.analysis.cops fig46", "runner.data.stream bench",
                  "runner.plots gallery")
PLACEHOLDERS = {"=NAME": "=fmnist_mlp", "my_method": "l2"}
TRACKERS = {"logger=tensorboard": "tensorboard", "logger=mlflow": "mlflow", "logger=wandb": "wandb"}


def page_name(path):
    return path.relative_to(ROOT).as_posix()


def page_commands(path):
    """A page's `python -m runner...` commands, in order: code-block lines (without their
    trailing `# comment`) and inline code elsewhere (tables, prose)."""
    found = []
    for i, part in enumerate(re.split(r"^```.*$", path.read_text(), flags=re.M)):
        if i % 2:
            found += [line.split("  #")[0].strip() for line in part.splitlines()
                      if line.startswith("python -m runner")]
        else:
            found += re.findall(r"`(python -m runner[^`]*)`", part)
    return list(dict.fromkeys(found))


def first_pages(on_page):
    """(page, command) in page order; a command shown on several pages runs on the first."""
    found = {}
    for page, commands in on_page.items():
        for c in commands:
            found.setdefault(c, page)
    return [(page, c) for c, page in found.items()]


ON_PAGE = {page_name(p): page_commands(p) for p in PAGES}
COMMANDS = first_pages(ON_PAGE)
ALL = [c for commands in ON_PAGE.values() for c in commands]


def split(command):
    """(module, arguments) of `python -m MODULE ARGS...`, placeholders filled in."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    words = shlex.split(command)
    assert words[:2] == ["python", "-m"], command
    return words[2], words[3:]


def sweep(arg):
    """(key, values) of a sweep override (`a=1,2`, `range(3)`), else None."""
    if "=" not in arg or arg.startswith("-"):
        return None
    o = OverridesParser.create().parse_overrides([arg])[0]
    return (o.key_or_group, list(o.sweep_string_iterator())) if o.is_sweep_override() else None


def experiments_of(command):
    module, args = split(command)
    if module != "runner":
        return set()
    sweeps = dict(filter(None, map(sweep, args)))
    chosen = next((a.split("=", 1)[1] for a in args if a.startswith("experiment=")), "fmnist_mlp")
    return set(sweeps.get("experiment", [chosen]))


def source(command):
    """The experiments (prefix) an analysis command's DIR must hold."""
    text = " ".join(command.split()[2:])
    found = [prefix for start, prefix in SOURCES if text.startswith(start)]
    assert found, f"add the experiments that DIR holds for `{command}` to SOURCES in {__file__}"
    return found[0]


def is_sweep(command):
    return split(command)[0] == "runner" and "-m" in split(command)[1]


def sweep_read(page, command, prefix):
    """The latest sweep before `command` on its page of experiments starting with `prefix`."""
    before = ON_PAGE[page][:ON_PAGE[page].index(command)]
    found = [c for c in before
             if is_sweep(c) and all(e.startswith(prefix) for e in experiments_of(c))]
    return found[-1] if found else None


def declared(args):
    """The sweeps the experiments of a `-m` command declare (`hydra.sweeper.params`), as
    command-line overrides (those of the command line replace them key by key)."""
    if "-m" not in args:
        return []
    chosen = next((a for a in args if a.startswith("experiment=")), None)
    if chosen is None:  # the default experiment's sweep applies when it is named
        return []
    found = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in sweep(chosen)[1] if sweep(chosen) else [chosen.split("=", 1)[1]]:
            cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
            for k, v in (cfg.hydra.sweeper.params or {}).items():
                found.setdefault(k, f"{k}={v}")
    GlobalHydra.instance().clear()
    typed = {a.split("=", 1)[0] for a in args if "=" in a}
    return [a for k, a in found.items() if k not in typed]


def shorten(args):
    """The runner arguments to run, the number of jobs they make, and one composition per value
    of every swept list (list i at position k % len). The sweeps that the experiments declare
    count as typed."""
    plain, lists = [], {}
    for a in list(args) + declared(args):
        s = sweep(a)
        if s:
            lists[s[0]] = list(dict.fromkeys(s[1]))  # a placeholder may repeat a listed value
        elif a.startswith("hydra.launcher.n_jobs="):
            plain.append("hydra.launcher.n_jobs=1")
        elif "hydra/launcher=submitit_slurm" in args and a.startswith(CLUSTER):
            continue
        else:
            plain.append(a)
    seeds = lists.pop("seed", ["0"])
    config = [a for a in plain if "=" in a and not a.startswith(("-", "hydra"))]
    checks = [config + [f"{k}={v[i % len(v)]}" for k, v in lists.items()]
              for i in range(max(map(len, lists.values()), default=0))]
    if math.prod(map(len, lists.values())) > MAX_JOBS:
        lists = {k: v[:1] for k, v in lists.items()}
    seeds = seeds[:2] if not lists else seeds[:1]
    lists["seed"] = seeds
    swept = [f"{k}=choice({','.join(v)})" for k, v in lists.items()]
    jobs = math.prod(map(len, lists.values()))
    return plain + (swept if "-m" in args else [f"seed={seeds[0]}"]), jobs, checks


def marks(page, command):
    """`sizes` for a HEAVY sweep, an analysis of a HEAVY sweep's directory and HEAVY_ANALYSES."""
    module = split(command)[0]
    if module == "runner":
        heavy = any(e.startswith(HEAVY) for e in experiments_of(command))
    else:
        reads = ("DIR" in command.replace("[DIR]", "")
                 and sweep_read(page, command, source(command)))
        heavy = (bool(reads) and bool(marks(page, reads))
                 or " ".join(command.split()[2:]).startswith(HEAVY_ANALYSES))
    return [pytest.mark.sizes] if heavy else []


@pytest.fixture(scope="module")
def sweeps():
    """command -> directory of every sweep run so far (a command runs once, on its first page)."""
    return {}


def test_the_readme_and_docs_show_runner_commands():
    modules = {split(c)[0] for _, c in COMMANDS}
    assert {"runner", "runner.report", "runner.plots", "runner.analysis.swr",
            "runner.analysis.reinit", "runner.analysis.zilly_figures"} <= modules
    assert any(split(c)[0] == "runner" for c in ON_PAGE["README.md"])
    # a method's own option swept with a method that lacks it (`method=vanilla,l2
    # method.lambda=...`) fails to compose: such sweeps are shown as two
    assert not any("method=vanilla,l2 method.lambda" in c for c in ALL)


def test_every_analysis_command_follows_the_sweep_it_reads():
    for page, commands in ON_PAGE.items():
        for command in commands:
            if split(command)[0] == "runner" or "DIR" not in command.replace("[DIR]", ""):
                continue
            needs = [source(command)] + ([SCRATCH] if "SCRATCH_DIR" in command else [])
            for prefix in needs:
                assert sweep_read(page, command, prefix), \
                    f"no sweep of {prefix}* before it on {page}: {command}"


@pytest.mark.parametrize("page, command", [pytest.param(page, c, marks=marks(page, c),
                                                        id=f"{page}: {c}")
                                           for page, c in COMMANDS])
def test_readme_command_runs(page, command, sweeps, hydra_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    module, args = split(command)
    for flag, package in TRACKERS.items():
        if flag in args:
            pytest.importorskip(package)
    if module == "runner":
        run_runner(command, args, sweeps, hydra_cli, tmp_path, capsys)
    else:
        run_analysis(page, module, command, sweeps, tmp_path, capsys)


def run_runner(command, args, sweeps, hydra_cli, tmp_path, capsys):
    argv, jobs, checks = shorten(args)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in checks:
            compose("config", overrides=overrides + SMOKE)
    GlobalHydra.instance().clear()
    out = tmp_path / "out"
    flags = []  # Hydra's flags last: argparse takes overrides in one run of positionals
    for flag, n in (("--cfg", 2), ("--help", 1)):
        if flag in argv:
            i = argv.index(flag)
            flags += argv[i:i + n]
            argv = argv[:i] + argv[i + n:]
    code = hydra_cli(*argv, *SMOKE, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}", *flags)
    assert code == 0, capsys.readouterr().err[-3000:]
    if "--cfg" in args or "--help" in args:
        printed = capsys.readouterr().out
        assert ("optim:" if "--cfg" in args else "plasticity-runner:") in printed
        assert not out.exists()
        return
    results = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    fused = [int(a.partition("=")[2]) for a in argv if a.startswith("train.fused_seeds=")]
    assert len(results) == jobs * (fused or [1])[0]  # fused seeds: a run directory each
    assert all(r["status"] == "completed" for r in results), [r.get("error") for r in results]
    assert all((p.parent / "metrics.csv").exists() for p in out.rglob("result.json"))
    if "-m" in args:
        assert (out / "table.md").exists() and (out / "table.csv").exists()
        sweeps[command] = out


def latest(sweeps, page, command, prefix):
    reads = sweep_read(page, command, prefix)
    if reads not in sweeps:
        pytest.skip(f"the sweep of {prefix}* before it on {page} did not run (deselected)")
    return str(sweeps[reads])


def run_analysis(page, module, command, sweeps, tmp_path, capsys):
    _, args = split(re.sub(r" \[DIR( \.\.\.)?\]", "", command))
    args = ["DIR" if re.fullmatch(r"(outputs/multirun/)?DIR(\.\.\.)?", a) else a for a in args]
    dirs = {}
    if "DIR" in args:
        dirs["DIR"] = latest(sweeps, page, command, source(command))
    if "SCRATCH_DIR" in args:
        dirs["SCRATCH_DIR"] = latest(sweeps, page, command, SCRATCH)
    argv = [dirs.get(a, a) for a in args]
    assert importlib.import_module(module).main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    figures = [Path(p) for p in re.findall(r"^figure written to (\S+)", out, flags=re.M)]
    if not figures:
        assert "|" in out or "\\begin{tabular}" in out, out  # a table (markdown or LaTeX)
    for f in figures:
        assert f.read_bytes()[:4] == b"\x89PNG"
        base = Path(dirs["DIR"]) if "DIR" in dirs else tmp_path
        assert f.resolve().parent == (base / "plots").resolve()
