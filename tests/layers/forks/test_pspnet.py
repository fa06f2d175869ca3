"""Tests of the fork type Interp (netdef/layers/forks/pspnet.py) and the PSPNet nets that use it."""

import numpy
import pytest

import netdef
from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.layers.forks.pspnet import interp_matrix
from netdef.testing import check_gpu_matches_cpu, check_gradient, make_layer, run_layer
from netdef.testing.parity import (
    assert_finite_tops,
    check_fork_case,
    check_fork_refusal,
    parametrize_fork_cases,
    random_weights,
    realworld_nets,
)


def interp(param, x, dy=None):
    layer = make_layer(f'type: "Interp" interp_param {{ {param} }}')
    bottom, top = run_layer(layer, [numpy.asarray(x, dtype=numpy.float64)])
    if dy is not None:
        top[0].diff = numpy.asarray(dy, dtype=numpy.float64)
        layer.backward(top, [True], bottom)
    return bottom, top


X22 = [[[[0.0, 1.0], [2.0, 3.0]]]]


def test_zoom_is_align_corners_bilinear():
    _, top = interp("zoom_factor: 2", X22)
    numpy.testing.assert_allclose(top[0].data[0, 0], [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])


def test_backward_is_the_adjoint():
    bottom, _ = interp("zoom_factor: 2", X22, dy=numpy.ones((1, 1, 3, 3)))
    numpy.testing.assert_allclose(bottom[0].diff[0, 0], [[2.25, 2.25], [2.25, 2.25]])  # (1 + .5) * (1 + .5)
    bottom, _ = interp("zoom_factor: 2", X22, dy=[[[[0, 0, 0], [0, 4.0, 0], [0, 0, 0]]]])
    numpy.testing.assert_allclose(bottom[0].diff[0, 0], [[1, 1], [1, 1]])


def test_shrink_samples_without_averaging():
    x = numpy.arange(25.0).reshape(1, 1, 5, 5)
    _, top = interp("shrink_factor: 2", x)  # (5 - 1) // 2 + 1 = 3, ratio 2: rows/columns 0, 2, 4
    numpy.testing.assert_allclose(top[0].data[0, 0], x[0, 0][::2, ::2])


def test_height_width_and_one_pixel_output():
    x = numpy.arange(12.0).reshape(1, 1, 3, 4)
    _, top = interp("height: 5 width: 7", x)
    assert top[0].shape == (1, 1, 5, 7)
    numpy.testing.assert_allclose(top[0].data[0, 0, 1], [2, 2.5, 3, 3.5, 4, 4.5, 5])  # row 1: halfway rows 0 and 1
    _, top = interp("height: 1 width: 1", x)
    numpy.testing.assert_allclose(top[0].data.reshape(-1), [0.0])  # ratio 0: the top-left pixel


def test_crop_then_resample():
    x = numpy.arange(36.0).reshape(1, 1, 6, 6)
    dy = numpy.arange(16.0).reshape(1, 1, 4, 4) + 1
    bottom, top = interp("zoom_factor: 1 pad_beg: -1 pad_end: -1", x, dy=dy)
    numpy.testing.assert_allclose(top[0].data, x[:, :, 1:5, 1:5])  # equal sizes: a plain copy of the window
    expected = numpy.zeros((1, 1, 6, 6))
    expected[:, :, 1:5, 1:5] = dy  # the cropped border gets no gradient
    numpy.testing.assert_allclose(bottom[0].diff, expected)


@pytest.mark.parametrize(
    "param, in_shape, out_shape",
    [
        ("zoom_factor: 8", (1, 2, 4, 5), (1, 2, 25, 33)),
        ("shrink_factor: 2", (2, 3, 7, 8), (2, 3, 4, 4)),
        ("shrink_factor: 2 zoom_factor: 3", (2, 2, 9, 7), (2, 2, 13, 10)),
        ("zoom_factor: 2 height: 3 width: 3", (2, 2, 3, 4), (2, 2, 5, 7)),  # zoom wins over height/width
        ("shrink_factor: 2 pad_end: -2", (2, 2, 9, 8), (2, 2, 4, 3)),
        ("zoom_factor: 2", (2, 3, 5), (2, 3, 9, 1)),  # 3-D bottom: W = 1, top is 4-D
        ("height: 4 width: 6", (3, 2), (3, 2, 4, 6)),
    ],
)
def test_output_size_rules(param, in_shape, out_shape):
    _, top = interp(param, numpy.ones(in_shape))
    assert top[0].shape == out_shape
    numpy.testing.assert_allclose(top[0].data, 1.0)  # interpolation weights sum to 1


def test_interp_matrix_float32_weights():
    m = interp_matrix(3, 8)  # ratio 2/7 in float32, as the fork computes it
    assert m.dtype == numpy.float32
    numpy.testing.assert_allclose(m.sum(axis=1), 1, rtol=1e-6)
    pos = numpy.float32(2 / 7) * numpy.arange(8, dtype=numpy.float32)
    numpy.testing.assert_allclose(m @ numpy.arange(3, dtype=numpy.float32), pos, rtol=1e-6)
    numpy.testing.assert_array_equal(interp_matrix(4, 4), numpy.eye(4))


