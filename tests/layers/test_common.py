"""Tests of netdef/layers/common.py: literal values, gradients, Caffe parity and errors per layer type."""

from __future__ import annotations

import math

import numpy
import pytest

from netdef.errors import InvalidParameterError, NetdefError, ShapeMismatchError
from netdef.layers.common import softmax
from netdef.testing import (
    check_gpu_matches_cpu,
    check_gradient,
    forward_layer,
    make_blobs,
    make_layer,
    rand,
    run_backward,
)
from netdef.testing.parity import (
    check_layer_case,
    check_parity_covers,
    layer_cases,
    parametrize_layer_cases,
)

TYPES = {"InnerProduct", "Softmax", "Parameter", "Eltwise", "Reduction", "ArgMax", "Embed"}


def arr(x) -> numpy.ndarray:
    return numpy.asarray(x, dtype=numpy.float64)


# --- parity with Caffe -------------------------------------------------------------------
CASES = layer_cases(TYPES)


@parametrize_layer_cases(TYPES)
def test_parity(case):
    check_layer_case(case)


def test_parity_covers_every_type():
    check_parity_covers(TYPES)


# --- InnerProduct ------------------------------------------------------------------------
IP = 'type: "InnerProduct" inner_product_param { num_output: 2 %s }'


W = arr([[1, 0, -1], [2, 1, 0]])


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_values(transpose):
    w = W.T if transpose else W
    layer, bottom, top = forward_layer(IP % f"transpose: {str(transpose).lower()}", [[[1, 2, 3]]], [w, [0.5, -1]])
    assert layer.blobs[0].shape == ((3, 2) if transpose else (2, 3))
    numpy.testing.assert_allclose(top[0].data, [[-1.5, 3]])
    run_backward(layer, bottom, top, [[[1, 2]]])
    numpy.testing.assert_allclose(bottom[0].diff, [[5, 2, -1]])
    dw = arr([[1, 2, 3], [2, 4, 6]])
    numpy.testing.assert_allclose(layer.blobs[0].diff, dw.T if transpose else dw)
    numpy.testing.assert_allclose(layer.blobs[1].diff, [1, 2])


def test_inner_product_axis_and_no_bias():
    x = rand(2, 3, 2, 2)
    layer, bottom, top = forward_layer(IP % "axis: 2 bias_term: false", [x], [rand(2, 4, seed=1)])
    assert len(layer.blobs) == 1 and top[0].shape == (2, 3, 2)
    want = numpy.einsum("abk,nk->abn", x.reshape(2, 3, 4), layer.blobs[0].data)
    numpy.testing.assert_allclose(top[0].data, want)


@pytest.mark.parametrize("extra", ["", "transpose: true", "axis: 2"])
def test_inner_product_gradient(extra):
    fill = 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }'
    check_gradient(make_layer(IP % f"{extra} {fill}"), [rand(2, 3, 2)])


def test_inner_product_errors():
    with pytest.raises(InvalidParameterError, match='"L" \\(type InnerProduct\\).*num_output.*Received'):
        forward_layer('type: "InnerProduct"', [rand(2, 3)])
    layer, bottom, top = forward_layer(IP % "", [rand(2, 3)])
    bottom[0].reshape((2, 4))
    with pytest.raises(ShapeMismatchError, match="input size 4.*expect 3"):
        layer.reshape(bottom, top)


# --- Softmax -----------------------------------------------------------------------------
def test_softmax_values_and_backward():
    layer, bottom, top = forward_layer('type: "Softmax"', [[[0, numpy.log(3)], [1000, 1000]]])
    numpy.testing.assert_allclose(top[0].data, [[0.25, 0.75], [0.5, 0.5]])
    run_backward(layer, bottom, top, [[[1, 0], [0, 0]]])
    numpy.testing.assert_allclose(bottom[0].diff, [[3 / 16, -3 / 16], [0, 0]])


