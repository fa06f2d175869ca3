"""Tests of Pooling and SPP (netdef/layers/pooling.py)."""

import numpy
import pytest

from netdef import backend
from netdef.errors import BlobCountError, InvalidParameterError, ResourceLimitError, ShapeMismatchError
from netdef.layers import pooling
from netdef.proto import netdef_pb2 as pb
from netdef.testing import (
    check_empty_batch,
    check_gpu_matches_cpu,
    check_gradient,
    check_layer_error,
    forward_layer,
    make_layer,
    run_backward,
    run_layer,
)
from netdef.testing.parity import check_layer_case, layer_cases, parametrize_layer_cases

TYPES = {"Pooling", "SPP"}
RNG = numpy.random.default_rng(11)


def pool(params: str, x, num_top=1, phase=pb.TRAIN, dy=None):
    """Run a float64 Pooling layer; return (tops' data, bottom diff or None)."""
    layer, bottom, top = forward_layer(
        f'type: "Pooling" pooling_param {{ {params} }}', [x], num_top=num_top, phase=phase
    )
    ys = [t.data.copy() for t in top]
    if dy is None:
        return ys, None
    return ys, run_backward(layer, bottom, top, [dy] + [None] * (num_top - 1))[0].copy()


def grid(h, w, start=0.0):
    return (numpy.arange(h * w, dtype=numpy.float64) + start).reshape(1, 1, h, w)


# --- literal values ---------------------------------------------------------------------
def test_max_values_and_gradient_routing():
    x = numpy.array([[[[1, 5, 2, 0], [3, 4, 8, 1], [0, 2, 6, 7], [9, 1, 3, 3]]]], dtype=float)
    (y,), dx = pool("pool: MAX kernel_size: 2 stride: 2", x, dy=[[[[1, 2], [3, 4]]]])
    numpy.testing.assert_array_equal(y, [[[[5, 8], [9, 7]]]])
    want = numpy.zeros((4, 4))
    want[0, 1], want[1, 2], want[3, 0], want[2, 3] = 1, 2, 3, 4
    numpy.testing.assert_array_equal(dx[0, 0], want)


