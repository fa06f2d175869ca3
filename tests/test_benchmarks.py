"""The benchmark scripts run and print what docs/performance.md says they print."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import compare  # noqa: E402


@pytest.mark.slow
def test_compare_prints_a_table_for_one_net():
    env = {**os.environ, "NETDEF_NUM_THREADS": "1"}
    cmd = [sys.executable, "benchmarks/compare.py", "--nets", "lenet", "--blocks", "1", "--per-block", "1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, env=env, timeout=600)
    lines = res.stdout.splitlines()
    assert any(line.startswith("netdef threads: 1 (fixed") for line in lines)
    assert any(line.startswith("BLAS kernels: ") for line in lines)
    row = next(line for line in lines if line.startswith("| lenet b64 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) > 0
    assert "Setting up" not in res.stderr  # the nets' set-up log is silenced


def test_contention_lines_are_ratios_to_the_quiet_run():
    quiet = ([{"case": "cifar10_quick b100", "netdef": 50.0, "torch": 40.0}], 4.0)
    busy = ([{"case": "cifar10_quick b100", "netdef": 75.0, "torch": 100.0}], 6.0)
    assert compare.contention_lines(quiet, busy) == [
        "contention cifar10_quick b100: netdef 1.50x quiet time, PyTorch 2.50x",
        "contention digits example: 1.50x quiet time (4.0 s -> 6.0 s)",
    ]
    assert compare.contention_lines(([{"case": "x", "netdef": 2.0}], None), ([{"case": "x", "netdef": 3.0}], 1.0)) == [
        "contention x: netdef 1.50x quiet time"
    ]
