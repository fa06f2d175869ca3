"""Tests of the element-wise layers in netdef/layers/neuron.py."""

import math

import numpy
import pytest
from google.protobuf import text_format

import netdef
from netdef.errors import InvalidParameterError, NetdefError, ShapeMismatchError
from netdef.proto import netdef_pb2 as pb
from netdef.proto import parse_text
from netdef.testing import (
    check_gpu_matches_cpu,
    check_gradient,
    check_layer_error,
    forward_layer,
    make_layer,
    run_backward,
    run_layer,
)
from netdef.testing.parity import check_layer_case, layer_cases, parametrize_layer_cases

TYPES = {
    "ReLU",
    "PReLU",
    "ELU",
    "Sigmoid",
    "TanH",
    "AbsVal",
    "Power",
    "Exp",
    "Log",
    "BNLL",
    "Threshold",
    "Swish",
    "Clip",
    "Dropout",
}


def forward_backward(definition, x, dy=None, phase=pb.TRAIN, params=None):
    """Run one layer on float64 ``x``; return (top data, bottom diff or None, layer)."""
    layer, bottom, top = forward_layer(definition, [x], params, phase=phase)
    y = top[0].data.copy()
    if dy is None:
        return y, None, layer
    return y, run_backward(layer, bottom, top, [dy])[0].copy(), layer


# --- literal values ---------------------------------------------------------------------
def test_relu_values():
    x = [-2.0, -0.5, 0.0, 1.5]
    y, dx, _ = forward_backward('type: "ReLU"', x, [1.0, 2.0, 3.0, 4.0])
    numpy.testing.assert_array_equal(y, [0, 0, 0, 1.5])
    numpy.testing.assert_array_equal(dx, [0, 0, 0, 4])


def test_leaky_relu_values():
    x = [-2.0, -0.5, 0.0, 1.5]
    y, dx, _ = forward_backward('type: "ReLU" relu_param { negative_slope: 0.1 }', x, [1.0, 2.0, 3.0, 4.0])
    numpy.testing.assert_allclose(y, [-0.2, -0.05, 0, 1.5])
    # Caffe uses the slope at x == 0
    numpy.testing.assert_allclose(dx, [0.1, 0.2, 0.3, 4])


def test_prelu_values():
    x = [[[-1.0, 2.0], [-4.0, 3.0]]]  # N=1, C=2, 2 values per channel
    y, dx, layer = forward_backward('type: "PReLU"', x, numpy.ones((1, 2, 2)), params=[[0.25, 0.5]])
    numpy.testing.assert_allclose(y, [[[-0.25, 2.0], [-2.0, 3.0]]])
    numpy.testing.assert_allclose(dx, [[[0.25, 1.0], [0.5, 1.0]]])
    numpy.testing.assert_allclose(layer.blobs[0].diff, [-1.0, -4.0])


def test_prelu_default_filler_and_shared_slope_shape():
    layer = make_layer('type: "PReLU"')
    run_layer(layer, [numpy.zeros((2, 3, 2))])
    numpy.testing.assert_array_equal(layer.blobs[0].data, [0.25, 0.25, 0.25])
    shared = make_layer('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.1 } }')
    _, top = run_layer(shared, [[[-1.0, 1.0], [-2.0, 2.0]]])
    assert shared.blobs[0].shape == ()
    numpy.testing.assert_allclose(top[0].data, [[-0.1, 1.0], [-0.2, 2.0]])


def test_elu_values():
    y, dx, _ = forward_backward('type: "ELU" elu_param { alpha: 2 }', [-1.0, 0.0, 1.0], [1.0, 1.0, 1.0])
    numpy.testing.assert_allclose(y, [2 * (math.exp(-1) - 1), 0.0, 1.0])
    numpy.testing.assert_allclose(dx, [2 * math.exp(-1), 2.0, 1.0])