def test_max_ties_go_to_the_first_in_scan_order():
    x = numpy.array([[[[2, 2, 1], [2, 2, 1], [0, 0, 0]]]], dtype=float)
    (y, mask), dx = pool("pool: MAX kernel_size: 2 stride: 1", x, num_top=2, dy=numpy.ones((1, 1, 2, 2)))
    numpy.testing.assert_array_equal(y, [[[[2, 2], [2, 2]]]])
    # window (0,0) -> index 0, (0,1) -> index 1, (1,0) -> index 3, (1,1) -> index 4 (h * W + w)
    numpy.testing.assert_array_equal(mask, [[[[0, 1], [3, 4]]]])
    numpy.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_ceil_rounding_keeps_partial_windows():
    x = grid(3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    (y,), _ = pool("pool: MAX kernel_size: 2 stride: 2", x)
    numpy.testing.assert_array_equal(y, [[[[4, 5], [7, 8]]]])
    (y,), _ = pool("pool: AVE kernel_size: 2 stride: 2", x)
    # partial windows are divided by their own (clipped) size when there is no padding
    numpy.testing.assert_allclose(y, [[[[2, 3.5], [6.5, 8]]]])
    (y,), _ = pool("pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR", x)
    numpy.testing.assert_array_equal(y, [[[[4]]]])
    # the fork spelling of the same choice (MobileNet/SSD ports): ceil_mode: false rounds down
    (y,), _ = pool("pool: MAX kernel_size: 2 stride: 2 ceil_mode: false", x)
    numpy.testing.assert_array_equal(y, [[[[4]]]])
    (y,), _ = pool("pool: MAX kernel_size: 2 stride: 2 ceil_mode: true", x)
    numpy.testing.assert_array_equal(y, [[[[4, 5], [7, 8]]]])


def test_padding_drops_a_window_starting_in_the_padding():
    # H=5, k=2, s=2, pad=1: ceil(5/2)+1 = 4 windows, but the 4th would start at row 6 = H + pad
    (y,), _ = pool("pool: MAX kernel_size: 2 stride: 2 pad: 1", grid(5, 5))
    assert y.shape == (1, 1, 3, 3)
    numpy.testing.assert_array_equal(y[0, 0], [[0, 2, 4], [10, 12, 14], [20, 22, 24]])


def test_window_past_the_image_gives_caffes_initial_value():
    # k1 s3 on width 5 rounds up to 3 windows; the last starts at 6, outside the image (a Caffe quirk)
    x = numpy.array([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])
    layer = make_layer(
        'type: "Pooling" pooling_param { pool: MAX kernel_h: 1 kernel_w: 1 stride_h: 1 stride_w: 3 }',
        dtype=numpy.float32,
    )
    _, top = run_layer(layer, [x])
    numpy.testing.assert_array_equal(top[0].data, [[[[1, 4, -numpy.finfo(numpy.float32).max]]]])


def test_ave_padding_counts_in_the_divisor():
    (y,), dx = pool("pool: AVE kernel_size: 3 stride: 2 pad: 1", numpy.ones((1, 1, 3, 3)), dy=numpy.ones((1, 1, 2, 2)))
    # every window covers 2x2 image cells but is divided by 3x3
    numpy.testing.assert_allclose(y, numpy.full((1, 1, 2, 2), 4 / 9))
    numpy.testing.assert_allclose(dx[0, 0], numpy.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 9)


def test_ave_ceil_window_divided_by_clipped_padded_size():
    # k3 s2 pad1 on 4x4: per axis windows [-1,2) [1,4) [3,5) (clipped at H + pad = 5), divisors 3, 3, 2,
    # holding 2, 3 and 1 image cells
    (y,), _ = pool("pool: AVE kernel_size: 3 stride: 2 pad: 1", numpy.ones((1, 1, 4, 4)))
    cells, sizes = numpy.array([2, 3, 1]), numpy.array([3, 3, 2])
    numpy.testing.assert_allclose(y[0, 0], numpy.outer(cells, cells) / numpy.outer(sizes, sizes))


def test_rectangular_kernel_stride_and_pad():
    x = grid(4, 6)
    (y,), _ = pool("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3 pad_h: 0 pad_w: 1", x)
    # columns windows: [-1,2), [2,5), [5,8) clipped; rows [0,2), [2,4)
    numpy.testing.assert_array_equal(y[0, 0], [[7, 10, 11], [19, 22, 23]])


def test_ties_across_rows_and_columns_go_to_the_first_in_row_major_order():
    # k3 s2 on 4x4 (ceil: 2x2 windows, the second row/column clipped); every window holds several 3s,
    # and a column-first scan would pick (1, 0) instead of (0, 1) in the first one
    x = numpy.array([[[[1, 3, 3, 0], [3, 3, 0, 3], [0, 3, 3, 3], [3, 0, 3, 3]]]], dtype=float)
    (y, mask), dx = pool("pool: MAX kernel_size: 3 stride: 2", x, num_top=2, dy=[[[[1, 2], [3, 4]]]])
    numpy.testing.assert_array_equal(y, numpy.full((1, 1, 2, 2), 3.0))
    numpy.testing.assert_array_equal(mask, [[[[1, 2], [9, 10]]]])
    numpy.testing.assert_array_equal(dx[0, 0], [[0, 1, 2, 0], [0, 0, 0, 0], [0, 3, 4, 0], [0, 0, 0, 0]])


def test_ceil_border_windows_values_and_gradients():
    # 5x6, k3 s2: rows [0,3) [2,5); columns [0,3) [2,5) [4,6) -- the last column window is cut by the edge
    x = grid(5, 6)
    (y,), dx = pool("pool: MAX kernel_size: 3 stride: 2", x, dy=[[[[1, 2, 3], [4, 5, 6]]]])
    numpy.testing.assert_array_equal(y[0, 0], [[14, 16, 17], [26, 28, 29]])
    want = numpy.zeros((5, 6))
    want[2, 2], want[2, 4], want[2, 5], want[4, 2], want[4, 4], want[4, 5] = 1, 2, 3, 4, 5, 6
    numpy.testing.assert_array_equal(dx[0, 0], want)
    (y,), dx = pool("pool: AVE kernel_size: 3 stride: 2", x, dy=numpy.ones((1, 1, 2, 3)))
    numpy.testing.assert_allclose(y[0, 0], [[7, 9, 10.5], [19, 21, 22.5]])
    # a cell gets 1/9 from each 3x3 window holding it and 1/6 from each cut 3x2 one
    cols = numpy.array([2, 2, 4, 2, 5, 3]) / 18
    numpy.testing.assert_allclose(dx[0, 0], numpy.outer([1, 1, 2, 1, 1], cols))


def test_padded_windows_values_and_gradients():
    # 4x4, k3 s2 pad 1: windows [-1,2) [1,4) [3,6) per axis, clipped to the image [0,2) [1,4) [3,4)
    x = grid(4, 4)
    (y, mask), dx = pool("pool: MAX kernel_size: 3 stride: 2 pad: 1", x, num_top=2, dy=grid(3, 3, 1))
    numpy.testing.assert_array_equal(y[0, 0], [[5, 7, 7], [13, 15, 15], [13, 15, 15]])
    numpy.testing.assert_array_equal(mask, y)
    numpy.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [0, 1, 0, 5], [0, 0, 0, 0], [0, 11, 0, 28]])
    (y,), dx = pool("pool: AVE kernel_size: 3 stride: 2 pad: 1", x, dy=numpy.ones((1, 1, 3, 3)))
    # divisors 3, 3, 2 per axis (the last window is clipped at H + pad = 5)
    numpy.testing.assert_allclose(y[0, 0] * 36, [[40, 96, 60], [204, 360, 198], [150, 252, 135]])
    # per axis, cell 0 is in window 0 (1/3), cell 1 in windows 0 and 1, cell 2 in 1, cell 3 in 1 and 2 (1/2)
    per_axis = numpy.array([1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2])
    numpy.testing.assert_allclose(dx[0, 0], numpy.outer(per_axis, per_axis))


