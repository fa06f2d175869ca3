"""Winograd's minimal filtering for stride-1 2-D convolutions: fewer multiplications than im2col.

A 2-D correlation of an ``r x r`` kernel can compute an ``m x m`` block of outputs from an
``n x n`` input tile (``n = m + r - 1``) with ``n*n`` multiplications per input and output
channel instead of ``m*m*r*r`` (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016): with the tile ``d``, the kernel ``g`` and three constant matrices,

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise)

Summed over input channels the elementwise products become ``n*n`` independent GEMMs
``(C_out x C_in) @ (C_in x tiles)``, so the work is mostly GEMM with ``m*m*r*r / (n*n)``
times fewer flops: 2.25x for F(2x2, 3x3), 4x for F(4x4, 3x3), 2.8x for F(2x2, 5x5). The
transforms of the tiles are one GEMM each with the Kronecker product of the small matrices
(``kron(B^T, B^T)`` is ``n*n x n*n``), cheap next to the main GEMMs when there are many
channels (:func:`choose`).

The matrices follow from the Toom-Cook construction on the interpolation points
``0, 1, -1, 2, -2, ...`` and infinity: ``A^T`` and ``G`` are written down from the points and
``B^T`` is the unique solution of the linear conditions that make the formula an exact
correlation (solved once in float64 and checked). The rounding error in float32 is a few
times that of the direct sum (about 1e-5 of the largest output for F(4x4, 3x3)).

The input gradient of such a convolution is a convolution of the output gradient with the
flipped kernel, input and output channels swapped (``im2col.flipped_kernel``), and padding ``r - 1 - pad``: the same
routine serves both directions. The weight gradient correlates each ``m x m`` block of the
output gradient with the input tile it came from, F(r x r, m x m) on the same tiles.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy

from . import ort_kernels

#: Output block size per kernel size that :func:`choose` uses: F(4x4, 3x3). F(2x2, 5x5) is
#: exact too (``Winograd(5, ..., m=2)``) but its 6x6 tiles for 4 outputs cost more in
#: transforms than its GEMMs save (measured on CIFAR-10's and CaffeNet's 5x5 layers).
BLOCK = {3: 4}
#: Fewest input and output channels per group for which the transforms pay for themselves.
MIN_CHANNELS = 64
#: Smallest output height and width: on smaller maps the blocks' overhang and the many small
#: tiles cost more than the GEMMs save (ResNet's 7x7 and CIFAR's 8x8 maps measured slower).
MIN_SIZE = 12
#: Bytes of transformed tiles (input side) per chunk of samples.
CHUNK_BYTES = 8 * 2**20


@functools.cache
def matrices(m: int, r: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """``(A^T, G, B^T)`` in float64 for F(m, r): shapes ``(m, n)``, ``(n, r)``, ``(n, n)``."""
    n = m + r - 1
    pts = [0.0]
    k = 1
    while len(pts) < n - 1:
        pts += [float(k), -float(k)]
        k += 1
    a = numpy.array(pts[: n - 1])
    at = numpy.zeros((m, n))
    at[:, : n - 1] = a[None, :] ** numpy.arange(m)[:, None]
    at[m - 1, n - 1] = 1.0
    g = numpy.zeros((n, r))
    for i in range(n - 1):
        g[i] = a[i] ** numpy.arange(r) / math.prod(a[i] - a[j] for j in range(n - 1) if j != i)
    g[n - 1, r - 1] = 1.0
    # Y_k = sum_j g_j d_{k+j} for every d and g:  sum_i A^T[k, i] G[i, j] B^T[i, :] = e_{k+j}
    coeff = numpy.einsum("ki,ij->kji", at, g).reshape(m * r, n)
    target = numpy.zeros((m * r, n))
    for kk in range(m):
        for j in range(r):
            target[kk * r + j, kk + j] = 1.0
    bt = numpy.linalg.lstsq(coeff, target, rcond=None)[0]
    if not numpy.allclose(coeff @ bt, target, atol=1e-10):  # pragma: no cover - a construction error
        raise AssertionError(f"no exact Winograd transform for F({m}, {r})")
    return at, g, bt


class Winograd:
    """F(m x m, r x r) for one convolution geometry: ``pad`` per axis, inputs of ``spatial`` shape."""

    def __init__(self, r: int, pad: Sequence[int], spatial: Sequence[int], dtype, m: int | None = None):
        self.r, self.m = r, (m or BLOCK[r])
        self.n = self.m + r - 1
        self.pad = tuple(int(p) for p in pad)
        self.spatial = tuple(int(s) for s in spatial)
        self.out = tuple(s + 2 * p - r + 1 for s, p in zip(self.spatial, self.pad, strict=True))
        self.tiles = tuple(-(-o // self.m) for o in self.out)
        at, g, bt = matrices(self.m, r)
        self.dtype = numpy.dtype(dtype)
        self.kron_b = numpy.kron(bt, bt).astype(self.dtype)
        self.kron_a = numpy.kron(at, at).astype(self.dtype)
        self.kron_g = numpy.kron(g, g)
        # the weight gradient's F(r x r, m x m) on the same tiles
        at2, g2, bt2 = (a.astype(self.dtype) for a in matrices(r, self.m))
        self.grad_kron_b, self.grad_kron_g, self.grad_kron_a = (numpy.kron(a, a) for a in (bt2, g2, at2))

    def weights(self, w, group: int):
        """``(O, C/g, r, r)`` -> ``(n*n, g, O/g, C/g)``: ``G w G^T`` per input and output channel."""
        o, cg = w.shape[:2]
        u = self.kron_g @ w.reshape(o * cg, self.r * self.r).T.astype(numpy.float64)
        return u.astype(self.dtype).reshape(self.n * self.n, group, o // group, cg)

    def transposed(self) -> Winograd:
        """The geometry of the input gradient: outputs become inputs, padding ``r - 1 - pad``."""
        return Winograd(self.r, tuple(self.r - 1 - p for p in self.pad), self.out, self.dtype, self.m)

    def samples_per_chunk(self, channels: int) -> int:
        per_sample = self.n * self.n * channels * math.prod(self.tiles) * self.dtype.itemsize
        return max(1, CHUNK_BYTES // max(per_sample, 1))

    def convolve(self, x, u, out=None, bias=None):
        """``(N, C, H, W)`` -> ``(N, O, *out)`` with transformed weights ``u`` from :meth:`weights`."""
        num, c = x.shape[:2]
        nn, g, og, _ = u.shape
        o = g * og
        if out is None:
            out = numpy.empty((num, o, *self.out), dtype=x.dtype)
        step = self.samples_per_chunk(max(c, o))
        for s in range(0, num, step):
            xs = x[s : s + step]
            v = ort_kernels.matmul(self.kron_b, self._tiles(xs)).reshape(nn, g, c // g, -1)
            prod = ort_kernels.matmul(u, v).reshape(nn, -1)
            y = ort_kernels.matmul(self.kron_a, prod).reshape(self.m, self.m, o, xs.shape[0], *self.tiles)
            # y[a, b, o, n, i, j] is output (i*m + a, j*m + b) of sample n, channel o
            whole = y.transpose(3, 2, 4, 0, 5, 1).reshape(xs.shape[0], o, *(t * self.m for t in self.tiles))
            kept = whole[:, :, : self.out[0], : self.out[1]]
            if bias is None:
                out[s : s + step] = kept
            else:
                numpy.add(kept, bias.reshape(1, o, 1, 1), out=out[s : s + step])
        return out

    def weight_grad(self, x, dy, group: int):
        """``dW[o, c] = sum_{n, p} dy[n, o, p] * x_pad[n, c, p + k]`` as ``(O, C/g, r, r)``, by Winograd too.

        Each ``m x m`` block of the output gradient meets the same ``n x n`` input tile as in the
        forward pass, and their correlation is an ``r x r`` block: F(r x r, m x m), whose
        elementwise products summed over tiles and samples are ``n*n`` GEMMs
        ``(O x tiles) @ (tiles x C)``.
        """
        kron_b, kron_g, kron_a = self.grad_kron_b, self.grad_kron_g, self.grad_kron_a
        num, c = x.shape[:2]
        o = dy.shape[1]
        nn, m, th, tw = self.n * self.n, self.m, *self.tiles
        acc = numpy.zeros((nn, group, o // group, c // group), dtype=self.dtype)
        step = self.samples_per_chunk(max(c, o))
        for s in range(0, num, step):
            xs, dys = x[s : s + step], dy[s : s + step]
            nb = xs.shape[0]
            xt = ort_kernels.matmul(kron_b, self._tiles(xs)).reshape(nn, group, c // group, -1)
            padded = numpy.zeros((nb, o, th * m, tw * m), dtype=self.dtype)
            padded[:, :, : self.out[0], : self.out[1]] = dys
            # blocks[u, v, o, n, i, j] = dy[n, o, i*m + u, j*m + v]
            blocks = numpy.ascontiguousarray(padded.reshape(nb, o, th, m, tw, m).transpose(3, 5, 1, 0, 2, 4))
            dyt = ort_kernels.matmul(kron_g, blocks.reshape(m * m, -1)).reshape(nn, group, o // group, -1)
            acc += ort_kernels.matmul(dyt, xt.swapaxes(-1, -2))
        dw = ort_kernels.matmul(kron_a, acc.reshape(nn, -1)).reshape(self.r, self.r, o, c // group)
        return dw.transpose(2, 3, 0, 1)

    def _tiles(self, xs):
        """``(n, C, H, W)`` -> C-contiguous ``(n*n, C * n * tiles)``: every overlapping input tile."""
        num, c, h, w = xs.shape
        size = tuple(t * self.m + self.r - 1 for t in self.tiles)
        src = numpy.zeros((c, num, *size), dtype=xs.dtype)
        ph, pw = self.pad
        src[:, :, ph : ph + h, pw : pw + w] = xs.swapaxes(0, 1)
        st = src.strides
        view = numpy.lib.stride_tricks.as_strided(
            src,
            (self.n, self.n, c, num, *self.tiles),
            (st[2], st[3], st[0], st[1], self.m * st[2], self.m * st[3]),
            writeable=False,
        )
        return numpy.ascontiguousarray(view).reshape(self.n * self.n, -1)


def choose(kernel, stride, pad, dilation, spatial, channels: int, outputs: int, dtype) -> Winograd | None:
    """A Winograd plan for this 2-D convolution (per-group ``channels`` and ``outputs``), or None.

    Square 3x3 or 5x5 kernels, stride 1, no dilation, padding below the kernel size, and
    enough channels on both sides for the GEMMs to dominate the transforms.
    """
    if len(kernel) != 2 or kernel[0] != kernel[1] or kernel[0] not in BLOCK:
        return None
    if any(s != 1 for s in stride) or any(d != 1 for d in dilation) or any(p >= kernel[0] for p in pad):
        return None
    if min(channels, outputs) < MIN_CHANNELS or numpy.dtype(dtype) not in (numpy.float32, numpy.float64):
        return None  # half precision would lose too much in the transforms
    plan = Winograd(kernel[0], pad, spatial, dtype)
    return plan if min(plan.out) >= max(plan.m, MIN_SIZE) else None
