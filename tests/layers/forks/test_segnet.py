"""Tests of the fork type Upsample (netdef/layers/forks/segnet.py): SegNet unpooling and YOLO nearest neighbour."""

import re

import numpy
import pytest

import netdef
from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.testing import check_gpu_matches_cpu, check_gradient, make_layer, run_layer
from netdef.testing.parity import (
    assert_finite_tops,
    check_fork_case,
    check_fork_refusal,
    fork_dir,
    parametrize_fork_cases,
    random_weights,
    realworld_nets,
)


def upsample(param, bottoms, dy=None):
    layer = make_layer(f'type: "Upsample" upsample_param {{ {param} }}')
    bottom, top = run_layer(layer, [numpy.asarray(b, dtype=numpy.float64) for b in bottoms])
    if dy is not None:
        top[0].diff = numpy.asarray(dy, dtype=numpy.float64)
        layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
    return layer, bottom, top


# --- SegNet: max-unpooling with the pooling mask ------------------------------------------
def test_unpool_scatters_to_mask_positions():
    x = [[[[1.0, 2.0], [3.0, 4.0]]]]
    mask = [[[[0.0, 3.0], [8.0, 15.0]]]]
    _, _, top = upsample("scale: 2", [x, mask])
    expected = numpy.zeros(16)
    expected[[0, 3, 8, 15]] = [1, 2, 3, 4]
    numpy.testing.assert_array_equal(top[0].data.reshape(-1), expected)
    assert top[0].shape == (1, 1, 4, 4)


def test_unpool_backward_gathers():
    x = [[[[1.0, 2.0], [3.0, 4.0]]]]
    mask = [[[[5.0, 2.0], [5.0, 10.0]]]]  # index 5 twice: both sources get its gradient
    dy = numpy.arange(16.0).reshape(1, 1, 4, 4) + 1
    _, bottom, top = upsample("scale: 2", [x, mask], dy=dy)
    numpy.testing.assert_array_equal(bottom[0].diff.reshape(-1), [6.0, 3.0, 6.0, 11.0])
    assert top[0].data.reshape(-1)[5] == 3.0  # forward: the later duplicate wins
    numpy.testing.assert_array_equal(bottom[1].diff, 0)  # the mask gets no gradient