@pytest.mark.parametrize(
    "param, shape",
    [
        ("zoom_factor: 3", (2, 2, 3, 4)),
        ("height: 5 width: 2", (1, 3, 4, 3)),
        ("shrink_factor: 2", (1, 2, 7, 6)),
        ("zoom_factor: 2 pad_beg: -1 pad_end: -2", (1, 2, 6, 7)),
    ],
)
def test_gradient(param, shape):
    layer = make_layer(f'type: "Interp" interp_param {{ {param} }}')
    check_gradient(layer, [numpy.random.default_rng(0).normal(0, 1, shape)])


@pytest.mark.parametrize(
    "param, error, message",
    [
        ("zoom_factor: 2 pad_beg: 1", InvalidParameterError, r"pad_beg only crops .* Received: 1"),
        ("zoom_factor: 2 pad_end: 2", InvalidParameterError, r"pad_end only crops .* Received: 2"),
        ("height: 8", InvalidParameterError, r"needs an output size.* Received: height$"),
        ("", InvalidParameterError, r"Received: none of them"),
        ("height: 0 width: 0", InvalidParameterError, r"must be positive. Received: height 0, width 0"),
        ("zoom_factor: 0", InvalidParameterError, r"zoom_factor must be at least 1. Received: 0"),
        ("shrink_factor: -1", InvalidParameterError, r"shrink_factor must be at least 1. Received: -1"),
        ("zoom_factor: 2 pad_beg: -2 pad_end: -2", ShapeMismatchError, r"crops away the whole input"),
    ],
)
def test_refusals(param, error, message):
    with pytest.raises(error, match=message):
        interp(param, numpy.ones((2, 2, 4, 4)))


def test_refuses_five_axes_and_two_bottoms():
    with pytest.raises(ShapeMismatchError, match="at most 4 axes"):
        interp("zoom_factor: 2", numpy.ones((1, 1, 2, 2, 2)))
    layer = make_layer('type: "Interp" interp_param { zoom_factor: 2 }')
    with pytest.raises(BlobCountError, match="exactly 1 bottom"):
        run_layer(layer, [numpy.ones((1, 1, 2, 2))] * 2)


# --- reference cases from the PSPNet fork -------------------------------------------------------
@parametrize_fork_cases("pspnet", {"Interp"})
def test_pspnet_parity(case):
    check_fork_case(case)


REFUSALS = {
    "interp_pad_pos": (InvalidParameterError, "pad_beg only crops"),
    "interp_pad_end_pos": (InvalidParameterError, "pad_end only crops"),
    "interp_no_param": (InvalidParameterError, "needs an output size"),
    "interp_height_only": (InvalidParameterError, "needs an output size"),
    "interp_hw_zero": (InvalidParameterError, "output size must be positive"),
    "interp_zoom0": (InvalidParameterError, "zoom_factor must be at least 1"),
    "interp_shrink0": (InvalidParameterError, "shrink_factor must be at least 1"),
    "interp_crop_all": (ShapeMismatchError, "crops away the whole input"),
    "interp_two_bottoms": (BlobCountError, "exactly 1 bottom"),
}


@parametrize_fork_cases("pspnet", {"Interp"}, "refused")
def test_pspnet_refusals(case):
    check_fork_refusal(case, REFUSALS)


# --- published PSPNet nets ------------------------------------------------------------------------
REALWORLD = realworld_nets()
PSPNETS = {"pspnet50_ADE20K_473": (150, 473), "pspnet101_VOC2012_473": (21, 473), "pspnet101_cityscapes_713": (19, 713)}
needs_realworld = pytest.mark.skipif(REALWORLD is None, reason="shared/realworld not available")


@needs_realworld
@pytest.mark.parametrize(
    "name",
    [  # building a ResNet-101 takes seconds: those two run with the slow tests
        name if name.startswith("pspnet50") else pytest.param(name, marks=pytest.mark.slow) for name in sorted(PSPNETS)
    ],
)
def test_pspnet_builds(name):
    net = netdef.Net(str(REALWORLD / f"{name}.prototxt"), netdef.TEST)
    classes, size = PSPNETS[name]
    assert net.blobs["conv6_interp"].shape == (1, classes, size, size)
    bn = [layer for layer in net.layers if layer.type_name == "BN"]
    assert bn and all(layer.variant == "PSPNet" and layer.frozen and len(layer.blobs) == 4 for layer in bn)


@pytest.mark.slow
@needs_realworld
@pytest.mark.parametrize("name", sorted(PSPNETS))
def test_pspnet_forward(name):
    net = netdef.Net(str(REALWORLD / f"{name}.prototxt"), netdef.TEST)
    random_weights(net)
    net.forward()
    assert assert_finite_tops(net, {"BN", "Interp"}) > 0
    assert numpy.isfinite(netdef.backend.to_numpy(net.blobs["conv6_interp"].data)).all()


# --- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("param", ["zoom_factor: 8", "height: 60 width: 60", "shrink_factor: 2 pad_beg: -1"])
def test_gpu_matches_cpu(param):
    x = numpy.random.default_rng(4).normal(0, 1, (2, 3, 7, 6))
    check_gpu_matches_cpu(f'type: "Interp" interp_param {{ {param} }}', [x])