def test_stride_larger_than_kernel_skips_cells():
    # 7x7, k2 s3: windows [0,2) [3,5) [6,7); rows and columns 2 and 5 are in no window
    x = grid(7, 7)
    (y,), dx = pool("pool: MAX kernel_size: 2 stride: 3", x, dy=grid(3, 3, 1))
    numpy.testing.assert_array_equal(y[0, 0], [[8, 11, 13], [29, 32, 34], [43, 46, 48]])
    want = numpy.zeros((7, 7))
    want[numpy.ix_([1, 4, 6], [1, 4, 6])] = numpy.arange(1, 10).reshape(3, 3)
    numpy.testing.assert_array_equal(dx[0, 0], want)
    (y,), dx = pool("pool: AVE kernel_size: 2 stride: 3", x, dy=numpy.ones((1, 1, 3, 3)))
    numpy.testing.assert_allclose(y[0, 0], [[4, 7, 9.5], [25, 28, 30.5], [42.5, 45.5, 48]])
    per_axis = numpy.array([1 / 2, 1 / 2, 0, 1 / 2, 1 / 2, 0, 1])
    numpy.testing.assert_allclose(dx[0, 0], numpy.outer(per_axis, per_axis))


def test_kernel_as_large_as_the_input():
    x = grid(3, 4)
    # on both axes: one window (the global-pooling path)
    (y,), dx = pool("pool: MAX kernel_h: 3 kernel_w: 4", x, dy=[[[[2.0]]]])
    numpy.testing.assert_array_equal(y, [[[[11]]]])
    numpy.testing.assert_array_equal(dx[0, 0], numpy.where(x[0, 0] == 11, 2.0, 0.0))
    (y,), dx = pool("pool: AVE kernel_h: 3 kernel_w: 4", x, dy=[[[[12.0]]]])
    numpy.testing.assert_allclose(y, [[[[5.5]]]])
    numpy.testing.assert_allclose(dx[0, 0], numpy.ones((3, 4)))
    # on the height only: a row of windows sliding along the width
    (y,), dx = pool("pool: MAX kernel_h: 3 kernel_w: 2 stride: 1", x, dy=[[[[1, 2, 3]]]])
    numpy.testing.assert_array_equal(y[0, 0], [[9, 10, 11]])
    numpy.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 2, 3]])
    (y,), dx = pool("pool: AVE kernel_h: 3 kernel_w: 2 stride: 1", x, dy=numpy.full((1, 1, 1, 3), 6.0))
    numpy.testing.assert_allclose(y[0, 0], [[4.5, 5.5, 6.5]])
    numpy.testing.assert_allclose(dx[0, 0], numpy.tile([1.0, 2.0, 2.0, 1.0], (3, 1)))


