"""Tests of Crop and LRN (netdef/layers/vision.py); Convolution/Deconvolution/Im2col and Pooling/SPP
have their own files (test_convolution.py, test_pooling.py)."""

import numpy
import pytest

from netdef.errors import InvalidParameterError, ShapeMismatchError
from netdef.testing import check_gpu_matches_cpu, check_gradient, make_layer, run_layer
from netdef.testing.parity import check_layer_case, layer_cases, parametrize_layer_cases

TYPES = {"Crop", "LRN"}
RNG = numpy.random.default_rng(5)


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


# --- literal values ---------------------------------------------------------------------
def test_crop_values():
    x = numpy.arange(40.0).reshape(1, 2, 4, 5)
    ref = numpy.zeros((1, 2, 2, 3))
    _, top = run_layer(make_layer('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }'), [x, ref])
    numpy.testing.assert_array_equal(top[0].data, x[:, :, 1:3, 2:5])
    _, top = run_layer(make_layer('type: "Crop" crop_param { offset: 1 }'), [x, ref])
    numpy.testing.assert_array_equal(top[0].data[0, 1], [[26, 27, 28], [31, 32, 33]])
    # axis 1 crops channels too; the reference's batch size is ignored
    _, top = run_layer(make_layer('type: "Crop" crop_param { axis: 1 }'), [x, numpy.zeros((3, 1, 3, 3))])
    numpy.testing.assert_array_equal(top[0].data, x[:, :1, :3, :3])


def test_crop_backward():
    x = numpy.arange(12.0).reshape(1, 1, 3, 4)
    layer = make_layer('type: "Crop" crop_param { axis: 2 offset: 1 }')
    bottom, top = run_layer(layer, [x, numpy.zeros((1, 1, 2, 2))])
    top[0].diff = numpy.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    bottom[1].diff[...] = 9.0
    layer.backward(top, [True, True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff[0, 0], [[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0]])
    assert numpy.all(bottom[1].diff == 0)
    assert not layer.allow_force_backward(1)


def test_lrn_across_channels_values():
    x = numpy.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    _, top = run_layer(make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 3 beta: 1 k: 1 }'), [x])
    # scale_c = 1 + (3/3) * sum of squares of channels c-1..c+1: 6, 15, 14
    numpy.testing.assert_allclose(top[0].data.ravel(), [1 / 6, 2 / 15, 3 / 14])
    x = RNG.standard_normal((2, 7, 3, 2))
    # parameters exactly representable in the proto's float32 fields
    _, top = run_layer(make_layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.625 beta: 0.75 k: 2 }'), [x])
    numpy.testing.assert_allclose(top[0].data, reference_lrn_across(x, 5, 0.625, 0.75, 2), rtol=1e-12)


def test_lrn_within_channel_values_ignore_k():
    x = numpy.full((1, 1, 1, 1), 2.0)
    layer = make_layer('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 9 beta: 1 k: 100 }')
    _, top = run_layer(layer, [x])
    # mean of x^2 over the zero-padded 3x3 window is 4/9; 1 + 9 * 4/9 = 5
    numpy.testing.assert_allclose(top[0].data, [[[[0.4]]]])
    x = RNG.standard_normal((2, 2, 4, 5))
    layer = make_layer('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 2 beta: 0.625 }')
    _, top = run_layer(layer, [x])
    numpy.testing.assert_allclose(top[0].data, reference_lrn_within(x, 3, 2, 0.625), rtol=1e-12)


def test_lrn_in_place():
    x = RNG.standard_normal((1, 4, 2, 2))
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 }')
    bottom, top = run_layer(layer, [x])
    want_y = top[0].data.copy()
    top[0].diff = numpy.ones(x.shape)
    layer.backward(top, [True], bottom)
    want_dx = bottom[0].diff.copy()
    # in place: the top is the bottom blob
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 }')
    bottom, _ = run_layer(layer, [x], num_top=1)
    bottom[0].data = x.copy()
    layer.forward(bottom, bottom)
    numpy.testing.assert_allclose(bottom[0].data, want_y)
    bottom[0].diff = numpy.ones(x.shape)
    layer.backward(bottom, [True], bottom)
    numpy.testing.assert_allclose(bottom[0].diff, want_dx)


