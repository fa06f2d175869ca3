"""Tests of the flat-grid stride-1 convolution (netdef/layers/conv_flat.py) and the Convolution layer on it."""

import math

import numpy
import pytest

from netdef import TEST, TRAIN, backend
from netdef.layers import conv_flat, im2col
from netdef.layers.conv_flat import FlatGrid, flipped_weights
from netdef.testing import check_gradient, forward_layer, make_layer

RNG = numpy.random.default_rng(11)

# spatial shape, kernel, pad, dilation
GEOMETRIES = [
    ((6, 7), (3, 3), (1, 1), (1, 1)),
    ((5, 9), (3, 2), (2, 0), (1, 2)),  # padding as wide as the reach on one axis, none on the other
    ((4, 4), (1, 1), (0, 0), (1, 1)),  # 1x1: the columns are the input
    ((8, 5), (5, 3), (0, 1), (1, 1)),  # no padding: "valid" rows leave thrown-away grid positions
    ((7,), (3,), (1,), (2,)),  # 1-D, dilated
    ((3, 4, 5), (2, 3, 2), (1, 1, 0), (1, 1, 2)),  # 3-D
]


@pytest.mark.parametrize("spatial, kernel, pad, dilation", GEOMETRIES)
def test_columns_hold_every_patch_of_the_real_outputs(spatial, kernel, pad, dilation):
    x = RNG.standard_normal((3, 2, *spatial))
    grid = FlatGrid(spatial, kernel, pad, dilation)
    out = im2col.conv_output_shape(None, spatial, kernel, pad, (1,) * len(spatial), dilation)
    assert grid.out == out
    col = grid.columns(grid.source(x), 3, grid.out_span)
    assert col.flags.c_contiguous and col.shape == (2 * math.prod(kernel), 3 * grid.out_span)
    rows = col.reshape(col.shape[0], 3, out[0], *grid.extent[1:])
    real = rows[(slice(None), slice(None), *(slice(0, o) for o in out))]
    want = im2col.patches(x, kernel, (1,) * len(spatial), pad, dilation, out, False)
    numpy.testing.assert_array_equal(real, want.reshape(real.shape))


@pytest.mark.parametrize("spatial, kernel, pad, dilation", GEOMETRIES)
def test_spread_columns_give_the_input_gradient(spatial, kernel, pad, dilation):
    # gathering the spread output gradient through the flipped kernel equals col2im of W^T dy
    n, c, o = 2, 3, 4
    grid = FlatGrid(spatial, kernel, pad, dilation)
    w = RNG.standard_normal((o, c, *kernel))
    dy = RNG.standard_normal((n, o, *grid.out))
    col = grid.columns(grid.spread(dy), n, grid.in_span)
    dx = grid.inputs((flipped_weights(w, 1)[0] @ col), n)
    stride = (1,) * len(spatial)
    dcol = (w.reshape(o, -1).T @ im2col.batch_to_columns(dy, False)).reshape(c, *kernel, n, *grid.out)
    want = im2col.fold_patches(dcol, spatial, kernel, stride, pad, dilation, grid.out, False)
    numpy.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-12)


def test_outputs_add_the_bias_and_drop_the_gap_positions():
    grid = FlatGrid((2, 3), (3, 3), (1, 1), (1, 1))
    assert grid.extent == (3, 4) and grid.lead == 5 and grid.trail == 5
    assert grid.out_span == 8 and grid.in_span == 8 and grid.per_sample == 12
    yw = numpy.arange(2 * 2 * grid.out_span, dtype=float).reshape(2, -1)  # two samples
    y = grid.outputs(yw, 2, bias=numpy.array([0.0, 100.0]))
    numpy.testing.assert_array_equal(y[0, 0], [[0, 1, 2], [4, 5, 6]])
    numpy.testing.assert_array_equal(y[1, 0], [[8, 9, 10], [12, 13, 14]])
    numpy.testing.assert_array_equal(y[0, 1], [[116, 117, 118], [120, 121, 122]])
    dy = numpy.arange(12.0).reshape(2, 1, 2, 3)
    numpy.testing.assert_array_equal(grid.compact(dy)[0], [0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 9, 10, 11, 0])


def test_applies_and_waste():
    assert FlatGrid.applies((1, 1), (2, 2), (5, 5), (1, 1))
    assert not FlatGrid.applies((2, 1), (0, 0), (3, 3), (1, 1))  # strided
    assert not FlatGrid.applies((1, 1), (3, 0), (3, 3), (1, 1))  # padding wider than the kernel reaches
    assert FlatGrid((16, 16), (5, 5), (2, 2), (1, 1)).waste == pytest.approx(18 / 16)
    assert FlatGrid((8, 8), (5, 5), (2, 2), (1, 1)).waste == pytest.approx(10 / 8)
    assert FlatGrid((9, 9), (5, 5), (0, 0), (1, 1)).waste == pytest.approx(9 / 5)  # no padding: wide rows


def test_layer_uses_the_grid_only_where_it_pays():
    common = "weight_filler { type: 'gaussian' }"
    x = [RNG.standard_normal((2, 3, 16, 16))]
    layer, _, _ = forward_layer(
        f'type: "Convolution" convolution_param {{ num_output: 2 kernel_size: 5 pad: 2 {common} }}', x
    )
    assert layer.flat is not None and layer.flat.waste <= conv_flat.MAX_WASTE
    short = [RNG.standard_normal((2, 3, 8, 8))]  # rows of 8: im2col's sample-last order
    assert (
        forward_layer(
            f'type: "Convolution" convolution_param {{ num_output: 2 kernel_size: 5 pad: 2 {common} }}', short
        )[0].flat
        is None
    )
    strided = f'type: "Convolution" convolution_param {{ num_output: 2 kernel_size: 3 stride: 2 {common} }}'
    assert forward_layer(strided, x)[0].flat is None
    small = [RNG.standard_normal((2, 3, 6, 6))]  # grid rows of 6 for output rows of 2: too much waste
    valid = f'type: "Convolution" convolution_param {{ num_output: 2 kernel_size: 5 {common} }}'
    assert forward_layer(valid, small)[0].flat is None
    wide = f'type: "Convolution" convolution_param {{ num_output: 65 kernel_size: 5 pad: 2 {common} }}'
    assert forward_layer(wide, x)[0].flat is None  # the GEMM dominates