def test_softmax_in_place():
    layer = make_layer('type: "Softmax" softmax_param { axis: 0 }')
    [b] = make_blobs([[0, numpy.log(3)]], numpy.float64, numpy)
    layer.layer_setup([b], [b])
    layer.forward_step([b], [b])
    numpy.testing.assert_allclose(b.data, [0.25, 0.75])
    run_backward(layer, [b], [b], [[1, 0]])
    numpy.testing.assert_allclose(b.diff, [3 / 16, -3 / 16])


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_softmax_gradient(axis):
    check_gradient(make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}'), [rand(2, 3, 2)])


def test_softmax_axis_error():
    message = r"\(type Softmax\): softmax_param.axis 3 is out of range .*Received: 3\. Valid: -2 \.\. 1"
    with pytest.raises(InvalidParameterError, match=message):
        forward_layer('type: "Softmax" softmax_param { axis: 3 }', [rand(2, 3)])


def test_softmax_helper_is_stable_and_normalised():
    p = softmax(numpy.array([[1000.0, 1000.0 + math.log(3.0)], [0.0, 0.0]]), 1)
    numpy.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]])


# --- Parameter ---------------------------------------------------------------------------
PARAM = 'type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }'


def test_parameter_top_is_blob_and_diffs_add():
    layer, bottom, top = forward_layer(PARAM, [], [numpy.arange(6.0).reshape(2, 3)])
    assert top[0].shape == (2, 3)
    numpy.testing.assert_array_equal(top[0].data, [[0, 1, 2], [3, 4, 5]])
    run_backward(layer, bottom, top, [numpy.ones((2, 3))])
    layer.backward(top, [], bottom)
    numpy.testing.assert_array_equal(layer.blobs[0].diff, numpy.full((2, 3), 2.0))


def test_parameter_gradient():
    check_gradient(make_layer(PARAM), [])


def test_parameter_negative_shape_error():
    with pytest.raises(InvalidParameterError, match=r"\(type Parameter\).*Received: \(2, -1\)"):
        forward_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: -1 } }', [])


# --- Eltwise -----------------------------------------------------------------------------
A, B, C = arr([1, 5, 3]), arr([4, 5, 2]), arr([0, 6, 3])


def test_eltwise_sum_with_coeff():
    text = 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -1 coeff: 2 }'
    layer, bottom, top = forward_layer(text, [A, B, C])
    numpy.testing.assert_array_equal(top[0].data, [-3, 12, 7])
    run_backward(layer, bottom, top, [[1, 2, 3]])
    numpy.testing.assert_array_equal(bottom[1].diff, [-1, -2, -3])
    numpy.testing.assert_array_equal(bottom[2].diff, [2, 4, 6])
    bottom[0].diff[0] = 99  # each bottom owns its diff: no aliasing with the top's or another bottom's
    assert top[0].diff[0] == 1


def test_eltwise_prod_values_and_in_place():
    layer, bottom, top = forward_layer('type: "Eltwise" eltwise_param { operation: PROD }', [A, B, C])
    numpy.testing.assert_array_equal(top[0].data, [0, 150, 18])
    run_backward(layer, bottom, top, [[1, 1, 1]])
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 30, 6])
    numpy.testing.assert_array_equal(bottom[2].diff, [4, 25, 6])
    layer = make_layer('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }')
    bs = make_blobs([A, B], numpy.float64, numpy)
    layer.layer_setup(bs, [bs[0]])
    layer.forward_step(bs, [bs[0]])
    numpy.testing.assert_array_equal(bs[0].data, [4, 25, 6])
    run_backward(layer, bs, [bs[0]], [[1, 1, 1]])
    numpy.testing.assert_array_equal(bs[1].diff, A)
    numpy.testing.assert_array_equal(bs[0].diff, B)


