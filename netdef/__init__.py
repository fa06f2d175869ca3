"""netdef: Caffe-style declarative networks on NumPy (CPU) and CuPy (GPU).

The Python API follows pycaffe, so a pycaffe script runs with ``import netdef as
caffe`` in place of ``import caffe``: ``caffe.Net(model, weights, caffe.TEST)``,
``net.blobs``/``net.params``, ``net.forward()``/``net.backward()``,
``caffe.get_solver(path)`` and the solver classes, ``caffe.NetSpec`` with ``from
netdef import layers as L, params as P``, ``caffe.io`` for files and input
preprocessing, ``caffe.proto.caffe_pb2``, ``caffe.Classifier``/``caffe.Detector``
and ``caffe.draw``. Multi-GPU (NCCL) training is the part pycaffe had that netdef
does not: ``has_nccl()`` is False and one process trains on one device.
"""

from __future__ import annotations

import sys
import time

from . import backend, io, netspec, params
from .backend import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .blob import Blob
from .classifier import Classifier, Detector
from .errors import InvalidParameterError, MissingDependencyError, NetdefError
from .layers import Layer, layer_type_list, register_layer
from .layers.python_layer import add_python_layer_path, allow_python_layers, python_layers_allowed
from .logs import init_log, quiet, set_log_level
from .logs import log_info as log
from .net import TEST, TRAIN, Net
from .netspec import NetSpec, to_proto
from .proto import caffe_pb2  # noqa: F401  (makes netdef.proto.caffe_pb2 an attribute, as caffe.proto.caffe_pb2)

__version__ = "0.1.0"

# pycaffe's module was caffe.net_spec; scripts that import it by that name get netdef's
sys.modules.setdefault(f"{__name__}.net_spec", netspec)
net_spec = netspec

_SOLVER_CLASSES = {
    "Solver",
    "SGDSolver",
    "NesterovSolver",
    "AdaGradSolver",
    "RMSPropSolver",
    "AdaDeltaSolver",
    "AdamSolver",
}


def get_solver(path, **kwargs):
    """Build the solver a solver file names (``type:``), like pycaffe's ``caffe.get_solver``."""
    from .solvers import get_solver as _get_solver

    return _get_solver(path, **kwargs)


def __getattr__(name):
    # Solver classes and the drawing module are imported on first use so that `import netdef` stays light.
    if name in _SOLVER_CLASSES:
        from . import solvers

        return getattr(solvers, name)
    if name == "draw":
        import importlib

        return importlib.import_module(f"{__name__}.draw")
    raise AttributeError(f"module 'netdef' has no attribute {name!r}")


# --- pycaffe's multi-GPU switches: one process, one solver, no NCCL -------------------
def has_nccl() -> bool:
    """Whether NCCL multi-GPU training is available: never in netdef (pycaffe's ``caffe.has_nccl``)."""
    return False


def solver_count() -> int:
    """The number of solvers training together: always 1 (pycaffe's ``caffe.solver_count``)."""
    return 1


def solver_rank() -> int:
    """This process's solver rank: always 0 (pycaffe's ``caffe.solver_rank``)."""
    return 0


def set_solver_count(count: int) -> None:
    """Accepts 1 only; netdef trains with one solver per process (pycaffe's ``caffe.set_solver_count``)."""
    if int(count) != 1:
        raise InvalidParameterError(
            f"netdef trains with one solver in one process (no NCCL multi-GPU training). Received: solver count {count}"
        )


def set_solver_rank(rank: int) -> None:
    """Accepts 0 only (pycaffe's ``caffe.set_solver_rank``)."""
    if int(rank) != 0:
        raise InvalidParameterError(
            f"netdef trains with one solver in one process (no NCCL multi-GPU training). Received: solver rank {rank}"
        )


def set_multiprocess(multiprocess: bool) -> None:
    """Accepted and ignored: netdef keeps no per-process solver state (pycaffe's ``caffe.set_multiprocess``)."""


class NCCL:
    """pycaffe's ``caffe.NCCL``; netdef has no NCCL support, so building one raises MissingDependencyError."""

    def __init__(self, solver=None, uid=None):
        raise MissingDependencyError(
            "netdef has no NCCL multi-GPU training (has_nccl() is False); train with one solver per process"
        )


class Timer:
    """A wall-clock stopwatch (pycaffe's ``caffe.Timer``): ``start()``, ``stop()``, ``ms``."""

    def __init__(self):
        self._started: float | None = None
        self._elapsed = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            self._elapsed = time.perf_counter() - self._started
            self._started = None

    @property
    def ms(self) -> float:
        """Milliseconds between the last start and stop (up to now while running)."""
        if self._started is not None:
            return (time.perf_counter() - self._started) * 1000.0
        return self._elapsed * 1000.0

    @property
    def seconds(self) -> float:
        return self.ms / 1000.0


__all__ = [
    "Blob",
    "Classifier",
    "Detector",
    "Layer",
    "NCCL",
    "Net",
    "NetSpec",
    "NetdefError",
    "TEST",
    "TRAIN",
    "Timer",
    "add_python_layer_path",
    "allow_python_layers",
    "backend",
    "get_solver",
    "has_nccl",
    "init_log",
    "io",
    "layer_type_list",
    "log",
    "params",
    "python_layers_allowed",
    "quiet",
    "register_layer",
    "set_device",
    "set_log_level",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_multiprocess",
    "set_random_seed",
    "set_solver_count",
    "set_solver_rank",
    "solver_count",
    "solver_rank",
    "to_proto",
]
