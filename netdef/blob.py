"""Blob: the n-d array a layer reads or writes, with its gradient."""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from . import backend, limits
from .errors import InvalidParameterError, ResourceLimitError, ShapeMismatchError


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

    A blob whose values were computed in pieces elsewhere (:mod:`netdef.batch_split`)
    holds a *gather* instead of arrays until ``data`` or ``diff`` is first read or set.
    """

    __slots__ = ("_data", "_diff", "_gather", "name", "dtype", "xp")

    def __init__(self, shape: Sequence[int] = (), dtype=numpy.float32, xp=None, name: str = ""):
        self.xp = xp or backend.default_xp()
        self.dtype = numpy.dtype(dtype)
        self.name = name
        self._gather = None
        self._data, self._diff = self._allocate(self._checked_shape(shape))

    @property
    def data(self):
        if self._gather is not None:
            self._settle()
        return self._data

    @data.setter
    def data(self, value) -> None:
        if self._gather is not None:
            self._settle()
        self._data = value

    @property
    def diff(self):
        if self._gather is not None:
            self._settle()
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        if self._gather is not None:
            self._settle()
        self._diff = value

    def defer(self, gather) -> None:
        """Hold ``gather()`` instead of the arrays: it returns ``(data, diff)`` and runs when either is first used.

        The shape stays known meanwhile; the arrays held until now are let go. For NumPy
        blobs (the stand-in until then is a NumPy view of one zero).
        """
        shape = self._data.shape
        placeholder = numpy.broadcast_to(numpy.zeros((), self.dtype), shape)
        self._data = self._diff = placeholder
        self._gather = gather

    def _settle(self) -> None:
        gather, self._gather = self._gather, None
        self._data, self._diff = gather()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    @property
    def num_axes(self) -> int:
        return self._data.ndim

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
        shape = self._checked_shape(shape)
        if shape != tuple(self._data.shape):
            self._gather = None
            self._data, self._diff = self._allocate(shape)

    def _checked_shape(self, shape) -> tuple[int, ...]:
        """``shape`` as ints, refused when negative or when data + diff would pass netdef.limits' bound."""
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ShapeMismatchError(f"blob '{self.name}' cannot take negative shape {shape}")
        limits.check_bytes(f"blob '{self.name}'", shape, self.dtype.itemsize, copies=2, available=self._device_bytes())
        return shape

    def _device_bytes(self) -> int | None:
        """Memory of the GPU the blob lives on (None on the CPU, where netdef.limits' default applies)."""
        if self.xp is numpy:
            return None
        try:
            return int(self.xp.cuda.Device().mem_info[1])
        except Exception:  # a CuPy without a usable device: leave the bound to the host's limit
            return None

    def _allocate(self, shape: tuple[int, ...]):
        try:
            return self.xp.zeros(shape, dtype=self.dtype), self.xp.zeros(shape, dtype=self.dtype)
        except MemoryError:  # below the limit, yet more than is free now (CuPy's OutOfMemoryError included)
            need = limits.human_bytes(2 * limits.shape_count(shape) * self.dtype.itemsize)
            raise ResourceLimitError(
                f"blob '{self.name}': shape {shape} needs {need} (data and diff), more memory than is free. "
                "Valid: a smaller shape (e.g. batch size)"
            ) from None

    def __repr__(self) -> str:
        return f"Blob(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"

    # pycaffe's legacy 4-D accessors (Caffe's Blob::LegacyShape) ------------------------
    def legacy_shape(self, index: int) -> int:
        """Axis ``index`` of the blob seen as N x C x H x W: axes it lacks count as 1 (Caffe's LegacyShape).

        Like Caffe, this refuses blobs with more than 4 axes.
        """
        if self.num_axes > 4:
            raise ShapeMismatchError(
                f"blob '{self.name}' has {self.num_axes} axes {self.shape}; num/channels/height/width describe "
                "blobs of at most 4 axes (use .shape)"
            )
        if index >= self.num_axes or index < -self.num_axes:
            return 1
        return int(self.shape[index])

    @property
    def num(self) -> int:
        """Axis 0 (1 for a blob without it), pycaffe's ``blob.num``."""
        return self.legacy_shape(0)

    @property
    def channels(self) -> int:
        """Axis 1 (1 for a blob without it), pycaffe's ``blob.channels``."""
        return self.legacy_shape(1)

    @property
    def height(self) -> int:
        """Axis 2 (1 for a blob without it), pycaffe's ``blob.height``."""
        return self.legacy_shape(2)

    @property
    def width(self) -> int:
        """Axis 3 (1 for a blob without it), pycaffe's ``blob.width``."""
        return self.legacy_shape(3)
