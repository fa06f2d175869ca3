"""Array-module selection: NumPy on the CPU, CuPy on NVIDIA GPUs.

Layers never import cupy themselves; they ask for ``array_module(x)`` of the
arrays they get, so one body serves both devices.
"""

from __future__ import annotations

from typing import Any

import numpy

from .errors import NetdefError, install_hint

try:  # CuPy is optional: the project runs and tests on NumPy alone.
    import cupy  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    cupy = None

# Defaults for objects created from now on (pycaffe's module-level setters); each net and
# solver keeps its own device and random streams once built.
_state: dict[str, Any] = {"mode": "CPU", "device": 0, "seed": None, "issued": 0}


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
    if not gpu_available():
        raise NetdefError(
            "GPU mode was requested but CuPy or a CUDA device is not available. "
            f"Install CuPy ({install_hint('gpu', 'cupy-cuda12x')}) on a machine with an NVIDIA GPU, "
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


class RandomStreams:
    """The random generators one object draws from: a NumPy ``Generator``, and CuPy's on the GPU.

    A net, and every layer in it, draws from the streams it was built with; a solver
    gives its nets one set, seeded by ``random_seed``. The NumPy state is saved
    exactly (``state()``). CuPy's generators cannot report their position, so the
    device stream is re-seeded at each ``checkpoint()`` from (seed, a counter), and
    restoring re-creates it at that counter: a run resumed from a snapshot continues
    bit-exactly because the uninterrupted run re-seeded at the same point.

    Args:
        seed: an int, a ``numpy.random.SeedSequence``, or None for fresh entropy.
    """

    def __init__(self, seed: int | numpy.random.SeedSequence | None = None):
        self._seq = seed if isinstance(seed, numpy.random.SeedSequence) else numpy.random.SeedSequence(seed)
        self.numpy = numpy.random.Generator(numpy.random.PCG64(self._seq))
        self._device_epoch = 0
        self._device = None

    def device(self):
        """CuPy's generator for this object (created on first use)."""
        if self._device is None:
            seq = numpy.random.SeedSequence(
                self._seq.entropy, spawn_key=(*self._seq.spawn_key, 1 << 30, self._device_epoch)
            )
            self._device = cupy.random.RandomState(int(seq.generate_state(1, numpy.uint64)[0]))
        return self._device

    def checkpoint(self) -> dict:
        """A state that ``restore`` continues from exactly (re-seeds the device stream)."""
        self._device_epoch += 1
        self._device = None
        return {"numpy": self.numpy.bit_generator.state, "device_epoch": self._device_epoch}

    def restore(self, state: dict) -> None:
        """Continue from a state made by ``checkpoint`` (a bare NumPy state is accepted too)."""
        self.numpy.bit_generator.state = state.get("numpy", state)
        self._device_epoch = int(state.get("device_epoch", 0))
        self._device = None

    def uniform(self, xp, shape, low=0.0, high=1.0, dtype=numpy.float32):
        """Uniform samples in ``[low, high)`` as an array of module ``xp``."""
        if xp is numpy:
            return self.numpy.uniform(low, high, size=shape).astype(dtype, copy=False)
        return self.device().uniform(low, high, size=shape).astype(dtype, copy=False)

    def normal(self, xp, shape, mean=0.0, std=1.0, dtype=numpy.float32):
        """Gaussian samples as an array of module ``xp``."""
        if xp is numpy:
            return self.numpy.normal(mean, std, size=shape).astype(dtype, copy=False)
        return self.device().normal(mean, std, size=shape).astype(dtype, copy=False)


def set_random_seed(seed: int) -> None:
    """Seed the streams of objects created from now on (pycaffe's ``caffe.set_random_seed``).

    The first net (or solver, or lone layer) built afterwards draws exactly what
    ``numpy.random.default_rng(seed)`` would; later ones get distinct, reproducible
    streams derived from the same seed.
    """
    _state["seed"] = int(seed)
    _state["issued"] = 0


def new_streams() -> RandomStreams:
    """Random streams for a new object, following the default set by ``set_random_seed``."""
    seed = _state["seed"]
    if seed is None:
        return RandomStreams()
    issued = _state["issued"]
    _state["issued"] = issued + 1
    return RandomStreams(numpy.random.SeedSequence(seed, spawn_key=(issued,) if issued else ()))