def test_samples_and_channels_pool_independently():
    planes = [grid(5, 6, 100 * i) for i in range(6)]
    x = numpy.concatenate(planes, axis=1).reshape(2, 3, 5, 6)
    dy = numpy.arange(36, dtype=float).reshape(2, 3, 2, 3)
    (y,), dx = pool("pool: MAX kernel_size: 3 stride: 2", x, dy=dy)
    for i, plane in enumerate(planes):
        (want_y,), want_dx = pool("pool: MAX kernel_size: 3 stride: 2", plane, dy=dy.reshape(6, 1, 2, 3)[i : i + 1])
        numpy.testing.assert_array_equal(y.reshape(6, 2, 3)[i], want_y[0, 0])
        numpy.testing.assert_array_equal(dx.reshape(6, 5, 6)[i], want_dx[0, 0])


def test_global_pooling():
    x = RNG.standard_normal((2, 3, 4, 5))
    (y, mask), dx = pool("pool: MAX global_pooling: true", x, num_top=2, dy=numpy.ones((2, 3, 1, 1)))
    numpy.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    numpy.testing.assert_array_equal(mask[..., 0, 0], x.reshape(2, 3, -1).argmax(-1))
    assert dx.sum() == 6 and numpy.all(dx[x == y] == 1)
    (y,), _ = pool("pool: AVE global_pooling: true", x)
    numpy.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3)))


def test_stochastic_test_phase_is_probability_weighted():
    x = numpy.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    (y,), _ = pool("pool: STOCHASTIC kernel_size: 2", x, phase=pb.TEST)
    numpy.testing.assert_allclose(y, [[[[30 / 10]]]])
    (y,), _ = pool("pool: STOCHASTIC kernel_size: 2", -x, phase=pb.TEST)
    numpy.testing.assert_array_equal(y, [[[[0.0]]]])


def test_stochastic_train_samples_by_value():
    # each window holds the values 1 and 3 (and two zeros): 3 should be picked 3/4 of the time
    x = numpy.zeros((50, 40, 2, 2))
    x[:, :, 0, 1], x[:, :, 1, 0] = 1.0, 3.0
    (y,), dx = pool("pool: STOCHASTIC kernel_size: 2", x, dy=numpy.ones((50, 40, 1, 1)))
    assert set(numpy.unique(y)) <= {1.0, 3.0}
    assert abs(numpy.mean(y == 3.0) - 0.75) < 0.03
    # the gradient goes to the picked element only
    numpy.testing.assert_array_equal(dx[:, :, 1, 0] == 1, y[:, :, 0, 0] == 3)
    assert dx.sum() == 50 * 40
    backend.set_random_seed(5)
    (a,), _ = pool("pool: STOCHASTIC kernel_size: 2", x)
    backend.set_random_seed(5)
    (b,), _ = pool("pool: STOCHASTIC kernel_size: 2", x)
    numpy.testing.assert_array_equal(a, b)


def test_spp_values():
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 2 pool: MAX }')
    _, top = run_layer(layer, [grid(4, 4)])
    numpy.testing.assert_array_equal(top[0].data, [[15, 5, 7, 13, 15]])
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 1 pool: AVE }')
    _, top = run_layer(layer, [grid(2, 3)])
    numpy.testing.assert_allclose(top[0].data, [[[[2.5]]]])


def test_spp_levels_pad_uneven_inputs():
    # 7x7, level 1: kernel 4, pad (8-7+1)//2 = 1, bins rows 0-2 and 3-6 (a third window would start in the
    # padding); level 2: kernel 2, pad 1, the first bins are row 0 x columns {0} and {1, 2}
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 3 pool: MAX }')
    _, top = run_layer(layer, [numpy.concatenate([grid(7, 7), grid(7, 7, 100)], axis=1)])
    assert top[0].shape == (1, 2 * (1 + 4 + 16))
    numpy.testing.assert_array_equal(top[0].data[0, :12], [48, 148, 16, 20, 44, 48, 116, 120, 144, 148, 0, 2])


