"""Every script in benchmarks/ runs as its docstring says, with one repeat (CI's second stage):
a benchmark is not a timed test, but it must not rot when the code it measures moves."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASHION_MNIST

BENCHMARKS = sorted(p for p in (Path(__file__).parents[2] / "benchmarks").glob("*.py")
                    if 'if __name__ == "__main__"' in p.read_text())  # scripts, not helpers
NEEDS_FASHION_MNIST = {"epoch_overhead.py"}  # its default experiment is fmnist_mlp


@pytest.mark.e2e
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_a_benchmark_runs_with_one_repeat(script, tmp_path):
    if script.name in NEEDS_FASHION_MNIST and not FASHION_MNIST.exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    out = subprocess.run([sys.executable, str(script), "--repeats", "1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and out.stdout.strip()
