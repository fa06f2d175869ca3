"""ONNX forms of the layers that move, cut, join, reshape, repeat or select blobs, and of the layers
whose tops are constants in a TEST net (Parameter, DummyData with constant fillers)."""

from __future__ import annotations

import numpy

from ..backend import to_numpy
from .context import LayerExport
from .registry import converts


@converts("Split")
def _split(ctx: LayerExport) -> None:
    """Every top is the bottom itself."""
    for j in range(ctx.num_tops):
        ctx.alias(j, ctx.x())


@converts("Silence")
def _silence(ctx: LayerExport) -> None:
    """No tops, nothing to compute."""


@converts("Flatten", "Reshape")
def _reshape(ctx: LayerExport) -> None:
    ctx.reshape_out(ctx.x())


@converts("Concat")
def _concat(ctx: LayerExport) -> None:
    if ctx.num_bottoms == 1:
        ctx.alias(0, ctx.x())
        return
    ctx.g.node("Concat", [ctx.x(i) for i in range(ctx.num_bottoms)], ctx.out(), axis=ctx.layer.axis)


@converts("Slice")
def _slice(ctx: LayerExport) -> None:
    if ctx.num_tops == 1:
        ctx.alias(0, ctx.x())
        return
    bounds = ctx.layer.bounds
    sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    ctx.g.split(ctx.x(), sizes, ctx.layer.axis, [ctx.out(j) for j in range(ctx.num_tops)])


@converts("Tile")
def _tile(ctx: LayerExport) -> None:
    """Caffe repeats the whole block from ``axis`` on, which is ONNX's Tile along that one axis."""
    repeats = [1] * len(ctx.in_shape())
    repeats[ctx.layer.axis] = ctx.layer.tiles
    ctx.g.node("Tile", [ctx.x(), ctx.g.ints(repeats, "repeats")], ctx.out())


@converts("Crop")
def _crop(ctx: LayerExport) -> None:
    """A Slice of every axis from ``crop_param.axis`` on; the reference bottom only gives the shape."""
    cut = [(a, s) for a, s in enumerate(ctx.layer.slices) if a >= ctx.layer.axis]
    ctx.g.slice(ctx.x(), [s.start for _, s in cut], [s.stop for _, s in cut], [a for a, _ in cut], out=ctx.out())


@converts("BatchReindex")
def _batch_reindex(ctx: LayerExport) -> None:
    g = ctx.g
    index = g.node("Cast", [ctx.x(1)], to=g.onnx.TensorProto.INT64)
    g.node("Gather", [ctx.x(0), index], ctx.out(), axis=0)


@converts("Filter")
def _filter(ctx: LayerExport) -> None:
    """ONNX's Compress keeps the rows whose selector is nonzero; the row count then depends on the data,
    so the filtered blobs must be net outputs (no later layer could be given their shape)."""
    g = ctx.g
    for j in range(ctx.num_tops):
        if ctx.consumers(j):
            raise ctx.refuse(
                f'its top "{ctx.rec.top_names[j]}" feeds other layers, but the number of rows it keeps depends on '
                "the data, which the shapes of those layers cannot follow; only a Filter whose tops are net "
                "outputs can be exported"
            )
    keep = g.node("Cast", [g.reshape(ctx.x(ctx.num_bottoms - 1), [-1])], to=g.onnx.TensorProto.BOOL)
    for j in range(ctx.num_tops):
        g.node("Compress", [ctx.x(j), keep], ctx.out(j), axis=0)


@converts("Parameter")
def _parameter(ctx: LayerExport) -> None:
    ctx.alias(0, ctx.g.const(ctx.blob(0), f"{ctx.name}_value"))


@converts("DummyData")
def _dummy_data(ctx: LayerExport) -> None:
    """Constant fillers give constants; other fillers draw new values at every forward and are refused."""
    drawn = [f.type for f in ctx.layer.fillers if f.type != "constant"]
    if drawn:
        raise ctx.refuse(
            f"its filler(s) {', '.join(sorted(set(drawn)))} draw new random values at every forward; only constant "
            "fillers can be written as ONNX constants"
        )
    for j, top in enumerate(ctx.rec.top):
        value = numpy.asarray(to_numpy(top.data), dtype=numpy.float32)
        ctx.alias(j, ctx.g.const(value, f"{ctx.rec.top_names[j]}_value"))