@pytest.mark.parametrize(
    "definition",
    [
        'type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }',
        'type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
        'type: "SPP" spp_param { pyramid_height: 2 }',
    ],
)
def test_empty_batch(definition):
    check_empty_batch(definition, (0, 2, 5, 5))


# --- gradients --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition,shape,phase",
    [
        ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', (2, 2, 6, 7), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', (2, 2, 5, 4), pb.TRAIN),
        (
            'type: "Pooling" pooling_param { pool: MAX kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 }',
            (1, 2, 5, 5),
            pb.TRAIN,
        ),
        ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', (2, 2, 5, 6), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 3 }', (1, 2, 7, 5), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 3 }', (1, 2, 7, 5), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 }', (2, 1, 4, 5), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 }', (2, 1, 4, 5), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', (1, 3, 6, 5), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 }', (1, 3, 6, 5), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: MAX kernel_h: 3 kernel_w: 2 stride: 1 }', (2, 1, 3, 4), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride: 1 }', (2, 1, 3, 4), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', (2, 3, 3, 4), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: MAX global_pooling: true }', (2, 3, 3, 4), pb.TRAIN),
        ('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', (1, 2, 5, 5), pb.TEST),
        ('type: "SPP" spp_param { pyramid_height: 3 pool: AVE }', (1, 2, 6, 7), pb.TRAIN),
        ('type: "SPP" spp_param { pyramid_height: 2 pool: MAX }', (2, 1, 4, 6), pb.TRAIN),
    ],
)
def test_gradients(definition, shape, phase):
    x = RNG.standard_normal(shape)
    if "STOCHASTIC" in definition:
        x = numpy.abs(x) + 0.5
    result = check_gradient(make_layer(definition, phase=phase), [x])
    assert result["checked"] > 0


def test_stochastic_train_gradient_routes_to_the_sample():
    # With the random stream reset before each forward, the sample is fixed and the layer is a selection.
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }')
    result = check_gradient(layer, [numpy.abs(RNG.standard_normal((2, 2, 4, 4))) + 0.1])
    assert result["checked"] > 0


def test_float32_stays_float32():
    layer = make_layer(
        'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', dtype=numpy.float32
    )
    bottom, top = run_layer(layer, [RNG.standard_normal((2, 1, 5, 5))])
    top[0].diff = numpy.ones(top[0].shape, numpy.float32)
    layer.backward(top, [True], bottom)
    assert top[0].data.dtype == bottom[0].diff.dtype == numpy.float32


# --- parity with Caffe ---------------------------------------------------------------------
CASES = layer_cases(TYPES)


@parametrize_layer_cases(TYPES)
def test_parity(case):
    check_layer_case(case)


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition,shape,num_top,error,needle",
    [
        ("pool: MAX kernel_size: 2 pad: 2", (1, 1, 4, 4), 1, InvalidParameterError, "pad must be smaller"),
        ("pool: STOCHASTIC kernel_size: 3 pad: 1", (1, 1, 4, 4), 1, InvalidParameterError, "only for MAX and AVE"),
        (
            "pool: MAX global_pooling: true kernel_size: 2",
            (1, 1, 4, 4),
            1,
            InvalidParameterError,
            "Received: kernel_size=2",
        ),
        ("pool: MAX global_pooling: true stride: 2", (1, 1, 4, 4), 1, InvalidParameterError, "stride [2, 2]"),
        ("pool: MAX global_pooling: true pad: 1", (1, 1, 4, 4), 1, InvalidParameterError, "pad [1, 1]"),
        ("pool: MAX", (1, 1, 4, 4), 1, InvalidParameterError, "Received: none"),
        ("pool: MAX kernel_h: 2", (1, 1, 4, 4), 1, InvalidParameterError, "Received: kernel_h=2"),
        (
            "pool: MAX kernel_size: 2 stride: 2 stride_h: 1 stride_w: 1",
            (1, 1, 4, 4),
            1,
            InvalidParameterError,
            "give stride or both",
        ),
        ("pool: MAX kernel_size: 2 pad_h: 1", (1, 1, 4, 4), 1, InvalidParameterError, "give pad or both"),
        ("pool: MAX kernel_size: 0", (1, 1, 4, 4), 1, InvalidParameterError, "Received: [0, 0]"),
        ("pool: AVE kernel_size: 2", (1, 1, 4, 4), 2, BlobCountError, "Received: 2 tops with pool AVE"),
        ("pool: MAX kernel_size: 2", (1, 4, 4), 1, ShapeMismatchError, "4 axes"),
        ("pool: MAX kernel_size: 3 round_mode: FLOOR", (1, 1, 2, 2), 1, ShapeMismatchError, "does not fit"),
    ],
)
def test_invalid_parameters(definition, shape, num_top, error, needle):
    check_layer_error(f'type: "Pooling" pooling_param {{ {definition} }}', [numpy.zeros(shape)], error, needle, num_top)


