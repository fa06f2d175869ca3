"""Blob-structure layers: they hand on, join, cut, reshape, repeat or select blobs without arithmetic.

Split, Silence, Flatten, Reshape, Concat, Slice, Tile, Crop, Filter and BatchReindex.
Shape-only layers (Split, Flatten, Reshape) hand out views of their bottom's arrays
instead of copies, as Caffe shares the underlying memory; they re-take the view at
every forward/backward because other layers may replace a blob's array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy

from .. import backend
from ..blob import Blob
from ..errors import ShapeMismatchError
from .base import Layer, register_layer
from .common import integer_indices

Blobs = Sequence[Blob]


def _reject_in_place(layer: Layer, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
    for t in top:
        if any(t is b for b in bottom):
            raise layer.error(
                f'cannot run in place (top "{t.name}" is also a bottom). Received: the same blob as bottom and '
                "top. Valid: give the top its own name"
            )


# --- Split ---------------------------------------------------------------------------
@register_layer("Split")
class SplitLayer(Layer):
    """Caffe type ``Split``: hands one blob to several consumers.

    ``top_k = bottom`` (shared memory, no copy); backward ``d bottom = sum_k d top_k``.

    Bottom: one blob of any shape. Tops: one or more blobs of the bottom's shape.
    The net inserts Split layers wherever a blob feeds more than one layer.
    """

    exact_num_bottom = 1
    min_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        _reject_in_place(self, bottom, top)

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        for t in top:
            t.reshape(bottom[0].shape)
            t.data = bottom[0].data

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        for t in top:
            t.data = bottom[0].data

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if not propagate_down[0]:
            return
        if len(top) == 1:
            # A view would let a layer writing into the bottom's diff in place overwrite a seeded loss diff.
            bottom[0].diff = top[0].diff.copy() if self.loss_weights[0] else top[0].diff
            return
        dx = top[0].diff + top[1].diff
        for t in top[2:]:
            dx += t.diff
        bottom[0].diff = dx


# --- Silence -------------------------------------------------------------------------
@register_layer("Silence")
class SilenceLayer(Layer):
    """Caffe type ``Silence``: consumes blobs so they are not net outputs.

    Forward does nothing; backward sets every bottom diff it is asked for to zero.

    Bottoms: one or more, any shapes. Tops: none.
    """

    min_num_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        """No tops to shape."""

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        """Nothing to compute."""

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        for b, down in zip(bottom, propagate_down, strict=True):
            if down:
                b.diff = backend.array_module(b.data).zeros(b.shape, dtype=b.diff.dtype)


# --- Flatten -------------------------------------------------------------------------
@register_layer("Flatten")
class FlattenLayer(Layer):
    """Caffe type ``Flatten``: merges axes ``axis .. end_axis`` into one (a view, no copy).

    Bottom: ``(d_0, ..., d_n)``. Top: ``(d_0, ..., d_{axis-1}, d_axis * ... * d_end, d_{end+1}, ...)``;
    by default ``N x C x H x W -> N x (C H W)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        _reject_in_place(self, bottom, top)

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.flatten_param
        n = bottom[0].num_axes
        start = self.canonical_axis(p.axis, n, "flatten_param.axis")
        end = self.canonical_axis(p.end_axis, n, "flatten_param.end_axis")
        if end < start:
            raise self.error(
                f"end_axis must not come before axis. Received: axis {p.axis}, end_axis {p.end_axis} "
                f"for bottom shape {bottom[0].shape}"
            )
        shape = bottom[0].shape
        self.top_shape = shape[:start] + (math.prod(shape[start : end + 1]),) + shape[end + 1 :]
        top[0].reshape(self.top_shape)
        top[0].data = bottom[0].data.reshape(self.top_shape)

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        top[0].data = bottom[0].data.reshape(self.top_shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


# --- Reshape -------------------------------------------------------------------------
@register_layer("Reshape")
class ReshapeLayer(Layer):
    """Caffe type ``Reshape``: a new shape over the same values (a view, no copy).

    ``reshape_param.shape`` replaces the bottom axes ``axis .. axis + num_axes - 1``
    (``num_axes: -1``: to the end); a 0 copies the bottom dimension at that position
    and a single -1 is inferred from the element count.

    Bottom: any shape. Top: the new shape, same element count.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        _reject_in_place(self, bottom, top)
        dims = [int(d) for d in self.param.reshape_param.shape.dim]
        bad = [d for d in dims if d < -1]
        if bad or dims.count(-1) > 1:
            raise self.error(
                f"reshape_param.shape may hold positive sizes, 0 (copy) and at most one -1 (infer). Received: {dims}"
            )

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.reshape_param
        dims = [int(d) for d in p.shape.dim]
        shape = bottom[0].shape
        n = len(shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error(
                f"axis is out of range for bottom shape {shape}. Received: {p.axis}. Valid: {-n - 1} .. {n}"
            )
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= 0, or -1 for all. Received: {p.num_axes}")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error(
                f"axis + num_axes is past the last axis of bottom shape {shape}. "
                f"Received: axis {p.axis}, num_axes {p.num_axes}"
            )
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= n:
                    raise self.error(
                        f"shape dim {i} is 0 (copy), but bottom shape {shape} has no axis {start + i} to copy. "
                        f"Received: shape {dims}"
                    )
                d = shape[start + i]
            new.append(d)
        out = list(shape[:start]) + new + list(shape[end:])
        if -1 in new:
            known = math.prod([d for d in out if d != -1])
            total = bottom[0].count
            if known == 0 or total % known:
                raise self.error(
                    f"cannot infer the -1 dimension: bottom count {total} (shape {shape}) is not divisible by "
                    f"the product {known} of the other dimensions. Received: shape {dims}",
                    ShapeMismatchError,
                )
            out[out.index(-1)] = total // known
        out = tuple(out)
        if math.prod(out) != bottom[0].count:
            raise self.error(
                f"the new shape {out} holds {math.prod(out)} values but the bottom {shape} holds {bottom[0].count}. "
                f"Received: shape {dims}, axis {p.axis}, num_axes {p.num_axes}",
                ShapeMismatchError,
            )
        self.top_shape = out
        top[0].reshape(out)
        top[0].data = bottom[0].data.reshape(out)

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        top[0].data = bottom[0].data.reshape(self.top_shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


# --- Concat --------------------------------------------------------------------------
def _legacy_axis(layer: Layer, p, legacy_field: str, num_axes: int) -> int:
    """The axis from ``axis`` or the legacy unsigned ``concat_dim``/``slice_dim`` (never both)."""
    if p.HasField("axis") and p.HasField(legacy_field):
        raise layer.error(
            f"give either axis or {legacy_field}, not both. Received: axis {p.axis}, "
            f"{legacy_field} {getattr(p, legacy_field)}"
        )
    if p.HasField(legacy_field):
        dim = getattr(p, legacy_field)
        if dim >= num_axes:
            raise layer.error(
                f"{legacy_field} is out of range for a {num_axes}-axis bottom. Received: {dim}. "
                f"Valid: 0 .. {num_axes - 1}"
            )
        return int(dim)
    return layer.canonical_axis(p.axis, num_axes, legacy_field.replace("_dim", "_param.axis"))


@register_layer("Concat")
class ConcatLayer(Layer):
    """Caffe type ``Concat``: joins its bottoms along ``concat_param.axis`` (legacy ``concat_dim``).

    Backward hands each bottom its slice of the top diff.

    Bottoms: one or more blobs equal in every axis but the concat axis.
    Top: their shape with the concat axis summed.
    """

    min_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        n = bottom[0].num_axes
        self.axis = axis = _legacy_axis(self, self.param.concat_param, "concat_dim", n)
        first = bottom[0].shape
        total = first[axis]
        for i, b in enumerate(bottom[1:], start=1):
            same_rest = b.num_axes == n and all(b.shape[j] == first[j] for j in range(n) if j != axis)
            if not same_rest:
                raise self.error(
                    f"all bottoms must have the same shape except along the concat axis {axis}. "
                    f"Received: bottom 0 {first}, bottom {i} {b.shape}",
                    ShapeMismatchError,
                )
            total += b.shape[axis]
        top[0].reshape(first[:axis] + (total,) + first[axis + 1 :])
        self.bounds = numpy.cumsum([0] + [b.shape[axis] for b in bottom]).tolist()

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        if len(bottom) == 1:
            top[0].data = bottom[0].data
            return
        xp = backend.array_module(bottom[0].data)
        top[0].data = xp.concatenate([b.data for b in bottom], axis=self.axis)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        dy = top[0].diff
        xp = backend.array_module(dy)
        lead = (slice(None),) * self.axis
        for i, b in enumerate(bottom):
            if propagate_down[i]:
                part = dy[lead + (slice(self.bounds[i], self.bounds[i + 1]),)]
                # Slices off the first axis are strided; consumers expect a contiguous diff they may reshape.
                b.diff = part if len(bottom) == 1 else xp.ascontiguousarray(part)


# --- Slice ---------------------------------------------------------------------------
@register_layer("Slice")
class SliceLayer(Layer):
    """Caffe type ``Slice``: cuts its bottom along ``slice_param.axis`` (legacy ``slice_dim``).

    Cut at ``slice_point`` (one fewer point than tops, strictly increasing) or, without
    points, into equal parts. Backward writes each top diff into its part of the bottom diff.

    Bottom: any shape. Tops: the bottom's shape with the slice axis cut into parts.
    """

    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.slice_param
        shape = bottom[0].shape
        self.axis = axis = _legacy_axis(self, p, "slice_dim", bottom[0].num_axes)
        dim = shape[axis]
        points = [int(s) for s in p.slice_point]
        if points:
            if len(points) != len(top) - 1:
                raise self.error(
                    f"needs one slice_point fewer than tops ({len(top) - 1}). Received: {len(points)} points {points}"
                )
            if any(b <= a for a, b in zip([0] + points, points + [dim], strict=True)):
                raise self.error(
                    f"slice_point values must be strictly increasing and inside (0, {dim}) for axis {axis} of "
                    f"bottom shape {shape}. Received: {points}"
                )
            bounds = [0] + points + [dim]
        else:
            if dim % len(top):
                raise self.error(
                    f"without slice_point the slice axis {axis} (size {dim}, bottom shape {shape}) must divide "
                    f"evenly among the {len(top)} tops. Received: {dim} % {len(top)} != 0"
                )
            step = dim // len(top)
            bounds = [k * step for k in range(len(top) + 1)]
        self.bounds = bounds
        for k, t in enumerate(top):
            t.reshape(shape[:axis] + (bounds[k + 1] - bounds[k],) + shape[axis + 1 :])

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        x = bottom[0].data
        if len(top) == 1:
            top[0].data = x
            return
        xp = backend.array_module(x)
        lead = (slice(None),) * self.axis
        for k, t in enumerate(top):
            t.data = xp.ascontiguousarray(x[lead + (slice(self.bounds[k], self.bounds[k + 1]),)])

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if not propagate_down[0]:
            return
        if len(top) == 1:
            bottom[0].diff = top[0].diff
            return
        xp = backend.array_module(top[0].diff)
        bottom[0].diff = xp.concatenate([t.diff for t in top], axis=self.axis)


# --- Tile ----------------------------------------------------------------------------
@register_layer("Tile")
class TileLayer(Layer):
    """Caffe type ``Tile``: repeats the block from ``tile_param.axis`` on ``tiles`` times.

    With ``outer = count(0, axis)`` and ``inner = count(axis)``: ``y[o, t, :] = x[o, :]``
    for ``t < tiles``; backward sums the copies.

    Bottom: ``(..., d_axis, ...)``. Top: ``(..., tiles * d_axis, ...)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.tile_param
        if not p.HasField("tiles") or p.tiles <= 0:
            raise self.error(
                f"tile_param.tiles must be a positive integer. Received: "
                f"{p.tiles if p.HasField('tiles') else '(not set)'}"
            )
        _reject_in_place(self, bottom, top)

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.tile_param
        shape = bottom[0].shape
        self.axis = axis = self.canonical_axis(p.axis, len(shape), "tile_param.axis")
        self.tiles = int(p.tiles)
        self.outer = math.prod(shape[:axis])
        self.inner = math.prod(shape[axis:])
        top[0].reshape(shape[:axis] + (shape[axis] * self.tiles,) + shape[axis + 1 :])

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        xp = backend.array_module(x)
        top[0].data = xp.broadcast_to(x, (self.outer, self.tiles, self.inner)).reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            bottom[0].diff = dy.sum(axis=1).reshape(bottom[0].shape)


# --- Crop ----------------------------------------------------------------------------
@register_layer("Crop")
class CropLayer(Layer):
    """Caffe type ``Crop``: cut bottom 0 to the shape of bottom 1 from ``axis`` on.

    ``top = x[..., o_a : o_a + s_a, ...]`` for every axis ``a >= axis`` with ``s_a`` from bottom 1 and
    offset ``o_a`` (one offset for all such axes, one per axis, or 0). Bottom 1 only gives the shape
    and receives no gradient.

    Bottoms: ``x`` and the reference. Top: ``x``'s shape before ``axis``, the reference's from it.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        cp = self.param.crop_param
        self.axis = self.canonical_axis(cp.axis, bottom[0].num_axes, "crop_param.axis")
        self.offsets = [int(v) for v in cp.offset]
        n_crop = bottom[0].num_axes - self.axis
        if len(self.offsets) > 1 and len(self.offsets) != n_crop:
            raise self.error(
                f"give one offset, or one per cropped axis ({n_crop} axes from axis {self.axis}). "
                f"Received: {len(self.offsets)} offsets {self.offsets}"
            )

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x, ref = bottom
        if ref.num_axes < x.num_axes:
            raise self.error(
                f"the reference bottom needs at least as many axes as the data. Received: {x.shape} and {ref.shape}",
                ShapeMismatchError,
            )
        slices, shape = [], []
        for a in range(x.num_axes):
            if a < self.axis:
                slices.append(slice(None))
                shape.append(x.shape[a])
                continue
            off = self.offsets[0] if len(self.offsets) == 1 else self.offsets[a - self.axis] if self.offsets else 0
            size = ref.shape[a]
            if off + size > x.shape[a]:
                raise self.error(
                    f"the crop of axis {a} is out of bounds. Received: offset {off} + size {size} > "
                    f"input size {x.shape[a]} (data {x.shape}, reference {ref.shape})",
                    ShapeMismatchError,
                )
            slices.append(slice(off, off + size))
            shape.append(size)
        self.slices = tuple(slices)
        top[0].reshape(shape)

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        xp = backend.array_module(bottom[0].data)
        top[0].data = xp.ascontiguousarray(bottom[0].data[self.slices])

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        xp = backend.array_module(top[0].diff)
        if propagate_down[0]:
            dx = xp.zeros(bottom[0].shape, dtype=top[0].diff.dtype)
            dx[self.slices] = top[0].diff
            bottom[0].diff = dx
        if len(propagate_down) > 1 and propagate_down[1]:
            # The output does not depend on the reference's values.
            bottom[1].diff = xp.zeros(bottom[1].shape, dtype=bottom[1].dtype)


# --- Filter --------------------------------------------------------------------------
@register_layer("Filter")
class FilterLayer(Layer):
    """Caffe type ``Filter``: keeps the items (first-axis rows) whose selector is nonzero.

    The last bottom is the selector, shape ``(N,)`` or ``(N, 1, ..., 1)``; the other bottoms
    are filtered into the tops in order. Backward copies each top diff to the kept rows and
    zeros the rest; the selector gets no gradient. As in Caffe, the tops have all ``N`` rows
    at set-up and the selected count from the first reshape before a forward on.

    Bottoms: ``k`` data blobs ``(N, ...)`` and the selector. Tops: ``k`` blobs ``(M, ...)``.
    """

    min_num_bottom = 2
    min_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != len(self.param.bottom) - 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        if len(top) != len(bottom) - 1:
            raise self.error(
                f"needs one top per data bottom (bottoms minus the selector: {len(bottom) - 1}). "
                f"Received: {len(top)} tops"
            )
        self.first_reshape = True

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        sel = bottom[-1]
        if any(d != 1 for d in sel.shape[1:]) or sel.num_axes < 1:
            raise self.error(
                f"the selector (last bottom) must have shape (N,) or (N, 1, ..., 1). Received: {sel.shape}",
                ShapeMismatchError,
            )
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != sel.shape[0]:
                raise self.error(
                    f"every data bottom needs the selector's first dimension {sel.shape[0]}. "
                    f"Received: bottom {i} shape {b.shape}",
                    ShapeMismatchError,
                )
        xp = backend.array_module(sel.data)
        self.keep = xp.flatnonzero(sel.data.reshape(-1))
        rows = sel.shape[0] if self.first_reshape else int(self.keep.size)
        self.first_reshape = False
        for t, b in zip(top, bottom[:-1], strict=True):
            t.reshape((rows,) + b.shape[1:])

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        for t, b in zip(top, bottom[:-1], strict=True):
            t.data = b.data[self.keep]

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        xp = backend.array_module(bottom[0].data)
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = xp.zeros(b.shape, dtype=b.diff.dtype)
            if i < len(top):
                dx[self.keep] = top[i].diff
            b.diff = dx


# --- BatchReindex --------------------------------------------------------------------
@register_layer("BatchReindex")
class BatchReindexLayer(Layer):
    """Caffe type ``BatchReindex``: gathers first-axis rows, ``y[i] = x[int(r[i])]``.

    Backward scatters ``dy`` back, rows picked several times accumulating; the index bottom
    gets no gradient.

    Bottoms: data ``(N, ...)`` and indices ``(M,)`` in ``[0, N)``. Top: ``(M, ...)``.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        if bottom[1].num_axes != 1:
            raise self.error(f"the index bottom must be 1-D. Received: shape {bottom[1].shape}", ShapeMismatchError)
        if bottom[0].num_axes < 1:
            raise self.error("the data bottom needs at least one axis. Received: a scalar", ShapeMismatchError)
        top[0].reshape(bottom[1].shape + bottom[0].shape[1:])

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        self.idx = integer_indices(self, bottom[1].data, bottom[0].shape[0], "reindex indices")
        top[0].data = bottom[0].data[self.idx]

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        xp = backend.array_module(top[0].diff)
        if propagate_down[0]:
            dx = xp.zeros(bottom[0].shape, dtype=bottom[0].diff.dtype)
            xp.add.at(dx, self.idx, top[0].diff)  # unbuffered: rows picked twice accumulate
            bottom[0].diff = dx
        if propagate_down[1]:
            bottom[1].diff = xp.zeros(bottom[1].shape, dtype=bottom[1].diff.dtype)