def test_unpool_fractional_mask_truncates_and_planes_are_separate():
    x = numpy.array([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])  # N=2, 1x2 each
    mask = numpy.array([[[[0.9, 3.99]]], [[[2.5, 1.0]]]])
    _, _, top = upsample("scale: 2", [x, mask])
    assert top[0].shape == (2, 1, 2, 4)
    numpy.testing.assert_array_equal(top[0].data.reshape(2, 8), [[1, 0, 0, 2, 0, 0, 0, 0], [0, 4, 3, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize(
    "param, in_hw, out_hw",
    [
        ("scale: 3", (2, 3), (6, 9)),
        ("scale_h: 2 scale_w: 3", (2, 3), (4, 9)),
        ("scale: 2 pad_out_h: true", (4, 5), (7, 10)),
        ("scale: 2 pad_out_w: true", (4, 5), (8, 9)),
        ("upsample_h: 7 upsample_w: 9", (4, 5), (7, 9)),
        ("scale: 3 upsample_h: 7 upsample_w: 9", (4, 5), (7, 9)),  # upsample_h/w win over scale
        ("upsample_h: 11", (4, 5), (8, 10)),  # upsample_h alone is ignored: default scale 2
    ],
)
def test_unpool_output_size_rules(param, in_hw, out_hw):
    x = numpy.ones((1, 2) + in_hw)
    _, _, top = upsample(param, [x, numpy.zeros_like(x)])
    assert top[0].shape == (1, 2) + out_hw


def test_unpool_gradient():
    rng = numpy.random.default_rng(0)
    x = rng.normal(0, 1, (2, 3, 2, 3))
    mask = numpy.stack([rng.permutation(24)[:6] for _ in range(6)]).reshape(2, 3, 2, 3).astype(float)
    layer = make_layer('type: "Upsample" upsample_param { scale: 2 }')
    check_gradient(layer, [x, mask], check_bottoms=[0])


@pytest.mark.parametrize(
    "param, message",
    [
        ("scale: 1", r"scale must be greater than 1. Received: 1"),
        ("scale_h: 2 scale_w: 1", r"scale_w must be greater than 1. Received: 1"),
        ("upsample_h: 1 upsample_w: 4", r"upsample_h must be greater than 1. Received: 1"),
        ("scale: 3 pad_out_h: true", r"pad_out_h needs a scale of 2 .* Received: pad_out_h true with scale 3"),
        ("scale: 2 scale_h: 2 scale_w: 2", r"Received: scale 2, scale_h 2, scale_w 2"),
        ("scale_h: 2", r"Received: scale_h 2"),
    ],
)
def test_unpool_parameter_refusals(param, message):
    x = numpy.ones((1, 1, 2, 2))
    with pytest.raises(InvalidParameterError, match=message):
        upsample(param, [x, x])


def test_unpool_mask_out_of_range_refused():
    x = numpy.ones((1, 1, 2, 2))
    for bad in (16.0, -2.0):
        with pytest.raises(InvalidParameterError, match=rf"mask index {int(bad)} is out of range for the 4x4"):
            upsample("scale: 2", [x, [[[[0.0, 1.0], [bad, 3.0]]]]])


def test_unpool_shape_refusals():
    with pytest.raises(ShapeMismatchError, match=r"Received: \(1, 2, 3, 4\) and \(1, 2, 3, 3\)"):
        upsample("scale: 2", [numpy.ones((1, 2, 3, 4)), numpy.ones((1, 2, 3, 3))])
    with pytest.raises(ShapeMismatchError, match="4-axis bottom"):
        upsample("scale: 2", [numpy.ones((2, 3, 4)), numpy.ones((2, 3, 4))])


# --- YOLOv3 ports: nearest neighbour -------------------------------------------------------
def test_nearest_values_and_backward():
    x = [[[[1.0, 2.0], [3.0, 4.0]]]]
    dy = numpy.arange(16.0).reshape(1, 1, 4, 4)
    _, bottom, top = upsample("scale: 2", [x], dy=dy)
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    block_sums = [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    numpy.testing.assert_array_equal(bottom[0].diff[0, 0], block_sums)


def test_nearest_default_scale_is_the_ports_one():
    layer = make_layer('type: "Upsample"')
    x = numpy.arange(6.0).reshape(1, 1, 2, 3)
    _, top = run_layer(layer, [x])
    numpy.testing.assert_array_equal(top[0].data, x)


def test_nearest_3d_bottom_upsamples_last_two_axes():
    _, _, top = upsample("scale: 3", [numpy.ones((2, 1, 2))])
    assert top[0].shape == (2, 3, 6)


@pytest.mark.parametrize("scale, shape", [(2, (2, 3, 3, 2)), (3, (1, 2, 2, 2))])
def test_nearest_gradient(scale, shape):
    layer = make_layer(f'type: "Upsample" upsample_param {{ scale: {scale} }}')
    check_gradient(layer, [numpy.random.default_rng(0).normal(0, 1, shape)])


def test_nearest_refusals():
    with pytest.raises(InvalidParameterError, match="scale must be at least 1. Received: 0"):
        upsample("scale: 0", [numpy.ones((1, 1, 2, 2))])
    with pytest.raises(InvalidParameterError, match="upsample_h, upsample_w with 1 bottom"):
        upsample("upsample_h: 4 upsample_w: 4", [numpy.ones((1, 1, 2, 2))])
    with pytest.raises(ShapeMismatchError, match="at least 2"):
        upsample("scale: 2", [numpy.ones(3)])
    with pytest.raises(BlobCountError, match="at most 2 bottom"):
        upsample("scale: 2", [numpy.ones((1, 1, 2, 2))] * 3)


# --- reference cases from the SegNet fork -----------------------------------------------------
@parametrize_fork_cases("segnet", {"Upsample", "Pooling"})
def test_segnet_parity(case):
    check_fork_case(case)


REFUSALS = {
    "up_direct_oob": (InvalidParameterError, "mask index 16 is out of range"),
    "up_mask_shape_mismatch": (ShapeMismatchError, "mask bottom of the same shape"),
    "up_scale1": (InvalidParameterError, "scale must be greater than 1"),
    "up_hw1": (InvalidParameterError, "upsample_h must be greater than 1"),
    "up_pad_out_scale3": (InvalidParameterError, "pad_out_h needs a scale of 2"),
    "up_scale_and_scale_hw": (InvalidParameterError, "without scale. Received: scale 2, scale_h 2"),
    "up_only_scale_h": (InvalidParameterError, "Received: scale_h 2"),
}


def feed_out_of_range_mask(net, case):
    if case["case"] == "up_direct_oob":
        net.blobs["b1"].data[...] = numpy.array([0, 1, 16, 3]).reshape(1, 1, 2, 2)


@parametrize_fork_cases("segnet", {"Upsample"}, "refused")
def test_segnet_refusals(case):
    if case is not None and case["case"] == "up_chain_hw_odd_backward":
        pytest.skip("not refused on purpose: see test_hw_backward_is_a_plain_gather")
    check_fork_refusal(case, REFUSALS, feed=feed_out_of_range_mask)


def test_hw_backward_is_a_plain_gather():
    """The fork's CPU backward aborts with upsample_h/w only because it reads never-set scale members
    (undefined behaviour; its GPU backward and the up_chain_hw_segnet_backward case gather); netdef gathers."""
    folder = fork_dir("segnet")
    if folder is None:
        pytest.skip("shared/parity/forks/segnet not available")
    net = netdef.Net(str(folder / "up_chain_hw_odd_backward.prototxt"), netdef.TRAIN)
    d = numpy.load(folder / "up_chain_hw_odd.npz")
    net.blobs["b0"].data[...] = d["bottom_0"]
    net.forward()
    numpy.testing.assert_allclose(net.blobs["t0"].data, d["top_0"], rtol=1e-6)
    dy = numpy.random.default_rng(0).normal(0, 1, net.blobs["t0"].shape)
    net.blobs["t0"].diff[...] = dy
    net.backward()
    mask = net.blobs["p1"].data.reshape(6, -1).astype(int)
    expected = numpy.take_along_axis(dy.reshape(6, -1), mask, axis=1)
    numpy.testing.assert_allclose(net.blobs["p0"].diff.reshape(6, -1), expected, rtol=1e-6)


# --- published nets ---------------------------------------------------------------------------
REALWORLD = realworld_nets()
needs_realworld = pytest.mark.skipif(REALWORLD is None, reason="shared/realworld not available")


def _bayesian_segnet_text() -> str:
    """The Bayesian SegNet test net with its DenseImageData source (absent files) replaced by an Input layer."""
    text = (REALWORLD / "bayesian_segnet_inference.prototxt").read_text()
    return re.sub(
        r'layer \{\s*name: "data"\s*type: "DenseImageData".*?\n\}\n',
        'layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
        "shape { dim: 1 dim: 3 dim: 360 dim: 480 } shape { dim: 1 dim: 1 dim: 360 dim: 480 } } }\n",
        text,
        count=1,
        flags=re.S,
    )


def _yolov3_tiny_text() -> str:
    """yolov3-tiny with its stride-1 2x2 max pooling made 1x1: the port patches Pooling to keep 13x13 there,
    which BVLC's Pooling (ceil) does not; the Upsample under test is unaffected."""
    text = (REALWORLD / "yolov3-tiny.prototxt").read_text()
    pattern = r'(name: "layer12-maxpool"\s*type: "Pooling"\s*pooling_param \{[^}]*?)kernel_size: 2'
    patched, count = re.subn(pattern, r"\1kernel_size: 1", text, flags=re.S)
    assert count == 1
    return patched


def _net_from_text(tmp_path, text):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return netdef.Net(str(path), netdef.TEST)


@needs_realworld
def test_segnet_webdemo_builds():
    net = netdef.Net(str(REALWORLD / "segnet_model_driving_webdemo.prototxt"), netdef.TEST)
    bn = [layer for layer in net.layers if layer.type_name == "BN"]
    assert len(bn) == 25 and all(layer.variant == "SegNet" and not layer.learn for layer in bn)
    assert net.blobs["argmax"].shape == (1, 1, 360, 480)


@needs_realworld
def test_yolov3_tiny_forward(tmp_path):
    net = _net_from_text(tmp_path, _yolov3_tiny_text())
    random_weights(net)
    net.forward()
    assert net.blobs["layer20-upsample"].shape == (1, 128, 26, 26)
    assert assert_finite_tops(net, {"Upsample"}) == 1


@pytest.mark.slow
@needs_realworld
def test_segnet_webdemo_forward():
    net = netdef.Net(str(REALWORLD / "segnet_model_driving_webdemo.prototxt"), netdef.TEST)
    random_weights(net)
    net.forward()
    assert assert_finite_tops(net, {"BN", "Upsample"}) == 25 + 5


@pytest.mark.slow
@needs_realworld
def test_bayesian_segnet_forward(tmp_path):
    net = _net_from_text(tmp_path, _bayesian_segnet_text())
    random_weights(net)
    net.forward()
    assert net.blobs["prob"].shape == (1, 11, 360, 480)
    assert assert_finite_tops(net, {"BN", "Upsample"}) == 25 + 5


# --- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_matches_cpu():
    rng = numpy.random.default_rng(3)
    x = rng.normal(0, 1, (2, 3, 3, 4))
    mask = rng.integers(0, 48, (2, 3, 3, 4)).astype(float)  # duplicates included: the later source wins
    check_gpu_matches_cpu('type: "Upsample" upsample_param { scale: 2 }', [x, mask])
    check_gpu_matches_cpu('type: "Upsample" upsample_param { scale: 3 }', [x])