@pytest.mark.parametrize(
    "definition,shape,error,needle",
    [
        ("pyramid_height: 0", (1, 1, 4, 4), InvalidParameterError, "Received: 0"),
        ("pyramid_height: 3", (1, 1, 1, 8), ShapeMismatchError, "level 1 (2 bins)"),
        ("pyramid_height: 3", (1, 1, 5, 8), ShapeMismatchError, "level 2 (4 bins) cannot pool an input of (5, 8)"),
        ("pyramid_height: 2", (1, 4, 4), ShapeMismatchError, "4 axes"),
    ],
)
def test_spp_invalid(definition, shape, error, needle):
    check_layer_error(f'type: "SPP" spp_param {{ {definition} }}', [numpy.zeros(shape)], error, needle)


# --- GPU -----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "definition",
    [
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }',
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
        'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
        'type: "Pooling" pooling_param { pool: MAX global_pooling: true }',
        'type: "SPP" spp_param { pyramid_height: 3 pool: MAX }',
    ],
)
def test_gpu_matches_cpu(definition):
    check_gpu_matches_cpu(definition, [RNG.standard_normal((2, 3, 7, 6))])


def test_absurd_stride_is_refused_before_allocating():
    # the second window starts 2^31 rows down: Caffe keeps it (value -FLT_MAX); the padded grid would be huge
    with pytest.raises(ResourceLimitError, match=r'Layer "L" \(type Pooling\) padded input'):
        run_layer(
            make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2147483647 }'),
            [numpy.ones((1, 1, 5, 5))],
        )


# --- the caffe-yolov3 output-size rule (opt-in) --------------------------------------------
def test_yolov3_rule_keeps_13x13_for_2x2_stride_1_max_pool():
    x = grid(13, 13)
    (y,), _ = pool("pool: MAX kernel_size: 2 stride: 1", x)
    assert y.shape == (1, 1, 12, 12)  # BVLC's rule: ceil((13 - 2) / 1) + 1
    assert y[0, 0, 0, :3].tolist() == [14.0, 15.0, 16.0] and y[0, 0, -1, -1] == 168.0
    with pooling.using_pooling_rule("caffe-yolov3"):
        (y, mask), dx = pool("pool: MAX kernel_size: 2 stride: 1", x, num_top=2, dy=numpy.ones((1, 1, 13, 13)))
    assert y.shape == (1, 1, 13, 13)
    # the extra last row and column pool windows clipped at the edge, as darknet's max pool does
    assert y[0, 0, -1, -3:].tolist() == [167.0, 168.0, 168.0]
    assert y[0, 0, :3, -1].tolist() == [25.0, 38.0, 51.0]
    assert y[0, 0, 0, :3].tolist() == [14.0, 15.0, 16.0]
    assert mask[0, 0, -1, -1] == 168.0 and mask[0, 0, -1, -2] == 168.0
    # the bottom-right pixel wins four windows; the first row and column win none
    assert dx[0, 0, -1, -1] == 4.0 and dx[0, 0, 0].sum() == 0.0 and dx.sum() == 169.0


