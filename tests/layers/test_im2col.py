"""Tests of the convolution kernels (netdef/layers/im2col.py): im2col/col2im, layouts, GEMM and geometry."""

import itertools

import numpy
import pytest

from netdef.errors import ShapeMismatchError
from netdef.layers import im2col
from netdef.testing import make_layer, rand

GEOMETRIES = [
    # kernel, stride, pad, dilation
    ((2, 3), (2, 1), (1, 0), (1, 2)),
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2), (1, 3), (0, 2), (2, 1)),
]


def out_shape(spatial, kernel, stride, pad, dilation):
    return tuple(
        (s + 2 * p - d * (k - 1) - 1) // st + 1
        for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation, strict=True)
    )


def naive_patches(x, kernel, stride, pad, dilation):
    """``(C, *kernel, N, *out)``: entry [c, kh, kw, n, oh, ow] = x_pad[n, c, oh*sh + kh*dh, ow*sw + kw*dw]."""
    n, c, h, w = x.shape
    xp = numpy.pad(x, [(0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])])
    oh, ow = out_shape((h, w), kernel, stride, pad, dilation)
    out = numpy.zeros((c, *kernel, n, oh, ow))
    for ch, kh, kw, i, j in itertools.product(range(c), range(kernel[0]), range(kernel[1]), range(oh), range(ow)):
        out[ch, kh, kw, :, i, j] = xp[:, ch, i * stride[0] + kh * dilation[0], j * stride[1] + kw * dilation[1]]
    return out


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("kernel, stride, pad, dilation", GEOMETRIES)
def test_patches_match_the_definition(kernel, stride, pad, dilation, batch_last):
    x = rand(3, 2, 5, 7)
    out = out_shape(x.shape[2:], kernel, stride, pad, dilation)
    col = im2col.patches(x, kernel, stride, pad, dilation, out, batch_last)
    want = naive_patches(x, kernel, stride, pad, dilation)
    if batch_last:  # (C, *kernel, *out, N)
        want = numpy.moveaxis(want, 3, -1)
    assert col.flags.c_contiguous
    numpy.testing.assert_array_equal(col, want)
    assert col.shape[3:] == im2col.column_axes(3, out, batch_last)


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("kernel, stride, pad, dilation", GEOMETRIES)
def test_fold_patches_is_the_adjoint_of_patches(kernel, stride, pad, dilation, batch_last):
    # <patches(x), g> == <x, fold_patches(g)> for every x and g: col2im sums overlapping windows
    x = rand(2, 3, 6, 5, seed=1)
    out = out_shape(x.shape[2:], kernel, stride, pad, dilation)
    col = im2col.patches(x, kernel, stride, pad, dilation, out, batch_last)
    g = rand(*col.shape, seed=2)
    folded = im2col.fold_patches(g, x.shape[2:], kernel, stride, pad, dilation, out, batch_last)
    assert folded.shape == x.shape and folded.flags.c_contiguous
    numpy.testing.assert_allclose(numpy.sum(col * g), numpy.sum(x * folded), rtol=1e-12)


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("shape, pad", [((2, 3, 4, 5), (1, 2)), ((3, 2, 4, 4), (0, 0)), ((3000, 1, 2, 2), (1, 0))])
def test_source_round_trip(shape, pad, batch_last):
    # the large batch takes the blocked transpose of sample-last sources
    x = rand(*shape, seed=3)
    src = im2col.to_source(x, pad, batch_last)
    padded = tuple(s + 2 * p for s, p in zip(shape[2:], pad, strict=True))
    assert src.shape == ((shape[1], *padded, shape[0]) if batch_last else (*shape[:2], *padded))
    back = im2col.from_source(src, pad, shape[2:], batch_last)
    assert back.flags.c_contiguous
    numpy.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("batch_last", [False, True])
def test_columns_round_trip_and_bias(batch_last):
    y = rand(4, 3, 2, 5, seed=4)
    yc = im2col.batch_to_columns(y, batch_last)
    assert yc.shape == (3, 4 * 2 * 5) and yc.flags.c_contiguous
    numpy.testing.assert_array_equal(im2col.columns_to_batch(yc, 4, (2, 5), batch_last), y)
    bias = numpy.array([1.0, -2.0, 3.0])
    with_bias = im2col.columns_to_batch(yc, 4, (2, 5), batch_last, bias)
    numpy.testing.assert_allclose(with_bias, y + bias[None, :, None, None])


