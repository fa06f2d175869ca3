"""General-purpose layers: shape plumbing, fully connected, softmax, element-wise and reduction layers.

Shape-only layers (Split, Flatten, Reshape) hand out views of their bottom's arrays
instead of copies, as Caffe shares the underlying memory; they re-take the view at
every forward/backward because other layers may replace a blob's array.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy

from .. import backend, fillers
from ..blob import Blob
from ..errors import ShapeMismatchError
from .base import Layer, register_layer


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

    def setup(self, bottom, top):
        _reject_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)
            t.data = bottom[0].data

    def forward(self, bottom, top):
        for t in top:
            t.data = bottom[0].data

    def backward(self, top, propagate_down, bottom):
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

    def setup(self, bottom, top):
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
        self.blobs = [fillers.fill(self.new_blob(w_shape), p.weight_filler)]
        if self.bias_term:
            self.blobs.append(fillers.fill(self.new_blob((self.num_output,)), p.bias_filler))

    def reshape(self, bottom, top):
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

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1, self.k)
        w = self.blobs[0].data
        y = x @ w if self.transpose else x @ w.T
        if self.bias_term:
            y += self.blobs[1].data
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
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

    def setup(self, bottom, top):
        self.axis = _axis(self, self.param.softmax_param.axis, bottom[0].num_axes)

    def reshape(self, bottom, top):
        self.axis = _axis(self, self.param.softmax_param.axis, bottom[0].num_axes)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        e /= e.sum(axis=self.axis, keepdims=True)
        top[0].data = e

    def backward(self, top, propagate_down, bottom):
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

    def setup(self, bottom, top):
        _reject_in_place(self, bottom, top)

    def reshape(self, bottom, top):
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

    def forward(self, bottom, top):
        top[0].data = bottom[0].data.reshape(self.top_shape)

    def backward(self, top, propagate_down, bottom):
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

    def setup(self, bottom, top):
        p = self.param.parameter_param
        shape = tuple(int(d) for d in p.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error(f"parameter_param.shape must not have negative dimensions. Received: {shape}")
        self.blobs = [self.new_blob(shape)]

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        top[0].data = self.blobs[0].data

    def forward(self, bottom, top):
        top[0].data = self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
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

    def reshape(self, bottom, top):
        """No tops to shape."""

    def forward(self, bottom, top):
        """Nothing to compute."""

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff = backend.array_module(b.data).zeros(b.shape, dtype=b.diff.dtype)
