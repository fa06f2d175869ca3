"""Normalisation layers: BatchNorm, Scale, Bias, MVN and LRN.

BatchNorm follows Caffe's split design: it only standardises, and a Scale
layer with ``bias_term: true`` after it supplies the learned gamma and beta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy

from .. import backend, limits
from ..blob import Blob
from ..errors import ShapeMismatchError
from ..proto import netdef_pb2 as pb
from .base import Layer, NeuronLayer, register_layer
from .pool_kernels import CHUNK_BYTES
from .pooling import PoolWindows, check_4d

#: Bytes of input per chunk of LRN's element-wise NumPy work (a few buffers of this size stay in the cache).
LRN_CHUNK_BYTES = CHUNK_BYTES


def _channel_view_shape(ndim: int, channels: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector (axis 1) over an ``ndim``-axis array."""
    if ndim < 2:
        return (1,) * ndim
    return (1, channels) + (1,) * (ndim - 2)


def _stat_axes(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1 (all of them for a 1-axis bottom)."""
    return tuple(i for i in range(ndim) if i != 1 or ndim == 1)


@register_layer("BatchNorm")
class BatchNormLayer(NeuronLayer):
    """Batch normalisation without the affine part (Caffe type ``BatchNorm``).

    ``y = (x - mean_c) / sqrt(var_c + eps)`` per channel ``c`` (axis 1), with
    the statistics taken over every other axis.

    Blobs (Caffe's order, never learned: their ``lr_mult`` is forced to 0):
    running mean sum ``(C,)``, running variance sum ``(C,)`` and the scale
    factor ``(1,)``. The stored estimates are ``blob0 / blob2`` and
    ``blob1 / blob2`` (0 when ``blob2`` is 0). With batch statistics
    (``use_global_stats`` false; by default in TRAIN) each forward updates, with
    ``f = moving_average_fraction`` and ``m = count / C`` values per channel:
    ``blob2 = f * blob2 + 1``, ``blob0 = f * blob0 + mean``,
    ``blob1 = f * blob1 + m / (m - 1) * var`` (the batch variance itself is
    the biased one). ``use_global_stats`` defaults to (phase == TEST).

    Bottom: ``(N, C, ...)`` (a 1-axis bottom is one channel). Top: same shape.
    In-place use is allowed.
    """

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.param.batch_norm_param
        self.use_global_stats = bool(p.use_global_stats) if p.HasField("use_global_stats") else self.phase == pb.TEST
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        if self.eps < 0:
            raise self.error(f"batch_norm_param.eps must not be negative. Received: {self.eps}. Valid: >= 0")
        if bottom[0].num_axes == 0:
            raise self.error(
                f"needs a bottom with at least 1 axis. Received shape {bottom[0].shape}", ShapeMismatchError
            )
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        self.blobs = [self.new_blob((self.channels,)), self.new_blob((self.channels,)), self.new_blob((1,))]
        # The statistics are not parameters to learn: like Caffe, give each blob lr_mult 0 before the
        # net reads the ParamSpecs, and refuse a definition that asks for something else.
        for i in range(len(self.blobs)):
            if i == len(self.param.param):
                self.param.param.add(lr_mult=0.0, decay_mult=0.0)
            elif self.param.param[i].lr_mult != 0:
                raise self.error(
                    f"the statistics blobs cannot be learned, so param {i} needs lr_mult 0. "
                    f"Received: lr_mult {self.param.param[i].lr_mult}. Valid: 0 (or leave the param out)"
                )

    def reshape(self, bottom, top):
        x_shape = bottom[0].shape
        channels = 1 if len(x_shape) == 1 else (x_shape[1] if x_shape else None)
        if channels != self.channels:
            raise self.error(
                f"was set up for {self.channels} channels (axis 1) but the bottom has shape {x_shape}",
                ShapeMismatchError,
            )
        top[0].reshape(x_shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        vshape = _channel_view_shape(x.ndim, self.channels)
        axes = _stat_axes(x.ndim)
        mean_sum, var_sum, factor = (b.data for b in self.blobs)
        if self.use_global_stats:
            f = factor.reshape(-1)[:1]
            inv = (f != 0) / (f + (f == 0))
            mean = mean_sum * inv
            var = var_sum * inv
            d = x - mean.reshape(vshape)
        else:
            mean = x.mean(axis=axes)
            d = x - mean.reshape(vshape)
            var = (d * d).mean(axis=axes)
            frac = self.moving_average_fraction
            m = x.size // self.channels
            correction = m / (m - 1) if m > 1 else 1.0
            factor[...] = factor * frac + 1
            mean_sum[...] = mean_sum * frac + mean
            var_sum[...] = var_sum * frac + var * correction
        std = xp.sqrt(var + self.eps).astype(x.dtype, copy=False).reshape(vshape)
        y = d / std
        self._std = std
        self._y = y
        top[0].data = y

    def backward(self, top, propagate_down, bottom):
        # The statistics blobs get no gradient (Caffe leaves their diffs untouched).
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.use_global_stats:
            bottom[0].diff = dy / self._std
            return
        y = self._y
        axes = _stat_axes(y.ndim)
        mean_dy = dy.mean(axis=axes, keepdims=True)
        mean_dy_y = (dy * y).mean(axis=axes, keepdims=True)
        bottom[0].diff = (dy - mean_dy - y * mean_dy_y) / self._std


def _param_blob_shape(layer: Layer, x_shape: tuple[int, ...], axis: int, num_axes: int, what: str) -> tuple[int, ...]:
    """Shape of a learned Scale/Bias blob: ``num_axes`` axes of bottom[0] from ``axis`` (-1: to the end)."""
    ndim = len(x_shape)
    if num_axes < -1:
        raise layer.error(
            f"{what}.num_axes must be non-negative, or -1 to extend to the end of bottom[0]. Received: {num_axes}"
        )
    if ndim == 0:
        if num_axes > 0:
            raise layer.error(f"{what}.num_axes {num_axes} does not fit a 0-axis bottom", ShapeMismatchError)
        return ()
    a = layer.canonical_axis(axis, ndim, f"{what}.axis")
    end = ndim if num_axes == -1 else a + num_axes
    if end > ndim:
        raise layer.error(
            f"the blob spans axes {a} .. {end - 1} of bottom[0], which has only {ndim} axes (shape {x_shape}). "
            f"Received: axis {axis}, num_axes {num_axes}",
            ShapeMismatchError,
        )
    return tuple(x_shape[a:end])


class _Broadcast:
    """How a Scale/Bias operand lines up with bottom[0]: its broadcast view shape and the axes to sum over."""

    def __init__(
        self,
        layer: Layer,
        x_shape: tuple[int, ...],
        operand_shape: tuple[int, ...],
        axis: int,
        operand: str,
        axis_field: str,
    ):
        ndim, k = len(x_shape), len(operand_shape)
        # A scalar operand lines up anywhere; Caffe then ignores the axis setting.
        a = 0 if k == 0 else layer.canonical_axis(axis, ndim, axis_field)
        if a + k > ndim or tuple(x_shape[a : a + k]) != tuple(operand_shape):
            raise layer.error(
                f"the {operand} of shape {operand_shape}, applied from axis {a} ({axis_field} {axis}), does not "
                f"match bottom[0] of shape {x_shape}. Valid: a {operand} whose shape equals "
                f"bottom[0].shape[{a}:{a + k}]",
                ShapeMismatchError,
            )
        self.view_shape = (1,) * a + tuple(operand_shape) + (1,) * (ndim - a - k)
        self.sum_axes = tuple(range(a)) + tuple(range(a + k, ndim))
        self.operand_shape = tuple(operand_shape)

    def reduce(self, g):
        """Sum an array of bottom[0]'s shape down to the operand's shape (a new array)."""
        if not self.sum_axes:
            return g.reshape(self.operand_shape).copy()
        return g.sum(axis=self.sum_axes).reshape(self.operand_shape)


@register_layer("Scale")
class ScaleLayer(Layer):
    """Element-wise product with a broadcast factor, plus an optional bias (Caffe type ``Scale``).

    ``y = x * s (+ b)``, where ``s`` covers axes ``axis .. axis + num_axes - 1``
    of ``x`` and is broadcast over the others. ``s`` is bottom[1] when given,
    else the learned blob 0 (default filler: constant 1). With
    ``bias_term: true`` a learned bias ``b`` of the same shape follows
    (``bias_filler``, default constant 0).

    Blobs: ``[scale, bias]``, ``[scale]``, or ``[bias]`` when the scale is bottom[1].

    Bottom: ``x`` of any shape, optionally ``s``. Top: same shape as ``x``;
    in-place use is allowed.
    """

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.scale_param
        x_shape = bottom[0].shape
        self.blobs = []
        if len(bottom) == 1:
            shape = _param_blob_shape(self, x_shape, p.axis, p.num_axes, "scale_param")
            filler = p.filler if p.HasField("filler") else pb.FillerParameter(type="constant", value=1.0)
            self.blobs.append(self.filled_blob(shape, filler))
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            # Like Caffe's internal Bias layer: it spans as many axes as the scale operand does.
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            shape = _param_blob_shape(self, x_shape, p.axis, num_axes, "scale_param")
            self.blobs.append(self.filled_blob(shape, p.bias_filler))

    def reshape(self, bottom, top):
        axis = self.param.scale_param.axis
        x_shape = bottom[0].shape
        scale = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self._scale_bc = _Broadcast(self, x_shape, scale.shape, axis, "scale", "scale_param.axis")
        if self.bias_term:
            self._bias_bc = _Broadcast(self, x_shape, self.blobs[-1].shape, axis, "bias", "scale_param.axis")
        top[0].reshape(x_shape)

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = x
        y = x * self._scale(bottom).data.reshape(self._scale_bc.view_shape)
        if self.bias_term:
            y += self.blobs[-1].data.reshape(self._bias_bc.view_shape)
        top[0].data = y

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        ppd = self.param_propagate_down or [False] * len(self.blobs)
        if self.bias_term and ppd[-1]:
            self.blobs[-1].diff += self._bias_bc.reduce(dy)
        if len(bottom) > 1:
            if propagate_down[1]:
                bottom[1].diff = self._scale_bc.reduce(dy * self._x)
        elif ppd[0]:
            self.blobs[0].diff += self._scale_bc.reduce(dy * self._x)
        if propagate_down[0]:
            bottom[0].diff = dy * self._scale(bottom).data.reshape(self._scale_bc.view_shape)


@register_layer("Bias")
class BiasLayer(Layer):
    """Addition of a broadcast bias (Caffe type ``Bias``).

    ``y = x + b``, where ``b`` covers axes ``axis .. axis + num_axes - 1`` of
    ``x`` and is broadcast over the others. ``b`` is bottom[1] when given, else
    the learned blob 0 (``filler``, default constant 0).

    Bottom: ``x`` of any shape, optionally ``b``. Top: same shape as ``x``;
    in-place use is allowed.
    """

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.bias_param
        self.blobs = []
        if len(bottom) == 1:
            shape = _param_blob_shape(self, bottom[0].shape, p.axis, p.num_axes, "bias_param")
            self.blobs.append(self.filled_blob(shape, p.filler))

    def _bias(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        self._bc = _Broadcast(
            self, bottom[0].shape, self._bias(bottom).shape, self.param.bias_param.axis, "bias", "bias_param.axis"
        )
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data = bottom[0].data + self._bias(bottom).data.reshape(self._bc.view_shape)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if len(bottom) > 1:
            if propagate_down[1]:
                bottom[1].diff = self._bc.reduce(dy)
        elif self.param_propagate_down and self.param_propagate_down[0]:
            self.blobs[0].diff += self._bc.reduce(dy)
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff = dy.copy()


@register_layer("MVN")
class MVNLayer(NeuronLayer):
    """Mean-variance normalisation (Caffe type ``MVN``).

    Per sample and channel (or per sample with ``across_channels``):
    ``y = x - mean(x)``, and with ``normalize_variance`` (default)
    ``y = (x - mean(x)) / (sqrt(var(x)) + eps)`` — Caffe adds ``eps`` to the
    standard deviation, not to the variance; ``var`` is the biased one.

    Bottom: ``(N, C, ...)``. Top: same shape; in-place use is allowed.
    """

    def setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        if self.eps < 0:
            raise self.error(f"mvn_param.eps must not be negative. Received: {self.eps}. Valid: >= 0")

    def _axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(range(1 if self.across_channels else 2, ndim))

    @staticmethod
    def _mean(a, axes):
        # With no axes left to average (a bottom of <= 2 axes), every value is its own group.
        return a.mean(axis=axes, keepdims=True) if axes else a

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        axes = self._axes(x.ndim)
        d = x - self._mean(x, axes)
        if not self.normalize_variance:
            top[0].data = d
            return
        s = xp.sqrt(self._mean(d * d, axes))
        u = s + self.eps
        self._d, self._s, self._u = d, s, u
        top[0].data = d / u

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        axes = self._axes(dy.ndim)
        centred = dy - self._mean(dy, axes)
        if not self.normalize_variance:
            bottom[0].diff = centred
            return
        # Exact derivative of d / (s + eps). Caffe's formula drops a factor (s + eps) / s on the
        # variance term, which only matters for large eps; where s == 0 the centred input is 0 too.
        d, s, u = self._d, self._s, self._u
        s_safe = s + (s == 0)
        corr = self._mean(dy * d, axes) / (s_safe * u * u)
        bottom[0].diff = centred / u - d * corr


@register_layer("LRN")
class LRNLayer(Layer):
    """Caffe type ``LRN``: local response normalisation.

    ACROSS_CHANNELS: ``y = x * (k + alpha/n * sum_{c' in window(c)} x[c']^2)^-beta`` over ``n = local_size``
    channels centred on ``c`` (zero beyond the edges).

    WITHIN_CHANNEL: ``y = x * (1 + alpha * avgpool_n(x^2))^-beta`` with an n x n zero-padded AVE pool
    (divisor ``n^2``). As in Caffe, ``k`` is ignored in this mode.

    Bottom: ``(N, C, H, W)``. Top: same shape.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        lp = self.param.lrn_param
        self.size = int(lp.local_size)
        if self.size < 1 or self.size % 2 == 0:
            raise self.error(f"local_size must be a positive odd number. Received: {lp.local_size}")
        self.alpha, self.beta, self.k = float(lp.alpha), float(lp.beta), float(lp.k)
        self.within = lp.norm_region == pb.LRNParameter.WITHIN_CHANNEL
        self.windows: PoolWindows | None = None
        self._x = self._scale = self._inv = None

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        check_4d(self, bottom[0])
        x = bottom[0]
        if self.within:
            in_hw = x.shape[2:]
            if self.windows is None or self.windows.in_hw != in_hw:
                half = (self.size - 1) // 2
                self.windows = PoolWindows(in_hw, (self.size,) * 2, (1, 1), (half, half))
            scratch = (*x.shape[:2], *self.windows.padded_hw)
        else:
            scratch = (x.shape[0], x.shape[1] + self.size - 1, *x.shape[2:])
        # a local_size far beyond the input would make the zero-padded working array huge
        limits.check_bytes(f"{self.describe()} padded input", scratch, x.dtype.itemsize)
        top[0].reshape(x.shape)

    def _channel_window_sum(self, a):
        """``sum_{|c' - c| <= n//2} a[:, c']`` with zeros beyond the channel edges."""
        xp = backend.array_module(a)
        c, half = a.shape[1], (self.size - 1) // 2
        padded = xp.zeros((a.shape[0], c + self.size - 1, *a.shape[2:]), dtype=a.dtype)
        padded[:, half : half + c] = a
        s = padded[:, :c].copy()
        for j in range(1, self.size):
            s += padded[:, j : j + c]
        return s

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0].data
        if backend.array_module(x) is numpy:
            top[0].data = self._forward_numpy(x)
            return
        t = x.dtype.type
        if self.within:
            scale = t(1) + t(self.alpha) * self.windows.ave_forward(x * x)
        else:
            scale = t(self.k) + t(self.alpha / self.size) * self._channel_window_sum(x * x)
        self._x, self._scale, self._inv = x, scale, None
        top[0].data = x * scale ** t(-self.beta)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        x, scale, dy = self._x, self._scale, top[0].diff
        if self._inv is not None:
            bottom[0].diff = self._backward_numpy(dy)
            return
        t = x.dtype.type
        inv = scale ** t(-self.beta)
        if self.within:
            # y = x * u^-beta with u = 1 + alpha * avgpool(x^2)
            g = dy * x * (t(-self.beta * self.alpha) * inv / scale)
            bottom[0].diff = dy * inv + t(2) * x * self.windows.ave_backward(g, x.shape)
        else:
            ratio = dy * (x * inv) / scale
            coeff = t(2 * self.alpha * self.beta / self.size)
            bottom[0].diff = dy * inv - coeff * x * self._channel_window_sum(ratio)

    # NumPy: the same operations in the same order, one cache-sized chunk at a time, into preallocated arrays
    def _chunks(self, x) -> list[slice]:
        """Runs of whole samples of about :data:`LRN_CHUNK_BYTES` (one sample at least).

        Cutting a sample into runs of positions would keep the chunks smaller, but NumPy then walks
        short strided rows, which costs more than the cache saves.
        """
        per = max(1, LRN_CHUNK_BYTES // max(1, x.itemsize * math.prod(x.shape[1:])))
        return [slice(a, a + per) for a in range(0, max(x.shape[0], 1), per)]

    @staticmethod
    def _scratch(like, count: int) -> list:
        return [numpy.empty_like(like) for _ in range(count)]

    def _window_sum_into(self, a, out) -> None:
        """:meth:`_channel_window_sum` of ``a`` into ``out`` without the padded copy (same sums, same order)."""
        c, half = a.shape[1], (self.size - 1) // 2
        if half == 0:
            numpy.copyto(out, a)
            return
        # the first two terms at once: both exist from channel `half` on, only the second at `half - 1`
        out[:, : half - 1] = 0
        out[:, half - 1 : half] = a[:, :1]
        numpy.add(a[:, : max(c - half, 0)], a[:, 1 : max(c - half + 1, 1)], out=out[:, half:])
        for d in range(2 - half, half + 1):
            lo, hi = max(0, -d), min(c, c - d)  # the channels whose neighbour at distance d exists
            if hi > lo:
                out[:, lo:hi] += a[:, lo + d : hi + d]
        # the padded sum adds the zeros beyond the edges, which turns a -0 into +0
        out[:, :half] += 0
        out[:, max(c - half, 0) :] += 0

    def _forward_numpy(self, x):
        t = x.dtype.type
        # the scale and its power are kept for backward; their arrays are reused while the shape holds
        if not isinstance(self._inv, numpy.ndarray) or self._inv.shape != x.shape or self._inv.dtype != x.dtype:
            self._scale, self._inv = numpy.empty_like(x), numpy.empty_like(x)
        y = numpy.empty_like(x)
        chunks = self._chunks(x)
        (scratch,) = self._scratch(x[chunks[0]], 1)
        for i in chunks:
            xc, s, inv = x[i], self._scale[i], self._inv[i]
            sq = numpy.multiply(xc, xc, out=scratch[: len(xc)])
            if self.within:
                numpy.multiply(self.windows.ave_forward(sq), t(self.alpha), out=s)
                s += t(1)
            else:
                self._window_sum_into(sq, s)
                s *= t(self.alpha / self.size)
                s += t(self.k)
            numpy.power(s, t(-self.beta), out=inv)
            numpy.multiply(xc, inv, out=y[i])
        self._x = x
        return y

    def _backward_numpy(self, dy):
        x, t = self._x, self._x.dtype.type
        dx = numpy.empty_like(x)
        chunks = self._chunks(x)
        work, other = self._scratch(x[chunks[0]], 2)
        for i in chunks:
            xc, s, inv, dyc, dxc = x[i], self._scale[i], self._inv[i], dy[i], dx[i]
            w, o = work[: len(xc)], other[: len(xc)]
            if self.within:
                # y = x * u^-beta with u = 1 + alpha * avgpool(x^2): dx = dy u^-beta + 2 x avgpool'(dy x d(u^-beta)/du)
                numpy.multiply(t(-self.beta * self.alpha), inv, out=w)
                numpy.divide(w, s, out=w)
                numpy.multiply(dyc, xc, out=o)
                numpy.multiply(o, w, out=o)
                spread = self.windows.ave_backward(o, o.shape)
                numpy.multiply(dyc, inv, out=dxc)
                numpy.multiply(t(2), xc, out=w)
                numpy.multiply(w, spread, out=w)
                numpy.add(dxc, w, out=dxc)
            else:
                numpy.multiply(xc, inv, out=w)
                numpy.multiply(dyc, w, out=w)
                numpy.divide(w, s, out=w)
                self._window_sum_into(w, o)
                numpy.multiply(dyc, inv, out=dxc)
                numpy.multiply(t(2 * self.alpha * self.beta / self.size), xc, out=w)
                numpy.multiply(w, o, out=w)
                numpy.subtract(dxc, w, out=dxc)
        return dx