def test_eltwise_max_routes_like_caffe():
    layer, bottom, top = forward_layer('type: "Eltwise" eltwise_param { operation: MAX }', [A, B, C])
    numpy.testing.assert_array_equal(top[0].data, [4, 6, 3])
    run_backward(layer, bottom, top, [[1, 2, 3]])
    # A tie between bottoms 0 and 1 goes to 1; a later bottom must be strictly larger to win.
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 0, 3])
    numpy.testing.assert_array_equal(bottom[1].diff, [1, 0, 0])
    numpy.testing.assert_array_equal(bottom[2].diff, [0, 2, 0])


@pytest.mark.parametrize(
    "params",
    [
        "operation: SUM coeff: 0.5 coeff: -2 coeff: 1",
        "operation: PROD",
        "operation: PROD stable_prod_grad: false",
        "operation: MAX",
    ],
)
def test_eltwise_gradient(params):
    xs = [rand(2, 3, seed=s) for s in range(3)]
    check_gradient(make_layer(f'type: "Eltwise" eltwise_param {{ {params} }}'), xs)


def test_eltwise_errors():
    with pytest.raises(ShapeMismatchError, match=r"\(type Eltwise\).*bottom 0 \(2, 3\), bottom 1 \(3, 2\)"):
        forward_layer('type: "Eltwise"', [rand(2, 3), rand(3, 2)])
    with pytest.raises(InvalidParameterError, match="one coeff per bottom \\(2\\). Received: 3 values"):
        forward_layer('type: "Eltwise" eltwise_param { coeff: 1 coeff: 2 coeff: 3 }', [rand(2), rand(2)])
    with pytest.raises(InvalidParameterError, match="SUM only.*operation PROD"):
        forward_layer('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [rand(2), rand(2)])


# --- Reduction ---------------------------------------------------------------------------
X = arr([[1, -2, 3], [-4, 5, -6]])


@pytest.mark.parametrize(
    "op, want, dx",
    [
        ("SUM", [2, -5], [[1, 1, 1], [2, 2, 2]]),
        ("ASUM", [6, 15], [[1, -1, 1], [-2, 2, -2]]),
        ("SUMSQ", [14, 77], [[2, -4, 6], [-16, 20, -24]]),
        ("MEAN", [2 / 3, -5 / 3], [[1 / 3] * 3, [2 / 3] * 3]),
    ],
)
def test_reduction_values_and_backward(op, want, dx):
    layer, bottom, top = forward_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 }}', [X])
    numpy.testing.assert_allclose(top[0].data, want)
    run_backward(layer, bottom, top, [[1, 2]])
    numpy.testing.assert_allclose(bottom[0].diff, dx)


def test_reduction_all_axes_with_coeff_is_scalar():
    layer, bottom, top = forward_layer('type: "Reduction" reduction_param { coeff: 2 }', [X])
    assert top[0].shape == ()
    assert float(top[0].data) == -6
    run_backward(layer, bottom, top, [0.5])
    numpy.testing.assert_array_equal(bottom[0].diff, numpy.ones((2, 3)))


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
def test_reduction_gradient(op):
    text = f'type: "Reduction" reduction_param {{ operation: {op} axis: -2 coeff: 0.7 }}'
    check_gradient(make_layer(text), [rand(2, 3, 2)], kink=0.0 if op == "ASUM" else None)


def test_reduction_axis_error():
    with pytest.raises(InvalidParameterError, match=r"\(type Reduction\): reduction_param.axis 2 .*Received: 2"):
        forward_layer('type: "Reduction" reduction_param { axis: 2 }', [X])


# --- ArgMax ------------------------------------------------------------------------------
def test_argmax_default_and_tie_order():
    layer, bottom, top = forward_layer('type: "ArgMax"', [[[1, 3, 3, 0]]])
    assert top[0].shape == (1, 1, 1)
    assert top[0].data.item() == 2  # ties rank the larger index first
    layer, bottom, top = forward_layer('type: "ArgMax"', [rand(2, 3, 2, 2)])
    assert top[0].shape == (2, 1, 1, 1)


