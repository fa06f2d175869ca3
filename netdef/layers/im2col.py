"""The kernel library behind the convolution-like layers: im2col/col2im, GEMM helpers and geometry.

Convolution, Deconvolution and Im2col share one im2col/col2im pair. The column matrix holds
a chunk of samples (a few MiB on the CPU, so that it is still in cache when the GEMM reads
it), so a convolution is one GEMM ``(C_out, C_in*k) x (C_in*k, columns)`` per chunk
(batched over groups only). Its columns are ordered either sample-major (``(N, *out)``) or,
when output rows are short, pixel-major with the sample last (``(*out, N)``): then the patch
gather and the col2im adds move runs of ``out_width * N`` contiguous values instead of
``out_width``.

Everything here works on NumPy or CuPy arrays; the geometry helpers take the layer only to
name it in their errors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy

from .. import backend, threads
from ..errors import ShapeMismatchError
from . import ort_kernels
from .base import Layer

#: Largest column buffer built at once on the CPU; bigger batches are convolved in chunks of
#: samples. A chunk whose columns stay in the last-level cache between the im2col gather and
#: the GEMM that reads them is faster than one pass over the whole batch, and a training
#: step's peak memory no longer grows with the batch.
COL_CHUNK_BYTES = 4 * 2**20
#: The same on the GPU, where each chunk costs kernel launches and memory is plentiful.
GPU_COL_CHUNK_BYTES = 256 * 2**20
#: In TRAIN nets, column buffers up to this size are kept from forward for the weight gradient.
COL_CACHE_BYTES = 64 * 2**20
#: Output rows shorter than this use the pixel-major, sample-last column order.
SHORT_ROW = 16


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


def interior(pad: Sequence[int], spatial: Sequence[int]) -> tuple[slice, ...]:
    """Index of the unpadded region of each spatial axis inside its padded extent."""
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
        out[(slice(None), *interior(pad, spatial), slice(None))] = x
        return out
    if not any(pad):
        return x
    out = xp.zeros((n, c, *(s + 2 * p for s, p in zip(spatial, pad, strict=True))), dtype=x.dtype)
    out[(slice(None), slice(None), *interior(pad, spatial))] = x
    return out


def from_source(src, pad: Sequence[int], spatial: Sequence[int], batch_last: bool):
    """Inverse of :func:`to_source`: C-contiguous ``(N, C, *S)`` without the padding."""
    xp = backend.array_module(src)
    if batch_last:
        n = src.shape[-1]
        src = _transpose2d(src.reshape(-1, n)).reshape(n, *src.shape[:-1])
    if not any(pad):
        return xp.ascontiguousarray(src)
    return xp.ascontiguousarray(src[(slice(None), slice(None), *interior(pad, spatial))])


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


def column_axes(n: int, out_shape: Sequence[int], batch_last: bool) -> tuple[int, ...]:
    """The column axes of :func:`im2col`'s output: ``(n, *out_shape)``, or ``(*out_shape, n)`` when ``batch_last``."""
    return (*out_shape, n) if batch_last else (n, *out_shape)


def patches(
    x,
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    out_shape: Sequence[int],
    batch_last: bool,
):
    """Every patch of a batch ``(N, C, *S)``: :func:`to_source` then :func:`im2col`."""
    return im2col(to_source(x, pad, batch_last), kernel, stride, dilation, out_shape, batch_last)


def fold_patches(
    col,
    spatial: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    out_shape: Sequence[int],
    batch_last: bool,
):
    """Adjoint of :func:`patches`: ``(C, *kernel, *columns)`` summed into C-contiguous ``(N, C, *spatial)``."""
    c = col.shape[0]
    n = col.shape[-1] if batch_last else col.shape[1 + len(kernel)]
    padded = tuple(s + 2 * p for s, p in zip(spatial, pad, strict=True))
    src_shape = (c, *padded, n) if batch_last else (n, c, *padded)
    src = col2im(col, src_shape, kernel, stride, dilation, out_shape, batch_last)
    return from_source(src, pad, spatial, batch_last)


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


