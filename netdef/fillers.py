"""Weight fillers with Caffe's semantics (FillerParameter.type)."""

from __future__ import annotations

import numpy

from . import backend
from .blob import Blob
from .errors import InvalidParameterError, did_you_mean

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def _fans(shape) -> tuple[int, int]:
    # Caffe: fan_in = count / shape[0], fan_out = count / shape[1] (for >1 axes)
    count = int(numpy.prod(shape, dtype=numpy.int64))
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _scale_n(param, shape) -> float:
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == FAN_OUT:
        return float(fan_out)
    return float(fan_in)


# Each filler returns a NumPy array of ``dtype`` (float32 or float64); drawing in the
# blob's own precision keeps a VGG-sized net from needing a float64 copy of every weight.
def _uniform01(rng, shape, dtype):
    return rng.random(size=shape, dtype=dtype)


def _normal(rng, shape, dtype):
    return rng.standard_normal(size=shape, dtype=dtype)


def _constant(param, shape, dtype, rng):
    return numpy.full(shape, param.value, dtype=dtype)


def _uniform(param, shape, dtype, rng):
    x = _uniform01(rng, shape, dtype)
    x *= param.max - param.min
    x += param.min
    return x


def _gaussian(param, shape, dtype, rng):
    x = _normal(rng, shape, dtype)
    x *= param.std
    x += param.mean
    if param.sparse >= 0:
        # Keep each weight with probability sparse / num_outputs (Caffe's sparse Gaussian).
        if len(shape) < 2:
            raise InvalidParameterError(
                f"gaussian filler with sparse needs a blob of >= 2 axes. Received shape {shape}"
            )
        num_outputs = shape[0]
        x *= _uniform01(rng, shape, dtype) < param.sparse / num_outputs
    return x


def _positive_unitball(param, shape, dtype, rng):
    x = _uniform01(rng, shape, dtype)
    rows = x.reshape(shape[0], -1) if shape else x.reshape(1, -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return rows.reshape(shape)


def _xavier(param, shape, dtype, rng):
    limit = numpy.sqrt(3.0 / _scale_n(param, shape))
    x = _uniform01(rng, shape, dtype)
    x *= 2 * limit
    x -= limit
    return x


def _msra(param, shape, dtype, rng):
    x = _normal(rng, shape, dtype)
    x *= numpy.sqrt(2.0 / _scale_n(param, shape))
    return x


def _bilinear(param, shape, dtype, rng):
    if len(shape) != 4 or shape[2] != shape[3]:
        raise InvalidParameterError(
            f"bilinear filler needs a 4-D blob with square kernels. Received shape {tuple(shape)}"
        )
    k = shape[3]
    f = numpy.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    idx = numpy.arange(k)
    w1 = 1 - numpy.abs(idx / f - c)
    kernel = numpy.outer(w1, w1).astype(dtype)
    return numpy.broadcast_to(kernel, shape).copy()


_FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def filler_types() -> list[str]:
    return sorted(_FILLERS)


def fill(blob: Blob, param, rng: numpy.random.Generator | None = None) -> Blob:
    """Fill ``blob.data`` according to FillerParameter ``param``, drawing from ``rng``.

    Layers pass their own stream (``Layer.filled_blob``); without one, a stream
    following ``netdef.set_random_seed``'s default is used.
    """
    fn = _FILLERS.get(param.type)
    if fn is None:
        raise InvalidParameterError(
            f'Unknown filler type "{param.type}".{did_you_mean(param.type, _FILLERS)} '
            f"Valid: {', '.join(filler_types())}"
        )
    dtype = blob.dtype if blob.dtype in (numpy.float32, numpy.float64) else numpy.float64
    values = fn(param, tuple(blob.shape), dtype, rng if rng is not None else backend.new_streams().numpy)
    blob.data = backend.asarray(values.astype(blob.dtype, copy=False), blob.xp, blob.dtype)
    return blob
