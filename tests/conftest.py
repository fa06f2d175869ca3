import os

import numpy
import pytest

from netdef import backend, threads


@pytest.fixture(autouse=True, scope="session")
def _run_records_outside_the_checkout(tmp_path_factory):
    """netdef train records runs under ./runs by default; tests that train from the repository root must not
    leave them in the checkout (subprocesses inherit the variable)."""
    root = tmp_path_factory.mktemp("runs")
    old = os.environ.get("NETDEF_RUNS_ROOT")
    os.environ["NETDEF_RUNS_ROOT"] = str(root)
    yield
    if old is None:
        os.environ.pop("NETDEF_RUNS_ROOT", None)
    else:
        os.environ["NETDEF_RUNS_ROOT"] = old


@pytest.fixture(autouse=True)
def _cpu_and_seed():
    """Every test starts on the CPU with a fixed random stream."""
    backend.set_mode_cpu()
    backend.set_random_seed(1234)
    numpy.random.seed(1234)
    yield
    backend.set_mode_cpu()


@pytest.fixture
def fresh_thread_policy(monkeypatch):
    """No thread policy applied yet and no thread variable set; the library's count comes back afterwards."""
    monkeypatch.setattr(threads, "_state", threads._State())
    for name in (threads.ENV_VAR, *threads.BLAS_ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    before = threads._library_threads()
    yield
    threads._state.blas_cap = None  # the test's own cap (the process's state comes back with the monkeypatch)
    threads._set(before)