def force_grid(monkeypatch, on: bool = True) -> None:
    """Make every stride-1 CPU convolution use the flat grid (or none)."""
    monkeypatch.setattr(conv_flat, "MAX_WASTE", math.inf if on else 0.0)
    monkeypatch.setattr(conv_flat, "MIN_ROW", 0)


def test_literal_values_on_the_grid(monkeypatch):
    force_grid(monkeypatch)
    definition = 'type: "Convolution" convolution_param { num_output: 1 kernel_size: 3 pad: 1 }'
    layer, bottom, top = forward_layer(
        definition, [numpy.ones((1, 1, 3, 3))], [numpy.ones((1, 1, 3, 3)), numpy.ones(1)]
    )
    assert layer.flat is not None
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[5, 7, 5], [7, 10, 7], [5, 7, 5]])
    top[0].diff = numpy.ones(top[0].shape)
    layer.backward(top, [True], bottom)
    # each input pixel is read by as many windows as the output above counts taps
    numpy.testing.assert_array_equal(bottom[0].diff[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    numpy.testing.assert_array_equal(layer.blobs[0].diff[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    assert layer.blobs[1].diff[0] == 9


LAYERS = [
    ("num_output: 4 group: 2 kernel_size: 3 pad: 1", (2, 4, 5, 6)),
    ("num_output: 3 kernel_size: 3 kernel_size: 2 pad: 2 pad: 0 dilation: 1 dilation: 2", (3, 2, 5, 7)),
    ("num_output: 2 kernel_size: 1", (2, 3, 4, 4)),
    ("num_output: 2 kernel_size: 5 bias_term: false", (2, 2, 7, 6)),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1", (2, 2, 3, 4, 3)),
    ("num_output: 5 kernel_size: 3 pad: 1", (2, 1, 5, 5)),  # many outputs per input: im2col's backward
]


def _run(params: str, x, flat: bool, monkeypatch, chunk_bytes: int | None = None, phase=TRAIN):
    force_grid(monkeypatch, flat)
    if chunk_bytes is not None:
        monkeypatch.setattr(im2col, "COL_CHUNK_BYTES", chunk_bytes)
    backend.set_random_seed(5)
    fill = "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"
    definition = f'type: "Convolution" convolution_param {{ {params} {fill} }}'
    layer, bottom, top = forward_layer(definition, x, num_top=len(x), phase=phase, dtype=x[0].dtype)
    assert (layer.flat is not None) == flat
    for t in top:
        t.diff = numpy.sin(numpy.arange(t.count)).reshape(t.shape)
    layer.backward(top, [True] * len(x), bottom)
    return [t.data for t in top] + [b.diff for b in bottom] + [blob.diff for blob in layer.blobs]


@pytest.mark.parametrize("params, shape", LAYERS)
@pytest.mark.parametrize("chunk_bytes", [None, 1])  # 1 byte: one sample per chunk, no kept columns
def test_layer_on_the_grid_matches_im2col(params, shape, chunk_bytes, monkeypatch):
    x = [RNG.standard_normal(shape)]
    want = _run(params, x, False, monkeypatch, chunk_bytes)
    got = _run(params, x, True, monkeypatch, chunk_bytes)
    for g, w in zip(got, want, strict=True):
        numpy.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_several_bottoms_and_test_phase_match_im2col(monkeypatch):
    x = list(RNG.standard_normal((2, 2, 3, 6, 5)))
    params = "num_output: 3 kernel_size: 3 pad: 1"
    for phase in (TRAIN, TEST):
        want = _run(params, x, False, monkeypatch, phase=phase)
        got = _run(params, x, True, monkeypatch, phase=phase)
        for g, w in zip(got, want, strict=True):
            numpy.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_float32_on_the_grid(monkeypatch):
    x = [RNG.standard_normal((4, 3, 9, 9)).astype(numpy.float32)]
    got = _run("num_output: 5 kernel_size: 5 pad: 2", x, True, monkeypatch)
    want = _run("num_output: 5 kernel_size: 5 pad: 2", x, False, monkeypatch)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == numpy.float32
        numpy.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("params, shape", LAYERS)
def test_gradients_on_the_grid(params, shape, monkeypatch):
    force_grid(monkeypatch)
    fill = "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"
    layer = make_layer(f'type: "Convolution" convolution_param {{ {params} {fill} }}')
    result = check_gradient(layer, [RNG.standard_normal(shape)])
    assert result["checked"] > 0
    assert layer.flat is not None


def test_plans_follow_the_input_size():
    definition = 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 5 pad: 2 }'
    layer, bottom, top = forward_layer(definition, [RNG.standard_normal((2, 3, 16, 16))])
    grid = layer.flat
    layer.reshape(bottom, top)
    assert layer.flat is grid  # the same input size keeps its plan
    bottom[0].reshape((2, 3, 8, 8))
    layer.reshape(bottom, top)
    assert layer.flat is None and top[0].shape == (2, 2, 8, 8)  # rows of 8: im2col
    bottom[0].reshape((2, 3, 20, 20))
    layer.reshape(bottom, top)
    assert layer.flat.spatial == (20, 20)
