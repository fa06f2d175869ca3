"""Tests of SmoothL1Loss as the SSD and Faster R-CNN forks define it (netdef/layers/forks/smooth_l1.py).

Reference cases: ``shared/parity/forks/ssd/smoothl1_*`` (numbers from the SSD fork) and the
``sl1_*`` cases of ``shared/parity/forks/frcnn`` (set-up checks of the Faster R-CNN fork, whose
forward and backward exist only as CUDA kernels: netdef's results there are compared with the
kernels' formulas). The tests skip those cases cleanly when the folder is absent.
"""

import re

import numpy
import pytest

from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.layers.forks import fork_layer_types
from netdef.testing import check_gpu_matches_cpu, check_gradient, make_layer, run_layer
from netdef.testing.parity import (
    check_fork_case,
    check_fork_refusal,
    fork_case_net,
    fork_dir,
    parametrize_fork_cases,
)

SL1 = 'type: "SmoothL1Loss"'


def sl1(sigma=None, loss_weight=None):
    text = SL1
    if sigma is not None:
        text += f" smooth_l1_loss_param {{ sigma: {sigma} }}"
    if loss_weight is not None:
        text += f" loss_weight: {loss_weight}"
    return text


def run(definition, bottoms, propagate=None):
    """Forward and one backward with the seeded top diff (the loss weight); returns (loss, bottom blobs)."""
    layer = make_layer(definition)
    bottom, top = run_layer(layer, bottoms)
    layer.backward(top, propagate or [True] * len(bottom), bottom)
    return float(top[0].data), bottom


def test_registered_for_both_forks():
    assert set(fork_layer_types()["SmoothL1Loss"]) == {"SSD", "Faster R-CNN"}


def test_two_bottoms_both_branches_divided_by_batch_size():
    pred = [[0.5, 2.0], [-3.0, 0.0]]
    loss, bottom = run(sl1(), [pred, numpy.zeros((2, 2))])
    # 0.5 * 0.25 + (2 - 0.5) + (3 - 0.5) + 0, over N = 2
    assert loss == pytest.approx(4.125 / 2, abs=1e-15)
    numpy.testing.assert_allclose(bottom[0].diff, [[0.25, 0.5], [-0.5, 0.0]], atol=1e-15)
    numpy.testing.assert_allclose(bottom[1].diff, [[-0.25, -0.5], [0.5, 0.0]], atol=1e-15)


def test_sigma_moves_the_switch_to_one_over_sigma_squared():
    pred = [[0.1, 0.5, -1.0]]
    loss, bottom = run(sl1(sigma=3), [pred, numpy.zeros((1, 3))])
    # 0.5 * 9 * 0.01, 0.5 - 0.5 / 9, 1 - 0.5 / 9
    assert loss == pytest.approx(0.045 + (0.5 - 1 / 18) + (1 - 1 / 18), abs=1e-12)
    numpy.testing.assert_allclose(bottom[0].diff, [[0.9, 1.0, -1.0]], atol=1e-12)


def test_negative_sigma_acts_through_its_square():
    a, _ = run(sl1(sigma=-2), [[[0.1, 0.7]], [[0.0, 0.0]]])
    b, _ = run(sl1(sigma=2), [[[0.1, 0.7]], [[0.0, 0.0]]])
    assert a == b == pytest.approx(0.5 * 4 * 0.01 + 0.7 - 0.125, abs=1e-12)


def test_inside_and_outside_weights():
    pred, target = [[1.0, 3.0, 2.0]], [[0.0, 0.0, 1.0]]
    w_in, w_out = [[0.5, 1.0, 0.0]], [[2.0, 0.25, 7.0]]
    loss, bottom = run(sl1(sigma=1), [pred, target, w_in, w_out])
    # d = [0.5, 3, 0]: e = [0.125, 2.5, 0]; weighted [0.25, 0.625, 0]
    assert loss == pytest.approx(0.875, abs=1e-15)
    numpy.testing.assert_allclose(bottom[0].diff, [[0.5 * 2 * 0.5, 1 * 0.25 * 1, 0.0]], atol=1e-15)
    numpy.testing.assert_allclose(bottom[1].diff, -bottom[0].diff, atol=1e-15)
    # the weights get no gradient (neither fork computes one)
    numpy.testing.assert_array_equal(bottom[2].diff, numpy.zeros((1, 3)))
    numpy.testing.assert_array_equal(bottom[3].diff, numpy.zeros((1, 3)))


