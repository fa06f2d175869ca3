"""Tests of the malloc settings (netdef/allocator.py)."""

import subprocess
import sys

import pytest

from netdef import allocator


@pytest.fixture
def fresh(monkeypatch):
    """A process in which tune() has not run yet (the settings it makes are harmless to repeat)."""
    monkeypatch.setattr(allocator, "_state", {})


def test_opt_out_and_user_settings_are_respected(fresh, monkeypatch):
    assert allocator.describe() == "not tuned yet (the first net does it)"
    assert allocator.tune({"NETDEF_MALLOC_TUNING": "0"}) == "left alone (NETDEF_MALLOC_TUNING=0)"
    assert allocator.describe() == "left alone (NETDEF_MALLOC_TUNING=0)"
    monkeypatch.setattr(allocator, "_state", {})
    assert allocator.tune({"MALLOC_ARENA_MAX": "2"}) == "left alone (MALLOC_ARENA_MAX is set)"


def test_other_systems_are_left_alone(fresh, monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune({}) == "left alone (not glibc)"


SCRIPT = """
import resource, sys, numpy
from netdef import allocator
if sys.argv[1] == "tune":
    allocator.tune({})
def iteration():  # the temporaries of a small net: several blocks of a few MiB, then all freed
    blocks = [numpy.ones(n, dtype=numpy.float32) for n in (1_500_000, 1_500_000, 1_500_000, 300_000, 70_000)]
    del blocks
for _ in range(3):
    iteration()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    iteration()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_iteration(mode: str) -> float:
    res = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(res.stdout.strip())


@pytest.mark.skipif(allocator._glibc() is None, reason="needs glibc")
def test_freed_blocks_are_reused_without_page_faults():
    # glibc's defaults return the freed top of the heap to the kernel (about 4,500 pages here)
    # and fault it in again next time; tuned, the blocks are reused
    default = _faults_per_iteration("default")
    if default < 500:
        pytest.skip(f"this C library keeps the freed memory by itself ({default} faults per iteration)")
    assert _faults_per_iteration("tune") < 50
