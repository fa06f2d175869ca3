"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, Crop and LRN.

Convolution-like layers share one im2col/col2im pair. The column matrix holds
the whole batch, so a convolution is one GEMM ``(C_out, C_in*k) x (C_in*k,
columns)`` (batched over groups only). Its columns are ordered either
sample-major (``(N, *out)``) or, when output rows are short, pixel-major with
the sample last (``(*out, N)``): then the patch gather and the col2im adds move
runs of ``out_width * N`` contiguous values instead of ``out_width``.

Pooling is separable: a window maximum (or sum) is taken along the width, then
along the height, each a loop over the kernel offsets of one axis, with strided
views of the whole batch. The argmax is the first maximum in row-major scan
order, as in Caffe.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy

from .. import backend
from ..blob import Blob
from ..errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from ..proto import netdef_pb2 as pb
from .base import Layer, register_layer

#: Largest column buffer built at once; bigger batches are convolved in chunks of samples.
COL_CHUNK_BYTES = 256 * 2**20
#: In TRAIN nets, column buffers up to this size are kept from forward for the weight gradient.
COL_CACHE_BYTES = 64 * 2**20
#: Output rows shorter than this use the pixel-major, sample-last column order.
SHORT_ROW = 16

_MAX, _AVE, _STOCHASTIC = pb.PoolingParameter.MAX, pb.PoolingParameter.AVE, pb.PoolingParameter.STOCHASTIC
_POOL_NAMES = {_MAX: "MAX", _AVE: "AVE", _STOCHASTIC: "STOCHASTIC"}


# --- array helpers ----------------------------------------------------------------------------
def _transpose2d(a):
    """C-contiguous transpose of a 2-D array.

    NumPy copies a tall, narrow transpose element by element with cache-hostile reads; in row
    blocks that fit the cache it is several times faster. CuPy's kernel needs no help.
    """
    xp = backend.array_module(a)
    rows, cols = a.shape
    if xp is not numpy or rows <= 2048 or cols <= 1:
        return xp.ascontiguousarray(a.T)
    out = numpy.empty((cols, rows), dtype=a.dtype)
    for i in range(0, rows, 1024):
        out[:, i : i + 1024] = a[i : i + 1024].T
    return out


def _interior(pad: Sequence[int], spatial: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(p, p + s) for p, s in zip(pad, spatial, strict=True))


# --- im2col / col2im ----------------------------------------------------------------------------
# A "source" is the padded input of im2col: (N, C, *Sp) sample-major, or (C, *Sp, N) sample-last.
def to_source(x, pad: Sequence[int], batch_last: bool):
    """``(N, C, *S)`` -> zero-padded im2col source in the chosen order (one copy at most)."""
    xp = backend.array_module(x)
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    if batch_last:
        x = xp.moveaxis(x, 0, -1)
        if not any(pad):
            return xp.ascontiguousarray(x)
        out = xp.zeros((c, *(s + 2 * p for s, p in zip(spatial, pad, strict=True)), n), dtype=x.dtype)
        out[(slice(None), *_interior(pad, spatial), slice(None))] = x
        return out
    if not any(pad):
        return x
    out = xp.zeros((n, c, *(s + 2 * p for s, p in zip(spatial, pad, strict=True))), dtype=x.dtype)
    out[(slice(None), slice(None), *_interior(pad, spatial))] = x
    return out


def from_source(src, pad: Sequence[int], spatial: Sequence[int], batch_last: bool):
    """Inverse of :func:`to_source`: C-contiguous ``(N, C, *S)`` without the padding."""
    xp = backend.array_module(src)
    if batch_last:
        n = src.shape[-1]
        src = _transpose2d(src.reshape(-1, n)).reshape(n, *src.shape[:-1])
    if not any(pad):
        return xp.ascontiguousarray(src)
    return xp.ascontiguousarray(src[(slice(None), slice(None), *_interior(pad, spatial))])


def im2col(
    src,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    out_shape: Sequence[int],
    batch_last: bool,
):
    """Every kernel-sized patch of an im2col source, as one C-contiguous array.

    Returns ``(C, *kernel, *columns)`` with columns ``(N, *out_shape)``, or ``(*out_shape, N)`` when
    ``batch_last``. Entry ``[c, k..., o...]`` is the source at ``o*stride + k*dilation``; rows
    ``(c, k...)`` are in Caffe's column-buffer order.
    """
    xp = backend.array_module(src)
    nd = len(kernel)
    st = src.strides
    if batch_last:
        c_stride, n_stride, sp = st[0], st[-1], st[1:-1]
    else:
        c_stride, n_stride, sp = st[1], st[0], st[2:]
    taps = tuple(sp[i] * dilation[i] for i in range(nd))
    steps = tuple(sp[i] * stride[i] for i in range(nd))
    n = src.shape[-1] if batch_last else src.shape[0]
    c = src.shape[0] if batch_last else src.shape[1]
    if batch_last:
        shape, strides = (c, *kernel, *out_shape, n), (c_stride, *taps, *steps, n_stride)
    else:
        shape, strides = (c, *kernel, n, *out_shape), (c_stride, *taps, n_stride, *steps)
    return xp.ascontiguousarray(xp.lib.stride_tricks.as_strided(src, shape, strides))


