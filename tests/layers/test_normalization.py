"""Tests of BatchNorm, Scale, Bias, MVN and LRN (netdef/layers/normalization.py)."""

import math

import numpy
import pytest

import netdef
from netdef.errors import InvalidParameterError, ResourceLimitError, ShapeMismatchError
from netdef.proto import netdef_pb2 as pb
from netdef.proto import parse_text
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

TYPES = {"BatchNorm", "Scale", "Bias", "MVN", "LRN"}


def run(definition, bottoms, phase=pb.TRAIN, params=None, dy=None):
    """Set up one float64 layer, optionally set its blobs, run forward (and backward when dy is given)."""
    layer, bottom, top = forward_layer(definition, bottoms, params, phase=phase)
    if dy is not None:
        run_backward(layer, bottom, top, [dy])
    return layer, bottom, top


# --- BatchNorm ----------------------------------------------------------------------------
SQRT_125 = math.sqrt(1.25)


def test_batchnorm_train_values_and_running_stats():
    definition = 'type: "BatchNorm" batch_norm_param { eps: 0 moving_average_fraction: 0.9 }'
    x = [[1.0], [2.0], [3.0], [4.0]]  # N=4, C=1: mean 2.5, biased variance 1.25
    layer, bottom, top = run(definition, [x])
    numpy.testing.assert_allclose(top[0].data.ravel(), (numpy.array([1, 2, 3, 4]) - 2.5) / SQRT_125)
    numpy.testing.assert_allclose(layer.blobs[2].data, [1.0])
    numpy.testing.assert_allclose(layer.blobs[0].data, [2.5])
    numpy.testing.assert_allclose(layer.blobs[1].data, [1.25 * 4 / 3])  # unbiased: m / (m - 1), m = 4
    layer.forward_step(bottom, top)
    numpy.testing.assert_allclose(layer.blobs[2].data, [1.9])
    numpy.testing.assert_allclose(layer.blobs[0].data, [0.9 * 2.5 + 2.5])
    numpy.testing.assert_allclose(layer.blobs[1].data, [1.9 * 5 / 3])


def test_batchnorm_train_backward_values():
    definition = 'type: "BatchNorm" batch_norm_param { eps: 0 }'
    x = [[1.0], [2.0], [3.0], [4.0]]
    _, bottom, _ = run(definition, [x], dy=[[1.0], [0.0], [0.0], [0.0]])
    numpy.testing.assert_allclose(bottom[0].diff.ravel(), [0.26832816, -0.35777088, -0.08944272, 0.17888544], rtol=1e-7)
    # a loss 0.5 * sum(y^2) has zero gradient: y is standardised whatever x is
    y = (numpy.array(x) - 2.5) / SQRT_125
    _, bottom, _ = run(definition, [x], dy=y)
    numpy.testing.assert_allclose(bottom[0].diff, 0, atol=1e-12)


def test_batchnorm_statistics_per_channel():
    definition = 'type: "BatchNorm" batch_norm_param { eps: 0 moving_average_fraction: 0 }'
    x = [[[0.0], [10.0]], [[2.0], [30.0]]]  # N=2, C=2, 1 value each
    layer, _, top = run(definition, [x])
    numpy.testing.assert_allclose(top[0].data, [[[-1.0], [-1.0]], [[1.0], [1.0]]])
    numpy.testing.assert_allclose(layer.blobs[0].data, [1.0, 20.0])
    numpy.testing.assert_allclose(layer.blobs[1].data, [2.0, 200.0])
    numpy.testing.assert_allclose(layer.blobs[2].data, [1.0])


def test_batchnorm_test_phase_uses_scaled_stored_stats():
    x = [[[2.5], [20.0]], [[4.5], [16.0]]]
    params = [[5.0, 40.0], [2.0, 8.0], [2.0]]  # mean [2.5, 20], var [1, 4] after dividing by the factor 2
    layer, bottom, top = run(
        'type: "BatchNorm" batch_norm_param { eps: 0 }', [x], phase=pb.TEST, params=params, dy=numpy.ones((2, 2, 1))
    )
    numpy.testing.assert_allclose(top[0].data, [[[0.0], [0.0]], [[2.0], [-2.0]]])
    numpy.testing.assert_allclose(bottom[0].diff, [[[1.0], [0.5]], [[1.0], [0.5]]])
    numpy.testing.assert_array_equal(layer.blobs[0].data, params[0])  # not updated in TEST
    numpy.testing.assert_array_equal(layer.blobs[2].diff, [0.0])


