"""Blob: the n-d array a layer reads or writes, with its gradient."""
from __future__ import annotations

from collections.abc import Sequence

import numpy

from . import backend


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
        n = self.num_axes
        if not -n <= axis < max(n, 1):
            from .errors import InvalidParameterError

            raise InvalidParameterError(
                f"axis {axis} is out of range for blob '{self.name}' of shape {self.shape} "
                f"(valid: {-n} .. {n - 1})"
            )
        return axis % n if n else 0

    def reshape(self, *shape) -> None:
        """Give the blob a new shape; contents are kept only when the shape is unchanged.

        Accepts a sequence (``reshape((2, 3))``) or pycaffe's spelling (``reshape(2, 3)``).
        """
        if len(shape) == 1 and not isinstance(shape[0], (int, numpy.integer)):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            from .errors import ShapeMismatchError

            raise ShapeMismatchError(f"blob '{self.name}' cannot take negative shape {shape}")
        if shape != tuple(self.data.shape):
            self.data = self.xp.zeros(shape, dtype=self.dtype)
            self.diff = self.xp.zeros(shape, dtype=self.dtype)

    def reshape_like(self, other: Blob) -> None:
        self.reshape(other.shape)

    def share_data(self, other: Blob) -> None:
        """Make this blob use ``other``'s data array (no copy)."""
        self.data = other.data

    def share_diff(self, other: Blob) -> None:
        self.diff = other.diff

    def to(self, xp) -> None:
        """Move both arrays to array module ``xp``."""
        self.xp = xp
        self.data = backend.asarray(self.data, xp, self.dtype)
        self.diff = backend.asarray(self.diff, xp, self.dtype)

    def astype(self, dtype) -> None:
        """Change the element type of both arrays."""
        self.dtype = numpy.dtype(dtype)
        self.data = self.data.astype(self.dtype)
        self.diff = self.diff.astype(self.dtype)

    def __repr__(self) -> str:
        return f"Blob(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"
