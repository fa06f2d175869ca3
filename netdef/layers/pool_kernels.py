"""NumPy kernels for 2-D pooling windows in a phase layout, where every window offset is one contiguous slice.

A strided view of an ``(N, C, H, W)`` array (one per kernel offset) makes NumPy run short, strided
inner loops: the per-loop overhead and the missing SIMD cost far more than the arithmetic. Here the
input is copied once into a *phase layout*: along an axis with stride ``s``, padded position
``i * s + phase`` goes to block ``phase``, index ``i``, and every block holds ``out + (k - 1) // s``
positions (the extra ones are junk, computed and then dropped). Kernel offset ``j`` then reads block
``j % s`` shifted by ``j // s``, which over the whole flattened block is a plain 1-D slice. Positions
outside the image hold the pad value, written once when the buffer is made.

The operations per element (and their order) are the ones of the strided-view code in
:mod:`netdef.layers.pooling`, so results match it bit for bit, NaN and infinity included; only the
memory layout differs. (One exception: where +0 and -0 tie for a window maximum, which of them comes
out depends on NumPy's ``fmax`` loop, and its SIMD loop for contiguous data and scalar loop for
strided data differ.) Work runs over chunks of channel planes so that the buffers stay in the cache;
the chunks are shared out over netdef's threads (:func:`netdef.threads.run_parts`), each with its own buffers.
The buffers are made afresh for each call and not kept: with netdef's malloc settings
(:mod:`netdef.allocator`) a new buffer reuses freed memory without page faults, and keeping
a set per geometry and pass cost 36 MiB in cifar10_quick for no measurable speed.
"""

from __future__ import annotations

import math

import numpy

from .. import threads

#: Input bytes per chunk of channel planes (several buffers of about this size are live at once).
CHUNK_BYTES = 1 << 21