def test_sigmoid_values():
    y, dx, _ = forward_backward('type: "Sigmoid"', [0.0, math.log(3.0), -800.0, 800.0], [1.0, 1.0, 1.0, 1.0])
    numpy.testing.assert_allclose(y, [0.5, 0.75, 0.0, 1.0])
    numpy.testing.assert_allclose(dx, [0.25, 0.1875, 0.0, 0.0])


def test_tanh_values():
    y, dx, _ = forward_backward('type: "TanH"', [0.0, math.log(2.0)], [1.0, 2.0])
    numpy.testing.assert_allclose(y, [0.0, 0.6])
    numpy.testing.assert_allclose(dx, [1.0, 2 * 0.64])


def test_absval_values():
    y, dx, _ = forward_backward('type: "AbsVal"', [-3.0, 0.0, 2.0], [1.0, 1.0, 5.0])
    numpy.testing.assert_array_equal(y, [3.0, 0.0, 2.0])
    numpy.testing.assert_array_equal(dx, [-1.0, 0.0, 5.0])


def test_power_square_values():
    definition = 'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }'
    y, dx, _ = forward_backward(definition, [0.0, 2.0, -4.0], [1.0, 1.0, 1.0])
    numpy.testing.assert_allclose(y, [1.0, 4.0, 1.0])
    numpy.testing.assert_allclose(dx, [1.0, 2.0, -1.0])


def test_power_cube_has_finite_gradient_at_zero():
    # Caffe divides y by x here and gets NaN at x == 0; the derivative there is 0.
    definition = 'type: "Power" power_param { power: 3 scale: 2 }'
    y, dx, _ = forward_backward(definition, [0.0, 1.0, -1.0], [1.0, 1.0, 1.0])
    numpy.testing.assert_allclose(y, [0.0, 8.0, -8.0])
    numpy.testing.assert_allclose(dx, [0.0, 24.0, 24.0])


def test_power_constant_cases():
    y, dx, _ = forward_backward('type: "Power" power_param { power: 3 scale: 0 shift: 2 }', [5.0, -1.0], [1.0, 1.0])
    numpy.testing.assert_array_equal(y, [8.0, 8.0])
    numpy.testing.assert_array_equal(dx, [0.0, 0.0])
    y, _, _ = forward_backward('type: "Power" power_param { power: 0 }', [5.0, -1.0])
    numpy.testing.assert_array_equal(y, [1.0, 1.0])
    y, dx, _ = forward_backward('type: "Power" power_param { scale: -2 shift: 1 }', [5.0, -1.0], [1.0, 3.0])
    numpy.testing.assert_array_equal(y, [-9.0, 3.0])
    numpy.testing.assert_array_equal(dx, [-2.0, -6.0])