def col2im(
    col,
    src_shape: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    out_shape: Sequence[int],
    batch_last: bool,
):
    """Adjoint of :func:`im2col`: sum patches ``(C, *kernel, *columns)`` into a source-shaped array.

    One strided add per kernel offset (no scatter-add), so overlapping windows accumulate.
    """
    xp = backend.array_module(col)
    src = xp.zeros(tuple(src_shape), dtype=col.dtype)
    # Index the destination as (C, [N,] *Sp [, N]) to line up with the patch array.
    dst = src if batch_last else src.swapaxes(0, 1)
    lead = (slice(None),) if batch_last else (slice(None), slice(None))
    tail = (slice(None),) if batch_last else ()
    for offs in itertools.product(*(range(k) for k in kernel)):
        region = tuple(
            slice(o * d, o * d + s * (m - 1) + 1, s)
            for o, d, s, m in zip(offs, dilation, stride, out_shape, strict=True)
        )
        dst[(*lead, *region, *tail)] += col[(slice(None), *offs)]
    return src


def batch_to_columns(y, batch_last: bool):
    """``(N, O, *P)`` -> C-contiguous ``(O, columns)`` in the column order of :func:`im2col`."""
    xp = backend.array_module(y)
    n, o = y.shape[:2]
    if batch_last:
        return xp.ascontiguousarray(y.reshape(n, -1).T).reshape(o, -1)
    return xp.ascontiguousarray(y.reshape(n, o, -1).swapaxes(0, 1)).reshape(o, -1)


def columns_to_batch(yc, n: int, out_shape: Sequence[int], batch_last: bool, bias=None):
    """``(O, columns)`` -> C-contiguous ``(N, O, *out_shape)``, adding ``bias[o]`` when given."""
    xp = backend.array_module(yc)
    o = yc.shape[0]
    if batch_last:
        y = _transpose2d(yc.reshape(-1, n)).reshape(n, o, *out_shape)
        if bias is not None:
            y += bias.reshape((1, o) + (1,) * len(out_shape))
        return y
    moved = yc.reshape(o, n, -1).swapaxes(0, 1)
    if bias is None:
        return xp.ascontiguousarray(moved).reshape(n, o, *out_shape)
    y = xp.empty((n, o, moved.shape[-1]), dtype=yc.dtype)
    xp.add(moved, bias.reshape(1, o, 1), out=y)
    return y.reshape(n, o, *out_shape)


def use_batch_last(n: int, out_shape: Sequence[int]) -> bool:
    """Pick the sample-last column order when output rows are short and there is a batch."""
    return n > 1 and out_shape[-1] < SHORT_ROW


def matmul_nt(a, b):
    """``a @ b^T`` for stacks ``a`` (G, M, K) and ``b`` (G, N, K), as used for weight gradients.

    When the product is small and K is long (a first layer: few filters, many pixels), OpenBLAS
    streams both operands from memory; summing products of K-blocks that stay in cache is faster.
    """
    xp = backend.array_module(a)
    k = a.shape[-1]
    if xp is not numpy or k < 8192 or a.shape[-2] * b.shape[-2] > 4096:
        return xp.matmul(a, b.swapaxes(-1, -2))
    out = xp.matmul(a[..., :1024], b[..., :1024].swapaxes(-1, -2))
    for i in range(1024, k, 1024):
        out += xp.matmul(a[..., i : i + 1024], b[..., i : i + 1024].swapaxes(-1, -2))
    return out