def test_yolov3_rule_ave_divisor_and_which_pools_it_changes():
    with pooling.using_pooling_rule("caffe-yolov3"):
        (y,), _ = pool("pool: AVE kernel_size: 2 stride: 1", grid(3, 3))
        assert y[0, 0].tolist() == [[2.0, 3.0, 3.5], [5.0, 6.0, 6.5], [6.5, 7.5, 8.0]]
        # kernel - stride odd: 3x3 stride 2 on 13 gives ceil(10 / 2) + 1 + 1 = 7
        assert pool("pool: MAX kernel_size: 3 stride: 2", grid(13, 13))[0][0].shape == (1, 1, 7, 7)
        # even (2x2 stride 2) and negative (1x1 stride 2) differences keep BVLC's size
        assert pool("pool: MAX kernel_size: 2 stride: 2", grid(13, 13))[0][0].shape == (1, 1, 7, 7)
        assert pool("pool: MAX kernel_size: 1 stride: 2", grid(13, 13))[0][0].shape == (1, 1, 7, 7)
        # the port tests kernel_h - stride_h and grows both axes
        assert pool("pool: MAX kernel_h: 2 kernel_w: 3 stride: 1", grid(6, 6))[0][0].shape == (1, 1, 6, 5)
        assert pool("pool: MAX global_pooling: true", grid(4, 4))[0][0].shape == (1, 1, 1, 1)
        # on 14 the added window starts past the input: the port's Caffe leaves its initial value there
        (y,), _ = pool("pool: MAX kernel_size: 3 stride: 2", grid(14, 14))
        assert y.shape == (1, 1, 8, 8) and y[0, 0, 0, -2:].tolist() == [41.0, -numpy.finfo(numpy.float64).max]


def test_pooling_rule_settings_order_and_refusals(monkeypatch):
    monkeypatch.delenv(pooling.POOLING_RULE_ENV, raising=False)
    assert pooling.current_pooling_rule() == "bvlc"
    monkeypatch.setenv(pooling.POOLING_RULE_ENV, "caffe-yolov3")
    layer = make_layer('type: "Pooling" pooling_param { kernel_size: 2 stride: 1 }')
    run_layer(layer, [grid(13, 13)])
    assert layer.pooling_rule == "caffe-yolov3"
    try:
        pooling.set_pooling_rule("bvlc")
        assert pooling.current_pooling_rule() == "bvlc"  # the process setting wins over the environment
        with pooling.using_pooling_rule("caffe-yolov3"):
            assert pooling.current_pooling_rule() == "caffe-yolov3"  # a block wins over both
            with pooling.using_pooling_rule(None):
                assert pooling.current_pooling_rule() == "caffe-yolov3"
        assert pooling.current_pooling_rule() == "bvlc"
    finally:
        pooling.set_pooling_rule(None)
    assert pooling.current_pooling_rule() == "caffe-yolov3"
    monkeypatch.setenv(pooling.POOLING_RULE_ENV, "darknet")
    with pytest.raises(InvalidParameterError, match=r"\(type Pooling\): NETDEF_POOLING_RULE: unknown pooling rule"):
        run_layer(make_layer('type: "Pooling" pooling_param { kernel_size: 2 }'), [grid(4, 4)])
    with pytest.raises(InvalidParameterError, match="Received: 'yolo'. Valid: 'bvlc', 'caffe-yolov3'"):
        pooling.set_pooling_rule("yolo")
    with pytest.raises(InvalidParameterError, match="using_pooling_rule: unknown pooling rule"):
        with pooling.using_pooling_rule("BVLC"):
            pass


def test_darknet_like_pool_under_bvlc_rule_hints_at_the_switch(caplog, monkeypatch):
    monkeypatch.delenv(pooling.POOLING_RULE_ENV, raising=False)
    monkeypatch.setattr(pooling, "_hinted", False)
    pool("pool: MAX kernel_size: 3 stride: 2", grid(5, 5))
    assert "caffe-yolov3" not in caplog.text
    pool("pool: MAX kernel_size: 2 stride: 1", grid(5, 5))
    pool("pool: MAX kernel_size: 2 stride: 1", grid(5, 5))
    assert caplog.text.count("NETDEF_POOLING_RULE=caffe-yolov3") == 1