def test_batchnorm_zero_scale_factor_means_zero_stats():
    _, _, top = run(
        'type: "BatchNorm" batch_norm_param { eps: 0.25 }',
        [[[[1.0], [-3.0]]]],
        phase=pb.TEST,
        params=[[7.0, 7.0], [7.0, 7.0], [0.0]],
    )
    numpy.testing.assert_allclose(top[0].data, [[[2.0], [-6.0]]])


def test_batchnorm_use_global_stats_override():
    params = [[2.0], [8.0], [2.0]]
    layer, _, top = run(
        'type: "BatchNorm" batch_norm_param { use_global_stats: true eps: 0 }', [[[3.0], [5.0]]], params=params
    )
    assert layer.use_global_stats
    numpy.testing.assert_allclose(top[0].data, [[1.0], [2.0]])
    numpy.testing.assert_array_equal(layer.blobs[2].data, [2.0])
    train = make_layer('type: "BatchNorm"', phase=pb.TRAIN)
    test = make_layer('type: "BatchNorm"', phase=pb.TEST)
    off = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false }', phase=pb.TEST)
    for layer in (train, test, off):
        run_layer(layer, [numpy.zeros((2, 3))])
    assert (train.use_global_stats, test.use_global_stats, off.use_global_stats) == (False, True, False)


def test_batchnorm_statistics_are_not_learnable_in_a_net():
    text = """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 3 } }
        layer { name: "bn" type: "BatchNorm" bottom: "h" top: "h" }
        layer { name: "bn2" type: "BatchNorm" bottom: "h" top: "z" param { lr_mult: 0 } param { lr_mult: 0 }
                param { lr_mult: 0 } }
    """
    net = netdef.Net(parse_text(text, pb.NetParameter()), netdef.TRAIN)
    for name in ("bn", "bn2"):
        layer = net.layer_dict[name]
        assert [spec.lr_mult for spec in layer.param.param] == [0.0, 0.0, 0.0]
        assert layer.param_propagate_down == [False, False, False]
        assert all(spec.lr_mult == 0 for spec in net.param_specs if spec.layer == name)
    assert any(spec.lr_mult != 0 for spec in net.param_specs if spec.layer == "ip")


def test_batchnorm_float32_stays_float32():
    layer = make_layer('type: "BatchNorm"', dtype=numpy.float32)
    bottom, top = run_layer(layer, [numpy.arange(24, dtype=numpy.float32).reshape(2, 3, 4)])
    top[0].diff = numpy.ones_like(top[0].data)
    layer.backward(top, [True], bottom)
    assert top[0].data.dtype == bottom[0].diff.dtype == layer.blobs[1].data.dtype == numpy.float32