def _batch_chunks(n: int, bytes_per_sample: int) -> list[slice]:
    """Split ``n`` samples so that one chunk's column buffer stays under COL_CHUNK_BYTES."""
    per = max(1, COL_CHUNK_BYTES // max(bytes_per_sample, 1))
    return [slice(i, min(i + per, n)) for i in range(0, n, per)]


# --- convolution geometry ---------------------------------------------------------------------------
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
                raise layer.error(
                    f"{h_name} and {w_name} must be given together. Received: only "
                    f"{h_name if cp.HasField(h_name) else w_name}"
                )
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
    for s, k, p, st, d in zip(spatial, kernel, pad, stride, dilation, strict=True):
        if s + 2 * p < _extent(k, d):
            raise layer.error(
                f"the kernel (extent {_extent(k, d)}) is larger than the padded input ({s} + 2*{p}). "
                f"Received: input spatial shape {tuple(spatial)}",
                ShapeMismatchError,
            )
        out.append((s + 2 * p - _extent(k, d)) // st + 1)
    return tuple(out)


def _channel_axis(layer: Layer, bottom: Blob, axis: int) -> tuple[int, int]:
    """Canonical channel axis and number of spatial axes after it (at least one)."""
    try:
        axis = bottom.canonical_axis(axis)
    except InvalidParameterError as err:
        raise layer.error(f"convolution_param.axis is out of range. Received: {axis}. {err}") from None
    num_spatial = bottom.num_axes - axis - 1
    if num_spatial < 1:
        raise layer.error(
            f"needs at least one spatial axis after the channel axis {axis}. Received: bottom shape {bottom.shape}"
        )
    return axis, num_spatial


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
        self.axis, self.num_spatial = _channel_axis(self, x, cp.axis)
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
        self.blobs = [self.filled_blob(weight_shape, cp.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.filled_blob((self.num_output,), cp.bias_filler))
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
        self.in_spatial = tuple(x.shape[self.axis + 1 :])
        self.out_spatial = self.output_spatial(self.in_spatial)
        self.num = x.count_range(0, self.axis)
        for t in top:
            t.reshape((*x.shape[: self.axis], self.num_output, *self.out_spatial))

    def _param_grads_wanted(self) -> tuple[bool, bool]:
        want_w = bool(self.param_propagate_down[0])
        want_b = self.bias_term and bool(self.param_propagate_down[1])
        return want_w, want_b

    def _add_param_grads(self, dw, db) -> None:
        if dw is not None:
            self.blobs[0].diff += dw.reshape(self.blobs[0].shape)
        if db is not None:
            self.blobs[1].diff += db


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

    def _columns(self, x, batch_last: bool):
        """Column matrix ``(group, C_in/group * K, columns)`` of samples ``x`` of shape ``(n, C_in, *S)``."""
        src = to_source(x, self.pad, batch_last)
        col = im2col(src, self.kernel, self.stride, self.dilation, self.out_spatial, batch_last)
        return col.reshape(self.group, self.channels // self.group * math.prod(self.kernel), -1)

    def _col_bytes(self, itemsize: int) -> int:
        return self.channels * math.prod(self.kernel) * math.prod(self.out_spatial) * itemsize

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        xp = backend.array_module(bottom[0].data)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, o // g, -1)
        bias = self.blobs[1].data if self.bias_term else None
        for i, (b, t) in enumerate(zip(bottom, top, strict=True)):
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            chunks = _batch_chunks(self.num, self._col_bytes(x.itemsize))
            y = xp.empty((self.num, o, *self.out_spatial), dtype=x.dtype) if len(chunks) != 1 else None
            self._cols[i] = None
            for sl in chunks:
                n = sl.stop - sl.start
                batch_last = use_batch_last(n, self.out_spatial)
                col = self._columns(x[sl], batch_last)
                part = columns_to_batch(xp.matmul(w, col).reshape(o, -1), n, self.out_spatial, batch_last, bias)
                if y is None:
                    y = part
                else:
                    y[sl] = part
                if len(chunks) == 1 and col.nbytes <= COL_CACHE_BYTES and self.phase == pb.TRAIN:
                    self._cols[i] = col
            t.data = y.reshape(t.shape)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        xp = backend.array_module(top[0].diff)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, o // g, -1)
        want_w, want_b = self._param_grads_wanted()
        dw = db = None
        for i, (b, t) in enumerate(zip(bottom, top, strict=True)):
            if not (want_w or want_b or propagate_down[i]):
                continue
            dy = t.diff.reshape(self.num, o, *self.out_spatial)
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            chunks = _batch_chunks(self.num, self._col_bytes(x.itemsize))
            dx = xp.empty(x.shape, dtype=x.dtype) if propagate_down[i] and len(chunks) != 1 else None
            for sl in chunks:
                n = sl.stop - sl.start
                batch_last = use_batch_last(n, self.out_spatial)
                dyc = batch_to_columns(dy[sl], batch_last)
                if want_b:
                    part = dyc.sum(axis=1)
                    db = part if db is None else db + part
                dyc = dyc.reshape(g, o // g, -1)
                if want_w:
                    col = self._cols.get(i) if len(chunks) == 1 else None
                    if col is None:
                        col = self._columns(x[sl], batch_last)
                    part = matmul_nt(dyc, col)
                    dw = part if dw is None else dw + part
                if propagate_down[i]:
                    cols = (n, *self.out_spatial) if not batch_last else (*self.out_spatial, n)
                    dcol = xp.matmul(w.transpose(0, 2, 1), dyc).reshape(self.channels, *self.kernel, *cols)
                    padded = tuple(s + 2 * p for s, p in zip(self.in_spatial, self.pad, strict=True))
                    src_shape = (self.channels, *padded, n) if batch_last else (n, self.channels, *padded)
                    src = col2im(dcol, src_shape, self.kernel, self.stride, self.dilation, self.out_spatial, batch_last)
                    part = from_source(src, self.pad, self.in_spatial, batch_last)
                    if dx is None:
                        dx = part
                    else:
                        dx[sl] = part
            if propagate_down[i]:
                b.diff = dx.reshape(b.shape)
        self._cols = {}
        self._add_param_grads(dw, db)


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
            for s, k, p, st, d in zip(spatial, self.kernel, self.pad, self.stride, self.dilation, strict=True)
        )
        if any(v <= 0 for v in out):
            raise self.error(
                f"the padding removes the whole output. Received: input spatial shape {tuple(spatial)}, "
                f"pad {list(self.pad)}, output {out}",
                ShapeMismatchError,
            )
        return out

    def _col_bytes(self, itemsize: int) -> int:
        return self.num_output * math.prod(self.kernel) * math.prod(self.in_spatial) * itemsize

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        xp = backend.array_module(bottom[0].data)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, self.channels // g, -1)
        padded = tuple(s + 2 * p for s, p in zip(self.out_spatial, self.pad, strict=True))
        bias = self.blobs[1].data.reshape((1, o) + (1,) * self.num_spatial) if self.bias_term else None
        for b, t in zip(bottom, top, strict=True):
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            chunks = _batch_chunks(self.num, self._col_bytes(x.itemsize))
            y = xp.empty((self.num, o, *self.out_spatial), dtype=x.dtype) if len(chunks) != 1 else None
            for sl in chunks:
                n = sl.stop - sl.start
                batch_last = use_batch_last(n, self.in_spatial)
                xc = batch_to_columns(x[sl], batch_last).reshape(g, self.channels // g, -1)
                cols = (n, *self.in_spatial) if not batch_last else (*self.in_spatial, n)
                col = xp.matmul(w.transpose(0, 2, 1), xc).reshape(o, *self.kernel, *cols)
                src_shape = (o, *padded, n) if batch_last else (n, o, *padded)
                src = col2im(col, src_shape, self.kernel, self.stride, self.dilation, self.in_spatial, batch_last)
                part = from_source(src, self.pad, self.out_spatial, batch_last)
                if bias is not None:
                    part += bias
                if y is None:
                    y = part
                else:
                    y[sl] = part
            t.data = y.reshape(t.shape)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        xp = backend.array_module(top[0].diff)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, self.channels // g, -1)
        want_w, want_b = self._param_grads_wanted()
        dw = db = None
        for i, (b, t) in enumerate(zip(bottom, top, strict=True)):
            if want_b:
                part = t.diff.reshape(self.num, o, math.prod(self.out_spatial)).sum(axis=(0, 2))
                db = part if db is None else db + part
            if not (want_w or propagate_down[i]):
                continue
            dy = t.diff.reshape(self.num, o, *self.out_spatial)
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            chunks = _batch_chunks(self.num, self._col_bytes(x.itemsize))
            dx = xp.empty(x.shape, dtype=x.dtype) if propagate_down[i] and len(chunks) != 1 else None
            for sl in chunks:
                n = sl.stop - sl.start
                batch_last = use_batch_last(n, self.in_spatial)
                src = to_source(dy[sl], self.pad, batch_last)
                col = im2col(src, self.kernel, self.stride, self.dilation, self.in_spatial, batch_last)
                col = col.reshape(g, o // g * math.prod(self.kernel), -1)
                if want_w:
                    xc = batch_to_columns(x[sl], batch_last).reshape(g, self.channels // g, -1)
                    part = matmul_nt(xc, col)
                    dw = part if dw is None else dw + part
                if propagate_down[i]:
                    dxc = xp.matmul(w, col).reshape(self.channels, -1)
                    part = columns_to_batch(dxc, n, self.in_spatial, batch_last)
                    if dx is None:
                        dx = part
                    else:
                        dx[sl] = part
            if propagate_down[i]:
                b.diff = dx.reshape(b.shape)
        self._add_param_grads(dw, db)


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
        self.axis, self.num_spatial = _channel_axis(self, bottom[0], cp.axis)
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, self.num_spatial)

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        if x.num_axes != self.axis + 1 + self.num_spatial:
            raise self.error(
                f"the bottom's number of axes may not change after set-up. Received: shape {x.shape}",
                ShapeMismatchError,
            )
        self.channels = x.shape[self.axis]
        self.in_spatial = tuple(x.shape[self.axis + 1 :])
        self.out_spatial = conv_output_shape(self, self.in_spatial, self.kernel, self.pad, self.stride, self.dilation)
        self.num = x.count_range(0, self.axis)
        top[0].reshape((*x.shape[: self.axis], self.channels * math.prod(self.kernel), *self.out_spatial))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if self.num == 0:
            top[0].data = backend.array_module(bottom[0].data).zeros(top[0].shape, dtype=bottom[0].dtype)
            return
        x = bottom[0].data.reshape(self.num, self.channels, *self.in_spatial)
        batch_last = use_batch_last(self.num, self.out_spatial)
        col = im2col(
            to_source(x, self.pad, batch_last), self.kernel, self.stride, self.dilation, self.out_spatial, batch_last
        )
        rows = self.channels * math.prod(self.kernel)
        top[0].data = columns_to_batch(col.reshape(rows, -1), self.num, self.out_spatial, batch_last).reshape(
            top[0].shape
        )

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        n = self.num
        if n == 0:
            bottom[0].diff = backend.array_module(top[0].diff).zeros(bottom[0].shape, dtype=bottom[0].dtype)
            return
        batch_last = use_batch_last(n, self.out_spatial)
        dy = top[0].diff.reshape(n, -1, *self.out_spatial)
        cols = (n, *self.out_spatial) if not batch_last else (*self.out_spatial, n)
        dcol = batch_to_columns(dy, batch_last).reshape(self.channels, *self.kernel, *cols)
        padded = tuple(s + 2 * p for s, p in zip(self.in_spatial, self.pad, strict=True))
        src_shape = (self.channels, *padded, n) if batch_last else (n, self.channels, *padded)
        src = col2im(dcol, src_shape, self.kernel, self.stride, self.dilation, self.out_spatial, batch_last)
        bottom[0].diff = from_source(src, self.pad, self.in_spatial, batch_last).reshape(bottom[0].shape)


# --- pooling ---------------------------------------------------------------------------------------
def pooled_shape(
    in_hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], ceil_mode: bool = True
) -> tuple[int, int]:
    """Caffe's pooled (height, width).

    Rounded up by default (down with ``ceil_mode=False``). With any padding, a last window that would
    start inside the bottom/right padding is dropped, on both axes.
    """
    out = []
    for s, k, st, p in zip(in_hw, kernel, stride, pad, strict=True):
        span = s + 2 * p - k
        out.append((-(-span // st) if ceil_mode else span // st) + 1)
    if any(pad):
        out = [o - 1 if (o - 1) * st >= s + p else o for o, st, s, p in zip(out, stride, in_hw, pad, strict=True)]
    return tuple(out)


def _index_dtype(k: int):
    return numpy.int8 if k < 128 else numpy.int32


class PoolWindows:
    """2-D pooling windows over ``(N, C, H, W)`` with Caffe's geometry, and the pooling kernels.

    MAX and AVE are separable: reduce along the width (one strided view per kernel column), then along
    the height. The argmax is stored per axis: ``aw`` (N, C, padded H, PW) is the first maximum's column
    offset in each row segment, ``ah`` (N, C, PH, PW) the first maximising row; together they give the
    first maximum of each window in row-major scan order, as Caffe's strict ``>`` scan does.
    """

    def __init__(
        self,
        in_hw: Sequence[int],
        kernel: Sequence[int],
        stride: Sequence[int],
        pad: Sequence[int],
        ceil_mode: bool = True,
    ):
        self.in_hw = tuple(int(v) for v in in_hw)
        self.kernel = tuple(int(v) for v in kernel)
        self.stride = tuple(int(v) for v in stride)
        self.pad = tuple(int(v) for v in pad)
        self.out_hw = pooled_shape(self.in_hw, self.kernel, self.stride, self.pad, ceil_mode)
        # Rows/cols the windows touch: top/left padding, the image, and any bottom/right overhang.
        self.padded_hw = tuple(
            max(p + s, (o - 1) * st + k)
            for s, k, st, p, o in zip(self.in_hw, self.kernel, self.stride, self.pad, self.out_hw, strict=True)
        )
        self.needs_pad = any(self.pad) or self.padded_hw != self.in_hw
        self.overlap = tuple(st < k for st, k in zip(self.stride, self.kernel, strict=True))
        self.is_global = self.out_hw == (1, 1) and self.kernel == self.in_hw and not any(self.pad)

    # layout helpers ---------------------------------------------------------------------------
    def pad_input(self, x, fill):
        """``x`` placed in the padded grid, ``fill`` elsewhere (``x`` itself when nothing is padded)."""
        if not self.needs_pad:
            return x
        xp = backend.array_module(x)
        out = xp.full((*x.shape[:2], *self.padded_hw), fill, dtype=x.dtype)
        out[(slice(None), slice(None), *_interior(self.pad, self.in_hw))] = x
        return out

    def unpad(self, a):
        if not self.needs_pad:
            return a
        xp = backend.array_module(a)
        return xp.ascontiguousarray(a[(slice(None), slice(None), *_interior(self.pad, self.in_hw))])

    def axis_views(self, a, axis: int) -> Iterator[tuple[int, object]]:
        """``(offset, view)`` for each kernel offset along ``axis`` (2: height, 3: width)."""
        d = axis - 2
        k, s, o = self.kernel[d], self.stride[d], self.out_hw[d]
        index = [slice(None)] * 4
        for j in range(k):
            index[axis] = slice(j, j + s * (o - 1) + 1, s)
            yield j, a[tuple(index)]

    def views(self, a) -> Iterator[tuple[int, object]]:
        """``(offset index, view)`` for every 2-D kernel offset, in row-major scan order."""
        kw = self.kernel[1]
        for i, rows in self.axis_views(a, 2):
            for j, v in self.axis_views(rows, 3):
                yield i * kw + j, v

    def _spread(self, g, axis: int, shape, arg=None):
        """Adjoint of a window reduction along ``axis``: send ``g`` back to every offset of its windows
        (with ``arg``, only to the offset ``arg`` names, the adjoint of the running maximum)."""
        xp = backend.array_module(g)
        d = axis - 2
        overlap = self.overlap[d]
        # Without overlap or gaps every element is written exactly once, so no zero fill is needed.
        covered = self.stride[d] == self.kernel[d] and self.out_hw[d] * self.kernel[d] == shape[axis]
        out = xp.empty(shape, dtype=g.dtype) if covered else xp.zeros(shape, dtype=g.dtype)
        for j, view in self.axis_views(out, axis):
            if arg is None:
                if overlap:
                    view += g
                else:
                    view[...] = g
            elif overlap:
                view += g * (arg == j)
            else:
                xp.multiply(g, arg == j, out=view)
        return out

    def _sum(self, a, axis: int):
        views = self.axis_views(a, axis)
        _, first = next(views)
        s = first.copy()
        for _, v in views:
            s += v
        return s

    def _max(self, a, axis: int):
        """Running maximum along ``axis`` and the offset of the first maximum (strict ``>``)."""
        xp = backend.array_module(a)
        dtype = _index_dtype(self.kernel[axis - 2])
        views = self.axis_views(a, axis)
        _, m = next(views)
        arg = None
        for j, v in views:
            better = v > m
            # fmax keeps the running value where v is NaN, like a failed comparison in Caffe's scan.
            if arg is None:
                m = xp.fmax(m, v)
                arg = better.astype(dtype) if j == 1 else better * dtype(j)
            else:
                xp.fmax(m, v, out=m)
                arg += better * (j - arg)
        if arg is None:
            return xp.ascontiguousarray(m), xp.zeros(m.shape, dtype=dtype)
        return m, arg

    def divisors(self, xp, dtype):
        """Caffe's AVE divisor per output: the window clipped to the padded image (padding counts)."""
        sizes = []
        for s, k, st, p, o in zip(self.in_hw, self.kernel, self.stride, self.pad, self.out_hw, strict=True):
            start = numpy.arange(o) * st - p
            sizes.append(numpy.minimum(start + k, s + p) - start)
        return xp.asarray(numpy.outer(sizes[0], sizes[1]).astype(dtype))

    # MAX ---------------------------------------------------------------------------------------------
    def max_forward(self, x):
        """Window maxima and the argmax state used by :meth:`max_backward` and :meth:`max_mask`."""
        xp = backend.array_module(x)
        n, c = x.shape[:2]
        if self.is_global:
            flat = x.reshape(n, c, math.prod(self.in_hw))
            idx = xp.argmax(flat, axis=-1)[..., None]
            return xp.take_along_axis(flat, idx, axis=-1).reshape(n, c, 1, 1), ("flat", idx)
        # Padding holds Caffe's starting value -FLT_MAX, so it never wins against image values.
        rows, aw = self._max(self.pad_input(x, numpy.finfo(x.dtype).min), 3)
        y, ah = self._max(rows, 2)
        return y, ("separable", ah, aw)

    def max_mask(self, state, dtype):
        """Caffe's mask top: the argmax as a flat index ``h * W + w`` in the channel plane, as floats."""
        xp = backend.array_module(state[1])
        if state[0] == "flat":
            return state[1].reshape(*state[1].shape[:2], 1, 1).astype(dtype)
        _, ah, aw = state
        ah = ah.astype(numpy.int64)
        col = xp.zeros(ah.shape, dtype=numpy.int64)
        for i, rows in self.axis_views(aw, 2):
            col += (ah == i) * rows
        h = (xp.arange(self.out_hw[0]) * self.stride[0] - self.pad[0])[:, None] + ah
        w = (xp.arange(self.out_hw[1]) * self.stride[1] - self.pad[1])[None, :] + col
        return (h * self.in_hw[1] + w).astype(dtype)

    def max_backward(self, dy, state, x_shape):
        xp = backend.array_module(dy)
        n, c = x_shape[:2]
        if state[0] == "flat":
            hit = xp.arange(self.in_hw[0] * self.in_hw[1]) == state[1]
            return (hit * dy.reshape(n, c, 1)).reshape(x_shape)
        _, ah, aw = state
        rows = self._spread(dy, 2, (n, c, self.padded_hw[0], self.out_hw[1]), ah)
        return self.unpad(self._spread(rows, 3, (n, c, *self.padded_hw), aw))

    # AVE -------------------------------------------------------------------------------------------
    def ave_forward(self, x):
        xp = backend.array_module(x)
        n, c = x.shape[:2]
        if self.is_global:
            return x.reshape(n, c, math.prod(self.in_hw)).sum(axis=-1).reshape(n, c, 1, 1) / x.dtype.type(
                math.prod(self.in_hw)
            )
        y = self._sum(self._sum(self.pad_input(x, 0), 3), 2)
        y /= self.divisors(xp, x.dtype)
        return y

    def ave_backward(self, dy, x_shape):
        xp = backend.array_module(dy)
        n, c = x_shape[:2]
        if self.is_global:
            return xp.ascontiguousarray(xp.broadcast_to(dy / dy.dtype.type(math.prod(self.in_hw)), x_shape))
        g = dy / self.divisors(xp, dy.dtype)
        rows = self._spread(g, 2, (n, c, self.padded_hw[0], self.out_hw[1]))
        return self.unpad(self._spread(rows, 3, (n, c, *self.padded_hw)))

    # STOCHASTIC --------------------------------------------------------------------------------------
    def stochastic_train(self, x, u):
        """Pick the first element whose running window sum reaches ``u * window sum`` (scan order).

        Returns the picked values and their 2-D kernel-offset index.
        """
        xp = backend.array_module(x)
        stack = xp.stack([v for _, v in self.views(self.pad_input(x, 0))])
        running = xp.cumsum(stack, axis=0)
        idx = xp.argmax(running >= u * running[-1], axis=0)
        y = xp.take_along_axis(stack, idx[None], axis=0)[0]
        return y, idx.astype(_index_dtype(math.prod(self.kernel)))

    def stochastic_train_backward(self, dy, idx, x_shape):
        """Route each window's gradient to the element it picked."""
        xp = backend.array_module(dy)
        dx = xp.zeros((*x_shape[:2], *self.padded_hw), dtype=dy.dtype)
        for k, view in self.views(dx):
            view += dy * (idx == k)
        return self.unpad(dx)

    def stochastic_test(self, x):
        """Probability-weighted window average ``sum(x^2) / sum(x)`` (0 where the sum is not positive).

        Returns the output and the window sums (kept for the backward pass).
        """
        xp = backend.array_module(x)
        xpad = self.pad_input(x, 0)
        s1 = self._sum(self._sum(xpad, 3), 2)
        s2 = self._sum(self._sum(xpad * xpad, 3), 2)
        positive = s1 > 0
        return xp.where(positive, s2 / xp.where(positive, s1, 1), 0).astype(x.dtype, copy=False), s1

    def stochastic_test_backward(self, dy, x, y, s1):
        """``d(sum x^2 / sum x)/dx_i = (2 x_i - y) / sum x``, summed over the windows holding ``x_i``."""
        xp = backend.array_module(dy)
        n, c = x.shape[:2]
        g = xp.where(s1 > 0, dy / xp.where(s1 > 0, s1, 1), 0).astype(dy.dtype, copy=False)

        def spread(v):
            rows = self._spread(v, 2, (n, c, self.padded_hw[0], self.out_hw[1]))
            return self.unpad(self._spread(rows, 3, (n, c, *self.padded_hw)))

        return 2 * x * spread(g) - spread(g * y)


def _pool_problem(method: int, kernel: Sequence[int], pad: Sequence[int]) -> str | None:
    """What Caffe's set-up checks reject in padded pooling, or None."""
    if any(pad):
        if method not in (_MAX, _AVE):
            return (
                f"padding is implemented only for MAX and AVE pooling. Received: pool "
                f"{_POOL_NAMES.get(method)} with pad {list(pad)}"
            )
        if any(p >= k for p, k in zip(pad, kernel, strict=True)):
            return f"pad must be smaller than the kernel. Received: pad {list(pad)}, kernel {list(kernel)}"
    return None


class _Pooler:
    """One pooling operation (method + windows) with its forward/backward state."""

    def __init__(self, method: int, windows: PoolWindows, train: bool, rng: backend.RandomStreams):
        self.method, self.windows, self.train, self.rng = method, windows, train, rng

    def forward(self, x):
        win = self.windows
        self.x_shape = x.shape
        if self.method == _MAX:
            y, self.state = win.max_forward(x)
        elif self.method == _AVE:
            y = win.ave_forward(x)
        elif self.train:
            xp = backend.array_module(x)
            u = self.rng.uniform(xp, (*x.shape[:2], *win.out_hw), 0.0, 1.0, x.dtype)
            y, self.state = win.stochastic_train(x, u)
        else:
            y, s1 = win.stochastic_test(x)
            self.state = (x, y, s1)
        return y

    def backward(self, dy):
        win = self.windows
        if self.method == _MAX:
            return win.max_backward(dy, self.state, self.x_shape)
        if self.method == _AVE:
            return win.ave_backward(dy, self.x_shape)
        if self.train:
            return win.stochastic_train_backward(dy, self.state, self.x_shape)
        x, y, s1 = self.state
        return win.stochastic_test_backward(dy, x, y, s1)


def _check_4d(layer: Layer, blob: Blob) -> None:
    if blob.num_axes != 4:
        raise layer.error(
            f"input must have 4 axes (num, channels, height, width). Received: shape {blob.shape}",
            ShapeMismatchError,
        )


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
        has = pp.HasField
        self.method = pp.pool
        if len(top) == 2 and self.method != _MAX:
            raise self.error(
                f"only MAX pooling has a second (mask) top. Received: 2 tops with pool {_POOL_NAMES[self.method]}",
                BlobCountError,
            )
        self.global_pooling = pp.global_pooling
        given = [f"{f}={getattr(pp, f)}" for f in ("kernel_size", "kernel_h", "kernel_w") if has(f)]
        if self.global_pooling:
            if given:
                raise self.error(
                    f"with global_pooling the kernel comes from the input and cannot be given. Received: "
                    f"{', '.join(given)}"
                )
            self.kernel = None
        else:
            if not (has("kernel_size") or (has("kernel_h") and has("kernel_w"))) or (
                has("kernel_size") and has("kernel_h") and has("kernel_w")
            ):
                raise self.error(
                    f"give the kernel as kernel_size or as both kernel_h and kernel_w. Received: "
                    f"{', '.join(given) or 'none'}"
                )
            self.kernel = (pp.kernel_size,) * 2 if has("kernel_size") else (pp.kernel_h, pp.kernel_w)
            if min(self.kernel) <= 0:
                raise self.error(f"kernel dimensions must be positive. Received: {list(self.kernel)}")
        for name in ("pad", "stride"):
            both, either = has(f"{name}_h") and has(f"{name}_w"), has(f"{name}_h") or has(f"{name}_w")
            if either and (has(name) or not both):
                raise self.error(
                    f"give {name} or both {name}_h and {name}_w. Received: "
                    + ", ".join(f"{f}={getattr(pp, f)}" for f in (name, f"{name}_h", f"{name}_w") if has(f))
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
        problem = self.kernel and _pool_problem(self.method, self.kernel, self.pad)
        if problem:
            raise self.error(problem)
        self.ceil_mode = pp.round_mode == pb.PoolingParameter.CEIL
        self.pooler: _Pooler | None = None

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        _check_4d(self, x)
        in_hw = x.shape[2:]
        if self.pooler is None or self.pooler.windows.in_hw != in_hw:
            kernel = in_hw if self.global_pooling else self.kernel
            windows = PoolWindows(in_hw, kernel, self.stride, self.pad, self.ceil_mode)
            if min(in_hw) <= 0 or min(windows.out_hw) <= 0:
                raise self.error(
                    f"the pooling window does not fit the input. Received: input {in_hw}, kernel {list(kernel)}, "
                    f"pad {list(self.pad)}, stride {list(self.stride)} -> output {windows.out_hw}",
                    ShapeMismatchError,
                )
            self.pooler = _Pooler(self.method, windows, self.phase == pb.TRAIN, self.rng)
        for t in top:
            t.reshape((*x.shape[:2], *self.pooler.windows.out_hw))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        top[0].data = self.pooler.forward(bottom[0].data)
        if len(top) > 1:
            top[1].data = self.pooler.windows.max_mask(self.pooler.state, bottom[0].dtype)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if propagate_down[0]:
            bottom[0].diff = self.pooler.backward(top[0].diff)


@register_layer("SPP")
class SPPLayer(Layer):
    """Caffe type ``SPP``: spatial pyramid pooling.

    Level ``l`` (0 .. pyramid_height-1) pools with ``2^l`` bins per side: kernel ``ceil(H / 2^l)``,
    stride = kernel, pad ``(kernel * 2^l - H + 1) // 2`` (Pooling's rules otherwise). Each level is
    flattened and the levels are concatenated. As in Caffe, the inner pooling always runs in the
    TRAIN phase (STOCHASTIC samples even in TEST nets).

    Bottom: ``(N, C, H, W)``. Top: ``(N, C * sum_l bins_l)``; with ``pyramid_height: 1`` the single
    pooling output ``(N, C, PH, PW)`` is passed on unflattened.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        sp = self.param.spp_param
        self.height = int(sp.pyramid_height)
        if self.height < 1:
            raise self.error(f"pyramid_height must be at least 1. Received: {sp.pyramid_height}")
        self.method = sp.pool
        self.poolers: list[_Pooler] = []
        self._in_hw: tuple[int, ...] | None = None

    def _level(self, level: int, in_hw: Sequence[int]) -> _Pooler:
        bins = 2**level
        kernel = tuple(-(-s // bins) for s in in_hw)
        pad = tuple((k * bins - s + 1) // 2 for k, s in zip(kernel, in_hw, strict=True))
        problem = _pool_problem(self.method, kernel, pad)
        if problem:
            raise self.error(
                f"pyramid level {level} ({bins} bins) cannot pool an input of {tuple(in_hw)}: {problem}",
                ShapeMismatchError,
            )
        return _Pooler(self.method, PoolWindows(in_hw, kernel, kernel, pad), train=True, rng=self.rng)

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        _check_4d(self, x)
        in_hw = x.shape[2:]
        if min(in_hw) <= 0:
            raise self.error(f"input height and width must be positive. Received: {in_hw}", ShapeMismatchError)
        if self._in_hw != in_hw:
            self.poolers = [self._level(i, in_hw) for i in range(self.height)]
            self._in_hw = in_hw
        n, c = x.shape[:2]
        if self.height == 1:
            top[0].reshape((n, c, *self.poolers[0].windows.out_hw))
        else:
            top[0].reshape((n, sum(c * math.prod(p.windows.out_hw) for p in self.poolers)))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0].data
        xp = backend.array_module(x)
        if self.height == 1:
            top[0].data = self.poolers[0].forward(x)
            return
        n = x.shape[0]
        parts = [p.forward(x) for p in self.poolers]
        top[0].data = xp.concatenate([y.reshape(n, math.prod(y.shape[1:])) for y in parts], axis=1)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.height == 1:
            bottom[0].diff = self.poolers[0].backward(dy)
            return
        n, c = bottom[0].shape[:2]
        dx, start = None, 0
        for p in self.poolers:
            size = c * math.prod(p.windows.out_hw)
            part = p.backward(dy[:, start : start + size].reshape(n, c, *p.windows.out_hw))
            dx = part if dx is None else dx + part
            start += size
        bottom[0].diff = dx


# --- Crop ------------------------------------------------------------------------------------------
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
        try:
            self.axis = bottom[0].canonical_axis(cp.axis)
        except InvalidParameterError as err:
            raise self.error(f"crop_param.axis is out of range. Received: {cp.axis}. {err}") from None
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


# --- LRN ---------------------------------------------------------------------------------------------
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

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        _check_4d(self, bottom[0])
        if self.within:
            in_hw = bottom[0].shape[2:]
            if self.windows is None or self.windows.in_hw != in_hw:
                half = (self.size - 1) // 2
                self.windows = PoolWindows(in_hw, (self.size,) * 2, (1, 1), (half, half))
        top[0].reshape(bottom[0].shape)

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
        t = x.dtype.type
        if self.within:
            scale = t(1) + t(self.alpha) * self.windows.ave_forward(x * x)
        else:
            scale = t(self.k) + t(self.alpha / self.size) * self._channel_window_sum(x * x)
        self._x, self._scale = x, scale
        top[0].data = x * scale ** t(-self.beta)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        x, scale, dy = self._x, self._scale, top[0].diff
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
