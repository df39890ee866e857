"""Algorithm 4.1 (runner.sparse.cops) on VGG-16's parameter count, synthetic scores, eps = 1e-6.

    python benchmarks/cops_speed.py [--repeats 5] [--threads 1] [--dtype float64]

D is the parameter count of the thesis's VGG-16 for CIFAR-10 (experiment wimmer_table4_1: 15,255,626).
Scores shaped like the thesis's: target s0 = -|g * theta| (SNIP), control s1 = -(h * theta)
(GraSP, both signs), g, h, theta ~ N(0, 1) i.i.d., each L1-normalized (App. A.4); float32 by
default, the dtype of the scores methods.cops solves. Prints the median and the range of `--repeats` timed calls
of `runner.sparse.cops.cops` (the lambda+ doubling, the bisection and the final mask) per q and
alpha_kappa, with the number of g' evaluations and lambda*.
"""
import argparse
import os
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from runner.app import conf_dir
from runner.instantiate import build_model
from runner.sparse.cops import cops
from runner.sparse.keep import exact_density, keep_count


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=wimmer_table4_1"])
    n = sum(t.numel() for t in build_model(cfg).parameters())
    gen = torch.Generator().manual_seed(0)
    g, h, theta = (torch.randn(n, generator=gen) for _ in range(3))
    s0, s1 = -(g * theta).abs(), -(h * theta)
    dtype = getattr(torch, a.dtype)
    s0, s1 = ((s / s.abs().sum()).to(dtype) for s in (s0, s1))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"D = {n:,} scores ({a.dtype}), eps = 1e-6, {torch.get_num_threads()} torch threads, "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print("| q | alpha_kappa | median s | min-max s | g' evaluations | lambda* |")
    print("|---|---|---|---|---|---|")
    for q in (0.9, 0.995):
        d = keep_count(n, exact_density(q), "floor")
        for alpha in (0.5, 0.99999):
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                r = cops(s0, s1, d, alpha, eps=1e-6)
                times.append(time.perf_counter() - t0)
                assert int(r.keep.sum()) == d
            print(f"| {q} | {alpha} | {statistics.median(times):.2f} | {min(times):.2f}-"
                  f"{max(times):.2f} | {r.evaluations} | {r.lam:.4g} |")


if __name__ == "__main__":
    main()