# --- Scale ---------------------------------------------------------------------------------
XS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_scale_learned_with_bias_values():
    layer, bottom, top = run(
        'type: "Scale" scale_param { bias_term: true }',
        [XS],
        params=[[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]],
        dy=numpy.ones((2, 3)),
    )
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    numpy.testing.assert_allclose(top[0].data, [[2.0, 4.0, 8.0], [5.0, 10.0, 17.0]])
    numpy.testing.assert_allclose(bottom[0].diff, [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    numpy.testing.assert_allclose(layer.blobs[0].diff, [5.0, 7.0, 9.0])
    numpy.testing.assert_allclose(layer.blobs[1].diff, [2.0, 2.0, 2.0])


def test_scale_default_filler_is_identity():
    layer, _, top = run('type: "Scale"', [XS])
    numpy.testing.assert_array_equal(layer.blobs[0].data, [1.0, 1.0, 1.0])
    numpy.testing.assert_array_equal(top[0].data, XS)


def test_scale_from_second_bottom_values():
    layer, bottom, top = run(
        'type: "Scale" scale_param { axis: 0 bias_term: true }',
        [XS, [2.0, -1.0]],
        params=[[0.5, 0.0]],
        dy=[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]],
    )
    assert [b.shape for b in layer.blobs] == [(2,)]  # only the bias is a parameter
    numpy.testing.assert_allclose(top[0].data, [[2.5, 4.5, 6.5], [-4.0, -5.0, -6.0]])
    numpy.testing.assert_allclose(bottom[0].diff, [[2.0, 0.0, 2.0], [-1.0, -1.0, -1.0]])
    numpy.testing.assert_allclose(bottom[1].diff, [4.0, 15.0])
    numpy.testing.assert_allclose(layer.blobs[0].diff, [2.0, 3.0])


def test_scale_scalar_and_multi_axis():
    _, bottom, top = run('type: "Scale"', [XS, 3.0], dy=numpy.ones((2, 3)))
    numpy.testing.assert_allclose(top[0].data, 3 * numpy.array(XS))
    numpy.testing.assert_allclose(bottom[1].diff, 21.0)
    layer, _, top = run('type: "Scale" scale_param { axis: 0 num_axes: -1 }', [XS], params=[[[1, 0, 2], [0, 1, 0]]])
    assert layer.blobs[0].shape == (2, 3)
    numpy.testing.assert_allclose(top[0].data, [[1.0, 0.0, 6.0], [0.0, 5.0, 0.0]])
    layer, _, _ = run('type: "Scale" scale_param { num_axes: 0 }', [XS])
    assert layer.blobs[0].shape == ()


def test_scale_param_diff_accumulates():
    layer, bottom, top = run('type: "Scale"', [XS], dy=numpy.ones((2, 3)))
    layer.backward(top, [True], bottom)
    numpy.testing.assert_allclose(layer.blobs[0].diff, [10.0, 14.0, 18.0])


# --- Bias ----------------------------------------------------------------------------------
def test_bias_values():
    layer, bottom, top = run('type: "Bias" bias_param { axis: 0 }', [XS, [10.0, 20.0]], dy=[[1, 2, 3], [4, 5, 6]])
    assert layer.blobs == []
    numpy.testing.assert_allclose(top[0].data, [[11.0, 12.0, 13.0], [24.0, 25.0, 26.0]])
    numpy.testing.assert_allclose(bottom[0].diff, [[1, 2, 3], [4, 5, 6]])
    numpy.testing.assert_allclose(bottom[1].diff, [6.0, 15.0])
    layer, _, top = run('type: "Bias"', [XS], params=[[1.0, -1.0, 0.5]], dy=numpy.ones((2, 3)))
    numpy.testing.assert_allclose(top[0].data, [[2.0, 1.0, 3.5], [5.0, 4.0, 6.5]])
    numpy.testing.assert_allclose(layer.blobs[0].diff, [2.0, 2.0, 2.0])


def test_bias_default_filler_is_zero():
    layer, _, top = run('type: "Bias"', [XS])
    numpy.testing.assert_array_equal(layer.blobs[0].data, [0.0, 0.0, 0.0])
    numpy.testing.assert_array_equal(top[0].data, XS)


# --- MVN -----------------------------------------------------------------------------------
def test_mvn_values():
    _, _, top = run('type: "MVN"', [[[[[1.0, 2.0, 3.0, 4.0]]]]])
    numpy.testing.assert_allclose(top[0].data.ravel(), numpy.array([-1.5, -0.5, 0.5, 1.5]) / (SQRT_125 + 1e-9))
    # eps is added to the standard deviation, not the variance
    _, _, top = run('type: "MVN" mvn_param { eps: 0.5 }', [[[[1.0, 3.0]]]])
    numpy.testing.assert_allclose(top[0].data.ravel(), [-1 / 1.5, 1 / 1.5])
    _, _, top = run('type: "MVN" mvn_param { across_channels: true eps: 0 }', [numpy.reshape([1.0, 3.0], (1, 2, 1))])
    numpy.testing.assert_allclose(top[0].data.ravel(), [-1.0, 1.0])
    _, bottom, top = run(
        'type: "MVN" mvn_param { normalize_variance: false }',
        [[[[1.0, 3.0]], [[5.0, 5.0]]]],
        dy=[[[1.0, 0.0]], [[2.0, 2.0]]],
    )
    numpy.testing.assert_allclose(top[0].data, [[[-1.0, 1.0]], [[0.0, 0.0]]])
    numpy.testing.assert_allclose(bottom[0].diff, [[[0.5, -0.5]], [[0.0, 0.0]]])


def test_mvn_backward_values():
    # y = d / (s + eps); with d = [-1, 1], s = 1, eps = 1: y = d / 2 and dx = (dy - mean dy) / 2 - d * mean(dy d) / 4
    _, bottom, _ = run('type: "MVN" mvn_param { eps: 1 }', [[[[0.0, 2.0]]]], dy=[[[[1.0, 0.0]]]])
    numpy.testing.assert_allclose(bottom[0].diff.ravel(), [0.25 - 0.125, -0.25 + 0.125])


def test_mvn_constant_input_is_finite():
    _, bottom, top = run('type: "MVN"', [numpy.full((1, 2, 3), 4.0)], dy=numpy.ones((1, 2, 3)))
    assert numpy.all(top[0].data == 0) and numpy.all(numpy.isfinite(bottom[0].diff))


# --- numerical gradients ------------------------------------------------------------------
RNG = numpy.random.default_rng(3)
X = RNG.standard_normal((3, 2, 2, 3))

GRADIENT_CASES = [
    ('type: "BatchNorm"', [X], pb.TRAIN, {}),
    ('type: "BatchNorm" batch_norm_param { eps: 0.1 }', [X[:, :, 0, :]], pb.TRAIN, {}),
    ('type: "BatchNorm"', [X[:, :, 0, 0]], pb.TRAIN, {}),
    ('type: "BatchNorm"', [X], pb.TEST, {"check_params": False}),
    ('type: "Scale" scale_param { filler { type: "gaussian" } }', [X], pb.TRAIN, {}),
    (
        'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
        [X],
        pb.TRAIN,
        {},
    ),
    ('type: "Scale" scale_param { axis: -2 num_axes: 2 filler { type: "gaussian" } }', [X], pb.TRAIN, {}),
    ('type: "Scale" scale_param { num_axes: 0 bias_term: true filler { type: "gaussian" } }', [X], pb.TRAIN, {}),
    (
        'type: "Scale" scale_param { axis: 0 bias_term: true bias_filler { type: "gaussian" } }',
        [X, RNG.standard_normal((3, 2))],
        pb.TRAIN,
        {},
    ),
    ('type: "Scale" scale_param { axis: 0 num_axes: -1 filler { type: "gaussian" } }', [X], pb.TRAIN, {}),
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', [X], pb.TRAIN, {}),
    ('type: "Bias" bias_param { axis: 2 num_axes: -1 filler { type: "gaussian" } }', [X], pb.TRAIN, {}),
    ('type: "Bias"', [X, RNG.standard_normal((2, 2))], pb.TRAIN, {}),
    ('type: "MVN"', [X], pb.TRAIN, {}),
    ('type: "MVN" mvn_param { eps: 0.3 }', [X], pb.TRAIN, {}),
    ('type: "MVN" mvn_param { across_channels: true eps: 0.2 }', [X], pb.TRAIN, {}),
    ('type: "MVN" mvn_param { normalize_variance: false }', [X], pb.TRAIN, {}),
    ('type: "MVN" mvn_param { normalize_variance: false across_channels: true }', [X], pb.TRAIN, {}),
]


GRADIENT_IDS = [f"{c[0]}-{'TRAIN' if c[2] == pb.TRAIN else 'TEST'}-{c[1][0].ndim}d" for c in GRADIENT_CASES]


@pytest.mark.parametrize("definition,bottoms,phase,kwargs", GRADIENT_CASES, ids=GRADIENT_IDS)
def test_gradient(definition, bottoms, phase, kwargs):
    result = check_gradient(make_layer(definition, phase=phase), bottoms, **kwargs)
    assert result["checked"] > 0


# --- in-place use inside a net -------------------------------------------------------------
IN_PLACE = [
    ('type: "BatchNorm"', netdef.TRAIN),
    ('type: "BatchNorm"', netdef.TEST),
    (
        'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
        netdef.TRAIN,
    ),
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', netdef.TRAIN),
    ('type: "MVN"', netdef.TRAIN),
    ('type: "MVN" mvn_param { normalize_variance: false }', netdef.TRAIN),
]


@pytest.mark.parametrize("body,phase", IN_PLACE)
def test_in_place_matches_out_of_place(body, phase):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5)).astype(numpy.float32)
    dy = rng.standard_normal((4, 3, 5)).astype(numpy.float32)
    stats = [rng.uniform(0.5, 2.0, 3), rng.uniform(0.5, 2.0, 3), numpy.array([1.5])]
    results = []
    for in_place in (False, True):
        top = "x" if in_place else "y"
        text = f"""
            force_backward: true
            layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 4 dim: 3 dim: 5 }} }} }}
            layer {{ name: "L" bottom: "x" top: "{top}" {body} }}
        """
        netdef.set_random_seed(5)
        net = netdef.Net(parse_text(text, pb.NetParameter()), phase)
        if "BatchNorm" in body:
            for p, v in zip(net.params["L"], stats, strict=True):
                p.data[...] = v
        net.blobs["x"].data[...] = x
        net.forward()
        y = net.blobs[top].data.copy()
        net.blobs[top].diff[...] = dy
        net.backward()
        params = [p.data.copy() for p in net.params.get("L", [])] + [p.diff.copy() for p in net.params.get("L", [])]
        results.append((y, net.blobs["x"].diff.copy(), params))
    (y0, dx0, p0), (y1, dx1, p1) = results
    numpy.testing.assert_allclose(y1, y0, rtol=1e-6)
    numpy.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-7)
    for a, b in zip(p1, p0, strict=True):
        numpy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# --- parity with Caffe ---------------------------------------------------------------------
