import numpy
import pytest

from netdef import backend


@pytest.fixture(autouse=True)
def _cpu_and_seed():
    """Every test starts on the CPU with a fixed random stream."""
    backend.set_mode_cpu()
    backend.set_random_seed(1234)
    numpy.random.seed(1234)
    yield
    backend.set_mode_cpu()