def test_loss_weight_scales_the_gradient_not_the_top():
    loss, bottom = run(sl1(loss_weight=2.5), [[[2.0], [0.5]], [[0.0], [0.0]]])
    assert loss == pytest.approx((1.5 + 0.125) / 2, abs=1e-15)
    numpy.testing.assert_allclose(bottom[0].diff, [[2.5 / 2], [2.5 * 0.5 / 2]], atol=1e-15)


def test_normalised_by_first_axis_only():
    pred = numpy.full((2, 3, 4, 5), 2.0)
    loss, _ = run(sl1(), [pred, numpy.zeros(pred.shape)])
    assert loss == pytest.approx(1.5 * 60, abs=1e-12)


def test_propagate_down_is_respected():
    _, bottom = run(sl1(), [[[2.0]], [[0.0]]], propagate=[False, True])
    numpy.testing.assert_array_equal(bottom[0].diff, [[0.0]])
    numpy.testing.assert_array_equal(bottom[1].diff, [[-1.0]])


def test_force_backward_reaches_target_but_not_weights():
    layer = make_layer(sl1())
    assert [layer.allow_force_backward(i) for i in range(4)] == [True, True, False, False]


def test_legacy_shapes_that_caffe_compares_equal_are_accepted():
    loss, bottom = run(sl1(), [[[0.5, 2.0]], [[[0.0], [0.0]]]])
    assert loss == pytest.approx(0.125 + 1.5, abs=1e-15)
    assert bottom[1].diff.shape == (1, 2, 1)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_gradient_two_bottoms(sigma):
    rng = numpy.random.default_rng(1)
    pred, target = rng.uniform(-2, 2, (3, 4, 2)), rng.uniform(-2, 2, (3, 4, 2))
    check_gradient(make_layer(sl1(sigma=sigma)), [pred, target])


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_gradient_four_bottoms(sigma):
    rng = numpy.random.default_rng(2)
    shape = (2, 8, 3, 2)
    pred, target = rng.uniform(-2, 2, shape), rng.uniform(-2, 2, shape)
    w_in, w_out = (rng.uniform(0, 1, shape) > 0.4).astype(float), rng.uniform(0, 1, shape)
    result = check_gradient(make_layer(sl1(sigma=sigma)), [pred, target, w_in, w_out], check_bottoms=[0, 1])
    assert result["checked"] == 2 * pred.size


def test_three_bottoms_are_refused():
    with pytest.raises(BlobCountError, match="both inside and outside weights. Received: 3 bottoms"):
        run(sl1(), [numpy.zeros((2, 2))] * 3)


def test_five_bottoms_are_refused():
    with pytest.raises(BlobCountError, match="at most 4 bottom"):
        run(sl1(), [numpy.zeros((2, 2))] * 5)


def test_sigma_zero_is_refused():
    with pytest.raises(InvalidParameterError, match="sigma must not be 0"):
        run(sl1(sigma=0), [numpy.zeros((2, 2))] * 2)


@pytest.mark.parametrize(
    "shapes,message",
    [
        ([(4, 8), (3, 8)], r"same first dimension .* Received: \(4, 8\) and \(3, 8\)"),
        ([(4, 8), (4, 4)], r"target \(bottom 1\) must have the shape of pred. Received: \(4, 4\)"),
        ([(4, 8), (4, 8), (4, 8), (4, 4)], r"outside weights \(bottom 3\)"),
        ([(4, 8), (4, 8), (4, 2, 4), (4, 8)], r"inside weights \(bottom 2\)"),
    ],
)
def test_shape_mismatches_are_refused(shapes, message):
    with pytest.raises(ShapeMismatchError, match=message):
        run(sl1(), [numpy.zeros(s) for s in shapes])


