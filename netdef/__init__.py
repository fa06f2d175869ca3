"""netdef: Caffe-style declarative networks on NumPy (CPU) and CuPy (GPU).

The Python API follows pycaffe: ``netdef.Net(model, netdef.TRAIN)``,
``net.blobs``/``net.params``, ``net.forward()``/``net.backward()``,
``netdef.get_solver(path)``, ``netdef.NetSpec`` with ``from netdef import layers as L,
params as P``, and ``netdef.io`` for files and input preprocessing.
"""

from __future__ import annotations

from . import backend, io, params
from .backend import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .blob import Blob
from .errors import NetdefError
from .layers import Layer, layer_type_list, register_layer
from .net import TEST, TRAIN, Net
from .netspec import NetSpec

__version__ = "0.1.0"


def get_solver(path, **kwargs):
    """Build the solver a solver file names (``type:``), like pycaffe's ``caffe.get_solver``."""
    from .solvers import get_solver as _get_solver

    return _get_solver(path, **kwargs)


def __getattr__(name):
    # Solver classes are imported on first use so that `import netdef` stays light.
    if name in {
        "Solver",
        "SGDSolver",
        "NesterovSolver",
        "AdaGradSolver",
        "RMSPropSolver",
        "AdaDeltaSolver",
        "AdamSolver",
    }:
        from . import solvers

        return getattr(solvers, name)
    raise AttributeError(f"module 'netdef' has no attribute {name!r}")


__all__ = [
    "Blob",
    "Layer",
    "Net",
    "NetSpec",
    "NetdefError",
    "TEST",
    "TRAIN",
    "backend",
    "get_solver",
    "io",
    "layer_type_list",
    "params",
    "register_layer",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_random_seed",
]
