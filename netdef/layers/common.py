"""General-purpose layers: fully connected, softmax, parameters, element-wise, reduction, argmax and embedding.

The layers that only move, cut, join or reshape blobs are in :mod:`netdef.layers.structure`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import backend, threads
from ..blob import Blob
from ..errors import ShapeMismatchError
from . import ort_kernels
from .base import Layer, register_layer

Blobs = Sequence[Blob]


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
        self.axis = self.canonical_axis(p.axis, bottom[0].num_axes, "inner_product_param.axis")
        self.k = bottom[0].count_range(self.axis)
        w_shape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.blobs = [self.filled_blob(w_shape, p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.filled_blob((self.num_output,), p.bias_filler))

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        axis = self.canonical_axis(self.param.inner_product_param.axis, bottom[0].num_axes, "inner_product_param.axis")
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
        # an MLP has no convolution to keep the BLAS thread count in step with the machine's load
        threads.refresh()
        x = bottom[0].data.reshape(-1, self.k)
        w = self.blobs[0].data
        y = ort_kernels.matmul(x, w if self.transpose else w.T)
        if self.bias_term:
            y += self.blobs[1].data
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        dy = top[0].diff.reshape(-1, self.num_output)
        x = bottom[0].data.reshape(-1, self.k)
        ppd = self.param_propagate_down
        if ppd and ppd[0]:
            self.blobs[0].diff += ort_kernels.matmul(x.T, dy) if self.transpose else ort_kernels.matmul(dy.T, x)
        if self.bias_term and len(ppd) > 1 and ppd[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            w = self.blobs[0].data
            dx = ort_kernels.matmul(dy, w.T if self.transpose else w)
            bottom[0].diff = dx.reshape(bottom[0].shape)


# --- Softmax -------------------------------------------------------------------------
def softmax(x, axis: int):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (a new array; NumPy or CuPy).

    Args:
        x: scores.
        axis: the axis holding the classes.

    Returns:
        Probabilities of ``x``'s shape and dtype, summing to 1 along ``axis``.
    """
    xp = backend.array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    """Caffe type ``Softmax``: ``y_i = exp(x_i) / sum_j exp(x_j)`` along ``softmax_param.axis``.

    Backward: ``dx = y * (dy - sum_axis(dy * y))``. In-place use is allowed.

    Bottom: any shape. Top: the bottom's shape.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Blobs, top: Blobs) -> None:
        self.axis = self.canonical_axis(self.param.softmax_param.axis, bottom[0].num_axes, "softmax_param.axis")

    def reshape(self, bottom: Blobs, top: Blobs) -> None:
        self.axis = self.canonical_axis(self.param.softmax_param.axis, bottom[0].num_axes, "softmax_param.axis")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom: Blobs, top: Blobs) -> None:
        top[0].data = softmax(bottom[0].data, self.axis)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        bottom[0].diff = y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


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
                    f"all bottoms must have the same shape. Received: bottom 0 {bottom[0].shape}, bottom {i} {b.shape}",
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
        self.axis = self.canonical_axis(p.axis, len(shape), "reduction_param.axis")
        self.num = math.prod(shape[: self.axis])
        self.dim = math.prod(shape[self.axis :])
        self.coeff = float(p.coeff) / self.dim if self.op == self.MEAN and self.dim else float(p.coeff)
        top[0].reshape(shape[: self.axis])

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
            self.axis = self.canonical_axis(p.axis, len(shape), "argmax_param.axis")
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
def integer_indices(layer: Layer, values, limit: int, what: str):
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
        self.idx = integer_indices(self, bottom[0].data.reshape(-1), self.k, "embedding indices")
        y = self.blobs[0].data[self.idx]
        if self.bias_term:
            y += self.blobs[1].data
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: Blobs, propagate_down: Sequence[bool], bottom: Blobs) -> None:
        dy = top[0].diff.reshape(-1, self.n)
        ppd = self.param_propagate_down
        xp = backend.array_module(dy)
        if ppd and ppd[0]:
            xp.add.at(self.blobs[0].diff, self.idx, dy)  # unbuffered: repeated indices accumulate
        if self.bias_term and len(ppd) > 1 and ppd[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            # Indices are piecewise constant: their gradient is zero.
            bottom[0].diff = xp.zeros(bottom[0].shape, dtype=bottom[0].diff.dtype)
