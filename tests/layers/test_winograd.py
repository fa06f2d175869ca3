"""Tests of Winograd's minimal filtering (netdef/layers/winograd.py) and the Convolution layer on it."""

import numpy
import pytest

from netdef import TRAIN, backend
from netdef.layers import conv_flat, im2col, winograd
from netdef.layers.winograd import Winograd
from netdef.testing import check_gradient, forward_layer, make_layer

RNG = numpy.random.default_rng(23)


def direct(x, w, pad, group):
    """Reference cross-correlation through im2col (itself tested against a loop in test_conv.py)."""
    n, c = x.shape[:2]
    o, cg, r, _ = w.shape
    out = tuple(s + 2 * pad - r + 1 for s in x.shape[2:])
    col = im2col.patches(x, (r, r), (1, 1), (pad, pad), (1, 1), out, False).reshape(group, cg * r * r, -1)
    return numpy.matmul(w.reshape(group, o // group, -1), col).reshape(o, n, *out).swapaxes(0, 1)


def test_matrices_of_f2_3():
    at, g, bt = winograd.matrices(2, 3)
    numpy.testing.assert_array_equal(at, [[1, 1, 1, 0], [0, 1, -1, 1]])
    numpy.testing.assert_array_equal(g, [[-1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    numpy.testing.assert_allclose(bt, [[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], atol=1e-12)


@pytest.mark.parametrize("m, r", [(2, 3), (4, 3), (2, 5)])
def test_one_dimensional_identity(m, r):
    # A^T [(G g) * (B^T d)] is the correlation y_k = sum_j g_j d_{k+j}
    at, g, bt = winograd.matrices(m, r)
    d, k = RNG.standard_normal(m + r - 1), RNG.standard_normal(r)
    want = [sum(k[j] * d[i + j] for j in range(r)) for i in range(m)]
    numpy.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


CASES = [
    # n, c, h, w, o, r, pad, group
    (2, 4, 7, 9, 6, 3, 1, 1),  # F(4x4, 3x3), the last blocks overhang
    (3, 4, 8, 8, 4, 3, 0, 2),  # grouped, no padding
    (2, 6, 9, 6, 4, 5, 2, 2),  # F(2x2, 5x5)
    (1, 2, 5, 5, 3, 5, 4, 1),  # padding r - 1 (the input gradient's geometry)
    (2, 3, 6, 7, 5, 3, 2, 1),
]


@pytest.mark.parametrize("n, c, h, w, o, r, pad, group", CASES)
def test_convolve_matches_the_direct_sum(n, c, h, w, o, r, pad, group):
    x = RNG.standard_normal((n, c, h, w))
    k = RNG.standard_normal((o, c // group, r, r))
    plan = Winograd(r, (pad, pad), (h, w), numpy.float64, 4 if r == 3 else 2)
    bias = RNG.standard_normal(o)
    got = plan.convolve(x, plan.weights(k, group), bias=bias)
    want = direct(x, k, pad, group) + bias.reshape(1, o, 1, 1)
    assert got.shape == want.shape
    numpy.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n, c, h, w, o, r, pad, group", CASES)
def test_transposed_plan_gives_the_input_gradient(n, c, h, w, o, r, pad, group):
    x = RNG.standard_normal((n, c, h, w))
    k = RNG.standard_normal((o, c // group, r, r))
    plan = Winograd(r, (pad, pad), (h, w), numpy.float64, 4 if r == 3 else 2)
    dy = RNG.standard_normal((n, o, *plan.out))
    grad = plan.transposed()
    dx = grad.convolve(dy, grad.weights(im2col.flipped_kernel(k, group), group))
    # adjoint: <conv(x), dy> == <x, dx> for every x
    numpy.testing.assert_allclose(numpy.sum(direct(x, k, pad, group) * dy), numpy.sum(x * dx), rtol=1e-10)
    assert dx.shape == x.shape


@pytest.mark.parametrize("n, c, h, w, o, r, pad, group", CASES)
def test_weight_gradient_matches_the_direct_sum(n, c, h, w, o, r, pad, group):
    x = RNG.standard_normal((n, c, h, w))
    plan = Winograd(r, (pad, pad), (h, w), numpy.float64, 4 if r == 3 else 2)
    dy = RNG.standard_normal((n, o, *plan.out))
    cols = im2col.patches(x, (r, r), (1, 1), (pad, pad), (1, 1), plan.out, False).reshape(
        group, -1, n * plan.out[0] * plan.out[1]
    )
    dyc = im2col.batch_to_columns(dy, False).reshape(group, o // group, -1)
    want = numpy.matmul(dyc, cols.swapaxes(1, 2)).reshape(o, c // group, r, r)
    numpy.testing.assert_allclose(plan.weight_grad(x, dy, group), want, rtol=1e-10, atol=1e-10)


def test_float32_error_stays_small():
    x = RNG.standard_normal((4, 64, 13, 13)).astype(numpy.float32)
    k = RNG.standard_normal((64, 64, 3, 3)).astype(numpy.float32)
    plan = Winograd(3, (1, 1), (13, 13), numpy.float32)
    got = plan.convolve(x, plan.weights(k, 1))
    want = direct(x.astype(numpy.float64), k.astype(numpy.float64), 1, 1)
    assert got.dtype == numpy.float32
    assert numpy.abs(got - want).max() <= 1e-4 * numpy.abs(want).max()


def test_choose():
    args = dict(stride=(1, 1), pad=(1, 1), dilation=(1, 1), spatial=(13, 13), dtype=numpy.float32)
    wide = winograd.MIN_CHANNELS
    assert winograd.choose((3, 3), channels=wide, outputs=wide, **args).m == 4
    assert winograd.choose((5, 5), channels=wide, outputs=wide, **{**args, "pad": (2, 2)}) is None  # did not pay
    assert winograd.choose((3, 3), channels=wide - 1, outputs=wide, **args) is None  # transforms would dominate
    assert winograd.choose((3, 3), channels=wide, outputs=wide, **{**args, "stride": (2, 2)}) is None
    assert winograd.choose((3, 3), channels=wide, outputs=wide, **{**args, "dilation": (2, 2)}) is None
    assert winograd.choose((3, 3), channels=wide, outputs=wide, **{**args, "pad": (3, 3)}) is None
    assert winograd.choose((7, 7), channels=wide, outputs=wide, **{**args, "pad": (3, 3)}) is None
    assert winograd.choose((3, 2), channels=wide, outputs=wide, **args) is None
    assert winograd.choose((3,), channels=wide, outputs=wide, **{**args, "pad": (1,), "spatial": (9,)}) is None
    assert winograd.choose((3, 3), channels=wide, outputs=wide, **{**args, "spatial": (11, 13)}) is None  # small map
    assert winograd.choose((3, 3), channels=wide, outputs=wide, **{**args, "dtype": numpy.float16}) is None


def _run(params: str, x, on: bool, monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 0 if on else 10**9)
    monkeypatch.setattr(winograd, "MIN_SIZE", 0)
    monkeypatch.setattr(conv_flat, "MAX_WASTE", 0.0)  # im2col for the reference
    backend.set_random_seed(5)
    fill = "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"
    layer, bottom, top = forward_layer(
        f'type: "Convolution" convolution_param {{ {params} {fill} }}', x, num_top=len(x), phase=TRAIN
    )
    assert (layer.wino is not None) == on
    for t in top:
        t.diff = numpy.cos(numpy.arange(t.count)).reshape(t.shape)
    layer.backward(top, [True] * len(x), bottom)
    return [t.data for t in top] + [b.diff for b in bottom] + [blob.diff for blob in layer.blobs]


@pytest.mark.parametrize(
    "params, shape",
    [
        ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 6, 7)),
        ("num_output: 4 group: 2 kernel_size: 3 pad: 2", (2, 4, 7, 7)),
        ("num_output: 3 kernel_size: 3", (2, 2, 9, 7)),
    ],
)
def test_layer_on_winograd_matches_im2col(params, shape, monkeypatch):
    x = [RNG.standard_normal(shape)]
    want = _run(params, x, False, monkeypatch)
    got = _run(params, x, True, monkeypatch)
    for g, w in zip(got, want, strict=True):
        numpy.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


def test_gradients_on_winograd(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 0)
    monkeypatch.setattr(winograd, "MIN_SIZE", 0)
    fill = "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"
    layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 {fill} }}')
    result = check_gradient(layer, [RNG.standard_normal((2, 2, 5, 6))])
    assert result["checked"] > 0 and layer.wino is not None