class AxisPhases:
    """One axis of a pooling window in phase layout (sizes of the input, kernel, stride, pad and output)."""

    def __init__(self, size: int, kernel: int, stride: int, pad: int, out: int):
        self.size, self.kernel, self.stride, self.pad, self.out = size, kernel, stride, pad, out
        self.overlap = stride < kernel
        #: the largest shift of a kernel offset within its block, and the block length
        self.shift = (kernel - 1) // stride
        self.length = out + self.shift
        self.phases = min(stride, kernel)

    def offset(self, j: int) -> tuple[int, int]:
        """(block, shift) that kernel offset ``j`` reads."""
        return j % self.stride, j // self.stride

    def image(self, phase: int) -> tuple[int, int, int]:
        """Block indices ``[lo, hi)`` of ``phase`` that hold image positions, and the first such position."""
        s, first = self.stride, self.pad - phase
        lo = max(0, -(-first // s))
        last = first + self.size - 1
        hi = min(self.length, last // s + 1) if last >= 0 else 0
        return lo, max(lo, hi), lo * s - first

    def covers_image(self) -> bool:
        """Whether every image position lies in a block (else some get no gradient and need zeros)."""
        return sum(hi - lo for lo, hi, _ in map(self.image, range(self.phases))) == self.size


def _max_scan(views, m, arg, better, tmp) -> None:
    """Running maximum of ``views`` into ``m``; ``arg`` gets the view index of the first maximum.

    ``fmax`` keeps the running value where a view is NaN, and the strict ``>`` keeps the first of equal
    values, as the strided code (and Caffe's scan) do.
    """
    if len(views) == 1:
        numpy.copyto(m, views[0])
        arg.fill(0)
        return
    numpy.greater(views[1], views[0], out=better)
    numpy.fmax(views[0], views[1], out=m)
    # a boolean reinterpreted as int8 is the offset 1 where it is set
    hit = better.view(numpy.int8) if arg.dtype == numpy.int8 else better
    numpy.copyto(arg, hit)
    for j in range(2, len(views)):
        numpy.greater(views[j], m, out=better)
        numpy.fmax(m, views[j], out=m)
        # arg < j everywhere, so taking j where the new value wins is a maximum
        numpy.multiply(hit, arg.dtype.type(j), out=tmp)
        numpy.maximum(arg, tmp, out=arg)


def _sum_scan(views, s) -> None:
    if len(views) == 1:
        numpy.copyto(s, views[0])
        return
    numpy.add(views[0], views[1], out=s)
    for v in views[2:]:
        numpy.add(s, v, out=s)


class _Chunk:
    """Buffers for ``planes`` channel planes: the staged input (or gradient) and each pass's working arrays.

    In a forward chunk the pad positions of ``staged`` keep ``fill`` for good: only image positions are
    written. The tails (room for the shifted slices of the last block) start at zero and are only read by,
    or get zeros added from, the junk positions.
    """

    def __init__(self, h: AxisPhases, w: AxisPhases, planes: int, dtype, fill):
        self.shape = (h.stride, planes, h.length, w.length)
        self.block = planes * h.length * w.length
        self.rows = h.stride * self.block  # positions of the width pass: every row block
        self.staged = numpy.full((w.stride, self.rows + w.shift), fill, dtype=dtype)
        self.staged[:, self.rows :] = 0
        self.mid = numpy.zeros(self.rows + h.shift * w.length, dtype=dtype)
        self.top = numpy.zeros(self.block, dtype=dtype)
        self.divisors = None

    def tiled(self, divisors, out_hw):
        """The AVE divisors for every output of the chunk in block layout (1 at the junk positions)."""
        if self.divisors is None:
            self.divisors = numpy.ones_like(self.top)
            self.valid(self.divisors, out_hw)[...] = divisors
        return self.divisors

    def grid(self, flat):
        """A width block (or the row blocks) as (row block, plane, row, column)."""
        return flat[: self.rows].reshape(self.shape)

    def valid(self, flat, out_hw):
        """The (planes, OH, OW) outputs inside a block-layout array of junk-padded outputs."""
        return flat.reshape(self.shape[1:])[:, : out_hw[0], : out_hw[1]]


class PhasePlan:
    """Pooling kernels for one window geometry on NumPy arrays (see the module docstring)."""

    def __init__(self, windows):
        (sh, sw), (kh, kw) = windows.in_hw, windows.kernel
        (st_h, st_w), (ph, pw), (oh, ow) = windows.stride, windows.pad, windows.out_hw
        self.h = AxisPhases(sh, kh, st_h, ph, oh)
        self.w = AxisPhases(sw, kw, st_w, pw, ow)
        self.out_hw = (oh, ow)
        self.covers = self.h.covers_image() and self.w.covers_image()
        self.arg_dtype = numpy.int8 if max(kh, kw) < 128 else numpy.int32

    # layout ------------------------------------------------------------------------------------------------
    def _spans(self, n_planes: int, itemsize: int) -> list[tuple[int, int]]:
        """Chunks of planes of equal size (:func:`netdef.threads.chunk_count`, at most ``CHUNK_BYTES`` each)."""
        parts = threads.chunk_count(n_planes, self.h.size * self.w.size * itemsize, CHUNK_BYTES)
        per = max(1, math.ceil(n_planes / max(1, parts)))
        return [(a, min(a + per, n_planes)) for a in range(0, n_planes, per)]

    def _chunk(self, made: dict, planes: int, dtype, fill=0) -> _Chunk:
        """Buffers for ``planes`` planes, made once per call (``made``) and shared by its chunks of that size."""
        if planes not in made:
            made[planes] = _Chunk(self.h, self.w, planes, dtype, fill)
        return made[planes]

    def _blocks(self):
        """``(row block, column block, block index, image index)`` for each pair of blocks holding image."""
        h, w = self.h, self.w
        for p_h in range(h.phases):
            lo_h, hi_h, y0 = h.image(p_h)
            for p_w in range(w.phases):
                lo_w, hi_w, x0 = w.image(p_w)
                if hi_h > lo_h and hi_w > lo_w:
                    block = (slice(None), slice(lo_h, hi_h), slice(lo_w, hi_w))
                    image = (
                        slice(None),
                        slice(y0, y0 + (hi_h - lo_h - 1) * h.stride + 1, h.stride),
                        slice(x0, x0 + (hi_w - lo_w - 1) * w.stride + 1, w.stride),
                    )
                    yield p_h, p_w, block, image

    def _width_views(self, chunk: _Chunk, src):
        return [src[p][q : q + chunk.rows] for p, q in map(self.w.offset, range(self.w.kernel))]

    def _height_views(self, chunk: _Chunk, src):
        starts = (p * chunk.block + q * self.w.length for p, q in map(self.h.offset, range(self.h.kernel)))
        return [src[a : a + chunk.block] for a in starts]

    # forward ----------------------------------------------------------------------------------------------
    def _forward(self, x, fill, chunk_op):
        """Stage each chunk of planes of ``x`` and let ``chunk_op(chunk, y_chunk)`` fill its outputs.

        Returns the outputs and, per chunk, its ``(first plane, end plane)`` and what ``chunk_op`` returned.
        """
        n, c = x.shape[:2]
        planes = x.reshape(n * c, self.h.size, self.w.size)
        y = numpy.empty((n * c, *self.out_hw), dtype=x.dtype)

        def share(spans):
            made: dict = {}
            out = []
            for a, b in spans:
                chunk = self._chunk(made, b - a, x.dtype, fill)
                for p_h, p_w, block, image in self._blocks():
                    numpy.copyto(chunk.grid(chunk.staged[p_w])[p_h][block], planes[a:b][image])
                out.append(((a, b), chunk_op(chunk, y[a:b])))
            return out

        state = threads.run_parts(share, self._spans(n * c, x.itemsize))
        return y.reshape(n, c, *self.out_hw), state

    def max_forward(self, x):
        """Window maxima, and per chunk its planes and the argmax offsets: of each row segment's column, of
        each window's row."""

        def op(chunk: _Chunk, y):
            aw, ah = numpy.empty(chunk.rows, self.arg_dtype), numpy.empty(chunk.block, self.arg_dtype)
            better, tmp = numpy.empty(chunk.rows, bool), numpy.empty(chunk.rows, self.arg_dtype)
            _max_scan(self._width_views(chunk, chunk.staged), chunk.mid[: chunk.rows], aw, better, tmp)
            b = chunk.block
            _max_scan(self._height_views(chunk, chunk.mid), chunk.top, ah, better[:b], tmp[:b])
            numpy.copyto(y, chunk.valid(chunk.top, self.out_hw))
            return ah, aw

        return self._forward(x, numpy.finfo(x.dtype).min, op)

    def ave_forward(self, x, divisors):
        def op(chunk: _Chunk, y):
            _sum_scan(self._width_views(chunk, chunk.staged), chunk.mid[: chunk.rows])
            _sum_scan(self._height_views(chunk, chunk.mid), chunk.top)
            numpy.divide(chunk.top, chunk.tiled(divisors, self.out_hw), out=chunk.top)
            numpy.copyto(y, chunk.valid(chunk.top, self.out_hw))

        return self._forward(x, 0, op)[0]

    # backward ---------------------------------------------------------------------------------------------
    @staticmethod
    def _spread(axis: AxisPhases, g, dsts, arg=None, scratch=None) -> None:
        """Adjoint of one pass: add ``g`` (masked by ``arg == j`` for MAX) to each offset's slice ``dsts[j]``.

        The first offset of a block (shift 0) assigns; where windows overlap it then adds zero, which
        turns -0 into +0 exactly as the strided code's zero-filled sum does.
        """
        for j, dst in enumerate(dsts):
            shifted = axis.offset(j)[1] > 0
            src = g
            if arg is not None:
                tmp, hit = scratch
                numpy.equal(arg, arg.dtype.type(j), out=hit)
                src = numpy.multiply(g, hit, out=tmp if shifted else dst)
            if shifted:
                numpy.add(dst, src, out=dst)
            elif axis.overlap:
                numpy.add(src, 0, out=dst)
            elif src is not dst:
                numpy.copyto(dst, src)

    def _backward(self, dy, x_shape, state=None, divisors=None):
        """The input gradient; ``state`` is :meth:`max_forward`'s (its chunks are used), else chunks are new."""
        n, c = x_shape[:2]
        h, w = self.h, self.w
        dy3 = dy.reshape(n * c, *self.out_hw)
        dx = (numpy.empty if self.covers else numpy.zeros)(x_shape, dtype=dy.dtype)
        dx3 = dx.reshape(n * c, h.size, w.size)
        if state is None:
            state = [(span, None) for span in self._spans(n * c, dy.itemsize)]

        def share(parts):
            made: dict = {}
            for (a, b), args in parts:
                chunk = self._chunk(made, b - a, dy.dtype)
                g, rows, cols, blk = chunk.top, chunk.mid, chunk.staged, chunk.block
                numpy.copyto(chunk.valid(g, self.out_hw), dy3[a:b])
                if divisors is not None:
                    numpy.divide(g, chunk.tiled(divisors, self.out_hw), out=g)
                ah = aw = scratch = head = None
                if args is not None:
                    ah, aw = args
                    scratch = (numpy.empty(chunk.rows, dy.dtype), numpy.empty(chunk.rows, bool))
                    head = (scratch[0][:blk], scratch[1][:blk])
                self._spread(h, g, self._height_views(chunk, rows), ah, head)
                self._spread(w, rows[: chunk.rows], self._width_views(chunk, cols), aw, scratch)
                for p_h, p_w, block, image in self._blocks():
                    numpy.copyto(dx3[a:b][image], chunk.grid(cols[p_w])[p_h][block])
            return None

        threads.run_parts(share, state)
        return dx

    def max_backward(self, dy, state, x_shape):
        return self._backward(dy, x_shape, state=state)

    def ave_backward(self, dy, x_shape, divisors):
        return self._backward(dy, x_shape, divisors=divisors)

    def max_mask(self, state, x_shape, dtype):
        """Caffe's mask top (flat index ``h * W + w`` of each window's argmax) from the chunked state."""
        n, c = x_shape[:2]
        h, w = self.h, self.w
        out = numpy.empty((n * c, *self.out_hw), dtype=dtype)
        top = numpy.arange(h.out)[:, None] * h.stride - h.pad
        left = numpy.arange(w.out)[None, :] * w.stride - w.pad
        for (a, b), (ah, aw) in state:
            shape = (b - a, h.length, w.length)
            ah3 = ah.reshape(shape)[:, : h.out, : w.out].astype(numpy.int64)
            col = numpy.zeros(ah3.shape, dtype=numpy.int64)
            for i in range(h.kernel):
                p, q = h.offset(i)
                col += (ah3 == i) * aw[p * ah.size : (p + 1) * ah.size].reshape(shape)[:, q : q + h.out, : w.out]
            out[a:b] = (top + ah3) * w.size + left + col
        return out.reshape(n, c, *self.out_hw)
