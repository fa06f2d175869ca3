"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, Crop and LRN.

Convolution-like layers share one ``im2col``/``col2im`` pair working on a
"channel-major, batch-last" layout ``(C, *spatial, N)``. In that layout the
patch gather of a stride-1 convolution copies long contiguous runs
(``out_width * N`` values) instead of short rows, and the whole batch becomes
one GEMM of shape ``(C_out, C_in*k) x (C_in*k, out_pixels*N)`` (batched over
groups only). Pooling walks the kernel offsets (``kh*kw`` strided views of the
whole batch), never the pixels.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy

from .. import backend, fillers
from ..blob import Blob
from ..errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from ..proto import netdef_pb2 as pb
from .base import Layer, register_layer

#: Largest column buffer built at once; bigger batches are convolved in chunks of samples.
COL_CHUNK_BYTES = 256 * 2**20
#: Column buffers up to this size are kept from forward for the weight gradient instead of rebuilt.
COL_CACHE_BYTES = 64 * 2**20

_MAX, _AVE, _STOCHASTIC = (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE, pb.PoolingParameter.STOCHASTIC)
_POOL_NAMES = {_MAX: "MAX", _AVE: "AVE", _STOCHASTIC: "STOCHASTIC"}


# --- im2col / col2im ------------------------------------------------------------------
def to_batch_last(x, pad: Sequence[int]):
    """``(N, C, *S)`` -> zero-padded ``(C, *(S + 2*pad), N)``, C-contiguous, in one copy."""
    xp = backend.array_module(x)
    moved = xp.moveaxis(x, 0, -1)
    if not any(pad):
        return xp.ascontiguousarray(moved)
    shape = (x.shape[1], *(s + 2 * p for s, p in zip(x.shape[2:], pad)), x.shape[0])
    out = xp.zeros(shape, dtype=x.dtype)
    out[(slice(None), *(slice(p, p + s) for s, p in zip(x.shape[2:], pad)), slice(None))] = moved
    return out


def from_batch_last(xt, pad: Sequence[int], spatial: Sequence[int]):
    """Inverse of :func:`to_batch_last`: drop the padding, return C-contiguous ``(N, C, *S)``."""
    xp = backend.array_module(xt)
    inner = xt[(slice(None), *(slice(p, p + s) for s, p in zip(spatial, pad)), slice(None))]
    return xp.ascontiguousarray(xp.moveaxis(inner, -1, 0))


def im2col(xt, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], out_shape: Sequence[int]):
    """Patches of a padded batch-last array.

    Args:
        xt: ``(C, *padded_spatial, N)`` (see :func:`to_batch_last`).
        kernel, stride, dilation: one value per spatial axis.
        out_shape: output positions per spatial axis.

    Returns:
        C-contiguous ``(C, *kernel, *out_shape, N)``; entry ``[c, k..., o..., n]`` is
        ``xt[c, o*stride + k*dilation ..., n]``. Rows ``(c, k...)`` are Caffe's column order.
    """
    xp = backend.array_module(xt)
    nd = len(kernel)
    st = xt.strides
    shape = (xt.shape[0], *kernel, *out_shape, xt.shape[-1])
    strides = (
        st[0],
        *(st[1 + i] * dilation[i] for i in range(nd)),
        *(st[1 + i] * stride[i] for i in range(nd)),
        st[-1],
    )
    return xp.ascontiguousarray(xp.lib.stride_tricks.as_strided(xt, shape, strides))


def col2im(col, padded_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
           dilation: Sequence[int], out_shape: Sequence[int]):
    """Adjoint of :func:`im2col`: sum ``(C, *kernel, *out_shape, N)`` patches into ``(C, *padded, N)``.

    One strided add per kernel offset (no scatter-add), so overlapping windows accumulate.
    """
    xp = backend.array_module(col)
    xt = xp.zeros(tuple(padded_shape), dtype=col.dtype)
    for offs in itertools.product(*(range(k) for k in kernel)):
        region = tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offs, dilation, stride, out_shape))
        xt[(slice(None), *region, slice(None))] += col[(slice(None), *offs)]
    return xt