def test_batch_last_only_for_short_rows_and_a_batch():
    assert im2col.use_batch_last(2, (5, im2col.SHORT_ROW - 1))
    assert not im2col.use_batch_last(2, (5, im2col.SHORT_ROW))
    assert not im2col.use_batch_last(1, (5, 3))


def test_blocked_matmul_nt_equals_the_plain_product():
    # long, skinny products are summed in K-blocks; the result must equal the plain product
    a, b = rand(2, 3, 9000, seed=5), rand(2, 4, 9000, seed=6)
    numpy.testing.assert_allclose(im2col.matmul_nt(a, b), a @ b.transpose(0, 2, 1), rtol=1e-12)
    a, b = rand(2, 3, 7), rand(2, 4, 7, seed=1)
    numpy.testing.assert_allclose(im2col.matmul_nt(a, b), a @ b.transpose(0, 2, 1), rtol=1e-12)


def test_batch_chunks_cover_the_batch_evenly(monkeypatch):
    assert im2col.batch_chunks(5, 100) == [slice(0, 5)]
    assert im2col.batch_chunks(0, 100) == []
    monkeypatch.setattr(im2col, "COL_CHUNK_BYTES", 250)
    # at most 2 samples of 100 bytes per chunk: 3 chunks, their sizes differing by one at most
    assert im2col.batch_chunks(5, 100) == [slice(0, 1), slice(1, 3), slice(3, 5)]
    assert im2col.batch_chunks(3, 10**9) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_batch_chunks_come_in_multiples_of_the_threads_when_split(monkeypatch):
    monkeypatch.setattr(im2col.threads, "count", lambda: 2)
    monkeypatch.setattr(im2col, "COL_CHUNK_BYTES", 4 << 20)
    # 10 samples of 1 MiB fit 4 per chunk: 3 chunks, made 4 for two threads
    assert [sl.stop - sl.start for sl in im2col.batch_chunks(10, 1 << 20)] == [2, 3, 2, 3]
    # work under SPLIT_BYTES stays in one chunk
    assert im2col.batch_chunks(8, 1000) == [slice(0, 8)]


def test_output_shape_and_a_kernel_that_does_not_fit():
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 3 }')
    assert im2col.conv_output_shape(layer, (5, 7), (3, 2), (1, 0), (2, 1), (1, 3)) == (3, 4)
    assert im2col.kernel_extent(3, 2) == 5
    with pytest.raises(ShapeMismatchError, match=r'Layer "L" \(type Im2col\): the kernel \(extent 5\) is larger'):
        im2col.conv_output_shape(layer, (4, 7), (3, 3), (0, 0), (1, 1), (2, 1))


def test_flipped_kernel_reverses_space_and_swaps_channels_per_group():
    w = numpy.arange(4 * 3 * 2 * 2, dtype=float).reshape(4, 3, 2, 2)  # 4 outputs, 2 groups of 3 inputs
    f = im2col.flipped_kernel(w, 2)
    assert f.shape == (6, 2, 2, 2) and f.flags.c_contiguous
    numpy.testing.assert_array_equal(f[0, 0], [[3, 2], [1, 0]])  # input 0, output 0 reversed
    numpy.testing.assert_array_equal(f[4, 1], w[3, 1, ::-1, ::-1])  # group 1: input 4 is its input 1
    numpy.testing.assert_array_equal(
        im2col.flipped_kernel(w[:, :, :, :1], 1)[:, :, :, 0], w[:, :, ::-1, 0].swapaxes(0, 1)
    )


def test_channel_sums():
    y = numpy.arange(2 * 3 * 4, dtype=numpy.float32).reshape(2, 3, 2, 2)
    # channel 0: 0+1+2+3 + 12+13+14+15
    numpy.testing.assert_array_equal(im2col.channel_sums(y), [60.0, 92.0, 124.0])
    assert im2col.channel_sums(y).dtype == numpy.float32
    numpy.testing.assert_array_equal(im2col.channel_sums(numpy.zeros((0, 3, 2))), [0.0, 0.0, 0.0])