CASES = layer_cases(TYPES)


@parametrize_layer_cases(TYPES)
def test_parity(case):
    check_layer_case(case)


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition,bottoms,error,needle",
    [
        ('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }', [X], InvalidParameterError, "lr_mult 1"),
        ('type: "BatchNorm" batch_norm_param { eps: -1 }', [X], InvalidParameterError, "Received: -1"),
        ('type: "BatchNorm"', [numpy.float64(1.0)], ShapeMismatchError, "at least 1 axis"),
        (
            'type: "Scale" scale_param { axis: 4 }',
            [X],
            InvalidParameterError,
            "scale_param.axis 4 is out of range for a 4-axis bottom. Received: 4. Valid: -4 .. 3",
        ),
        ('type: "Scale" scale_param { num_axes: -2 }', [X], InvalidParameterError, "Received: -2"),
        ('type: "Scale" scale_param { axis: 2 num_axes: 3 }', [X], ShapeMismatchError, "num_axes 3"),
        ('type: "Scale"', [X, numpy.ones(3)], ShapeMismatchError, "(3,)"),
        ('type: "Bias" bias_param { axis: -5 }', [X], InvalidParameterError, "bias_param.axis -5 is out of range"),
        ('type: "Bias" bias_param { axis: 0 }', [X, numpy.ones((3, 3))], ShapeMismatchError, "(3, 3)"),
        ('type: "MVN" mvn_param { eps: -0.1 }', [X], InvalidParameterError, "Received: -0.1"),
    ],
)
def test_invalid_parameters(definition, bottoms, error, needle):
    check_layer_error(definition, bottoms, error, needle)