def _batch_chunks(n: int, bytes_per_sample: int) -> list[slice]:
    """Split ``n`` samples so that one chunk's column buffer stays under COL_CHUNK_BYTES."""
    per = max(1, COL_CHUNK_BYTES // max(bytes_per_sample, 1))
    return [slice(i, min(i + per, n)) for i in range(0, n, per)] or [slice(0, 0)]


def conv_geometry(layer: Layer, cp, num_spatial: int) -> tuple[tuple[int, ...], ...]:
    """Kernel, stride, pad and dilation per spatial axis from a ConvolutionParameter (Caffe's rules)."""

    def per_axis(name: str, values, h_name: str | None, w_name: str | None, default: int | None):
        if h_name and (cp.HasField(h_name) or cp.HasField(w_name)):
            if num_spatial != 2:
                raise layer.error(
                    f"{h_name}/{w_name} can only be used for 2-D convolution. Received: {num_spatial} spatial "
                    f"axes. Valid: give {name} once or once per spatial axis"
                )
            if len(values):
                raise layer.error(
                    f"give either {name} or {h_name}/{w_name}, not both. Received: {name}={list(values)}, "
                    f"{h_name}={getattr(cp, h_name)}, {w_name}={getattr(cp, w_name)}"
                )
            if name != "pad" and not (cp.HasField(h_name) and cp.HasField(w_name)):
                raise layer.error(f"{h_name} and {w_name} must be given together. Received: only one of them")
            return (int(getattr(cp, h_name)), int(getattr(cp, w_name)))
        n = len(values)
        if not (n == 1 or n == num_spatial or (n == 0 and default is not None)):
            raise layer.error(
                f"{name} must be given once or once per spatial axis ({num_spatial}). Received: {n} values "
                f"{list(values)}"
            )
        if n == 0:
            return (default,) * num_spatial
        return tuple(int(values[0 if n == 1 else i]) for i in range(num_spatial))

    kernel = per_axis("kernel_size", cp.kernel_size, "kernel_h", "kernel_w", None)
    stride = per_axis("stride", cp.stride, "stride_h", "stride_w", 1)
    pad = per_axis("pad", cp.pad, "pad_h", "pad_w", 0)
    dilation = per_axis("dilation", cp.dilation, None, None, 1)
    for name, vals in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in vals):
            raise layer.error(f"{name} must be positive on every axis. Received: {list(vals)}")
    return kernel, stride, pad, dilation


def _extent(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) + 1


