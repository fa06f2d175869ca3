"""Stride-1 convolution on a flat, gap-padded layout: every im2col row is one contiguous run.

The general im2col (:mod:`netdef.layers.im2col`) copies one output row at a time, which is
slow on the CPU when rows are short (a 16x16 CIFAR feature map has rows of 16 values). For a
stride-1 convolution there is a layout in which each column row is a single contiguous slice.

Put the channels first and lay the samples of a chunk one after another, each sample's
spatial grid followed by ``gap`` zeros on every spatial axis (so a 2-D sample of ``H x W``
occupies ``(H + gap_h) x (W + gap_w)`` values), with ``lead`` zeros in front. The gaps hold
the zero padding: a window that reaches past a sample's left edge reads the previous row's
trailing gap, one that reaches past its bottom reads the next gap rows, and a gap at least as
wide as the padding keeps every window of a real output position inside its own sample.
Output positions are then indexed on the same grid ("wide" outputs: the positions inside the
gaps are computed and thrown away), and the value a kernel tap ``j`` reads for output ``q``
is the source at ``q + sum_i j_i*dilation_i*step_i`` (``step_i`` is the grid's stride of
axis ``i``). The whole column matrix is therefore one
strided view ``(C, *kernel, M)`` whose last axis is contiguous, copied in long runs.

The input gradient is the same construction run backwards: spreading the output gradient on
the grid (zeros in the gaps) and reading it through the flipped kernel gives, at every grid
position, the sum over all windows that touch it -- a GEMM with the flipped, transposed
weights instead of a col2im scatter.

The price is the gap columns, computed and thrown away (the gap rows between samples are
skipped): ``waste`` is the ratio of GEMM columns to outputs (``18/16 = 1.125`` for a 16x16
map with a 5x5 kernel and padding 2); layers use this layout only when it is small
(:func:`choose_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy

from .im2col import SHORT_ROW, flipped_kernel

#: Grids with more GEMM columns per real output than this use im2col instead.
MAX_WASTE = 1.4
#: Layers with more outputs than this, or more column rows per group (input channels times
#: taps), use im2col: their GEMMs dominate, and the grid's extra columns cost more than the
#: copies it saves (measured on CIFAR- and ImageNet-sized layers).
MAX_OUTPUTS = 64
MAX_ROWS = 1600
#: Output rows shorter than this use im2col too: its sample-last column order
#: (``im2col.SHORT_ROW``) already copies them in long runs, without wasted columns.
MIN_ROW = SHORT_ROW


def choose_grid(spatial, kernel, stride, pad, dilation, num_output: int, rows: int) -> FlatGrid | None:
    """The flat grid for a convolution of this geometry on the CPU, or None where im2col is the better choice.

    ``rows`` is the number of column rows per group (input channels per group times kernel taps).
    """
    if not FlatGrid.applies(stride, pad, kernel, dilation) or num_output > MAX_OUTPUTS or rows > MAX_ROWS:
        return None
    grid = FlatGrid(spatial, kernel, pad, dilation)
    if grid.out[-1] < MIN_ROW or grid.waste > MAX_WASTE:
        return None
    return grid


class FlatGrid:
    """The flat layout of one stride-1 convolution over inputs of spatial shape ``spatial``.

    Each sample occupies :attr:`per_sample` grid positions. GEMM columns are taken per sample
    from the first ``out[0]`` (outputs) or ``spatial[0]`` (input gradient) rows of its grid only,
    so the gap rows between samples are never computed: :attr:`out_span` and :attr:`in_span`
    positions per sample.
    """

    def __init__(self, spatial: Sequence[int], kernel: Sequence[int], pad: Sequence[int], dilation: Sequence[int]):
        self.spatial = tuple(int(s) for s in spatial)
        self.kernel = tuple(int(k) for k in kernel)
        self.dilation = tuple(int(d) for d in dilation)
        reach = tuple(d * (k - 1) for k, d in zip(self.kernel, self.dilation, strict=True))
        self.out = tuple(s + 2 * p - r for s, p, r in zip(self.spatial, pad, reach, strict=True))
        # A gap as wide as the padding is enough: a real output's window reaches at most ``pad``
        # past either edge of its sample, and there are no more outputs than grid positions.
        gaps = tuple(int(p) for p in pad)
        #: extent of one sample on the grid, per spatial axis
        self.extent = tuple(s + g for s, g in zip(self.spatial, gaps, strict=True))
        self.steps = tuple(math.prod(self.extent[i + 1 :]) for i in range(len(self.extent)))
        self.per_sample = math.prod(self.extent)
        self.out_span = self.out[0] * self.steps[0]
        self.in_span = self.spatial[0] * self.steps[0]
        #: zeros before the first sample (the most negative window offset) and after the last
        self.lead = sum(p * st for p, st in zip(pad, self.steps, strict=True))
        self.trail = sum((r - p) * st for p, r, st in zip(pad, reach, self.steps, strict=True))
        self.taps = tuple(d * st for d, st in zip(self.dilation, self.steps, strict=True))

    @staticmethod
    def applies(stride: Sequence[int], pad: Sequence[int], kernel: Sequence[int], dilation: Sequence[int]) -> bool:
        """Stride 1 everywhere and no padding wider than the kernel's reach (the layout's assumptions)."""
        return all(s == 1 for s in stride) and all(
            p <= d * (k - 1) for p, k, d in zip(pad, kernel, dilation, strict=True)
        )

    @property
    def waste(self) -> float:
        """GEMM columns per real output position."""
        return self.out_span / max(math.prod(self.out), 1)

    def bytes_per_sample(self, rows: int, itemsize: int) -> int:
        """Column-matrix bytes of one sample for ``rows`` rows (channels times kernel taps)."""
        return rows * max(self.out_span, self.in_span) * itemsize

    # --- layouts --------------------------------------------------------------------------
    def source(self, x):
        """``(n, C, *spatial)`` -> ``(C, lead + n * per_sample + trail)``: the samples on the zero-gapped grid."""
        n, c = x.shape[:2]
        src = numpy.zeros((c, self.lead + n * self.per_sample + self.trail), dtype=x.dtype)
        self._grid(src, self.lead, n)[(slice(None), slice(None), *self._real(self.spatial))] = x.swapaxes(0, 1)
        return src

    def spread(self, dy):
        """``(n, O, *out)`` -> ``(O, trail + n * per_sample + lead)``: the output gradient on the grid, else 0."""
        n, o = dy.shape[:2]
        buf = numpy.zeros((o, self.trail + n * self.per_sample + self.lead), dtype=dy.dtype)
        self._grid(buf, self.trail, n)[(slice(None), slice(None), *self._real(self.out))] = dy.swapaxes(0, 1)
        return buf

    def compact(self, dy):
        """``(n, O, *out)`` -> ``(O, n * out_span)``: the output gradient at the output columns, zero in the gaps."""
        n, o = dy.shape[:2]
        buf = numpy.zeros((o, n, self.out[0], *self.extent[1:]), dtype=dy.dtype)
        buf[(slice(None), slice(None), *self._real(self.out))] = dy.swapaxes(0, 1)
        return buf.reshape(o, -1)

    def columns(self, src, n: int, span: int):
        """C-contiguous ``(rows * prod(kernel), n * span)``: the first ``span`` positions of each sample.

        Row ``(r, j)`` at position ``q`` of sample ``s`` is ``src[r, s * per_sample + q + sum_i j_i * taps_i]``:
        the value that tap ``j`` of the kernel reads for the output at that grid position when
        ``src`` is a :meth:`source` (``span`` :attr:`out_span`), or the output gradient that reaches
        that input position through tap ``kernel - 1 - j`` when ``src`` is a :meth:`spread`
        (``span`` :attr:`in_span`).
        """
        step = src.strides[1]
        view = numpy.lib.stride_tricks.as_strided(
            src,
            (src.shape[0], *self.kernel, n, span),
            (src.strides[0], *(t * step for t in self.taps), self.per_sample * step, step),
            writeable=False,
        )
        return numpy.ascontiguousarray(view).reshape(src.shape[0] * math.prod(self.kernel), -1)

    def outputs(self, yw, n: int, out=None, bias=None):
        """``(O, n * out_span)`` -> ``(n, O, *out)`` (into ``out`` when given), adding ``bias[o]`` when given."""
        grid = yw.reshape(yw.shape[0], n, self.out[0], *self.extent[1:])
        real = grid[(slice(None), slice(None), *self._real(self.out))].swapaxes(0, 1)
        if out is None:
            out = numpy.empty(real.shape, dtype=yw.dtype)
        if bias is None:
            out[...] = real
        else:
            numpy.add(real, bias.reshape((1, -1) + (1,) * len(self.out)), out=out)
        return out

    def inputs(self, dxw, n: int, out=None):
        """``(C, n * in_span)`` gradient -> ``(n, C, *spatial)`` (into ``out`` when given)."""
        grid = dxw.reshape(dxw.shape[0], n, *self.spatial[:1], *self.extent[1:])
        real = grid[(slice(None), slice(None), *self._real(self.spatial))].swapaxes(0, 1)
        if out is None:
            return numpy.ascontiguousarray(real)
        out[...] = real
        return out

    # --- helpers --------------------------------------------------------------------------
    def _grid(self, buf, offset: int, n: int):
        """``(rows, n, *extent)`` view of ``buf`` from ``offset``."""
        return buf[:, offset : offset + n * self.per_sample].reshape(buf.shape[0], n, *self.extent)

    @staticmethod
    def _real(shape: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(0, s) for s in shape)


def flipped_weights(w, group: int):
    """``(O, C/g, *kernel)`` -> ``(g, C/g, O/g * prod(kernel))``: the weights of the input-gradient GEMM.

    Row ``c`` of group ``g`` holds ``W[o, c, kernel - 1 - j]`` for every ``(o, j)`` of the group
    (:func:`netdef.layers.im2col.flipped_kernel`, one row per input channel).
    """
    return flipped_kernel(w, group).reshape(group, w.shape[1], -1)
