"""Blob: the n-d array a layer reads or writes, with its gradient."""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from . import backend
from .errors import InvalidParameterError, ShapeMismatchError


def canonical_axis_index(axis: int, num_axes: int, field: str = "axis", owner: str = "") -> int:
    """Caffe's CanonicalAxisIndex: ``axis`` in ``[-num_axes, num_axes)`` as an index in ``[0, num_axes)``.

    A 0-axis shape accepts axis 0 (and -0). Out of range: an InvalidParameterError naming
    ``field``, the received value and the valid range; ``owner`` describes what has the axes
    (default: "a <n>-axis bottom").
    """
    n = num_axes
    if not -n <= axis < max(n, 1):
        raise InvalidParameterError(
            f"{field} {axis} is out of range for {owner or f'a {n}-axis bottom'}. "
            f"Received: {axis}. Valid: {-n} .. {n - 1}"
        )
    return axis % n if n else 0


class Blob:
    """A named array pair: ``data`` (values) and ``diff`` (gradient of the loss).

    Both arrays live on the same module (NumPy or CuPy) and have the same shape.
    Layers may replace ``data``/``diff`` with new arrays of the blob's shape, or
    write into them; users may write into them in place (``blob.data[...] = x``).
    """

    __slots__ = ("data", "diff", "name", "dtype", "xp")

    def __init__(self, shape: Sequence[int] = (), dtype=numpy.float32, xp=None, name: str = ""):
        self.xp = xp or backend.default_xp()
        self.dtype = numpy.dtype(dtype)
        self.name = name
        shape = tuple(int(s) for s in shape)
        self.data = self.xp.zeros(shape, dtype=self.dtype)
        self.diff = self.xp.zeros(shape, dtype=self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(self.data.size)

    @property
    def num_axes(self) -> int:
        return self.data.ndim

    def count_range(self, start: int, end: int | None = None) -> int:
        """Product of the dimensions in ``[start, end)``."""
        return int(numpy.prod(self.shape[start:end], dtype=numpy.int64))

    def canonical_axis(self, axis: int) -> int:
        """Turn a possibly negative axis into an index (as Caffe's CanonicalAxisIndex)."""
        return canonical_axis_index(axis, self.num_axes, owner=f"blob '{self.name}' of shape {self.shape}")

    def reshape(self, *shape) -> None:
        """Give the blob a new shape; contents are kept only when the shape is unchanged.

        Accepts a sequence (``reshape((2, 3))``) or pycaffe's spelling (``reshape(2, 3)``).
        """
        if len(shape) == 1 and not isinstance(shape[0], (int, numpy.integer)):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ShapeMismatchError(f"blob '{self.name}' cannot take negative shape {shape}")
        if shape != tuple(self.data.shape):
            self.data = self.xp.zeros(shape, dtype=self.dtype)
            self.diff = self.xp.zeros(shape, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"Blob(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"