def test_batchnorm_channel_change_is_refused():
    layer = make_layer('type: "BatchNorm"')
    bottom, top = run_layer(layer, [X])
    bottom[0].reshape((3, 4, 2, 3))
    with pytest.raises(ShapeMismatchError, match="set up for 2 channels"):
        layer.reshape(bottom, top)


# --- GPU -----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("definition,bottoms,phase,kwargs", GRADIENT_CASES)
def test_gpu_matches_cpu(definition, bottoms, phase, kwargs):
    check_gpu_matches_cpu(definition, bottoms, phase=phase)


# --- LRN ---------------------------------------------------------------------------------
LRN_RNG = numpy.random.default_rng(5)


def reference_lrn_across(x, size, alpha, beta, k):
    """Per-element definition of cross-channel LRN (independent of netdef)."""
    y = numpy.empty_like(x)
    c = x.shape[1]
    half = size // 2
    for ch in range(c):
        lo, hi = max(0, ch - half), min(c, ch + half + 1)
        scale = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] * scale**-beta
    return y


def reference_lrn_within(x, size, alpha, beta):
    """Per-pixel definition of within-channel LRN: n x n neighbourhood mean of x^2, zero outside."""
    half = size // 2
    h, w = x.shape[2:]
    padded = numpy.pad(x**2, [(0, 0), (0, 0), (half, half), (half, half)])
    y = numpy.empty_like(x)
    for i in range(h):
        for j in range(w):
            mean = padded[:, :, i : i + size, j : j + size].sum(axis=(2, 3)) / size**2
            y[:, :, i, j] = x[:, :, i, j] * (1 + alpha * mean) ** -beta
    return y


