"""K seeds fused (`train.fused_seeds=K`) against the same K seeds run one after another, in one
process.

    python benchmarks/fused_seeds.py [--experiment reinit_table1] [--ks 1,5,10] [--repeats 3]
        [--device cpu] [--set KEY=VALUE ...]

Both sides are whole runs as `python -m runner` trains them (`runner.training.lifecycle.run`
into fresh directories: set-up, training, evaluations, metrics.csv, result.json), on one thread
unless `--set threads=N`. For each K the fused run and the K separate runs alternate, and the
medians are compared: speed-up = separate / fused. `--experiment fmnist_mlp --set
train.epochs=1` measures the Fashion-MNIST MLP (one epoch of 54,000 images, batch 256, Adam);
`--device cuda` the GPU variant.
"""
import argparse
import statistics
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from benchmarks_common import machine
from runner.app import conf_dir
from runner.training import lifecycle


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", default="reinit_table1")
    p.add_argument("--ks", default="1,5,10")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], help="a config override (repeatable)")
    a = p.parse_args()
    base = [f"experiment={a.experiment}", f"device={a.device}", "threads=1", "progress=false", *a.set]

    def cfg(*extra):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=base + list(extra))

    def timed(fn):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def separate(k):
        with tempfile.TemporaryDirectory() as d:
            for s in range(k):
                lifecycle.run(cfg(f"seed={s}"), f"{d}/{s}")

    def fused(k):
        with tempfile.TemporaryDirectory() as d:
            lifecycle.run(cfg("seed=0", f"train.fused_seeds={k}"), d)

    separate(1), fused(2)  # warm-up: lazy imports, allocator
    print(machine())
    print(f"{a.experiment} on {a.device}, whole runs, {a.repeats} interleaved repeats; "
          f"options: {' '.join(a.set) or 'defaults'}")
    for k in map(int, a.ks.split(",")):
        sep, fus = [], []
        for _ in range(a.repeats):
            sep.append(timed(lambda: separate(k)))
            fus.append(timed(lambda: fused(k)) if k > 1 else timed(lambda: separate(1)))
        s, f = statistics.median(sep), statistics.median(fus)
        print(f"K={k:3d}: {k} separate runs median {s:.3f} s, fused median {f:.3f} s "
              f"({f / k:.3f} s a seed); speed-up separate/fused {s / f:.2f}")


if __name__ == "__main__":
    main()
