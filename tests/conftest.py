import functools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from runner.app import compose_and_run, conf_dir

os.environ.setdefault("RUNNER_DATA", str(Path(__file__).parent / "_no_data"))
CONF = conf_dir()
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.exists(),
                                         reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(autouse=True, scope="session")
def _readers_run_under_mutmut():
    """mutmut runs each mutant's tests in a fork of a process whose reader cache is already
    filled; empty it there so a mutated reader or label check is called, not skipped."""
    if os.environ.get("MUTANT_UNDER_TEST"):
        from runner.training import data
        data.ARRAYS.clear()


@functools.lru_cache(maxsize=None)
def load_yaml(path: Path):
    """A config file's YAML, parsed once per test run (libyaml's parser where installed)."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def extends(path: Path) -> list:
    """The config files that the experiment or family base at `path` extends through its
    defaults list (another experiment, a conf/family_*.yaml base), nearest first, transitively."""
    found = []
    for entry in load_yaml(path).get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            base = (CONF / f"{entry[1:]}.yaml" if entry.startswith("/")
                    else path.parent / f"{entry}.yaml")
            found += [base, *extends(base)]
    return found


def run_cli(*args, cwd, module="runner"):
    """`python -m runner ARGS` (or another module) in `cwd`; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def interrupt_when(proc: subprocess.Popen, marker: Path, timeout: float = 240) -> tuple:
    """Ctrl-C to `proc` once `marker` exists (a sweep job's result.json); its (stdout, stderr)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=timeout)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: on a shared 2-core machine OpenMP's spinning
    threads cost 10x."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def compose_cfg():
    """Compose the root config with overrides (Hydra's compose API, cleared afterwards)."""
    def _compose(overrides=(), hydra=False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)
    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def run_cfg(tmp_path):
    """Run a composed config in a temporary directory; returns the result dict."""
    counter = iter(range(10**6))

    def _run(overrides=()):
        GlobalHydra.instance().clear()
        out = tmp_path / f"run{next(counter)}"
        return {**compose_and_run(list(overrides), out), "_dir": str(out)}
    yield _run
    GlobalHydra.instance().clear()


def run_composed(overrides, out_dir) -> dict:
    """`runner.app.compose_and_run` with Hydra's global state cleared before and after."""
    GlobalHydra.instance().clear()
    try:
        return compose_and_run(list(overrides), out_dir)
    finally:
        GlobalHydra.instance().clear()


def in_process(args, out: Path) -> int:
    """`python -m runner ARGS` as the app runs it (runner.app.execute) on a config composed by
    Hydra's compose API, in this process; returns the exit status."""
    from omegaconf import OmegaConf

    from runner.app import execute, job_choices
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=list(args), return_hydra_config=True)
            choices = job_choices(cfg.hydra.runtime.choices)
            plain = OmegaConf.to_container(cfg)
            plain.pop("hydra")
            out.mkdir(parents=True, exist_ok=True)  # as Hydra makes it
            execute(OmegaConf.create(plain), out, list(args), choices, single=True)
    except SystemExit as e:
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return 0


@pytest.fixture
def hydra_cli(monkeypatch):
    """Run an entry point (default: `runner.app.cli`) in-process with a command line; returns its
    exit code. Hydra's logging setup of the run is undone afterwards."""
    from runner.app import cli

    def _cli(*args, entry=cli):
        monkeypatch.setattr(sys, "argv", ["runner", *args])
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        GlobalHydra.instance().clear()
        try:
            entry()
        except SystemExit as e:
            return 0 if e.code is None else e.code
        finally:
            GlobalHydra.instance().clear()
            for h in root.handlers[:]:
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            root.handlers[:], root.level = handlers, level
        return 0
    return _cli


def context(model, data=None, seed=0, eval_batch_size=1024, num_phases=1, **fields):
    """A real RunContext around `model` (CPU, cross-entropy, identity pipeline) for method tests."""
    import copy

    import torch
    import torch.nn.functional as F

    from runner.context import RunContext, Phase

    ctx = RunContext(device=torch.device("cpu"), model=model, seed=seed, loss_fn=F.cross_entropy,
                     num_phases=num_phases, eval_batch_size=eval_batch_size,
                     build_model=lambda: copy.deepcopy(model),
                     make_optimizer=lambda m, lr, wd: torch.optim.SGD(m.parameters(), lr=lr))
    ctx.data, ctx.pipeline = data, (lambda x, train, gen: x)
    ctx.phase = Phase(0, 0, "train", None)
    for k, v in fields.items():
        setattr(ctx, k, v)
    return ctx


def assert_same_selection(got, want, score, rtol=1e-5):
    """Two bool masks that each keep the d smallest entries of (nearly) the same `score` agree
    up to near-ties: same count, and every entry where they differ lies within `rtol` of the
    score's range from the selection threshold (the d-th smallest score). Floating-point
    reduction order differs between torch versions, so entries at a near-tie may flip."""
    import torch
    got, want, score = got.flatten(), want.flatten(), score.flatten().double()
    d = int(want.sum())
    assert int(got.sum()) == d, f"masks keep {int(got.sum())} and {d} entries"
    differ = got != want
    if not differ.any():
        return
    threshold = torch.kthvalue(score, d).values
    eps = rtol * float(score.max() - score.min())
    off = (score[differ] - threshold).abs()
    assert bool((off <= eps).all()), (
        f"{int(differ.sum())} entries differ; the farthest sits {float(off.max()):.3g} from the "
        f"threshold {float(threshold):.6g}, more than a near-tie ({eps:.3g})")
