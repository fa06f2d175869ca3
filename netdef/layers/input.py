"""Layers whose tops the user or the definition fills: Input, DummyData and MemoryData."""

from __future__ import annotations

import numpy

from .. import backend, fillers
from ..errors import ResourceLimitError, ShapeMismatchError
from ..proto import netdef_pb2 as pb
from .base import Layer, register_layer
from .data import ShardedReader


def _shape_top(layer, top, shape) -> None:
    """``top.reshape(shape)`` for a shape the definition declares; a refusal names the layer too."""
    try:
        top.reshape(tuple(shape))
    except (ResourceLimitError, ShapeMismatchError) as err:
        raise layer.error(f"declared shape: {err}", type(err)) from None


def _per_top(layer, values, n_top: int, what: str) -> list:
    """Caffe's rule: give one value for all tops, or one per top."""
    values = list(values)
    if len(values) == 1:
        return values * n_top
    if len(values) != n_top:
        raise layer.error(f"needs 1 or {n_top} (one per top) {what}. Received: {len(values)}")
    return values


@register_layer("Input")
class InputLayer(Layer):
    """Caffe type ``Input``: tops whose values the user sets (``net.blobs[name].data[...] = x``).

    Shapes come from ``input_param.shape`` (one for all tops or one per top). No bottoms.
    """

    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if not shapes:
            raise self.error("input_param needs at least one shape { dim: ... }")
        for t, shape in zip(top, _per_top(self, shapes, len(top), "input_param shapes")):
            _shape_top(self, t, shape.dim)

    def reshape(self, bottom, top):
        """Input shapes are whatever the user last set; nothing to do."""

    def forward(self, bottom, top):
        """Values were written by the user."""


@register_layer("DummyData")
class DummyDataLayer(Layer):
    """Caffe type ``DummyData``: tops filled by ``dummy_data_param.data_filler``.

    Constant fillers fill once; other fillers refill at every forward, as Caffe does.
    """

    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        if p.shape:
            shapes = [tuple(s.dim) for s in _per_top(self, p.shape, n, "shapes")]
        elif p.num:
            legacy = [_per_top(self, getattr(p, f), n, f) for f in ("num", "channels", "height", "width")]
            shapes = [tuple(dims) for dims in zip(*legacy)]
        else:
            raise self.error("dummy_data_param needs shape { dim: ... } (or the legacy num/channels/height/width)")
        default = pb.FillerParameter(type="constant", value=0)
        self.fillers = _per_top(self, p.data_filler or [default], n, "data_filler entries")
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, shape, f in zip(top, shapes, self.fillers):
            _shape_top(self, t, shape)
            fillers.fill(t, f, self.rng.numpy)

    def reshape(self, bottom, top):
        """Shapes are fixed at set-up."""

    def forward(self, bottom, top):
        for t, f, again in zip(top, self.fillers, self.refill):
            if again:
                fillers.fill(t, f, self.rng.numpy)


@register_layer("MemoryData")
class MemoryDataLayer(ShardedReader, Layer):
    """Caffe type ``MemoryData``: batches served from arrays given with ``net.set_input_arrays``.

    Tops: data (batch_size, channels, height, width) and label (batch_size, 1, 1, 1).
    Consecutive forwards walk through the arrays and wrap around at the end. Sharded
    (data-parallel training: give every rank the same arrays), rank ``r`` of ``N`` serves
    rows ``r * batch_size ..`` of every ``N * batch_size``; the number of rows must then be
    a multiple of ``N * batch_size``.
    """

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.param.memory_data_param
        dims = (p.batch_size, p.channels, p.height, p.width)
        if min(dims) <= 0:
            raise self.error(
                f"memory_data_param needs positive batch_size, channels, height and width. Received: {dims}"
            )
        self.shape = dims
        self.data = None
        self.labels = None
        self.pos = 0
        _shape_top(self, top[0], dims)
        _shape_top(self, top[1], (p.batch_size, 1, 1, 1))

    def set_input_arrays(self, data, labels) -> None:
        """Use ``data`` (N, C, H, W) and ``labels`` (N,) from now on; N must be a multiple of batch_size."""
        data = numpy.asarray(backend.to_numpy(data), dtype=self.dtype)
        labels = numpy.asarray(backend.to_numpy(labels), dtype=self.dtype).reshape(-1)
        if data.shape[1:] != self.shape[1:]:
            raise self.error(
                f"data arrays must have shape (N, {', '.join(map(str, self.shape[1:]))}). Received: {data.shape}"
            )
        if data.shape[0] != labels.shape[0]:
            raise self.error(f"data has {data.shape[0]} rows but labels has {labels.shape[0]}")
        self._check_rows(data.shape[0])
        self.data, self.labels, self.pos = data, labels, 0

    def _check_rows(self, rows: int) -> None:
        step = self.shape[0] * self.shard_size
        if rows == 0 or rows % step:
            shared = f" x {self.shard_size} ranks" if self.shard_size > 1 else ""
            raise self.error(
                f"the number of rows must be a positive multiple of batch_size {self.shape[0]}{shared}. "
                f"Received: {rows}"
            )

    def shard(self, rank: int, size: int, order_rng: numpy.random.Generator | None = None) -> None:
        super().shard(rank, size, order_rng)
        if self.data is not None:
            self._check_rows(self.data.shape[0])

    def reshape(self, bottom, top):
        """Shapes are fixed by memory_data_param."""

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("no input arrays: call net.set_input_arrays(data, labels) before forward")
        n = self.shape[0]
        start = self.pos + self.shard_rank * n
        top[0].data = backend.asarray(self.data[start : start + n], top[0].xp, top[0].dtype)
        top[1].data = backend.asarray(self.labels[start : start + n].reshape(n, 1, 1, 1), top[1].xp, top[1].dtype)
        self.pos = (self.pos + n * self.shard_size) % self.data.shape[0]
