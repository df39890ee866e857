"""One `reinit_table1` run against a bare loop of the same full-batch steps, in one process.

    python benchmarks/reinit_run.py [--repeats 5] [--method lw] [--device cpu] [--set KEY=VALUE ...]

The runner's side is timed twice: a whole run as `python -m runner` trains it
(`runner.training.lifecycle.run` into a fresh directory: config checks, set-up, 9 rounds of 200
steps, evaluations, metrics.csv, result.json), and the training inside it (`Trainer.fit` of a
built trainer: data, methods' hooks, the rounds, evaluations; nothing written);
the reference trains a fresh model of the same architecture on the same 256 examples with plain
full-batch SGD for as many steps, with no method (`--method lw` adds a second reference: the
same loop with LW's inserted normalizations). Both run on one thread (`--device cuda`: on
the GPU, synchronized before each clock reading); timings are interleaved and the medians
compared (ratio runner / reference, 1.00 = no overhead); on a machine whose speed drifts, the
median of each repeat's own ratio is the steadier figure.
"""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from benchmarks_common import machine
from methods.reinit_common import Standardize
from runner.app import conf_dir
from runner.config import prepare
from runner.results import MemoryRecorder
from runner.train import Trainer
from runner.training import lifecycle


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--method", default="lw")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], help="a config override (repeatable)")
    a = p.parse_args()
    overrides = ["experiment=reinit_table1", f"device={a.device}", "seed=0", f"method={a.method}",
                 *a.set]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.set_num_threads(1)
    trainer = Trainer(prepare(cfg), MemoryRecorder())
    trainer.data.load_phase_data(trainer.parts.phases[0])
    ctx = trainer.ctx
    x, y = ctx.pipeline(ctx.data.train.x, False, None), ctx.data.train.y
    steps = cfg.train.epochs * sum(ph.repeat for ph in cfg.phases)

    def reference():
        model = ctx.build_model(0)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def reference_lw():
        """The bare loop with LW's inserted normalizations (after block 1 from round 1, after
        block 2 from round N + 1, as `tuned.lw` places them): the arithmetic LW adds to each
        step; its per-round rescaling, calibration and fresh draws are left out."""
        model = ctx.build_model(0)
        n = cfg.tuned.lw.n * cfg.train.epochs
        opt = None
        for step in range(steps):
            if step in (0, n):
                i = step // n
                model.blocks[i] = torch.nn.Sequential(model.blocks[i], Standardize())
                opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def runner():
        with tempfile.TemporaryDirectory() as d:
            lifecycle.run(cfg, d)

    def timed(fn):
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    reference(), runner()  # warm-up
    ref, run, inside, ref_lw = [], [], [], []
    for _ in range(a.repeats):
        ref.append(timed(reference))
        if a.method == "lw":
            ref_lw.append(timed(reference_lw))
        run.append(timed(runner))
        t = Trainer(prepare(cfg), MemoryRecorder())
        inside.append(timed(t.fit))
    r, m, f = statistics.median(ref), statistics.median(run), statistics.median(inside)
    print(machine())
    print(f"reinit_table1 on {ctx.device}, method={a.method}, {steps} full-batch steps of {len(y)} examples, "
          f"{a.repeats} interleaved repeats, 1 thread; options: {' '.join(a.set) or 'defaults'}")
    print(f"bare loop:  median {r:.3f} s  (all: {', '.join(f'{t:.3f}' for t in ref)})")
    print(f"runner run: median {m:.3f} s  (all: {', '.join(f'{t:.3f}' for t in run)})")
    print(f"its training (Trainer.fit): median {f:.3f} s  (all: {', '.join(f'{t:.3f}' for t in inside)})")
    print(f"ratio runner/bare loop: {m / r:.3f} (whole run), {f / r:.3f} (training)")
    if ref_lw:
        r_lw = statistics.median(ref_lw)
        print(f"bare loop with LW's normalizations: median {r_lw:.3f} s; ratio runner/it: "
              f"{m / r_lw:.3f} (whole run), {f / r_lw:.3f} (training)")
    pairs = statistics.median(b / a for a, b in zip(ref, run))
    print(f"median of the {a.repeats} repeats' own ratios (each run against the bare loop just "
          f"before it): {pairs:.3f} (whole run)")


if __name__ == "__main__":
    main()
