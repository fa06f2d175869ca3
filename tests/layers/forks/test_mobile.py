"""Tests of the mobile-network fork layers (netdef/layers/forks/mobile.py).

Expected values are worked out by hand from the forks' definitions (see each test), or by a
direct loop written here independently of netdef's im2col kernels.
"""

import itertools
import math

import numpy
import pytest

from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.layers.forks import fork_layer_types
from netdef.layers.forks.mobile import _greedy_nms
from netdef.testing import check_gpu_matches_cpu, check_gradient, make_layer, run_layer

RNG = numpy.random.default_rng(11)

# two channels of a 3x3 image: 0..8 and 9..17
X_2x3x3 = numpy.arange(18.0).reshape(1, 2, 3, 3)
# channel 0 filter [[1, 0], [0, 1]], channel 1 filter [[0, 1], [2, 0]]
W_DW = numpy.array([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 1.0], [2.0, 0.0]]]])


def run(definition: str, bottoms, num_top=1):
    layer = make_layer(definition)
    bottom, top = run_layer(layer, bottoms, num_top=num_top)
    return layer, bottom, top


def load_and_forward(layer, bottom, top, *blobs):
    for blob, value in zip(layer.blobs, blobs):
        blob.data[...] = value
    layer.forward(bottom, top)
    return top[0].data