def channel_sums(y):
    """``(N, O, *S)`` -> ``(O,)``: each channel's sum over samples and positions (a bias gradient).

    A product with a vector of ones, as Caffe's bias gradient is: BLAS runs it about five times
    faster than NumPy's ``sum`` over the positions (cifar10_quick's conv1, 13 MB: 0.08 ms against 0.45).
    """
    xp = backend.array_module(y)
    n, o = y.shape[:2]
    if y.size == 0:
        return xp.zeros(o, dtype=y.dtype)
    rows = y.reshape(n * o, -1)
    return (rows @ xp.ones(rows.shape[1], dtype=y.dtype)).reshape(n, o).sum(axis=0)


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
    if xp is not numpy or k < 8192 or a.shape[-2] * b.shape[-2] > 4096 or ort_kernels.active():
        return ort_kernels.matmul(a, b.swapaxes(-1, -2))
    out = xp.matmul(a[..., :1024], b[..., :1024].swapaxes(-1, -2))
    for i in range(1024, k, 1024):
        out += xp.matmul(a[..., i : i + 1024], b[..., i : i + 1024].swapaxes(-1, -2))
    return out


def flipped_kernel(w, group: int):
    """The kernel of a convolution's input gradient: ``(O, C/g, *kernel)`` -> C-contiguous ``(C, O/g, *kernel)``.

    Entry ``[c, o, k]`` of group ``g`` is ``W[g*O/g + o, c - g*C/g, kernel - 1 - k]``: the kernel
    reversed in space, input and output channels swapped within each group.
    """
    xp = backend.array_module(w)
    o, cg = w.shape[:2]
    spatial = w.shape[2:]
    flipped = w[(slice(None), slice(None), *(slice(None, None, -1),) * len(spatial))]
    per_group = flipped.reshape(group, o // group, cg, *spatial).swapaxes(1, 2)
    return xp.ascontiguousarray(per_group).reshape(group * cg, o // group, *spatial)


def batch_chunks(n: int, bytes_per_sample: int, xp=numpy) -> list[slice]:
    """Split ``n`` samples into chunks of even size whose column buffers stay under the limit for ``xp``'s
    device; on the CPU their number is a multiple of the thread count when the work is split
    (:func:`netdef.threads.chunk_count`)."""
    if xp is numpy:
        parts = threads.chunk_count(n, bytes_per_sample, COL_CHUNK_BYTES)
    else:
        parts = -(-n // max(1, GPU_COL_CHUNK_BYTES // max(bytes_per_sample, 1)))
    return threads.even_slices(n, parts)


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
    dilation = _with_holes(layer, cp, per_axis("dilation", cp.dilation, None, None, 1), num_spatial)
    for name, vals in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in vals):
            raise layer.error(f"{name} must be positive on every axis. Received: {list(vals)}")
    return kernel, stride, pad, dilation


def _with_holes(layer: Layer, cp, dilation: tuple[int, ...], num_spatial: int) -> tuple[int, ...]:
    """DeepLab v1's ``hole`` / ``hole_h`` / ``hole_w`` are its spelling of dilation."""
    given = [name for name in ("hole", "hole_h", "hole_w") if cp.HasField(name)]
    if not given:
        return dilation
    if len(cp.dilation):
        raise layer.error(
            f"give either dilation or DeepLab's {'/'.join(given)}, not both. Received: dilation="
            f"{list(cp.dilation)}, " + ", ".join(f"{n}={getattr(cp, n)}" for n in given)
        )
    if cp.HasField("hole") and (cp.HasField("hole_h") or cp.HasField("hole_w")):
        raise layer.error(f"give either hole or hole_h/hole_w, not both. Received: {', '.join(given)}")
    if cp.HasField("hole"):
        return (int(cp.hole),) * num_spatial
    if num_spatial != 2:
        raise layer.error(f"hole_h/hole_w need 2-D convolution. Received: {num_spatial} spatial axes")
    return (int(cp.hole_h), int(cp.hole_w))


def kernel_extent(kernel: int, dilation: int) -> int:
    """Input span of a dilated kernel along one axis."""
    return dilation * (kernel - 1) + 1


def conv_output_shape(layer: Layer, spatial: Sequence[int], kernel, pad, stride, dilation) -> tuple[int, ...]:
    """Caffe's convolution output size per axis; an error when the kernel does not fit the padded input."""
    out = []
    for s, k, p, st, d in zip(spatial, kernel, pad, stride, dilation, strict=True):
        if s + 2 * p < kernel_extent(k, d):
            raise layer.error(
                f"the kernel (extent {kernel_extent(k, d)}) is larger than the padded input ({s} + 2*{p}). "
                f"Received: input spatial shape {tuple(spatial)}",
                ShapeMismatchError,
            )
        out.append((s + 2 * p - kernel_extent(k, d)) // st + 1)
    return tuple(out)