def test_lrn_across_channels_values():
    x = numpy.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    _, top = run_layer(make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 3 beta: 1 k: 1 }'), [x])
    # scale_c = 1 + (3/3) * sum of squares of channels c-1..c+1: 6, 15, 14
    numpy.testing.assert_allclose(top[0].data.ravel(), [1 / 6, 2 / 15, 3 / 14])
    x = LRN_RNG.standard_normal((2, 7, 3, 2))
    # parameters exactly representable in the proto's float32 fields
    _, top = run_layer(make_layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.625 beta: 0.75 k: 2 }'), [x])
    numpy.testing.assert_allclose(top[0].data, reference_lrn_across(x, 5, 0.625, 0.75, 2), rtol=1e-12)


def test_lrn_within_channel_values_ignore_k():
    x = numpy.full((1, 1, 1, 1), 2.0)
    layer = make_layer('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 9 beta: 1 k: 100 }')
    _, top = run_layer(layer, [x])
    # mean of x^2 over the zero-padded 3x3 window is 4/9; 1 + 9 * 4/9 = 5
    numpy.testing.assert_allclose(top[0].data, [[[[0.4]]]])
    x = LRN_RNG.standard_normal((2, 2, 4, 5))
    layer = make_layer('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 2 beta: 0.625 }')
    _, top = run_layer(layer, [x])
    numpy.testing.assert_allclose(top[0].data, reference_lrn_within(x, 3, 2, 0.625), rtol=1e-12)


def test_lrn_in_place():
    x = LRN_RNG.standard_normal((1, 4, 2, 2))
    layer, bottom, top = forward_layer('type: "LRN" lrn_param { local_size: 3 }', [x])
    want_y = top[0].data.copy()
    want_dx = run_backward(layer, bottom, top, [numpy.ones(x.shape)])[0].copy()
    # in place: the top is the bottom blob
    layer, bottom, _ = forward_layer('type: "LRN" lrn_param { local_size: 3 }', [x])
    bottom[0].data = x.copy()
    layer.forward_step(bottom, bottom)
    numpy.testing.assert_allclose(bottom[0].data, want_y)
    run_backward(layer, bottom, bottom, [numpy.ones(x.shape)])
    numpy.testing.assert_allclose(bottom[0].diff, want_dx)


@pytest.mark.parametrize("definition", ['type: "LRN"', 'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL }'])
def test_lrn_empty_batch(definition):
    check_empty_batch(definition, (0, 2, 5, 5))