def test_argmax_out_max_val_layout():
    text = 'type: "ArgMax" argmax_param { out_max_val: true top_k: 2 }'
    layer, bottom, top = forward_layer(text, [[[1, 3, 3, 0], [5, 4, 6, 0]]])
    assert top[0].shape == (2, 2, 2)
    numpy.testing.assert_array_equal(top[0].data, [[[2, 1], [3, 3]], [[2, 0], [6, 5]]])


@pytest.mark.parametrize("out_max_val, want", [("false", [[2, 1], [2, 0]]), ("true", [[3, 3], [6, 5]])])
def test_argmax_axis(out_max_val, want):
    text = f'type: "ArgMax" argmax_param {{ axis: 1 top_k: 2 out_max_val: {out_max_val} }}'
    layer, bottom, top = forward_layer(text, [[[1, 3, 3, 0], [5, 4, 6, 0]]])
    numpy.testing.assert_array_equal(top[0].data, want)
    x = rand(2, 4, 3)
    layer, bottom, top = forward_layer(text.replace("axis: 1", "axis: -2"), [x])
    assert top[0].shape == (2, 2, 3)
    order = numpy.argsort(-x, axis=1)[:, :2]
    expect = numpy.take_along_axis(x, order, 1) if out_max_val == "true" else order
    numpy.testing.assert_array_equal(top[0].data, expect)


def test_argmax_has_no_gradient():
    layer, bottom, top = forward_layer('type: "ArgMax"', [rand(2, 3)])
    bottom[0].diff = numpy.full((2, 3), 7.0)
    run_backward(layer, bottom, top, [[[[1]], [[1]]]])
    numpy.testing.assert_array_equal(bottom[0].diff, numpy.full((2, 3), 7.0))


def test_argmax_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type ArgMax\): top_k must not exceed.*\(3,.*top_k 4"):
        forward_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 4 }', [rand(2, 3)])
    with pytest.raises(InvalidParameterError, match="top_k must be at least 1. Received: 0"):
        forward_layer('type: "ArgMax" argmax_param { top_k: 0 }', [rand(2, 3)])


# --- Embed -------------------------------------------------------------------------------
EMBED = 'type: "Embed" embed_param { input_dim: 3 num_output: 2 %s }'


def test_embed_values_and_backward():
    w = arr([[1, 2], [3, 4], [5, 6]])
    layer, bottom, top = forward_layer(EMBED % "", [[2, 0, 2]], [w, [10, 20]])
    assert layer.blobs[0].shape == (3, 2)
    numpy.testing.assert_array_equal(top[0].data, [[15, 26], [11, 22], [15, 26]])
    run_backward(layer, bottom, top, [[[1, 1], [2, 2], [3, 3]]])
    numpy.testing.assert_array_equal(layer.blobs[0].diff, [[2, 2], [0, 0], [4, 4]])  # row 2 twice: adds
    numpy.testing.assert_array_equal(layer.blobs[1].diff, [6, 6])
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 0, 0])
    assert not layer.allow_force_backward(0)


def test_embed_gradient():
    fill = 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }'
    result = check_gradient(make_layer(EMBED % fill), [arr([[2, 0], [1, 2]])], check_bottoms=[])
    assert result["checked"] == 3 * 2 + 2


def test_embed_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type Embed\): embed_param.input_dim.*Received: 0"):
        forward_layer('type: "Embed" embed_param { num_output: 2 }', [[0]])
    with pytest.raises(NetdefError, match=r"\(type Embed\): embedding indices must lie in \[0, 3\).*to 3"):
        forward_layer(EMBED % "", [[0, 3]])


# --- GPU: the same bodies on CuPy ---------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "text, shapes",
    [
        (IP % 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }', [(2, 3)]),
        ('type: "Softmax"', [(2, 3)]),
        ('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3), (2, 3), (2, 3)]),
        ('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [(2, 3)]),
    ],
)
def test_gpu_matches_cpu(text, shapes):
    check_gpu_matches_cpu(text, [rand(*s, seed=i) for i, s in enumerate(shapes)])