def direct_depthwise(x, w, b, stride, pad, dilation):
    """Depthwise cross-correlation one output element at a time (zero padding)."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = numpy.zeros((n, c, oh, ow))
    for ni, ci, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        acc = 0.0 if b is None else b[ci]
        for u, v in itertools.product(range(kh), range(kw)):
            r = i * stride[0] - pad[0] + u * dilation[0]
            q = j * stride[1] - pad[1] + v * dilation[1]
            if 0 <= r < h and 0 <= q < wd:
                acc += w[ci, 0, u, v] * x[ni, ci, r, q]
        y[ni, ci, i, j] = acc
    return y


def test_types_are_registered_as_fork_layers():
    types = fork_layer_types()
    for name in (
        "ConvolutionDepthwise",
        "DepthwiseConvolution",
        "ShuffleChannel",
        "ReLU6",
        "Axpy",
        "Yolov3DetectionOutput",
    ):
        assert name in types and types[name]


# --- ConvolutionDepthwise ---------------------------------------------------------------------
def test_convolution_depthwise_literal_values():
    # y0 = x[i, j] + x[i+1, j+1]; y1 = x[i, j+1] + 2 x[i+1, j]; plus bias (0.5, -1)
    layer, bottom, top = run(
        'type: "ConvolutionDepthwise" convolution_param { num_output: 2 kernel_size: 2 }', [X_2x3x3]
    )
    y = load_and_forward(layer, bottom, top, W_DW, [0.5, -1.0])
    expected = numpy.array([[[[4.5, 6.5], [10.5, 12.5]], [[33.0, 36.0], [42.0, 45.0]]]])
    numpy.testing.assert_allclose(y, expected)


def test_convolution_depthwise_ignores_num_output_and_group():
    # the fork sizes everything from the input channels: weights (C, 1, kh, kw), C outputs
    definition = 'type: "ConvolutionDepthwise" convolution_param { num_output: 7 group: 1 kernel_size: 2 }'
    layer, bottom, top = run(definition, [X_2x3x3])
    assert layer.blobs[0].shape == (2, 1, 2, 2)
    assert layer.blobs[1].shape == (2,)
    assert top[0].shape == (1, 2, 2, 2)
    y = load_and_forward(layer, bottom, top, W_DW, [0.0, 0.0])
    numpy.testing.assert_allclose(y[0, 0], [[4.0, 6.0], [10.0, 12.0]])
    # the definition the user wrote is left as written
    assert layer.param.convolution_param.num_output == 7
    assert layer.param.convolution_param.group == 1


def test_convolution_depthwise_stride_pad_dilation_match_direct_loop():
    x = RNG.standard_normal((2, 3, 7, 6))
    w = RNG.standard_normal((3, 1, 3, 2))
    b = RNG.standard_normal(3)
    layer, bottom, top = run(
        'type: "ConvolutionDepthwise" convolution_param { kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 '
        "pad_h: 1 pad_w: 2 dilation: 2 }",
        [x],
    )
    y = load_and_forward(layer, bottom, top, w, b)
    numpy.testing.assert_allclose(y, direct_depthwise(x, w, b, (2, 1), (1, 2), (2, 2)), rtol=1e-12, atol=1e-12)


def test_convolution_depthwise_without_bias_has_one_blob():
    layer, _, top = run(
        'type: "ConvolutionDepthwise" convolution_param { kernel_size: 3 pad: 1 bias_term: false }', [X_2x3x3]
    )
    assert len(layer.blobs) == 1
    assert top[0].shape == (1, 2, 3, 3)


def test_convolution_depthwise_gradient():
    layer = make_layer(
        'type: "ConvolutionDepthwise" convolution_param { kernel_size: 3 stride: 2 pad: 1 '
        'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }'
    )
    check_gradient(layer, [RNG.standard_normal((2, 3, 5, 4))])


def test_convolution_depthwise_refuses_non_4d_and_extra_bottoms():
    with pytest.raises(ShapeMismatchError, match=r"4-axis bottom.*\(1, 2, 3\)"):
        run('type: "ConvolutionDepthwise" convolution_param { kernel_size: 1 }', [numpy.zeros((1, 2, 3))])
    with pytest.raises(BlobCountError, match="exactly 1 bottom"):
        run('type: "ConvolutionDepthwise" convolution_param { kernel_size: 1 }', [X_2x3x3, X_2x3x3], num_top=2)


# --- DepthwiseConvolution -------------------------------------------------------------------------
def test_depthwise_convolution_literal_values():
    layer, bottom, top = run(
        'type: "DepthwiseConvolution" convolution_param { num_output: 2 group: 2 kernel_size: 2 }', [X_2x3x3]
    )
    assert layer.blobs[0].shape == (2, 1, 2, 2)
    y = load_and_forward(layer, bottom, top, W_DW, [0.5, -1.0])
    expected = numpy.array([[[[4.5, 6.5], [10.5, 12.5]], [[33.0, 36.0], [42.0, 45.0]]]])
    numpy.testing.assert_allclose(y, expected)


def test_depthwise_convolution_honours_group_as_written():
    # the fork's class is BVLC's ConvolutionLayer: group 1 is an ordinary convolution
    layer, bottom, top = run(
        'type: "DepthwiseConvolution" convolution_param { num_output: 1 kernel_size: 1 bias_term: false }',
        [X_2x3x3],
    )
    assert layer.blobs[0].shape == (1, 2, 1, 1)
    y = load_and_forward(layer, bottom, top, numpy.array([1.0, 10.0]).reshape(1, 2, 1, 1))
    numpy.testing.assert_allclose(y[0, 0], X_2x3x3[0, 0] + 10 * X_2x3x3[0, 1])


def test_depthwise_convolution_gradient():
    layer = make_layer(
        'type: "DepthwiseConvolution" convolution_param { num_output: 3 group: 3 kernel_size: 3 pad: 1 stride: 2 '
        'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }'
    )
    check_gradient(layer, [RNG.standard_normal((2, 3, 5, 5))])


def test_depthwise_convolution_refuses_group_not_dividing_channels():
    with pytest.raises(InvalidParameterError, match=r"group must divide.*group=4.*channels=2"):
        run('type: "DepthwiseConvolution" convolution_param { num_output: 4 group: 4 kernel_size: 1 }', [X_2x3x3])


# --- ShuffleChannel ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("group", "order"),
    [(1, [0, 1, 2, 3, 4, 5]), (2, [0, 3, 1, 4, 2, 5]), (3, [0, 2, 4, 1, 3, 5]), (6, [0, 1, 2, 3, 4, 5])],
)
def test_shuffle_channel_forward_permutes_channels(group, order):
    # channels as a group x (C/group) matrix, transposed: group 2 -> [[0,1,2],[3,4,5]]^T = 0,3,1,4,2,5
    x = numpy.arange(6.0).reshape(1, 6, 1, 1) + numpy.array([0.0, 0.5]).reshape(1, 1, 1, 2)
    _, _, top = run(f'type: "ShuffleChannel" shuffle_channel_param {{ group: {group} }}', [x])
    numpy.testing.assert_array_equal(top[0].data, x[:, order])


def test_shuffle_channel_backward_is_inverse_permutation():
    layer, bottom, top = run('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [numpy.zeros((1, 6, 1, 1))])
    top[0].diff = numpy.array([10.0, 11, 12, 13, 14, 15]).reshape(1, 6, 1, 1)
    layer.backward(top, [True], bottom)
    # input channel i*3 + j went to output j*2 + i
    numpy.testing.assert_array_equal(bottom[0].diff.ravel(), [10, 12, 14, 11, 13, 15])


def test_shuffle_channel_default_group_is_identity_and_keeps_shape():
    x = RNG.standard_normal((2, 4, 3))
    _, _, top = run('type: "ShuffleChannel"', [x])
    numpy.testing.assert_array_equal(top[0].data, x)


def test_shuffle_channel_gradient():
    check_gradient(
        make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 3 }'), [RNG.standard_normal((2, 6, 2, 3))]
    )


def test_shuffle_channel_refusals():
    with pytest.raises(ShapeMismatchError, match=r"group=4, channels=6"):
        run('type: "ShuffleChannel" shuffle_channel_param { group: 4 }', [numpy.zeros((1, 6, 2, 2))])
    with pytest.raises(InvalidParameterError, match=r"group must be positive\. Received: 0"):
        run('type: "ShuffleChannel" shuffle_channel_param { group: 0 }', [numpy.zeros((1, 6, 2, 2))])
    with pytest.raises(ShapeMismatchError, match="channel axis"):
        run('type: "ShuffleChannel"', [numpy.zeros(6)])
    with pytest.raises(BlobCountError):
        run('type: "ShuffleChannel"', [numpy.zeros((1, 6)), numpy.zeros((1, 6))])


# --- ReLU6 -----------------------------------------------------------------------------------------------
RELU6_X = numpy.array([-2.0, -0.5, 0.0, 3.0, 6.0, 7.5])


def test_relu6_forward_and_backward_literal():
    layer, bottom, top = run('type: "ReLU6"', [RELU6_X])
    numpy.testing.assert_array_equal(top[0].data, [0, 0, 0, 3, 6, 6])
    top[0].diff = numpy.full(6, 2.0)
    layer.backward(top, [True], bottom)
    # gradient passes only for 0 < x < 6
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 0, 0, 2, 0, 0])


def test_relu6_negative_slope_literal():
    layer, bottom, top = run('type: "ReLU6" relu6_param { negative_slope: 0.1 }', [RELU6_X])
    numpy.testing.assert_allclose(top[0].data, [-0.2, -0.05, 0, 3, 6, 6])
    top[0].diff = numpy.ones(6)
    layer.backward(top, [True], bottom)
    # the fork's rule: slope for x <= 0 (x == 0 included), 0 for x >= 6
    numpy.testing.assert_allclose(bottom[0].diff, [0.1, 0.1, 0.1, 1, 0, 0])


def test_relu6_in_place_backward_uses_input():
    layer = make_layer('type: "ReLU6" bottom: "x" top: "x"')
    bottom, _ = run_layer(layer, [numpy.array([7.0, 6.0, 5.0])])
    layer.forward(bottom, bottom)
    numpy.testing.assert_array_equal(bottom[0].data, [6, 6, 5])
    bottom[0].diff = numpy.ones(3)
    layer.backward(bottom, [True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 0, 1])


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_relu6_gradient(slope):
    # values kept away from the kinks at 0 and 6
    x = numpy.array([-3.1, -0.7, 0.4, 2.2, 5.3, 6.8, 9.0, -1.5]).reshape(2, 4)
    check_gradient(make_layer(f'type: "ReLU6" relu6_param {{ negative_slope: {slope} }}'), [x])


# --- Axpy ----------------------------------------------------------------------------------------------------
def test_axpy_literal_forward_and_backward():
    a = numpy.array([2.0, -1.0]).reshape(1, 2, 1, 1)
    x = numpy.array([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    y = numpy.array([[[[10.0, 20.0]], [[30.0, 40.0]]]])
    layer, bottom, top = run('type: "Axpy"', [a, x, y])
    numpy.testing.assert_array_equal(top[0].data, [[[[12, 24]], [[27, 36]]]])
    top[0].diff = numpy.array([[[[1.0, 1.0]], [[0.5, 2.0]]]])
    layer.backward(top, [True, True, True], bottom)
    # da = sum(dtop * x) per channel: 1*1 + 1*2 = 3, 0.5*3 + 2*4 = 9.5
    numpy.testing.assert_array_equal(bottom[0].diff, numpy.array([3.0, 9.5]).reshape(1, 2, 1, 1))
    numpy.testing.assert_array_equal(bottom[1].diff, [[[[2, 2]], [[-0.5, -2]]]])
    numpy.testing.assert_array_equal(bottom[2].diff, top[0].diff)


def test_axpy_accepts_2d_scale():
    a = numpy.array([[3.0, 0.5]])
    x = numpy.ones((1, 2, 2))
    _, _, top = run('type: "Axpy"', [a, x, numpy.zeros((1, 2, 2))])
    numpy.testing.assert_array_equal(top[0].data, [[[3, 3], [0.5, 0.5]]])


def test_axpy_gradient():
    bottoms = [RNG.standard_normal((2, 3, 1, 1)), RNG.standard_normal((2, 3, 2, 3)), RNG.standard_normal((2, 3, 2, 3))]
    check_gradient(make_layer('type: "Axpy"'), bottoms)


def test_axpy_refusals():
    x = numpy.zeros((1, 2, 3, 3))
    with pytest.raises(ShapeMismatchError, match=r"scale \(1, 2, 2, 1\)"):
        run('type: "Axpy"', [numpy.zeros((1, 2, 2, 1)), x, x])
    with pytest.raises(ShapeMismatchError, match=r"scale \(1, 3, 1, 1\)"):
        run('type: "Axpy"', [numpy.zeros((1, 3, 1, 1)), x, x])
    with pytest.raises(ShapeMismatchError, match=r"same shape.*\(1, 2, 3, 3\) and \(1, 2, 3, 2\)"):
        run('type: "Axpy"', [numpy.zeros((1, 2, 1, 1)), x, numpy.zeros((1, 2, 3, 2))])
    with pytest.raises(BlobCountError, match="exactly 3 bottom"):
        run('type: "Axpy"', [numpy.zeros((1, 2, 1, 1)), x])


# --- Yolov3DetectionOutput -----------------------------------------------------------------------------
LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75
LN2 = math.log(2.0)


def yolo(params: str, bottoms):
    _, _, top = run(f'type: "Yolov3DetectionOutput" yolov3_detection_output_param {{ {params} }}', bottoms)
    return top[0].data


def test_yolov3_two_cells_literal():
    # one head (1, 6, 1, 2), one anchor (2, 4), anchors_scale 2: net size 4 x 2
    head = numpy.zeros((1, 6, 1, 2))
    head[0, 3, 0, 0] = LN2  # th of cell 0: h = 2 * 4 / (1 * 2) = 4
    head[0, 4, 0, 1] = LN3  # objectness of cell 1: 0.75
    head[0, 5, 0, 1] = LN3  # class 0 of cell 1: 0.75 -> confidence 0.5625; cell 0: 0.5 * 0.5 = 0.25
    params = "num_classes: 1 num_box: 1 mask_group_num: 1 mask: 0 biases: 2 biases: 4 anchors_scale: 2"
    out = yolo(params, [head])
    # cell 1: centre (0.75, 0.5), w = 2 / 4 = 0.5, h = 4 / 2 = 2; cell 0: centre (0.25, 0.5), w 0.5, h 4
    expected = [[0, 1, 0.5625, 0.5, -0.5, 1.0, 1.5], [0, 1, 0.25, 0.0, -1.5, 0.5, 2.5]]
    assert out.shape == (1, 1, 2, 7)
    numpy.testing.assert_allclose(out[0, 0], expected, rtol=1e-12)
    out = yolo(params + " confidence_threshold: 0.3", [head])
    numpy.testing.assert_allclose(out[0, 0], expected[:1], rtol=1e-12)


def test_yolov3_nms_is_class_agnostic():
    # two anchors of one cell predict the same box; candidates 0.5625 (c0), 0.375, 0.375, 0.25: one survives
    head = numpy.zeros((1, 14, 1, 1))
    head[0, 4] = LN3  # slot 0 objectness 0.75
    head[0, 5] = LN3  # slot 0 class 0: 0.75
    head[0, 7 + 6] = LN3  # slot 1 class 1: 0.75, slot 1 objectness 0.5
    params = (
        "num_classes: 2 num_box: 2 mask_group_num: 1 mask: 0 mask: 1 biases: 2 biases: 2 biases: 2 "
        "biases: 2 anchors_scale: 1"
    )
    out = yolo(params, [head])
    numpy.testing.assert_allclose(out[0, 0], [[0, 1, 0.5625, -0.5, -0.5, 1.5, 1.5]], rtol=1e-12)
    out = yolo(params + " nms_threshold: 1.01", [head])
    numpy.testing.assert_allclose(out[0, 0, :, 1:3], [[1, 0.5625], [2, 0.375], [2, 0.375], [1, 0.25]], rtol=1e-12)


def test_yolov3_mask_offsets_and_anchor_scales_per_head():
    # head 0 takes mask[0] = anchor 1 (4, 4) at scale 1; head 1 takes mask[1] = anchor 0 (2, 2) at scale 2
    heads = [numpy.zeros((1, 6, 1, 1)), numpy.zeros((1, 6, 1, 1))]
    params = (
        "num_classes: 1 num_box: 1 mask: 1 mask: 0 biases: 2 biases: 2 biases: 4 biases: 4 "
        "anchors_scale: 1 anchors_scale: 2"
    )
    out = yolo(params, heads)
    # equal confidences keep decoding order; IoU 1/16 < 0.45 keeps both
    numpy.testing.assert_allclose(out[0, 0], [[0, 1, 0.25, -1.5, -1.5, 2.5, 2.5], [0, 1, 0.25, 0, 0, 1, 1]])


def test_yolov3_gaussian_box_literal():
    head = numpy.zeros((1, 10, 1, 1))
    head[0, 0] = LN3  # tx: centre x 0.75
    head[0, 3] = LN3  # sigma of y: 0.75 -> objectness 0.5 * (4 - 0.5 - 0.75 - 0.5 - 0.5) / 4 = 0.21875
    head[0, 4] = LN2  # tw: w = 2 * 2 / 1 = 4
    out = yolo(
        "num_classes: 1 num_box: 1 mask_group_num: 1 mask: 0 biases: 2 biases: 2 anchors_scale: 1 gaussian_box: true",
        [head],
    )
    numpy.testing.assert_allclose(out[0, 0], [[0, 1, 0.109375, -1.25, -0.5, 2.75, 1.5]], rtol=1e-12)


def test_yolov3_no_detection_rows_and_batch_image_id():
    heads = numpy.zeros((2, 6, 1, 1))
    params = "num_classes: 1 num_box: 1 mask_group_num: 1 mask: 0 biases: 1 biases: 1 anchors_scale: 1"
    out = yolo(params + " confidence_threshold: 0.9", [heads])
    numpy.testing.assert_array_equal(out, [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]])
    # two images with the same box: one NMS over the batch, and image_id is 0 for every row (the fork's way)
    heads[1, 5] = LN3
    out = yolo(params, [heads])
    numpy.testing.assert_allclose(out[0, 0], [[0, 1, 0.375, 0, 0, 1, 1]])


def test_yolov3_runs_the_mobilenetv3_configuration():
    params = (
        "confidence_threshold: 0.01 nms_threshold: 0.45 num_classes: 20 "
        + " ".join(f"biases: {b}" for b in (18, 34, 45, 84, 65, 181, 141, 111, 129, 241, 254, 254))
        + " mask: 3 mask: 4 mask: 5 mask: 0 mask: 1 mask: 2 anchors_scale: 32 anchors_scale: 16 "
        "mask_group_num: 2"
    )
    heads = [RNG.standard_normal((1, 75, 3, 3)), RNG.standard_normal((1, 75, 6, 6))]
    out = yolo(params, heads)
    assert out.ndim == 4 and out.shape[:2] == (1, 1) and out.shape[3] == 7 and out.shape[2] >= 1
    assert numpy.all(numpy.diff(out[0, 0, :, 2]) <= 0)
    assert set(numpy.unique(out[0, 0, :, 1])) <= set(range(1, 21))


def test_greedy_nms_threshold_is_inclusive():
    boxes = numpy.array([[0.5, 0.5, 1, 1], [0.6, 0.5, 1, 1], [1.0, 0.5, 1, 1], [3, 3, 1, 1]])
    # IoU(0, 1) = 0.9 / 1.1; IoU(0, 2) = 0.5 / 1.5 = 1/3
    numpy.testing.assert_array_equal(_greedy_nms(boxes, 0.45), [0, 2, 3])
    numpy.testing.assert_array_equal(_greedy_nms(boxes, 0.5 / 1.5), [0, 3])
    numpy.testing.assert_array_equal(_greedy_nms(boxes, 0.95), [0, 1, 2, 3])


def test_yolov3_refusals():
    head = numpy.zeros((1, 6, 1, 1))
    with pytest.raises(InvalidParameterError, match="num_classes must be given"):
        yolo("num_box: 1 mask_group_num: 1 mask: 0 biases: 1 biases: 1 anchors_scale: 1", [head])
    with pytest.raises(ShapeMismatchError, match=r"one bottom per mask group.*1 bottoms, mask_group_num=2"):
        yolo("num_classes: 1 num_box: 1 mask: 0 mask: 0 biases: 1 biases: 1 anchors_scale: 1 anchors_scale: 1", [head])
    with pytest.raises(ShapeMismatchError, match=r"\(N, 12, H, W\).*\(1, 6, 1, 1\)"):
        yolo("num_classes: 1 num_box: 2 mask_group_num: 1 mask: 0 mask: 0 biases: 1 biases: 1 anchors_scale: 1", [head])
    with pytest.raises(InvalidParameterError, match=r"mask entry.*Received: mask \[1\], 2 biases"):
        yolo("num_classes: 1 num_box: 1 mask_group_num: 1 mask: 1 biases: 1 biases: 1 anchors_scale: 1", [head])
    with pytest.raises(InvalidParameterError, match="anchors_scale needs one value per bottom"):
        yolo("num_classes: 1 num_box: 1 mask_group_num: 1 mask: 0 biases: 1 biases: 1", [head])


# --- GPU -----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("definition", "shapes"),
    [
        (
            'type: "ConvolutionDepthwise" convolution_param { kernel_size: 3 pad: 1 stride: 2 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            [(2, 3, 5, 5)],
        ),
        ('type: "ShuffleChannel" shuffle_channel_param { group: 3 }', [(2, 6, 2, 2)]),
        ('type: "ReLU6" relu6_param { negative_slope: 0.1 }', [(2, 3, 4)]),
        ('type: "Axpy"', [(2, 3, 1, 1), (2, 3, 2, 2), (2, 3, 2, 2)]),
    ],
)
def test_gpu_matches_cpu(definition, shapes):
    check_gpu_matches_cpu(definition, [4 * RNG.standard_normal(s) for s in shapes])


def test_empty_batch_runs_through_shuffle_and_axpy():
    _, _, top = run('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [numpy.zeros((0, 4, 2, 2))])
    assert top[0].shape == (0, 4, 2, 2)
    empty = numpy.zeros((0, 2, 3))
    layer, bottom, top = run('type: "Axpy"', [numpy.zeros((0, 2, 1, 1)), empty, empty])
    top[0].diff = numpy.zeros((0, 2, 3))
    layer.backward(top, [True, True, True], bottom)
    assert bottom[0].diff.shape == (0, 2, 1, 1)
