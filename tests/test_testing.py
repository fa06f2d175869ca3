"""The testing helpers themselves: they must be able to fail."""
import numpy
import pytest

from netdef.layers import NeuronLayer
from netdef.testing import GradientCheckError, check_gpu_matches_cpu, check_gradient, make_layer
from netdef.testing.gradient_check import run_layer


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
    result = check_gradient(make_layer('type: "InnerProduct" inner_product_param { num_output: 2 '
                                       'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'),
                            [numpy.random.default_rng(0).standard_normal((3, 4))])
    assert result["checked"] == 3 * 4 + 2 * 4 + 2
    assert result["max_error"] < 1e-6


def test_kink_band_skips_inputs_near_the_kink():
    x = numpy.array([[-1.0, 1e-4, 1.0]])
    result = check_gradient(make_layer('type: "ReLU"'), [x], kink=0.0, kink_range=1e-3)
    assert result["checked"] == 2


def test_backend_comparison_runs_both_paths():
    # With NumPy standing in for the GPU module the comparison must pass...
    check_gpu_matches_cpu('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }',
                          [numpy.random.default_rng(1).standard_normal((1, 2, 4, 4))], other_xp=numpy)
    # ...and the layer really ran: its output is what MAX pooling gives.
    layer = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
    x = numpy.arange(16.0).reshape(1, 1, 4, 4)
    _, top = run_layer(layer, [x])
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[5, 7], [13, 15]])
