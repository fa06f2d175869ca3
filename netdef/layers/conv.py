"""Convolution layers: Convolution, Deconvolution and Im2col.

All three are built on the kernels of :mod:`netdef.layers.im2col`: a convolution is one
im2col gather and one GEMM per group and chunk of samples (``COL_CHUNK_BYTES``), its input
gradient a GEMM and one col2im. On the CPU a Convolution may instead run on ONNX Runtime's
direct kernels (:mod:`netdef.layers.ort_kernels`, the ``fast`` extra), Winograd's algorithm
or the flat grid, whichever applies first (docs/performance.md). Its forward pass lets
:func:`netdef.threads.refresh` follow the machine's load. On the CPU the chunks of the
flat-grid and im2col paths are shared out over netdef's threads
(:func:`netdef.threads.run_parts`), each thread running the chunks it takes whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy

from .. import backend, threads
from ..blob import Blob
from ..errors import ShapeMismatchError
from ..proto import netdef_pb2 as pb
from . import ort_kernels, winograd
from .base import Layer, register_layer
from .conv_flat import FlatGrid, choose_grid, flipped_weights
from .im2col import (
    COL_CACHE_BYTES,
    batch_chunks,
    batch_to_columns,
    channel_sums,
    column_axes,
    columns_to_batch,
    conv_geometry,
    conv_output_shape,
    flipped_kernel,
    fold_patches,
    kernel_extent,
    matmul_nt,
    patches,
    use_batch_last,
)

log = logging.getLogger("netdef")


def _channel_axis(layer: Layer, bottom: Blob, axis: int) -> tuple[int, int]:
    """Canonical channel axis and number of spatial axes after it (at least one)."""
    axis = layer.canonical_axis(axis, bottom.num_axes, "convolution_param.axis")
    num_spatial = bottom.num_axes - axis - 1
    if num_spatial < 1:
        raise layer.error(
            f"needs at least one spatial axis after the channel axis {axis}. Received: bottom shape {bottom.shape}"
        )
    return axis, num_spatial


def _over_chunks(xp, fn, chunks: list) -> list:
    """``fn(share)`` over a batch's chunks: spread over netdef's threads for NumPy
    (:func:`netdef.threads.run_parts`, each thread's products then run on it alone), in turn for CuPy."""
    return threads.run_parts(fn, chunks) if xp is numpy else list(fn(chunks))


def _store(whole, part, sl: slice):
    """Put one chunk's result into the batch result; with a single chunk the chunk's array is the result."""
    if whole is None:
        return part
    whole[sl] = part
    return whole


def _sum_parts(parts):
    """The sum of the non-None ``parts`` in order (None if there are none)."""
    total = None
    for p in parts:
        if p is not None:
            total = p if total is None else total + p
    return total


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
        if self.channels <= 0:
            raise self.error(
                f"the bottom has no channels on axis {self.axis}. Received: shape {x.shape}", ShapeMismatchError
            )
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
        self._planned_for: tuple[int, ...] | None = None  # the input size the CPU plans below were made for

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
        if self.in_spatial != self._planned_for:  # reshape runs every iteration; plan once per input size
            self.nchwc = self._nchwc_plan()
            self.nchwc_grad = ort_kernels.input_gradient_plan(self.nchwc) if self.nchwc is not None else None
            self.flat = self._flat_grid()
            self.wino = self._winograd_plan()
            self.wino_grad = self.wino.transposed() if self.wino is not None else None
            self._planned_for = self.in_spatial

    def _nchwc_plan(self) -> ort_kernels.NchwcConv | None:
        """ONNX Runtime's blocked-channel kernels (:mod:`netdef.layers.ort_kernels`) where installed and applicable."""
        if self.transposed or self.xp is not numpy:
            return None
        if not ort_kernels.applies(self.channels, self.num_output, self.num_spatial, self.group, self.dtype):
            return None
        shape = (self.num, self.channels, *self.in_spatial)
        plan = ort_kernels.NchwcConv(
            shape,
            self.num_output,
            self.kernel,
            self.stride,
            self.pad,
            self.dilation,
            self.bias_term,
            ort_kernels.block_size(),
        )
        return plan if plan.waste <= ort_kernels.MAX_WASTE else None

    def _run_nchwc(self, plan: ort_kernels.NchwcConv, x, w, bias=None):
        """``plan`` on ``x`` with weights ``w``; None (and NumPy from now on) if ONNX Runtime fails."""
        try:
            return plan(x, plan.weights(w), bias)
        except Exception as err:  # an ONNX Runtime error must not end training: NumPy computes the same
            log.warning("%s: ONNX Runtime's convolution failed (%s); using NumPy's from now on", self.describe(), err)
            self.nchwc = self.nchwc_grad = None
            return None

    def _flat_grid(self) -> FlatGrid | None:
        """The flat layout (:mod:`netdef.layers.conv_flat`) for NumPy convolutions where it applies and pays."""
        if self.transposed or self.xp is not numpy:
            return None
        rows = self.channels // self.group * math.prod(self.kernel)
        return choose_grid(self.in_spatial, self.kernel, self.stride, self.pad, self.dilation, self.num_output, rows)

    def _winograd_plan(self) -> winograd.Winograd | None:
        """Winograd's algorithm (:mod:`netdef.layers.winograd`) for NumPy convolutions where it applies."""
        if self.transposed or self.xp is not numpy:
            return None
        cg, og = self.channels // self.group, self.num_output // self.group
        return winograd.choose(self.kernel, self.stride, self.pad, self.dilation, self.in_spatial, cg, og, self.dtype)

    def _col_bytes(self, itemsize: int) -> int:
        raise NotImplementedError

    def _chunks(self, x, column_spatial: Sequence[int]) -> list[tuple[slice, int, bool]]:
        """``(samples, count, sample-last order)`` per chunk of the batch ``x``, columns over ``column_spatial``."""
        out = []
        for sl in batch_chunks(self.num, self._col_bytes(x.itemsize), backend.array_module(x)):
            n = sl.stop - sl.start
            out.append((sl, n, use_batch_last(n, column_spatial)))
        return out

    def _patches(self, x, out_shape: Sequence[int], batch_last: bool):
        return patches(x, self.kernel, self.stride, self.pad, self.dilation, out_shape, batch_last)

    def _fold(self, col, spatial: Sequence[int], out_shape: Sequence[int], batch_last: bool):
        return fold_patches(col, spatial, self.kernel, self.stride, self.pad, self.dilation, out_shape, batch_last)

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
        col = self._patches(x, self.out_spatial, batch_last)
        return col.reshape(self.group, self.channels // self.group * math.prod(self.kernel), -1)

    def _col_bytes(self, itemsize: int) -> int:
        return self.channels * math.prod(self.kernel) * math.prod(self.out_spatial) * itemsize

    def _flat_chunks(self, x) -> list[slice]:
        return batch_chunks(self.num, self.flat.bytes_per_sample(self.channels * math.prod(self.kernel), x.itemsize))

    def _flat_columns(self, x):
        """``(group, C_in/group * K, width)`` columns of samples ``x`` on the flat grid."""
        col = self.flat.columns(self.flat.source(x), x.shape[0], self.flat.out_span)
        return col.reshape(self.group, col.shape[0] // self.group, -1)

    def _uses_flat(self, xp, want_dx: bool = False) -> bool:
        """Whether this pass runs on the flat grid: forward, and backward unless the input gradient would
        gather many more rows (outputs times taps) than im2col's columns hold (inputs times taps)."""
        if self.flat is None or xp is not numpy or self.num == 0:
            return False
        return not want_dx or self.num_output <= 2 * self.channels

    def _keep_columns(self, i: int, col, num_chunks: int) -> None:
        """Keep a single chunk's columns from forward for the weight gradient of a TRAIN net."""
        if num_chunks == 1 and col.nbytes <= COL_CACHE_BYTES and self.phase == pb.TRAIN:
            self._cols[i] = col

    def _forward_flat(self, x, w, bias, i: int):
        y = numpy.empty((self.num, self.num_output, *self.out_spatial), dtype=x.dtype)
        chunks = self._flat_chunks(x)

        def share(slices):
            for sl in slices:
                col = self._flat_columns(x[sl])
                yw = ort_kernels.matmul(w, col).reshape(self.num_output, -1)
                self.flat.outputs(yw, sl.stop - sl.start, out=y[sl], bias=bias)
                self._keep_columns(i, col, len(chunks))
            return None

        _over_chunks(numpy, share, chunks)
        return y

    def _forward_im2col(self, x, w, bias, i: int):
        xp = backend.array_module(x)
        chunks = self._chunks(x, self.out_spatial)
        if len(chunks) == 1:
            col = self._columns(x, chunks[0][2])
            self._keep_columns(i, col, 1)
            yc = ort_kernels.matmul(w, col).reshape(self.num_output, -1)
            return columns_to_batch(yc, self.num, self.out_spatial, chunks[0][2], bias)
        y = xp.empty((self.num, self.num_output, *self.out_spatial), dtype=x.dtype)

        def share(parts):
            for sl, n, batch_last in parts:
                yc = ort_kernels.matmul(w, self._columns(x[sl], batch_last)).reshape(self.num_output, -1)
                y[sl] = columns_to_batch(yc, n, self.out_spatial, batch_last, bias)
            return None

        _over_chunks(xp, share, chunks)
        return y

    def _uses_winograd(self, xp) -> bool:
        return self.wino is not None and xp is numpy and self.num > 0

    def _forward_winograd(self, x, w, bias, i: int):
        return self.wino.convolve(x, self.wino.weights(self.blobs[0].data, self.group), bias=bias)

    def _backward_winograd(self, x, dy, want_w: bool, want_dx: bool):
        dw = self.wino.weight_grad(x, dy, self.group) if want_w else None
        dx = None
        if want_dx:
            flipped = flipped_kernel(self.blobs[0].data, self.group)
            dx = self.wino_grad.convolve(dy, self.wino_grad.weights(flipped, self.group))
        return dw, dx

    def _uses_nchwc(self, xp) -> bool:
        return self.nchwc is not None and xp is numpy and self.num > 0

    def _forward_numpy(self, xp):
        """The forward routine of the NumPy (or CuPy) paths for this layer."""
        if self._uses_winograd(xp):
            return self._forward_winograd
        return self._forward_flat if self._uses_flat(xp) else self._forward_im2col

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        threads.refresh()
        xp = backend.array_module(bottom[0].data)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, o // g, -1)
        bias = self.blobs[1].data if self.bias_term else None
        for i, (b, t) in enumerate(zip(bottom, top, strict=True)):
            self._cols[i] = None
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            y = self._run_nchwc(self.nchwc, x, self.blobs[0].data, bias) if self._uses_nchwc(xp) else None
            if y is None:
                y = self._forward_numpy(xp)(x, w, bias, i)
            t.data = y.reshape(t.shape)

    def _backward_flat(self, x, dy, want_w: bool, want_dx: bool, i: int):
        """Weight gradient (or None) and input gradient (or None) of one bottom on the flat grid."""
        g, o, grid = self.group, self.num_output, self.flat
        wflip = flipped_weights(self.blobs[0].data, g) if want_dx else None
        dx = numpy.empty(x.shape, dtype=x.dtype) if want_dx else None
        chunks = self._flat_chunks(x)

        def share(slices):
            parts = []
            for sl in slices:
                n, part = sl.stop - sl.start, None
                if want_w:
                    col = self._cols.get(i) if len(chunks) == 1 else None
                    if col is None:
                        col = self._flat_columns(x[sl])
                    dyw = grid.compact(dy[sl]).reshape(g, o // g, -1)
                    # (rows x columns) @ (columns x outputs) suits OpenBLAS better than the product transposed
                    part = ort_kernels.matmul(col, dyw.swapaxes(1, 2))
                if want_dx:
                    col = grid.columns(grid.spread(dy[sl]), n, grid.in_span).reshape(g, -1, n * grid.in_span)
                    grid.inputs(ort_kernels.matmul(wflip, col).reshape(self.channels, -1), n, out=dx[sl])
                parts.append(part)
            return parts

        dw = _sum_parts(_over_chunks(numpy, share, chunks))
        return (None if dw is None else dw.swapaxes(1, 2)), dx

    def _gradients(self, xp, x, dy, want_w: bool, want_dx: bool, i: int):
        """Weight gradient (or None) and input gradient (or None) of bottom ``i``."""
        dx = None
        if want_dx and self._uses_nchwc(xp) and self.nchwc_grad is not None:
            dx = self._run_nchwc(self.nchwc_grad, dy, flipped_kernel(self.blobs[0].data, 1))
            want_dx = dx is None
        if not (want_w or want_dx):
            return None, dx
        if self._uses_winograd(xp):
            part, dx_numpy = self._backward_winograd(x, dy, want_w, want_dx)
        else:
            run = self._backward_flat if self._uses_flat(xp, want_dx) else self._backward_im2col
            part, dx_numpy = run(x, dy, want_w, want_dx, i)
        return part, (dx if dx is not None else dx_numpy)

    def _backward_im2col(self, x, dy, want_w: bool, want_dx: bool, i: int):
        """Weight gradient (or None) and input gradient (or None) of one bottom through im2col/col2im."""
        xp = backend.array_module(dy)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, o // g, -1)
        chunks = self._chunks(x, self.out_spatial)
        dx = xp.empty(x.shape, dtype=x.dtype) if want_dx and len(chunks) != 1 else None

        def share(parts):
            out = []
            for sl, n, batch_last in parts:
                dyc, part = batch_to_columns(dy[sl], batch_last).reshape(g, o // g, -1), None
                if want_w:
                    col = self._cols.get(i) if len(chunks) == 1 and self.flat is None else None
                    if col is None:
                        col = self._columns(x[sl], batch_last)
                    part = matmul_nt(dyc, col)
                fold = None
                if want_dx:
                    cols = column_axes(n, self.out_spatial, batch_last)
                    dcol = ort_kernels.matmul(w.transpose(0, 2, 1), dyc).reshape(self.channels, *self.kernel, *cols)
                    fold = self._fold(dcol, self.in_spatial, self.out_spatial, batch_last)
                    if dx is not None:
                        dx[sl], fold = fold, None
                out.append((part, fold))
            return out

        parts = _over_chunks(xp, share, chunks)
        if want_dx and dx is None:  # the only chunk: its array is the gradient
            dx = parts[0][1]
        return _sum_parts(p for p, _ in parts), dx

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        xp = backend.array_module(top[0].diff)
        o = self.num_output
        want_w, want_b = self._param_grads_wanted()
        dw = db = None
        for i, (b, t) in enumerate(zip(bottom, top, strict=True)):
            dy = t.diff.reshape(self.num, o, *self.out_spatial)
            if want_b:
                part = channel_sums(dy)
                db = part if db is None else db + part
            if not (want_w or propagate_down[i]):
                continue
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            part, dx = self._gradients(xp, x, dy, want_w, bool(propagate_down[i]), i)
            if part is not None:
                dw = part if dw is None else dw + part
            if dx is not None:
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
            st * (s - 1) + kernel_extent(k, d) - 2 * p
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
        bias = self.blobs[1].data.reshape((1, o) + (1,) * self.num_spatial) if self.bias_term else None
        for b, t in zip(bottom, top, strict=True):
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            chunks = self._chunks(x, self.in_spatial)
            y = xp.empty((self.num, o, *self.out_spatial), dtype=x.dtype) if len(chunks) != 1 else None
            for sl, n, batch_last in chunks:
                xc = batch_to_columns(x[sl], batch_last).reshape(g, self.channels // g, -1)
                cols = column_axes(n, self.in_spatial, batch_last)
                col = ort_kernels.matmul(w.transpose(0, 2, 1), xc).reshape(o, *self.kernel, *cols)
                part = self._fold(col, self.out_spatial, self.in_spatial, batch_last)
                if bias is not None:
                    part += bias
                y = _store(y, part, sl)
            t.data = y.reshape(t.shape)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        xp = backend.array_module(top[0].diff)
        g, o = self.group, self.num_output
        w = self.blobs[0].data.reshape(g, self.channels // g, -1)
        want_w, want_b = self._param_grads_wanted()
        dw = db = None
        for i, (b, t) in enumerate(zip(bottom, top, strict=True)):
            dy = t.diff.reshape(self.num, o, *self.out_spatial)
            if want_b:
                part = channel_sums(dy)
                db = part if db is None else db + part
            if not (want_w or propagate_down[i]):
                continue
            x = b.data.reshape(self.num, self.channels, *self.in_spatial)
            chunks = self._chunks(x, self.in_spatial)
            dx = xp.empty(x.shape, dtype=x.dtype) if propagate_down[i] and len(chunks) != 1 else None
            for sl, n, batch_last in chunks:
                col = self._patches(dy[sl], self.in_spatial, batch_last).reshape(g, o // g * math.prod(self.kernel), -1)
                if want_w:
                    xc = batch_to_columns(x[sl], batch_last).reshape(g, self.channels // g, -1)
                    part = matmul_nt(xc, col)
                    dw = part if dw is None else dw + part
                if propagate_down[i]:
                    dxc = ort_kernels.matmul(w, col).reshape(self.channels, -1)
                    dx = _store(dx, columns_to_batch(dxc, n, self.in_spatial, batch_last), sl)
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
        col = patches(x, self.kernel, self.stride, self.pad, self.dilation, self.out_spatial, batch_last)
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
        cols = column_axes(n, self.out_spatial, batch_last)
        dcol = batch_to_columns(dy, batch_last).reshape(self.channels, *self.kernel, *cols)
        dx = fold_patches(
            dcol, self.in_spatial, self.kernel, self.stride, self.pad, self.dilation, self.out_spatial, batch_last
        )
        bottom[0].diff = dx.reshape(bottom[0].shape)
