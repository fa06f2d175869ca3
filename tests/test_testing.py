"""The testing helpers themselves: they must be able to fail."""

import numpy
import pytest

from netdef.errors import InvalidParameterError
from netdef.layers import Layer, NeuronLayer
from netdef.testing import (
    GradientCheckError,
    check_gpu_matches_cpu,
    check_gradient,
    check_layer_error,
    forward_layer,
    make_layer,
    run_backward,
    run_layer,
)


class _WrongGradient(NeuronLayer):
    """y = x^2 with a deliberately wrong backward (x instead of 2x)."""

    type_name = "WrongGradient"

    def forward(self, bottom, top):
        top[0].data = bottom[0].data ** 2

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff = top[0].diff * bottom[0].data


def test_gradient_checker_catches_a_wrong_backward():
    layer = _WrongGradient(make_layer('type: "ReLU"').param, dtype=numpy.float64, xp=numpy)
    with pytest.raises(GradientCheckError, match="analytic"):
        check_gradient(layer, [numpy.linspace(0.5, 2.0, 6).reshape(2, 3)])


def test_gradient_checker_passes_a_correct_backward_and_counts():
    result = check_gradient(
        make_layer(
            'type: "InnerProduct" inner_product_param { num_output: 2 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
        ),
        [numpy.random.default_rng(0).standard_normal((3, 4))],
    )
    assert result["checked"] == 3 * 4 + 2 * 4 + 2
    assert result["max_error"] < 1e-6


def test_kink_band_skips_inputs_near_the_kink():
    x = numpy.array([[-1.0, 1e-4, 1.0]])
    result = check_gradient(make_layer('type: "ReLU"'), [x], kink=0.0, kink_range=1e-3)
    assert result["checked"] == 2


def test_backend_comparison_runs_both_paths():
    # With NumPy standing in for the GPU module the comparison must pass...
    check_gpu_matches_cpu(
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }',
        [numpy.random.default_rng(1).standard_normal((1, 2, 4, 4))],
        other_xp=numpy,
    )
    # ...and the layer really ran: its output is what MAX pooling gives.
    layer = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
    x = numpy.arange(16.0).reshape(1, 1, 4, 4)
    _, top = run_layer(layer, [x])
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[5, 7], [13, 15]])


class _SecondTopWrong(Layer):
    """Tops y0 = 2x (correct backward) and y1 = x^3 (backward gives 2x^2 instead of 3x^2)."""

    type_name = "SecondTopWrong"
    exact_num_bottom = 1
    exact_num_top = 2

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data = 2 * bottom[0].data
        top[1].data = bottom[0].data ** 3

    def backward(self, top, propagate_down, bottom):
        x = bottom[0].data
        bottom[0].diff = 2 * top[0].diff + 2 * x * x * top[1].diff


def test_top_index_checks_one_top_alone():
    def layer():
        return _SecondTopWrong(make_layer('type: "ReLU"').param, dtype=numpy.float64, xp=numpy)

    x = [numpy.linspace(0.5, 2.0, 6).reshape(2, 3)]
    # top 0 alone is right: its projection is the only diff, top 1's is zero
    assert check_gradient(layer(), x, num_top=2, top_index=0)["checked"] == 6
    with pytest.raises(GradientCheckError, match="analytic"):
        check_gradient(layer(), x, num_top=2, top_index=1)
    with pytest.raises(GradientCheckError, match="analytic"):
        check_gradient(layer(), x, num_top=2)
    with pytest.raises(ValueError, match="top_index must name one of the 2 tops. Received: 2"):
        check_gradient(layer(), x, num_top=2, top_index=2)


def test_runners_set_parameters_and_seed_diffs():
    ip = 'type: "InnerProduct" inner_product_param { num_output: 2 }'
    w, b = numpy.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]]), numpy.array([0.5, -0.5])
    layer, bottom, top = forward_layer(ip, [[[1.0, 2.0, 3.0]]], [w, b])
    numpy.testing.assert_array_equal(top[0].data, [[-1.5, 3.5]])
    layer.param_propagate_down = [False, False]
    (dx,) = run_backward(layer, bottom, top, [[[1.0, 1.0]]])
    numpy.testing.assert_array_equal(dx, [[3.0, 1.0, -1.0]])
    # every parameter gradient was asked for, and parameter diffs accumulate as in a net
    assert layer.param_propagate_down == [True, True]
    numpy.testing.assert_array_equal(layer.blobs[1].diff, [1.0, 1.0])
    run_backward(layer, bottom, top, [None], propagate_down=[False])
    numpy.testing.assert_array_equal(layer.blobs[1].diff, [2.0, 2.0])


def test_layer_error_check_fails_without_the_error_or_its_text():
    lrn4 = 'type: "LRN" lrn_param { local_size: 4 }'
    err = check_layer_error(lrn4, [numpy.zeros((1, 4, 2, 2))], InvalidParameterError, "Received: 4")
    assert isinstance(err, InvalidParameterError)
    with pytest.raises(AssertionError, match="does not name"):
        check_layer_error(lrn4, [numpy.zeros((1, 4, 2, 2))], InvalidParameterError, "Received: 5")
    with pytest.raises(AssertionError, match="no InvalidParameterError was raised"):
        check_layer_error('type: "ReLU"', [numpy.zeros(2)], InvalidParameterError, "Received")
