"""The whole of Reinitialization Table 1 as one command, timed: 180 runs (6 methods x 3 signal
strengths x 10 seeds) as 18 jobs of 10 fused seeds, against the same 180 runs one by one.

    python benchmarks/table1_sweep.py [--repeats 1] [--separate] [--jobs 2]

Runs `python -m runner -m experiment=reinit_table1 seed=0 train.fused_seeds=10
hydra/launcher=joblib hydra.launcher.n_jobs=2` (the command of docs/usage.md) in a subprocess,
into a temporary directory, and prints its wall time and its CPU time (all its processes).
`--separate` also times the experiment's own sweep of 180 separate runs (`seed=range(10)`) in the
same way, then prints the ratio of the wall times and the largest difference between the two
tables' cells (mean test accuracy, percentage points).
"""
import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks_common import machine

COMMAND = [sys.executable, "-m", "runner", "-m", "experiment=reinit_table1", "hydra/launcher=joblib"]


def timed(extra, jobs: int):
    """(wall s, CPU s, {(method, alpha): mean}) of the table command with `extra` overrides."""
    with tempfile.TemporaryDirectory() as d:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([*COMMAND, f"hydra.launcher.n_jobs={jobs}", f"hydra.sweep.dir={d}",
                              "progress=false", *extra], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            sys.exit(f"error: the table command failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        with open(Path(d) / "table.csv") as f:
            cells = {(r["method"], r["dataset.alpha"]): float(r["mean"]) for r in csv.DictReader(f)}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, cells


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--separate", action="store_true", help="also time the 180 separate runs")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    a = p.parse_args()
    print(machine())
    variants = {"fused (train.fused_seeds=10)": ["seed=0", "train.fused_seeds=10"]}
    if a.separate:
        variants["separate"] = []
    walls, cells = {}, {}
    for _ in range(a.repeats):
        for name, extra in variants.items():
            wall, cpu, cells[name] = timed(extra, a.jobs)
            walls.setdefault(name, []).append(wall)
            print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU ({a.jobs} jobs at once)")
    medians = {name: statistics.median(w) for name, w in walls.items()}
    print("whole table, 180 runs: " + ", ".join(f"{n} median {m:.1f} s" for n, m in medians.items()))
    if a.separate:
        fused, separate = cells.values()
        worst = max(abs(fused[c] - separate[c]) for c in separate) * 100
        print(f"ratio separate/fused: {medians['separate'] / medians[next(iter(variants))]:.2f}; "
              f"largest cell difference {worst:.2f} pp over {len(separate)} cells")


if __name__ == "__main__":
    main()