def conv_output_shape(layer: Layer, spatial: Sequence[int], kernel, pad, stride, dilation) -> tuple[int, ...]:
    """Caffe's convolution output size per axis; an error when the kernel does not fit the padded input."""
    out = []
    for s, k, p, st, d in zip(spatial, kernel, pad, stride, dilation):
        if s + 2 * p < _extent(k, d):
            raise layer.error(
                f"the kernel (extent {_extent(k, d)}) is larger than the padded input ({s} + 2*{p}). "
                f"Received: input spatial shape {tuple(spatial)}",
                ShapeMismatchError,
            )
        out.append((s + 2 * p - _extent(k, d)) // st + 1)
    return tuple(out)


# --- convolution family -----------------------------------------------------------------------
class _ConvolutionBase(Layer):
    """Shared set-up of Convolution and Deconvolution (Caffe's BaseConvolutionLayer)."""

    min_num_bottom = 1
    min_num_top = 1
    equal_num_bottom_top = True
    #: True for Deconvolution: weights are C_in x C_out/group x k and the GEMMs swap roles
    transposed = False

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        cp = self.param.convolution_param
        x = bottom[0]
        try:
            self.axis = x.canonical_axis(cp.axis)
        except InvalidParameterError as err:
            raise self.error(f"convolution_param.axis is out of range. Received: {cp.axis}. {err}") from None
        self.num_spatial = x.num_axes - self.axis - 1
        if self.num_spatial < 1:
            raise self.error(
                f"needs at least one spatial axis after the channel axis {self.axis}. Received: bottom shape "
                f"{x.shape}"
            )
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, self.num_spatial)
        self.channels = x.shape[self.axis]
        self.num_output = int(cp.num_output)
        if self.num_output <= 0:
            raise self.error(f"num_output must be positive. Received: {cp.num_output}")
        self.group = int(cp.group)
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise self.error(
                f"group must divide both the input channels and num_output. Received: group={cp.group}, "
                f"channels={self.channels}, num_output={self.num_output}"
            )
        if self.transposed:
            weight_shape = (self.channels, self.num_output // self.group, *self.kernel)
        else:
            weight_shape = (self.num_output, self.channels // self.group, *self.kernel)
        self.bias_term = bool(cp.bias_term)
        self.blobs = [fillers.fill(self.new_blob(weight_shape), cp.weight_filler)]
        if self.bias_term:
            self.blobs.append(fillers.fill(self.new_blob((self.num_output,)), cp.bias_filler))
        self.param_propagate_down = [True] * len(self.blobs)
        self._cols: dict[int, object] = {}

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        raise NotImplementedError

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        if x.num_axes != self.axis + 1 + self.num_spatial:
            raise self.error(
                f"the bottom's number of axes may not change after set-up. Received: shape {x.shape}, "
                f"set up with {self.axis + 1 + self.num_spatial} axes",
                ShapeMismatchError,
            )
        if x.shape[self.axis] != self.channels:
            raise self.error(
                f"input channels changed after set-up. Received: {x.shape[self.axis]}. Valid: {self.channels}",
                ShapeMismatchError,
            )
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != x.shape:
                raise self.error(
                    f"all bottoms need the same shape. Received: bottom 0 {x.shape}, bottom {i} {b.shape}",
                    ShapeMismatchError,
                )
        self.in_spatial = tuple(x.shape[self.axis + 1:])
        self.out_spatial = self.output_spatial(self.in_spatial)
        self.num = x.count_range(0, self.axis)
        for t in top:
            t.reshape((*x.shape[: self.axis], self.num_output, *self.out_spatial))

    def _bias_view(self, ndim_spatial: int):
        return self.blobs[1].data.reshape((1, self.num_output) + (1,) * ndim_spatial)


@register_layer("Convolution")
class ConvolutionLayer(_ConvolutionBase):
    """Caffe type ``Convolution``: N-D grouped, strided, padded, dilated cross-correlation.

    ``y[n, o, p] = b[o] + sum_{c in group(o), k} W[o, c, k] * x_pad[n, c, p*stride + k*dilation]``,
    output size ``(in + 2*pad - dilation*(k-1) - 1) // stride + 1`` per spatial axis.
    Several bottoms are convolved with the same weights (bottom i -> top i).

    Blobs: ``W`` of shape ``(C_out, C_in/group, *kernel)``, optional bias ``(C_out,)``.

    Bottom: ``(*lead, C_in, *spatial)`` with ``C_in`` at ``convolution_param.axis`` (default 1).
    Top: ``(*lead, C_out, *out_spatial)``.
    """

    def output_spatial(self, spatial):
        return conv_output_shape(self, spatial, self.kernel, self.pad, self.stride, self.dilation)

    def _columns(self, x):
        """Column matrix ``(group, C_in/group * K, P*n)`` of samples ``x`` of shape ``(n, C_in, *S)``."""
        col = im2col(to_batch_last(x, self.pad), self.kernel, self.stride, self.dilation, self.out_spatial)
        return col.reshape(self.group, self.channels // self.group * math.prod(self.kernel), -1)

    def _col_bytes(self, itemsize: int) -> int:
        return self.channels * math.prod(self.kernel) * math.prod(self.out_spatial) * itemsize

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        xp = backend.array_module(bottom[0].data)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, o // g, -1)
        nsp = len(self.out_spatial)
        for i, (b, t) in enumerate(zip(bottom, top)):
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            y = xp.empty((self.num, o, *self.out_spatial), dtype=x.dtype)
            chunks = _batch_chunks(self.num, self._col_bytes(x.itemsize))
            self._cols[i] = None
            for sl in chunks:
                col = self._columns(x[sl])
                yt = xp.matmul(w, col).reshape(o, *self.out_spatial, sl.stop - sl.start)
                if self.bias_term:
                    xp.add(xp.moveaxis(yt, -1, 0), self._bias_view(nsp), out=y[sl])
                else:
                    y[sl] = xp.moveaxis(yt, -1, 0)
                if len(chunks) == 1 and col.nbytes <= COL_CACHE_BYTES:
                    self._cols[i] = col
            t.data = y.reshape(t.shape)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        xp = backend.array_module(top[0].diff)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, o // g, -1)
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        dw = db = None
        for i, (b, t) in enumerate(zip(bottom, top)):
            if not (want_w or want_b or propagate_down[i]):
                continue
            dy = t.diff.reshape(self.num, o, *self.out_spatial)
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            dx = xp.empty(x.shape, dtype=x.dtype) if propagate_down[i] else None
            for sl in _batch_chunks(self.num, self._col_bytes(x.itemsize)):
                dyt = xp.ascontiguousarray(xp.moveaxis(dy[sl], 0, -1)).reshape(g, o // g, -1)
                if want_b:
                    part = dyt.reshape(o, -1).sum(axis=1)
                    db = part if db is None else db + part
                if want_w:
                    col = self._cols.get(i)
                    if col is None or col.shape[-1] != dyt.shape[-1]:
                        col = self._columns(x[sl])
                    part = xp.matmul(dyt, col.transpose(0, 2, 1))
                    dw = part if dw is None else dw + part
                if propagate_down[i]:
                    n = sl.stop - sl.start
                    dcol = xp.matmul(w.transpose(0, 2, 1), dyt)
                    dcol = dcol.reshape(self.channels, *self.kernel, *self.out_spatial, n)
                    padded = (self.channels, *(s + 2 * p for s, p in zip(self.in_spatial, self.pad)), n)
                    dxt = col2im(dcol, padded, self.kernel, self.stride, self.dilation, self.out_spatial)
                    dx[sl] = from_batch_last(dxt, self.pad, self.in_spatial)
            if propagate_down[i]:
                b.diff = dx.reshape(b.shape)
        self._cols = {}
        if dw is not None:
            self.blobs[0].diff += dw.reshape(self.blobs[0].shape)
        if db is not None:
            self.blobs[1].diff += db


@register_layer("Deconvolution")
class DeconvolutionLayer(_ConvolutionBase):
    """Caffe type ``Deconvolution``: the transposed convolution (gradient of Convolution w.r.t. its input).

    Each input pixel scatters ``x[n, c, p] * W[c, o, k]`` to output position ``p*stride + k*dilation - pad``;
    output size ``stride*(in - 1) + dilation*(k - 1) + 1 - 2*pad`` per spatial axis.

    Blobs: ``W`` of shape ``(C_in, C_out/group, *kernel)``, optional bias ``(C_out,)``.

    Bottom: ``(*lead, C_in, *spatial)``. Top: ``(*lead, C_out, *out_spatial)``.
    """

    transposed = True

    def output_spatial(self, spatial):
        out = tuple(
            st * (s - 1) + _extent(k, d) - 2 * p
            for s, k, p, st, d in zip(spatial, self.kernel, self.pad, self.stride, self.dilation)
        )
        if any(v <= 0 for v in out):
            raise self.error(
                f"the padding removes the whole output. Received: input spatial shape {tuple(spatial)}, "
                f"pad {list(self.pad)}, output {out}",
                ShapeMismatchError,
            )
        return out

    def _grouped_input(self, x):
        """Samples ``(n, C_in, *S)`` as ``(group, C_in/group, P*n)``."""
        return to_batch_last(x, (0,) * self.num_spatial).reshape(self.group, self.channels // self.group, -1)

    def _col_bytes(self, itemsize: int) -> int:
        return self.num_output * math.prod(self.kernel) * math.prod(self.in_spatial) * itemsize

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        xp = backend.array_module(bottom[0].data)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, self.channels // g, -1)
        padded = (s + 2 * p for s, p in zip(self.out_spatial, self.pad))
        padded = tuple(padded)
        for b, t in zip(bottom, top):
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            y = xp.empty((self.num, o, *self.out_spatial), dtype=x.dtype)
            for sl in _batch_chunks(self.num, self._col_bytes(x.itemsize)):
                n = sl.stop - sl.start
                col = xp.matmul(w.transpose(0, 2, 1), self._grouped_input(x[sl]))
                col = col.reshape(o, *self.kernel, *self.in_spatial, n)
                yt = col2im(col, (o, *padded, n), self.kernel, self.stride, self.dilation, self.in_spatial)
                inner = yt[(slice(None), *(slice(p, p + s) for s, p in zip(self.out_spatial, self.pad)), slice(None))]
                if self.bias_term:
                    xp.add(xp.moveaxis(inner, -1, 0), self._bias_view(self.num_spatial), out=y[sl])
                else:
                    y[sl] = xp.moveaxis(inner, -1, 0)
            t.data = y.reshape(t.shape)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        xp = backend.array_module(top[0].diff)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, self.channels // g, -1)
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        dw = db = None
        for i, (b, t) in enumerate(zip(bottom, top)):
            if not (want_w or want_b or propagate_down[i]):
                continue
            dy = t.diff.reshape(self.num, o, *self.out_spatial)
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            dx = xp.empty(x.shape, dtype=x.dtype) if propagate_down[i] else None
            for sl in _batch_chunks(self.num, self._col_bytes(x.itemsize)):
                dyt = to_batch_last(dy[sl], self.pad)
                if want_b:
                    part = dyt.reshape(o, -1).sum(axis=1)
                    db = part if db is None else db + part
                if not (want_w or propagate_down[i]):
                    continue
                col = im2col(dyt, self.kernel, self.stride, self.dilation, self.in_spatial).reshape(g, o // g * math.prod(
                    self.kernel), -1)
                if want_w:
                    part = xp.matmul(self._grouped_input(x[sl]), col.transpose(0, 2, 1))
                    dw = part if dw is None else dw + part
                if propagate_down[i]:
                    dxt = xp.matmul(w, col).reshape(self.channels, *self.in_spatial, sl.stop - sl.start)
                    dx[sl] = xp.moveaxis(dxt, -1, 0)
            if propagate_down[i]:
                b.diff = dx.reshape(b.shape)
        if dw is not None:
            self.blobs[0].diff += dw.reshape(self.blobs[0].shape)
        if db is not None:
            self.blobs[1].diff += db


@register_layer("Im2col")
class Im2colLayer(Layer):
    """Caffe type ``Im2col``: every kernel-sized patch as a column (the first step of Convolution).

    ``top[n, (c, k...), o...] = x_pad[n, c, o*stride + k*dilation]`` with rows ordered channel-major
    then kernel offsets, as in Caffe's column buffer. Geometry comes from ``convolution_param``.

    Bottom: ``(*lead, C, *spatial)``. Top: ``(*lead, C * prod(kernel), *out_spatial)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        cp = self.param.convolution_param
        try:
            self.axis = bottom[0].canonical_axis(cp.axis)
        except InvalidParameterError as err:
            raise self.error(f"convolution_param.axis is out of range. Received: {cp.axis}. {err}") from None
        self.num_spatial = bottom[0].num_axes - self.axis - 1
        if self.num_spatial < 1:
            raise self.error(
                f"needs at least one spatial axis after the channel axis {self.axis}. Received: bottom shape "
                f"{bottom[0].shape}"
            )
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, self.num_spatial)

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        if x.num_axes != self.axis + 1 + self.num_spatial:
            raise self.error(
                f"the bottom's number of axes may not change after set-up. Received: shape {x.shape}",
                ShapeMismatchError,
            )
        self.channels = x.shape[self.axis]
        self.in_spatial = tuple(x.shape[self.axis + 1:])
        self.out_spatial = conv_output_shape(self, self.in_spatial, self.kernel, self.pad, self.stride, self.dilation)
        self.num = x.count_range(0, self.axis)
        top[0].reshape((*x.shape[: self.axis], self.channels * math.prod(self.kernel), *self.out_spatial))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        xp = backend.array_module(bottom[0].data)
        x = bottom[0].data.reshape(self.num, self.channels, *self.in_spatial)
        col = im2col(to_batch_last(x, self.pad), self.kernel, self.stride, self.dilation, self.out_spatial)
        top[0].data = xp.ascontiguousarray(xp.moveaxis(col, -1, 0)).reshape(top[0].shape)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        xp = backend.array_module(top[0].diff)
        dcol = top[0].diff.reshape(self.num, self.channels, *self.kernel, *self.out_spatial)
        padded = (self.channels, *(s + 2 * p for s, p in zip(self.in_spatial, self.pad)), self.num)
        dxt = col2im(xp.moveaxis(dcol, 0, -1), padded, self.kernel, self.stride, self.dilation, self.out_spatial)
        bottom[0].diff = from_batch_last(dxt, self.pad, self.in_spatial).reshape(bottom[0].shape)


# --- pooling ---------------------------------------------------------------------------------------
def pooled_shape(in_hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
                 ceil_mode: bool = True) -> tuple[int, int]:
    """Caffe's pooled (height, width): rounded up by default, and with padding, a last window that
    would start inside the bottom/right padding is dropped (on both axes once any pad is nonzero)."""
    out = []
    for s, k, st, p in zip(in_hw, kernel, stride, pad):
        span = s + 2 * p - k
        out.append((-(-span // st) if ceil_mode else span // st) + 1)
    if any(pad):
        out = [o - 1 if (o - 1) * st >= s + p else o for o, st, s, p in zip(out, stride, in_hw, pad)]
    return tuple(out)


class PoolWindows:
    """2-D pooling windows over ``(N, C, H, W)`` with Caffe's geometry, and the pooling kernels.

    Every method walks the ``kh*kw`` kernel offsets, each a strided view of the whole (padded) batch.
    The window argmax is kept as the kernel-offset index ``kh_i * kw + kw_i`` of the chosen element.
    """

    def __init__(self, in_hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
                 ceil_mode: bool = True):
        self.in_hw = tuple(int(v) for v in in_hw)
        self.kernel = tuple(int(v) for v in kernel)
        self.stride = tuple(int(v) for v in stride)
        self.pad = tuple(int(v) for v in pad)
        self.out_hw = pooled_shape(self.in_hw, self.kernel, self.stride, self.pad, ceil_mode)
        # Rows/cols the windows touch: the top/left padding, the image, and any bottom/right overhang.
        self.padded_hw = tuple(
            max(p + s, (o - 1) * st + k) for s, k, st, p, o in zip(self.in_hw, self.kernel, self.stride, self.pad,
                                                                   self.out_hw)
        )
        self.needs_pad = any(self.pad) or self.padded_hw != self.in_hw
        self.overlap = any(st < k for st, k in zip(self.stride, self.kernel))
        self.is_global = self.out_hw == (1, 1) and self.kernel == self.in_hw and not any(self.pad)
        size = self.kernel[0] * self.kernel[1]
        self.idx_dtype = numpy.int8 if size < 128 else numpy.int16 if size < 2**15 else numpy.int32

    # layout helpers ---------------------------------------------------------------------------
    def pad_input(self, x, fill):
        if not self.needs_pad:
            return x
        xp = backend.array_module(x)
        out = xp.full((*x.shape[:2], *self.padded_hw), fill, dtype=x.dtype)
        out[:, :, self.pad[0]:self.pad[0] + self.in_hw[0], self.pad[1]:self.pad[1] + self.in_hw[1]] = x
        return out

    def unpad(self, a):
        if not self.needs_pad:
            return a
        xp = backend.array_module(a)
        return xp.ascontiguousarray(
            a[:, :, self.pad[0]:self.pad[0] + self.in_hw[0], self.pad[1]:self.pad[1] + self.in_hw[1]]
        )

    def views(self, a) -> Iterator[tuple[int, object]]:
        """``(offset index, view)`` for every kernel offset, in Caffe's scan order (row-major)."""
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, a[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def _scatter(self, shape, dtype, xp, parts) -> object:
        """Sum per-offset window contributions ``parts(k, view)`` back onto the input grid."""
        acc = xp.zeros((*shape[:2], *self.padded_hw), dtype=dtype)
        for k, view in self.views(acc):
            parts(k, view)
        return self.unpad(acc)

    def divisors(self, xp, dtype):
        """Caffe's AVE divisor per output: the window clipped to the padded image (padding counts)."""
        sizes = []
        for s, k, st, p, o in zip(self.in_hw, self.kernel, self.stride, self.pad, self.out_hw):
            start = numpy.arange(o) * st - p
            sizes.append(numpy.minimum(start + k, s + p) - start)
        return xp.asarray(numpy.outer(sizes[0], sizes[1]).astype(dtype))

    def mask(self, idx, dtype):
        """Argmax as Caffe's mask: flat index ``h * W + w`` inside the channel plane, as floats."""
        xp = backend.array_module(idx)
        kw = self.kernel[1]
        idx = idx.astype(numpy.int64)
        h = (xp.arange(self.out_hw[0]) * self.stride[0] - self.pad[0])[:, None] + idx // kw
        w = (xp.arange(self.out_hw[1]) * self.stride[1] - self.pad[1])[None, :] + idx % kw
        return (h * self.in_hw[1] + w).astype(dtype)

    # MAX (and the routing shared with STOCHASTIC) -----------------------------------------------
    def max_forward(self, x):
        """Window maxima and the first argmax in scan order (Caffe's strict ``>`` scan)."""
        xp = backend.array_module(x)
        if self.is_global:
            flat = x.reshape(*x.shape[:2], -1)
            idx = xp.argmax(flat, axis=-1)[..., None]
            y = xp.take_along_axis(flat, idx, axis=-1)
            return y.reshape(*x.shape[:2], 1, 1), idx.reshape(*x.shape[:2], 1, 1)
        # Padding holds Caffe's starting value -FLT_MAX, so it never wins against image values.
        views = self.views(self.pad_input(x, numpy.finfo(x.dtype).min))
        _, first = next(views)
        y = first.copy()
        idx = xp.zeros(y.shape, dtype=self.idx_dtype)
        for k, v in views:
            better = v > y
            xp.copyto(y, v, where=better)
            xp.copyto(idx, k, where=better)
        return y, idx

    def route_backward(self, dy, idx, x_shape):
        """Gradient of picking one element per window (MAX, STOCHASTIC in TRAIN)."""
        xp = backend.array_module(dy)
        if self.is_global:
            n, c = x_shape[:2]
            hit = xp.arange(self.in_hw[0] * self.in_hw[1]) == idx.reshape(n, c, 1)
            return (hit * dy.reshape(n, c, 1)).reshape(x_shape)

        def parts(k, view):
            if self.overlap:
                view += dy * (idx == k)
            else:
                xp.copyto(view, dy, where=idx == k)

        return self._scatter(x_shape, dy.dtype, xp, parts)

    # AVE -------------------------------------------------------------------------------------------
    def ave_forward(self, x):
        xp = backend.array_module(x)
        if self.is_global:
            return x.reshape(*x.shape[:2], -1).sum(axis=-1).reshape(*x.shape[:2], 1, 1) / x.dtype.type(
                self.in_hw[0] * self.in_hw[1])
        views = self.views(self.pad_input(x, 0))
        _, first = next(views)
        y = first.copy()
        for _, v in views:
            y += v
        y /= self.divisors(xp, x.dtype)
        return y

    def ave_backward(self, dy, x_shape):
        xp = backend.array_module(dy)
        if self.is_global:
            g = dy / dy.dtype.type(self.in_hw[0] * self.in_hw[1])
            return xp.ascontiguousarray(xp.broadcast_to(g, x_shape))
        g = dy / self.divisors(xp, dy.dtype)

        def parts(k, view):
            if self.overlap:
                view += g
            else:
                view[...] = g

        return self._scatter(x_shape, dy.dtype, xp, parts)

    # STOCHASTIC --------------------------------------------------------------------------------------
    def stochastic_train(self, x, u):
        """Pick the first element whose running window sum reaches ``u * window sum`` (u uniform in [0, 1))."""
        xp = backend.array_module(x)
        stack = xp.stack([v for _, v in self.views(self.pad_input(x, 0))])
        running = xp.cumsum(stack, axis=0)
        idx = xp.argmax(running >= u * running[-1], axis=0)
        y = xp.take_along_axis(stack, idx[None], axis=0)[0]
        return y, idx.astype(self.idx_dtype)

    def stochastic_test(self, x):
        """Probability-weighted window average ``sum(x^2) / sum(x)`` (0 where the sum is not positive)."""
        xp = backend.array_module(x)
        s1 = s2 = None
        for _, v in self.views(self.pad_input(x, 0)):
            s1 = v.copy() if s1 is None else s1 + v
            s2 = v * v if s2 is None else s2 + v * v
        positive = s1 > 0
        return xp.where(positive, s2 / xp.where(positive, s1, 1), 0).astype(x.dtype, copy=False), s1

    def stochastic_test_backward(self, dy, x, y, s1):
        """d(sum x^2 / sum x)/dx_i = (2 x_i - y) / sum x inside each window."""
        xp = backend.array_module(dy)
        g = xp.where(s1 > 0, dy / xp.where(s1 > 0, s1, 1), 0)
        xviews = dict(self.views(self.pad_input(x, 0)))

        def parts(k, view):
            view += (2 * xviews[k] - y) * g

        return self._scatter(x.shape, dy.dtype, xp, parts)


def _pool_error_checks(layer: Layer, method: int, kernel, pad) -> None:
    if any(pad):
        if method not in (_MAX, _AVE):
            raise layer.error(
                f"padding is implemented only for MAX and AVE pooling. Received: pool {_POOL_NAMES.get(method)} "
                f"with pad {list(pad)}"
            )
        if any(p >= k for p, k in zip(pad, kernel)):
            raise layer.error(f"pad must be smaller than the kernel. Received: pad {list(pad)}, kernel {list(kernel)}")


@register_layer("Pooling")
class PoolingLayer(Layer):
    """Caffe type ``Pooling``: MAX, AVE or STOCHASTIC pooling over 2-D windows.

    Output size ``ceil((H + 2*pad - k) / stride) + 1`` (``floor`` with ``round_mode: FLOOR``); with
    padding, a last window that would start inside the padding is dropped. MAX takes the first maximum
    in row-major scan order; AVE divides by the window clipped to ``H + pad`` (padding counts);
    STOCHASTIC samples an element with probability proportional to its value in TRAIN and returns
    ``sum(x^2) / sum(x)`` in TEST.

    Bottom: ``(N, C, H, W)``. Tops: ``(N, C, PH, PW)``; for MAX an optional second top with the argmax
    as a float flat index ``h * W + w`` within each channel plane.
    """

    exact_num_bottom = 1
    min_num_top = 1
    max_num_top = 2

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        pp = self.param.pooling_param
        self.method = pp.pool
        if self.method not in _POOL_NAMES:
            raise self.error(f"unknown pool method. Received: {self.method}. Valid: MAX, AVE, STOCHASTIC")
        if len(top) == 2 and self.method != _MAX:
            raise self.error(
                f"only MAX pooling has a second (mask) top. Received: 2 tops with pool {_POOL_NAMES[self.method]}",
                BlobCountError,
            )
        has = pp.HasField
        self.global_pooling = pp.global_pooling
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error(
                    "with global_pooling the kernel size comes from the input and cannot be given. Received: "
                    f"kernel_size={pp.kernel_size}, kernel_h={pp.kernel_h}, kernel_w={pp.kernel_w}"
                )
            kernel = None
        else:
            if has("kernel_size") == (has("kernel_h") and has("kernel_w")) or not (
                    has("kernel_size") or (has("kernel_h") and has("kernel_w"))):
                raise self.error(
                    "give the kernel as kernel_size or as both kernel_h and kernel_w. Received: "
                    + ", ".join(f"{f}={getattr(pp, f)}" for f in ("kernel_size", "kernel_h", "kernel_w") if has(f))
                    if any(has(f) for f in ("kernel_size", "kernel_h", "kernel_w"))
                    else "give the kernel as kernel_size or as both kernel_h and kernel_w. Received: none"
                )
            kernel = (pp.kernel_size,) * 2 if has("kernel_size") else (pp.kernel_h, pp.kernel_w)
            if min(kernel) <= 0:
                raise self.error(f"kernel dimensions must be positive. Received: {list(kernel)}")
        for name in ("pad", "stride"):
            if not ((not has(name) and has(f"{name}_h") and has(f"{name}_w"))
                    or (not has(f"{name}_h") and not has(f"{name}_w"))):
                raise self.error(
                    f"give {name} or both {name}_h and {name}_w. Received: {name}={getattr(pp, name)}, "
                    f"{name}_h={getattr(pp, name + '_h')}, {name}_w={getattr(pp, name + '_w')}"
                )
        self.pad = (pp.pad_h, pp.pad_w) if has("pad_h") else (pp.pad, pp.pad)
        self.stride = (pp.stride_h, pp.stride_w) if has("stride_h") else (pp.stride, pp.stride)
        if min(self.stride) <= 0:
            raise self.error(f"stride must be positive. Received: {list(self.stride)}")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.error(
                f"global pooling takes only pad 0 and stride 1. Received: pad {list(self.pad)}, "
                f"stride {list(self.stride)}"
            )
        if kernel is not None:
            _pool_error_checks(self, self.method, kernel, self.pad)
        self.kernel = kernel
        self.ceil_mode = pp.round_mode == pb.PoolingParameter.CEIL
        self.windows: PoolWindows | None = None

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        if x.num_axes != 4:
            raise self.error(
                f"input must have 4 axes (num, channels, height, width). Received: shape {x.shape}",
                ShapeMismatchError,
            )
        in_hw = x.shape[2:]
        if self.windows is None or self.windows.in_hw != in_hw:
            kernel = in_hw if self.global_pooling else self.kernel
            if self.global_pooling:
                _pool_error_checks(self, self.method, kernel, self.pad)
            windows = PoolWindows(in_hw, kernel, self.stride, self.pad, self.ceil_mode)
            if min(windows.out_hw) <= 0 or min(in_hw) <= 0:
                raise self.error(
                    f"the pooling window does not fit the input. Received: input {in_hw}, kernel {list(kernel)}, "
                    f"pad {list(self.pad)}, stride {list(self.stride)} -> output {windows.out_hw}",
                    ShapeMismatchError,
                )
            self.windows = windows
        for t in top:
            t.reshape((*x.shape[:2], *self.windows.out_hw))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0].data
        xp = backend.array_module(x)
        win = self.windows
        self._x_shape = x.shape
        if self.method == _MAX:
            y, self._idx = win.max_forward(x)
            if len(top) > 1:
                top[1].data = win.mask(self._idx, x.dtype)
        elif self.method == _AVE:
            y = win.ave_forward(x)
        elif self.phase == pb.TRAIN:
            u = backend.random_uniform(xp, (*x.shape[:2], *win.out_hw), 0.0, 1.0, x.dtype)
            y, self._idx = win.stochastic_train(x, u)
        else:
            y, self._s1 = win.stochastic_test(x)
            self._x = x.copy()
        top[0].data = xp.ascontiguousarray(y)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff
        win = self.windows
        if self.method == _AVE:
            dx = win.ave_backward(dy, self._x_shape)
        elif self.method == _MAX or self.phase == pb.TRAIN:
            dx = win.route_backward(dy, self._idx, self._x_shape)
        else:
            dx = win.stochastic_test_backward(dy, self._x, top[0].data, self._s1)
        bottom[0].diff = dx