@pytest.mark.parametrize(
    "definition",
    [
        'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
        'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 }',
        'type: "Im2col" convolution_param { kernel_size: 3 }',
        'type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }',
        'type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
        'type: "SPP" spp_param { pyramid_height: 2 }',
        'type: "LRN"',
        'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL }',
    ],
)
def test_empty_batch(definition):
    """A batch of zero samples (e.g. after a Filter layer) flows through with the right shapes."""
    layer = make_layer(definition)
    bottom, top = run_layer(layer, [numpy.zeros((0, 2, 5, 5))])
    top[0].diff = numpy.zeros(top[0].shape)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.backward(top, [True], bottom)
    assert top[0].shape[0] == 0 and bottom[0].diff.shape == (0, 2, 5, 5)


# --- gradients --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition",
    [
        'type: "LRN" lrn_param { local_size: 3 alpha: 1.5 beta: 0.75 k: 1.5 }',
        'type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 1.3 k: 2 }',
        'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 1.5 beta: 0.75 }',
        'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 5 alpha: 0.5 beta: 1.3 }',
    ],
)
def test_lrn_gradients(definition):
    result = check_gradient(make_layer(definition), [RNG.standard_normal((2, 6, 3, 4))])
    assert result["checked"] > 0


def test_crop_gradient():
    layer = make_layer('type: "Crop" crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }')
    result = check_gradient(layer, [RNG.standard_normal((2, 3, 3, 5)), numpy.zeros((2, 2, 2, 2))], check_bottoms=[0])
    assert result["checked"] == 2 * 3 * 3 * 5


# --- parity with Caffe ---------------------------------------------------------------------
CASES = layer_cases(TYPES)


@parametrize_layer_cases(TYPES)
def test_parity(case):
    check_layer_case(case)


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition,shapes,error,needle",
    [
        ('type: "LRN" lrn_param { local_size: 4 }', [(1, 4, 2, 2)], InvalidParameterError, "Received: 4"),
        ('type: "LRN" lrn_param { local_size: 0 }', [(1, 4, 2, 2)], InvalidParameterError, "Received: 0"),
        ('type: "LRN"', [(4, 2, 2)], ShapeMismatchError, "4 axes"),
        (
            'type: "Crop" crop_param { axis: 2 offset: 1 offset: 1 offset: 1 }',
            [(1, 1, 4, 4), (1, 1, 2, 2)],
            InvalidParameterError,
            "Received: 3 offsets",
        ),
        (
            'type: "Crop" crop_param { axis: 2 offset: 3 }',
            [(1, 1, 4, 4), (1, 1, 2, 2)],
            ShapeMismatchError,
            "offset 3 + size 2 > input size 4",
        ),
        ('type: "Crop" crop_param { axis: 4 }', [(1, 1, 4, 4), (1, 1, 2, 2)], InvalidParameterError, "Received: 4"),
        ('type: "Crop"', [(1, 1, 4, 4), (1, 2, 2)], ShapeMismatchError, "at least as many axes"),
    ],
)
def test_invalid_parameters(definition, shapes, error, needle):
    with pytest.raises(error) as info:
        run_layer(make_layer(definition), [numpy.zeros(s) for s in shapes])
    assert needle in str(info.value)
    assert 'Layer "L"' in str(info.value)


# --- GPU -----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "definition",
    [
        'type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 }',
        'type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 1.5 beta: 0.75 }',
    ],
)
def test_gpu_matches_cpu(definition):
    check_gpu_matches_cpu(definition, [RNG.standard_normal((2, 6, 5, 4))])
