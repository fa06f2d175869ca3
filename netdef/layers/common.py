"""General-purpose layers: shape plumbing, fully connected, softmax, element-wise and reduction layers.

Shape-only layers (Split, Flatten, Reshape) hand out views of their bottom's arrays
instead of copies, as Caffe shares the underlying memory; they re-take the view at
every forward/backward because other layers may replace a blob's array.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy

from .. import backend
from ..blob import Blob
from ..errors import ShapeMismatchError
from .base import Layer, register_layer

Blobs = Sequence[Blob]


def _axis(layer: Layer, axis: int, num_axes: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex with an error naming the layer and the value."""
    if not -num_axes <= axis < max(num_axes, 1):
        raise layer.error(
            f"{what} {axis} is out of range for a {num_axes}-axis bottom. "
            f"Received: {axis}. Valid: {-num_axes} .. {num_axes - 1}"
        )
    return axis % num_axes if num_axes else 0


def _count(shape: Sequence[int]) -> int:
    return int(numpy.prod(shape, dtype=numpy.int64))


def _reject_in_place(layer: Layer, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
    for t in top:
        if any(t is b for b in bottom):
            raise layer.error(
                f'cannot run in place (top "{t.name}" is also a bottom). Received: the same blob as bottom and '
                "top. Valid: give the top its own name"
            )


def _index_add(xp, target, indices, values) -> None:
    """``target[indices] += values`` with repeated indices accumulating (an unbuffered scatter-add)."""
    xp.add.at(target, indices, values)


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


# --- InnerProduct --------------------------------------------------------------------
@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """Caffe type ``InnerProduct`` (fully connected): ``y = x W^T + b``.

    The bottom is viewed as ``M x K`` with ``M = count(0, axis)`` and ``K = count(axis)``.
    Blobs: ``W`` of shape ``N x K`` (``K x N`` with ``transpose: true``, then ``y = x W + b``)
    and, with ``bias_term``, ``b`` of shape ``N``.

    Bottom: ``(d_0, ..., d_{axis-1}, d_axis, ...)``. Top: ``(d_0, ..., d_{axis-1}, N)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.inner_product_param
        if not p.HasField("num_output") or p.num_output <= 0:
            raise self.error(
                f"inner_product_param.num_output must be a positive integer. Received: "
                f"{p.num_output if p.HasField('num_output') else '(not set)'}"
            )
        self.num_output = int(p.num_output)
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        self.axis = _axis(self, p.axis, bottom[0].num_axes)
        self.k = bottom[0].count_range(self.axis)
        w_shape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.blobs = [self.filled_blob(w_shape, p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.filled_blob((self.num_output,), p.bias_filler))

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        axis = _axis(self, self.param.inner_product_param.axis, bottom[0].num_axes)
        k = bottom[0].count_range(axis)
        if k != self.k:
            raise self.error(
                f"input size {k} (bottom shape {bottom[0].shape} flattened from axis {axis}) does not match the "
                f"weights, which expect {self.k} inputs",
                ShapeMismatchError,
            )
        self.axis = axis
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        x = bottom[0].data.reshape(-1, self.k)
        w = self.blobs[0].data
        y = x @ w if self.transpose else x @ w.T
        if self.bias_term:
            y += self.blobs[1].data
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        dy = top[0].diff.reshape(-1, self.num_output)
        x = bottom[0].data.reshape(-1, self.k)
        ppd = self.param_propagate_down
        if ppd and ppd[0]:
            self.blobs[0].diff += x.T @ dy if self.transpose else dy.T @ x
        if self.bias_term and len(ppd) > 1 and ppd[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            w = self.blobs[0].data
            dx = dy @ w.T if self.transpose else dy @ w
            bottom[0].diff = dx.reshape(bottom[0].shape)


# --- Softmax -------------------------------------------------------------------------
@register_layer("Softmax")
class SoftmaxLayer(Layer):
    """Caffe type ``Softmax``: ``y_i = exp(x_i) / sum_j exp(x_j)`` along ``softmax_param.axis``.

    Backward: ``dx = y * (dy - sum_axis(dy * y))``. In-place use is allowed.

    Bottom: any shape. Top: the bottom's shape.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        self.axis = _axis(self, self.param.softmax_param.axis, bottom[0].num_axes)

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        self.axis = _axis(self, self.param.softmax_param.axis, bottom[0].num_axes)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        x = bottom[0].data
        xp = backend.array_module(x)
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        e /= e.sum(axis=self.axis, keepdims=True)
        top[0].data = e

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        bottom[0].diff = y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


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
        start = _axis(self, p.axis, n, "axis")
        end = _axis(self, p.end_axis, n, "end_axis")
        if end < start:
            raise self.error(
                f"end_axis must not come before axis. Received: axis {p.axis}, end_axis {p.end_axis} "
                f"for bottom shape {bottom[0].shape}"
            )
        shape = bottom[0].shape
        self.top_shape = shape[:start] + (_count(shape[start:end + 1]),) + shape[end + 1:]
        top[0].reshape(self.top_shape)
        top[0].data = bottom[0].data.reshape(self.top_shape)

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        top[0].data = bottom[0].data.reshape(self.top_shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


# --- Parameter -----------------------------------------------------------------------
@register_layer("Parameter")
class ParameterLayer(Layer):
    """Caffe type ``Parameter``: exposes a learnable blob as a top.

    ``top = W`` (the same memory); backward adds ``d top`` into ``dW``.

    Bottoms: none. Top: ``parameter_param.shape``.
    """

    exact_num_bottom = 0
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.parameter_param
        shape = tuple(int(d) for d in p.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error(f"parameter_param.shape must not have negative dimensions. Received: {shape}")
        self.blobs = [self.new_blob(shape)]

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        top[0].reshape(self.blobs[0].shape)
        top[0].data = self.blobs[0].data

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        top[0].data = self.blobs[0].data

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if self.param_propagate_down and self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff


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
    return _axis(layer, p.axis, num_axes)


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
        top[0].reshape(first[:axis] + (total,) + first[axis + 1:])
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
                    f"needs one slice_point fewer than tops ({len(top) - 1}). Received: {len(points)} points "
                    f"{points}"
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
            t.reshape(shape[:axis] + (bounds[k + 1] - bounds[k],) + shape[axis + 1:])

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
                f"reshape_param.shape may hold positive sizes, 0 (copy) and at most one -1 (infer). "
                f"Received: {dims}"
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
            known = _count([d for d in out if d != -1])
            total = bottom[0].count
            if known == 0 or total % known:
                raise self.error(
                    f"cannot infer the -1 dimension: bottom count {total} (shape {shape}) is not divisible by "
                    f"the product {known} of the other dimensions. Received: shape {dims}",
                    ShapeMismatchError,
                )
            out[out.index(-1)] = total // known
        out = tuple(out)
        if _count(out) != bottom[0].count:
            raise self.error(
                f"the new shape {out} holds {_count(out)} values but the bottom {shape} holds {bottom[0].count}. "
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
        self.axis = axis = _axis(self, p.axis, len(shape))
        self.tiles = int(p.tiles)
        self.outer = _count(shape[:axis])
        self.inner = _count(shape[axis:])
        top[0].reshape(shape[:axis] + (shape[axis] * self.tiles,) + shape[axis + 1:])

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        xp = backend.array_module(x)
        top[0].data = xp.broadcast_to(x, (self.outer, self.tiles, self.inner)).reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            bottom[0].diff = dy.sum(axis=1).reshape(bottom[0].shape)


# --- Eltwise -------------------------------------------------------------------------
@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """Caffe type ``Eltwise``: element-wise PROD, SUM (``y = sum_i c_i x_i``) or MAX of its bottoms.

    MAX sends each element's gradient to the bottom that won it: between bottoms 0 and 1
    a tie goes to bottom 1, from bottom 2 on a later bottom must be strictly larger
    (Caffe's order). PROD's gradient is the product of the other bottoms
    (``stable_prod_grad``) or ``y / x_i``.

    Bottoms: two or more of one shape. Top: that shape.
    """

    min_num_bottom = 2
    exact_num_top = 1

    PROD, SUM, MAX = 0, 1, 2

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.eltwise_param
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottom):
            raise self.error(
                f"takes one coeff per bottom ({len(bottom)}). Received: {len(p.coeff)} values {list(p.coeff)}"
            )
        if p.coeff and self.op != self.SUM:
            raise self.error(
                f"coeff applies to operation SUM only. Received: coeff {list(p.coeff)} with operation "
                f"{'PROD' if self.op == self.PROD else 'MAX'}"
            )
        self.coeffs = [float(c) for c in p.coeff] if p.coeff else [1.0] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        for i, b in enumerate(bottom[1:], start=1):
            if b.shape != bottom[0].shape:
                raise self.error(
                    f"all bottoms must have the same shape. Received: bottom 0 {bottom[0].shape}, "
                    f"bottom {i} {b.shape}",
                    ShapeMismatchError,
                )
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        xs = [b.data for b in bottom]
        xp = backend.array_module(xs[0])
        if self.op == self.PROD:
            # Keep the input arrays: an in-place top gets a new array, so these stay intact for backward.
            self.inputs = xs
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y *= x
        elif self.op == self.SUM:
            y = xs[0] * self.coeffs[0] if self.coeffs[0] != 1 else xs[0].copy()
            for c, x in zip(self.coeffs[1:], xs[1:], strict=True):
                y += x if c == 1 else c * x
        else:
            first = xs[0] > xs[1]
            y = xp.where(first, xs[0], xs[1])
            mask = xp.where(first, 0, 1).astype(xp.int32)
            for k, x in enumerate(xs[2:], start=2):
                win = x > y
                y = xp.where(win, x, y)
                mask[win] = k
            self.mask = mask
        top[0].data = y

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        dy = top[0].diff
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            if self.op == self.PROD:
                if self.stable_prod_grad:
                    others = [x for j, x in enumerate(self.inputs) if j != i]
                    g = others[0] * dy
                    for x in others[1:]:
                        g *= x
                else:
                    g = top[0].data / self.inputs[i] * dy
            elif self.op == self.SUM:
                g = dy.copy() if self.coeffs[i] == 1 else self.coeffs[i] * dy
            else:
                g = dy * (self.mask == i)
            b.diff = g


# --- Reduction -----------------------------------------------------------------------
@register_layer("Reduction")
class ReductionLayer(Layer):
    """Caffe type ``Reduction``: reduces all axes from ``reduction_param.axis`` on to one number.

    ``y = coeff * sum(x)``, ``coeff * sum|x|``, ``coeff * sum x^2`` or ``coeff * mean(x)``
    for SUM, ASUM, SUMSQ, MEAN (``sign(0) = 0`` in the ASUM gradient).

    Bottom: ``(d_0, ..., d_n)``. Top: ``(d_0, ..., d_{axis-1})`` (a scalar for axis 0).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        self.op = self.param.reduction_param.operation

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.reduction_param
        shape = bottom[0].shape
        self.axis = _axis(self, p.axis, len(shape))
        self.num = _count(shape[:self.axis])
        self.dim = _count(shape[self.axis:])
        self.coeff = float(p.coeff) / self.dim if self.op == self.MEAN and self.dim else float(p.coeff)
        top[0].reshape(shape[:self.axis])

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        x = bottom[0].data.reshape(self.num, self.dim)
        xp = backend.array_module(x)
        if self.op == self.ASUM:
            x = xp.abs(x)
        elif self.op == self.SUMSQ:
            x = x * x
        y = x.sum(axis=1)
        if self.coeff != 1:
            y *= self.coeff
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if not propagate_down[0]:
            return
        x = bottom[0].data.reshape(self.num, self.dim)
        xp = backend.array_module(x)
        dy = top[0].diff.reshape(self.num, 1) * self.coeff
        if self.op == self.ASUM:
            dx = xp.sign(x) * dy
        elif self.op == self.SUMSQ:
            dx = (2 * x) * dy
        else:
            dx = xp.broadcast_to(dy, (self.num, self.dim)).copy()
        bottom[0].diff = dx.reshape(bottom[0].shape)


# --- ArgMax --------------------------------------------------------------------------
@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """Caffe type ``ArgMax``: indices (and optionally values) of the ``top_k`` largest entries.

    Without ``axis`` each sample's ``count(1)`` values are ranked; the top is
    ``N x 1 x top_k`` (indices) or ``N x 2 x top_k`` (indices, then values, with
    ``out_max_val``), padded with 1s to the bottom's number of axes. With ``axis`` the top is
    the bottom's shape with that axis set to ``top_k``, holding indices, or values alone when
    ``out_max_val``. Ties rank the larger index first (Caffe's order). Forward only.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.argmax_param
        self.top_k = int(p.top_k)
        self.out_max_val = bool(p.out_max_val)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error(f"top_k must be at least 1. Received: {self.top_k}")

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.argmax_param
        shape = bottom[0].shape
        if self.has_axis:
            self.axis = _axis(self, p.axis, len(shape))
            limit, where = shape[self.axis], f"the size of axis {self.axis}"
        else:
            limit, where = bottom[0].count_range(1), "the number of values per sample"
        if self.top_k > limit:
            raise self.error(
                f"top_k must not exceed {where} ({limit}, bottom shape {shape}). Received: top_k {self.top_k}"
            )
        if self.has_axis:
            out = list(shape)
            out[self.axis] = self.top_k
        else:
            out = [1] * max(len(shape), 3)
            out[0] = shape[0]
            out[1] = 2 if self.out_max_val else 1
            out[2] = self.top_k
        top[0].reshape(out)

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        x = bottom[0].data
        xp = backend.array_module(x)
        k = self.top_k
        rows = xp.moveaxis(x, self.axis, -1) if self.has_axis else x.reshape(x.shape[0], -1)
        # Ascending stable order reversed = descending by value, equal values by larger index first.
        order = xp.argsort(rows, axis=-1, kind="stable")[..., ::-1][..., :k]
        values = xp.take_along_axis(rows, order, axis=-1)
        if self.has_axis:
            out = values if self.out_max_val else order.astype(self.dtype)
            y = xp.moveaxis(out, -1, self.axis)
        elif self.out_max_val:
            y = xp.stack([order.astype(self.dtype), values], axis=1)
        else:
            y = order.astype(self.dtype)
        top[0].data = xp.ascontiguousarray(y, dtype=self.dtype).reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        """ArgMax has no gradient; Caffe refuses to run it backward, netdef leaves the bottom alone."""


# --- Embed ---------------------------------------------------------------------------
def _indices(layer: Layer, values, limit: int, what: str):
    """Float indices as integers (truncated, as Caffe's cast), checked against ``[0, limit)``."""
    xp = backend.array_module(values)
    idx = values.astype(xp.int64)
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= limit or float(values.min()) < 0:
            raise layer.error(
                f"{what} must lie in [0, {limit}). Received: values from {float(values.min()):g} to "
                f"{float(values.max()):g}"
            )
    return idx


@register_layer("Embed")
class EmbedLayer(Layer):
    """Caffe type ``Embed``: a lookup table, ``y[..., :] = W[int(x[...]), :] + b``.

    Blobs: ``W`` of shape ``input_dim x num_output`` (K x N) and, with ``bias_term``, ``b`` of
    shape ``N``. The bottom holds integer indices as floats and gets no gradient.

    Bottom: any shape ``S``. Top: ``S + (num_output,)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        p = self.param.embed_param
        for field in ("num_output", "input_dim"):
            if getattr(p, field) <= 0:
                raise self.error(f"embed_param.{field} must be a positive integer. Received: {getattr(p, field)}")
        self.k, self.n = int(p.input_dim), int(p.num_output)
        self.bias_term = bool(p.bias_term)
        self.blobs = [self.filled_blob((self.k, self.n), p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.filled_blob((self.n,), p.bias_filler))

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        top[0].reshape(bottom[0].shape + (self.n,))

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        self.idx = _indices(self, bottom[0].data.reshape(-1), self.k, "embedding indices")
        y = self.blobs[0].data[self.idx]
        if self.bias_term:
            y += self.blobs[1].data
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        dy = top[0].diff.reshape(-1, self.n)
        ppd = self.param_propagate_down
        xp = backend.array_module(dy)
        if ppd and ppd[0]:
            _index_add(xp, self.blobs[0].diff, self.idx, dy)
        if self.bias_term and len(ppd) > 1 and ppd[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            # Indices are piecewise constant: their gradient is zero.
            bottom[0].diff = xp.zeros(bottom[0].shape, dtype=bottom[0].diff.dtype)


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
            raise self.error(
                f"the index bottom must be 1-D. Received: shape {bottom[1].shape}", ShapeMismatchError
            )
        if bottom[0].num_axes < 1:
            raise self.error("the data bottom needs at least one axis. Received: a scalar", ShapeMismatchError)
        top[0].reshape(bottom[1].shape + bottom[0].shape[1:])

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        self.idx = _indices(self, bottom[1].data, bottom[0].shape[0], "reindex indices")
        top[0].data = bottom[0].data[self.idx]

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        xp = backend.array_module(top[0].diff)
        if propagate_down[0]:
            dx = xp.zeros(bottom[0].shape, dtype=bottom[0].diff.dtype)
            _index_add(xp, dx, self.idx, top[0].diff)
            bottom[0].diff = dx
        if propagate_down[1]:
            bottom[1].diff = xp.zeros(bottom[1].shape, dtype=bottom[1].diff.dtype)
