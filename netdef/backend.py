"""Array-module selection: NumPy on the CPU, CuPy on NVIDIA GPUs.

Layers never import cupy themselves; they ask for ``array_module(x)`` of the
arrays they get, so one body serves both devices.
"""
from __future__ import annotations

from typing import Any

import numpy

try:  # CuPy is optional: the project runs and tests on NumPy alone.
    import cupy  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    cupy = None

_state = {"mode": "CPU", "device": 0, "seed": None}
_rng: dict[str, Any] = {"numpy": numpy.random.default_rng()}


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover - depends on the machine
        return False


def set_mode_cpu() -> None:
    """Create new blobs as NumPy arrays."""
    _state["mode"] = "CPU"


def set_mode_gpu() -> None:
    """Create new blobs as CuPy arrays on the current device."""
    from .errors import NetdefError

    if not gpu_available():
        raise NetdefError(
            "GPU mode was requested but CuPy or a CUDA device is not available. "
            "Install the 'gpu' extra (pip install netdef[gpu]) on a machine with an NVIDIA GPU, "
            "or use CPU mode."
        )
    _state["mode"] = "GPU"
    cupy.cuda.Device(_state["device"]).use()


def set_device(device_id: int) -> None:
    """Select the CUDA device used in GPU mode."""
    _state["device"] = int(device_id)
    if _state["mode"] == "GPU":
        cupy.cuda.Device(_state["device"]).use()


def mode() -> str:
    """'CPU' or 'GPU'."""
    return _state["mode"]


def default_xp():
    """The array module new blobs are created with."""
    return cupy if _state["mode"] == "GPU" else numpy


def array_module(x: Any):
    """NumPy or CuPy, whichever ``x`` belongs to."""
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy
    return numpy


def to_numpy(x: Any) -> numpy.ndarray:
    """A NumPy copy/view of an array from either module."""
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    return numpy.asarray(x)


def asarray(x: Any, xp=None, dtype=None):
    """Move ``x`` to module ``xp`` (default: the current mode's)."""
    xp = xp or default_xp()
    if xp is numpy:
        return numpy.asarray(to_numpy(x), dtype=dtype)
    return xp.asarray(x, dtype=dtype)


def set_random_seed(seed: int) -> None:
    """Seed every random stream netdef draws from (fillers, dropout, shuffling)."""
    _state["seed"] = int(seed)
    _rng["numpy"] = numpy.random.default_rng(int(seed))
    if cupy is not None and gpu_available():
        cupy.random.seed(int(seed))


def rng() -> numpy.random.Generator:
    """The process-wide NumPy generator (seeded by ``set_random_seed``)."""
    return _rng["numpy"]


def get_rng_state() -> dict:
    """Snapshot of the generator state, for exact resume."""
    return _rng["numpy"].bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a state captured by ``get_rng_state``."""
    _rng["numpy"].bit_generator.state = state


def random_uniform(xp, shape, low=0.0, high=1.0, dtype=numpy.float32):
    """Uniform samples on the module of ``xp``; CPU draws come from ``rng()``."""
    if xp is numpy:
        return rng().uniform(low, high, size=shape).astype(dtype, copy=False)
    return xp.random.uniform(low, high, size=shape).astype(dtype, copy=False)


def random_normal(xp, shape, mean=0.0, std=1.0, dtype=numpy.float32):
    """Gaussian samples on the module of ``xp``."""
    if xp is numpy:
        return rng().normal(mean, std, size=shape).astype(dtype, copy=False)
    return xp.random.normal(mean, std, size=shape).astype(dtype, copy=False)