def test_exp_values():
    y, dx, _ = forward_backward('type: "Exp" exp_param { base: 2 shift: 1 }', [0.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    numpy.testing.assert_allclose(y, [2.0, 4.0, 8.0])
    numpy.testing.assert_allclose(dx, numpy.array([2.0, 4.0, 8.0]) * math.log(2.0))
    y, dx, _ = forward_backward('type: "Exp" exp_param { scale: 2 }', [0.0, 0.5], [1.0, 1.0])
    numpy.testing.assert_allclose(y, [1.0, math.e])
    numpy.testing.assert_allclose(dx, [2.0, 2 * math.e])


def test_log_values():
    y, dx, _ = forward_backward('type: "Log" log_param { base: 10 }', [1.0, 10.0, 100.0], [1.0, 1.0, 1.0])
    numpy.testing.assert_allclose(y, [0.0, 1.0, 2.0], atol=1e-15)
    numpy.testing.assert_allclose(dx, 1 / (numpy.array([1.0, 10.0, 100.0]) * math.log(10.0)))
    y, dx, _ = forward_backward('type: "Log" log_param { scale: 2 shift: 1 }', [0.0, (math.e - 1) / 2], [1.0, 1.0])
    numpy.testing.assert_allclose(y, [0.0, 1.0], atol=1e-15)
    numpy.testing.assert_allclose(dx, [2.0, 2 / math.e])


def test_bnll_values():
    y, dx, _ = forward_backward('type: "BNLL"', [0.0, 100.0, -100.0, math.log(3.0)], [1.0, 1.0, 1.0, 1.0])
    numpy.testing.assert_allclose(y, [math.log(2.0), 100.0, math.exp(-100.0), math.log(4.0)], rtol=1e-12)
    numpy.testing.assert_allclose(dx, [0.5, 1.0, math.exp(-100.0), 0.75], rtol=1e-12)


def test_threshold_values():
    y, dx, _ = forward_backward('type: "Threshold" threshold_param { threshold: 0.5 }', [0.4, 0.5, 0.6], [1.0] * 3)
    numpy.testing.assert_array_equal(y, [0.0, 0.0, 1.0])
    numpy.testing.assert_array_equal(dx, [0.0, 0.0, 0.0])


def test_swish_values():
    x = [0.0, math.log(3.0)]
    y, dx, _ = forward_backward('type: "Swish"', x, [1.0, 1.0])
    numpy.testing.assert_allclose(y, [0.0, 0.75 * math.log(3.0)])
    numpy.testing.assert_allclose(dx, [0.5, 0.75 + 0.1875 * math.log(3.0)])
    y, _, _ = forward_backward('type: "Swish" swish_param { beta: 2 }', [math.log(3.0) / 2], None)
    numpy.testing.assert_allclose(y, [0.75 * math.log(3.0) / 2])


def test_clip_values():
    definition = 'type: "Clip" clip_param { min: -1 max: 2 }'
    y, dx, _ = forward_backward(definition, [-3.0, -1.0, 0.0, 2.0, 5.0], [1.0] * 5)
    numpy.testing.assert_array_equal(y, [-1.0, -1.0, 0.0, 2.0, 2.0])
    numpy.testing.assert_array_equal(dx, [0.0, 1.0, 1.0, 1.0, 0.0])  # both bounds pass the gradient, as in Caffe


def test_dropout_train_scales_kept_values():
    x = numpy.arange(1.0, 201.0)
    y, dx, layer = forward_backward('type: "Dropout" dropout_param { dropout_ratio: 0.75 }', x, numpy.ones(200))
    kept = y != 0
    assert 0 < kept.sum() < 200
    numpy.testing.assert_allclose(y[kept], 4 * x[kept])
    numpy.testing.assert_array_equal(dx, 4.0 * kept)


def test_dropout_test_phase_is_identity():
    x = numpy.arange(6.0).reshape(2, 3)
    y, dx, _ = forward_backward('type: "Dropout"', x, numpy.full((2, 3), 3.0), phase=pb.TEST)
    numpy.testing.assert_array_equal(y, x)
    numpy.testing.assert_array_equal(dx, numpy.full((2, 3), 3.0))


def test_dropout_keep_fraction():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', dtype=numpy.float32)
    _, top = run_layer(layer, [numpy.ones((200, 500), dtype=numpy.float32)])
    assert top[0].data.dtype == numpy.float32
    dropped = float(numpy.mean(top[0].data == 0))
    assert abs(dropped - 0.3) < 0.01
    assert abs(float(top[0].data.mean()) - 1.0) < 0.02


def test_dropout_mask_follows_random_seed():
    def mask(seed):
        netdef.set_random_seed(seed)
        _, top = run_layer(make_layer('type: "Dropout"'), [numpy.ones((8, 16))])
        return top[0].data

    numpy.testing.assert_array_equal(mask(3), mask(3))
    assert not numpy.array_equal(mask(3), mask(4))


def test_dropout_zero_ratio_keeps_everything():
    y, _, _ = forward_backward('type: "Dropout" dropout_param { dropout_ratio: 0 }', [1.0, -2.0, 3.0])
    numpy.testing.assert_array_equal(y, [1.0, -2.0, 3.0])


def test_float32_stays_float32():
    for definition in (
        'type: "ReLU" relu_param { negative_slope: 0.1 }',
        'type: "PReLU"',
        'type: "ELU"',
        'type: "Sigmoid"',
        'type: "Swish"',
        'type: "Clip" clip_param { min: 0 max: 1 }',
        'type: "Power" power_param { power: 1.5 shift: 4 }',
        'type: "Threshold"',
    ):
        x = numpy.linspace(-2, 2, 12, dtype=numpy.float32).reshape(2, 3, 2)
        layer, bottom, top = forward_layer(definition, [x], dtype=numpy.float32)
        run_backward(layer, bottom, top, [numpy.ones_like(top[0].data)])
        assert top[0].data.dtype == numpy.float32, definition
        assert bottom[0].diff.dtype == numpy.float32, definition


# --- numerical gradients ------------------------------------------------------------------
X = numpy.random.default_rng(5).standard_normal((2, 3, 2, 3))

GRADIENT_CASES = [
    ('type: "ReLU"', X, {"kink": 0.0}),
    ('type: "ReLU" relu_param { negative_slope: 0.2 }', X, {"kink": 0.0}),
    ('type: "ReLU" relu_param { negative_slope: -0.3 }', X, {"kink": 0.0}),
    ('type: "ELU" elu_param { alpha: -0.5 }', X, {"kink": 0.0}),
    ('type: "PReLU" prelu_param { filler { type: "uniform" min: -1 max: 1 } }', X, {"kink": 0.0}),
    ('type: "PReLU" prelu_param { channel_shared: true }', X, {"kink": 0.0}),
    ('type: "ELU" elu_param { alpha: 0.7 }', X, {"kink": 0.0}),
    ('type: "Sigmoid"', X, {}),
    ('type: "TanH"', X, {}),
    ('type: "AbsVal"', X, {"kink": 0.0}),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', X, {}),
    ('type: "Power" power_param { power: 3 scale: -0.5 }', X, {}),
    ('type: "Power" power_param { power: 0.5 scale: 0.5 shift: 2 }', X, {}),
    ('type: "Power" power_param { scale: -2 shift: 1 }', X, {}),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.3 }', X, {}),
    ('type: "Exp"', X, {}),
    ('type: "Log"', numpy.abs(X) + 0.5, {}),
    ('type: "Log" log_param { base: 3 scale: 2 shift: 1 }', numpy.abs(X), {}),
    ('type: "BNLL"', 3 * X, {}),
    ('type: "Swish" swish_param { beta: 1.5 }', X, {}),
    ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', numpy.round(X, 1) + 0.05, {}),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', X, {}),
]