@pytest.mark.parametrize(
    "definition",
    [
        'type: "LRN" lrn_param { local_size: 3 alpha: 1.5 beta: 0.75 k: 1.5 }',
        'type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 1.3 k: 2 }',
        'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 1.5 beta: 0.75 }',
        'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 5 alpha: 0.5 beta: 1.3 }',
        # a window wider than the channels, and one of a single channel
        'type: "LRN" lrn_param { local_size: 9 alpha: 0.5 beta: 0.75 k: 2 }',
        'type: "LRN" lrn_param { local_size: 1 alpha: 0.5 beta: 0.75 k: 2 }',
    ],
)
def test_lrn_gradients(definition):
    result = check_gradient(make_layer(definition), [LRN_RNG.standard_normal((2, 6, 3, 4))])
    assert result["checked"] > 0


class _NotNumPy:
    """NumPy under another name: LRN then takes its generic array-module code, the one CuPy arrays run."""

    def __getattr__(self, name):
        return getattr(numpy, name)


LRN_DEFINITIONS = [
    'type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }',
    'type: "LRN" lrn_param { local_size: 3 alpha: 2.5 beta: 1.3 k: 2 }',
    'type: "LRN" lrn_param { local_size: 7 alpha: 0.5 beta: 0.5 k: 1 }',
    'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.00005 beta: 0.75 }',
    'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 5 alpha: 2 beta: 0.75 }',
]


def _lrn_run(definition, x, dy, twice=False):
    layer = make_layer(definition, dtype=numpy.float32)
    bottom, top = run_layer(layer, [x])
    for _ in range(2 if twice else 1):
        layer.forward(bottom, top)
        top[0].diff = dy.copy()
        layer.backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy()


@pytest.mark.parametrize("definition", LRN_DEFINITIONS)
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 1, 3, 3), (1, 9, 2, 7)])
def test_lrn_numpy_path_is_bit_for_bit_the_generic_one(definition, shape, monkeypatch):
    from netdef.layers import normalization

    x = LRN_RNG.standard_normal(shape).astype(numpy.float32)
    x[LRN_RNG.random(shape) < 0.2] = 0.0
    dy = LRN_RNG.standard_normal(shape).astype(numpy.float32)
    dy[LRN_RNG.random(shape) < 0.2] = -0.0
    # chunks of one sample (reusing the kept scale arrays on the second pass) and one chunk for all
    monkeypatch.setattr(normalization, "LRN_CHUNK_BYTES", 1)
    small = _lrn_run(definition, x, dy, twice=True)
    monkeypatch.setattr(normalization, "LRN_CHUNK_BYTES", 1 << 30)
    whole = _lrn_run(definition, x, dy)
    other = _NotNumPy()
    monkeypatch.setattr(normalization.backend, "array_module", lambda a: other)
    generic = _lrn_run(definition, x, dy)
    for got in (small, whole):
        for a, b in zip(got, generic, strict=True):
            numpy.testing.assert_array_equal(a.view(numpy.uint32), b.view(numpy.uint32))


@pytest.mark.parametrize(
    "definition,shapes,error,needle",
    [
        ('type: "LRN" lrn_param { local_size: 4 }', [(1, 4, 2, 2)], InvalidParameterError, "Received: 4"),
        ('type: "LRN" lrn_param { local_size: 0 }', [(1, 4, 2, 2)], InvalidParameterError, "Received: 0"),
        ('type: "LRN"', [(4, 2, 2)], ShapeMismatchError, "4 axes"),
    ],
)
def test_lrn_invalid_parameters(definition, shapes, error, needle):
    check_layer_error(definition, [numpy.zeros(s) for s in shapes], error, needle)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "definition",
    [
        'type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 }',
        'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 1.5 beta: 0.75 }',
    ],
)
def test_lrn_gpu_matches_cpu(definition):
    check_gpu_matches_cpu(definition, [LRN_RNG.standard_normal((2, 6, 5, 4))])


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_absurd_local_size_is_refused_before_allocating(region):
    layer = make_layer(f'type: "LRN" lrn_param {{ local_size: 2147483647 norm_region: {region} }}')
    with pytest.raises(ResourceLimitError, match=r'Layer "L" \(type LRN\) padded input'):
        run_layer(layer, [numpy.ones((1, 3, 5, 5))])