@pytest.mark.gpu
def test_gpu_matches_cpu():
    rng = numpy.random.default_rng(3)
    shape = (2, 4, 3, 3)
    bottoms = [rng.uniform(-2, 2, shape), rng.uniform(-2, 2, shape), rng.uniform(0, 1, shape), rng.uniform(0, 1, shape)]
    check_gpu_matches_cpu(sl1(sigma=3), bottoms)
    check_gpu_matches_cpu(sl1(), bottoms[:2])


# --- parity with the forks ----------------------------------------------------------------------
@parametrize_fork_cases(["ssd"], {"SmoothL1Loss"})
def test_parity_with_the_forks(case):
    errors = check_fork_case(case)
    assert "top_0" in errors and "bottom_diff_0" in errors


#: the error netdef gives for each case a fork refuses, and a literal part of its message
REFUSAL_TEXT = {
    "smoothl1_weights": (BlobCountError, "Received: 3 bottoms"),
    "smoothl1_shape_mismatch": (ShapeMismatchError, "target (bottom 1) must have the shape of pred"),
    "sl1_3b_sigma1": (BlobCountError, "needs both inside and outside weights. Received: 3 bottoms"),
    "sl1_3b_sigma3": (BlobCountError, "Received: 3 bottoms"),
    "sl1_shape_mismatch": (ShapeMismatchError, "Received: (4, 4); pred: (4, 8)"),
    "sl1_num_mismatch": (ShapeMismatchError, "same first dimension (batch size). Received: (4, 8) and (3, 8)"),
    "sl1_4b_weight_shape_mismatch": (ShapeMismatchError, "outside weights (bottom 3)"),
}
REFUSALS = {name: (error, re.escape(text)) for name, (error, text) in REFUSAL_TEXT.items()}


@parametrize_fork_cases(["ssd", "frcnn"], {"SmoothL1Loss"}, "refused")
def test_fork_refusals_are_refused(case):
    check_fork_refusal(case, REFUSALS, forward=False)


def smooth_l1_kernels(pred, target, w_in, w_out, sigma):
    """The Faster R-CNN CUDA kernels' formulas, element by element in float64: (loss, pred diff at weight 1)."""
    s2 = sigma * sigma
    n = pred.shape[0]
    loss, grad = 0.0, numpy.zeros(pred.shape)
    for idx in numpy.ndindex(pred.shape):
        d = float(w_in[idx]) * (float(pred[idx]) - float(target[idx]))
        if abs(d) < 1.0 / s2:
            e, g = 0.5 * s2 * d * d, s2 * d
        else:
            e, g = abs(d) - 0.5 / s2, float(numpy.sign(d))
        loss += float(w_out[idx]) * e
        grad[idx] = float(w_in[idx]) * float(w_out[idx]) * g / n
    return loss / n, grad


@parametrize_fork_cases(["frcnn"], {"SmoothL1Loss"}, "cuda")
def test_faster_rcnn_cases_follow_the_cuda_kernels(case):
    net = fork_case_net(case)
    text = (fork_dir(case["fork"]) / f"{case['case']}.prototxt").read_text()
    found = re.search(r"sigma:\s*([0-9.]+)", text)
    sigma = float(found.group(1)) if found else 1.0
    rng = numpy.random.default_rng(len(text))
    shape = net.blobs["b0"].shape
    values = [rng.uniform(-1.5, 1.5, shape), rng.uniform(-1.5, 1.5, shape)]
    if "b3" in net.blobs:
        values += [(rng.uniform(0, 1, shape) > 0.3).astype(float), rng.uniform(0, 1, shape)]
    else:
        values += [numpy.ones(shape), numpy.ones(shape)]
    values = [v.astype(numpy.float32) for v in values]
    for i, v in enumerate(values):
        if f"b{i}" in net.blobs:
            net.blobs[f"b{i}"].data[...] = v
    net.forward()
    net.backward()
    loss, grad = smooth_l1_kernels(*values, sigma)
    assert float(net.blobs["t0"].data) == pytest.approx(loss, rel=1e-5)
    numpy.testing.assert_allclose(net.blobs["b0"].diff, grad, rtol=1e-5, atol=1e-7)
    numpy.testing.assert_allclose(net.blobs["b1"].diff, -grad, rtol=1e-5, atol=1e-7)