@pytest.mark.parametrize("definition,x,kwargs", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_gradient(definition, x, kwargs):
    result = check_gradient(make_layer(definition), [x], **kwargs)
    assert result["checked"] > 0


def test_dropout_test_phase_gradient():
    check_gradient(make_layer('type: "Dropout"', phase=pb.TEST), [X])


# --- in-place use inside a net -------------------------------------------------------------
IN_PLACE = [
    'type: "ReLU"',
    'type: "ReLU" relu_param { negative_slope: 0.1 }',
    'type: "ReLU" relu_param { negative_slope: -0.5 }',
    'type: "ELU" elu_param { alpha: -0.5 }',
    'type: "PReLU" prelu_param { filler { type: "uniform" min: -1 max: 1 } }',
    'type: "ELU"',
    'type: "Sigmoid"',
    'type: "TanH"',
    'type: "AbsVal"',
    'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
    'type: "Power" power_param { power: 3 shift: 1 }',
    'type: "Exp" exp_param { base: 2 }',
    'type: "Log" log_param { shift: 5 }',
    'type: "BNLL"',
    'type: "Swish"',
    'type: "Clip" clip_param { min: -0.5 max: 0.5 }',
    'type: "Dropout"',
    'type: "Threshold"',
]


def _net(body: str, in_place: bool) -> netdef.Net:
    top = "x" if in_place else "y"
    text = f"""
        force_backward: true
        layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 dim: 4 }} }} }}
        layer {{ name: "L" bottom: "x" top: "{top}" {body} }}
    """
    return netdef.Net(parse_text(text, pb.NetParameter()), netdef.TRAIN)


@pytest.mark.parametrize("body", IN_PLACE)
def test_in_place_matches_out_of_place(body):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(numpy.float32)
    dy = rng.standard_normal((2, 3, 4)).astype(numpy.float32)
    results = []
    for in_place in (False, True):
        netdef.set_random_seed(11)  # both nets draw the same masks (Dropout) from their own streams
        net = _net(body, in_place)
        top = "x" if in_place else "y"
        if "L" in net.params and not in_place:
            params = [p.data.copy() for p in net.params["L"]]
        elif "L" in net.params:
            for p, v in zip(net.params["L"], params, strict=True):
                p.data[...] = v
        net.blobs["x"].data[...] = x
        net.forward()
        y = net.blobs[top].data.copy()
        net.blobs[top].diff[...] = dy
        net.backward()
        pdiffs = [p.diff.copy() for p in net.params.get("L", [])]
        results.append((y, net.blobs["x"].diff.copy(), pdiffs))
    (y0, dx0, p0), (y1, dx1, p1) = results
    numpy.testing.assert_allclose(y1, y0, rtol=1e-6)
    numpy.testing.assert_allclose(dx1, dx0, rtol=1e-6)
    for a, b in zip(p1, p0, strict=True):
        numpy.testing.assert_allclose(a, b, rtol=1e-5)


# --- parity with Caffe ---------------------------------------------------------------------
CASES = layer_cases(TYPES)


@parametrize_layer_cases(TYPES)
def test_parity(case):
    check_layer_case(case)


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition,x,error,needle",
    [
        ('type: "PReLU"', numpy.zeros(4), ShapeMismatchError, "at least 2 axes"),
        ('type: "Exp" exp_param { base: -2 }', numpy.zeros(3), InvalidParameterError, "Received: base -2"),
        ('type: "Exp" exp_param { base: 0 }', numpy.zeros(3), InvalidParameterError, "Received: base 0"),
        ('type: "Log" log_param { base: 1 }', numpy.ones(3), InvalidParameterError, "Received: base 1"),
        ('type: "Log" log_param { base: -3 }', numpy.ones(3), InvalidParameterError, "Received: base -3"),
        ('type: "Clip" clip_param { min: 2 max: 1 }', numpy.ones(3), InvalidParameterError, "min 2.0, max 1.0"),
        ('type: "Clip" clip_param { min: 2 }', numpy.ones(3), InvalidParameterError, "max missing"),
        ('type: "Dropout" dropout_param { dropout_ratio: 1 }', numpy.ones(3), InvalidParameterError, "Received: 1.0"),
        ('type: "Dropout" dropout_param { dropout_ratio: -0.1 }', numpy.ones(3), InvalidParameterError, "Received"),
    ],
)
def test_invalid_parameters(definition, x, error, needle):
    check_layer_error(pb.LayerParameter.FromString(_partial(definition)), [x], error, needle)


def _partial(definition: str) -> bytes:
    # Clip's min/max are `required`: build the message without the completeness check to reach the layer.
    message = pb.LayerParameter()
    text_format.Merge(definition, message)
    return message.SerializePartialToString()


def test_prelu_slope_count_mismatch():
    layer = make_layer('type: "PReLU"')
    bottom, top = run_layer(layer, [numpy.zeros((2, 3, 4))])
    bottom[0].reshape((2, 5, 4))
    with pytest.raises(ShapeMismatchError, match="needs 5"):
        layer.reshape(bottom, top)


def test_layer_count_checks():
    with pytest.raises(NetdefError):
        run_layer(make_layer('type: "ReLU"'), [numpy.zeros(2), numpy.zeros(2)])


# --- GPU -----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("definition", [c[0] for c in GRADIENT_CASES if "Dropout" not in c[0]])
def test_gpu_matches_cpu(definition):
    check_gpu_matches_cpu(definition, [numpy.abs(X) + 0.5 if "Log" in definition else X])
