"""Tests of the SSD fork's Permute, Normalize and PriorBox layers (netdef/layers/forks/ssd.py).

The fork reference cases live in ``shared/parity/forks/ssd`` (run by ``netdef.testing.parity``;
skipped cleanly when the folder is absent).
"""

import math

import numpy
import pytest

from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.layers.forks import fork_layer_types
from netdef.proto import netdef_pb2 as pb
from netdef.testing import check_gpu_matches_cpu, check_gradient, forward_layer, make_layer, run_backward, run_layer
from netdef.testing.parity import check_fork_case, check_fork_refusal, parametrize_fork_cases

TYPES = {"Permute", "Normalize", "PriorBox"}


def run(definition, bottoms, params=None, dy=None, phase=pb.TRAIN):
    """Set up one float64 layer, optionally set its blobs, run forward (and backward when dy is given)."""
    layer, bottom, top = forward_layer(definition, bottoms, params, 1, phase=phase)
    if dy is not None:
        run_backward(layer, bottom, top, [dy])
    return layer, bottom, top


def test_registered_as_ssd_fork_types():
    origins = fork_layer_types()
    for name in TYPES:
        assert origins[name] == ("SSD",)


# --- Permute ------------------------------------------------------------------------------------
def test_permute_values_3d():
    x = numpy.arange(6.0).reshape(1, 2, 3)
    _, _, top = run('type: "Permute" permute_param { order: 0 order: 2 order: 1 }', [x])
    numpy.testing.assert_array_equal(top[0].data, [[[0, 3], [1, 4], [2, 5]]])


def test_permute_nchw_to_nhwc_values_and_backward():
    x = numpy.arange(8.0).reshape(1, 2, 2, 2)  # x[0, c, h, w] = 4c + 2h + w
    dy = numpy.arange(8.0).reshape(1, 2, 2, 2) * 10  # indexed (n, h, w, c)
    _, bottom, top = run('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [x], dy=dy)
    numpy.testing.assert_array_equal(top[0].data.ravel(), [0, 4, 1, 5, 2, 6, 3, 7])
    # bottom (c, h, w) takes dy (h, w, c) = 10 * (4h + 2w + c)
    numpy.testing.assert_array_equal(bottom[0].diff.ravel(), [0, 20, 40, 60, 10, 30, 50, 70])


def test_permute_missing_axes_are_appended_in_order():
    x = numpy.zeros((2, 3, 4, 5))
    layer, _, top = run('type: "Permute" permute_param { order: 0 order: 2 }', [x])
    assert layer.order == (0, 2, 1, 3)
    assert top[0].shape == (2, 4, 3, 5)
    layer, _, top = run('type: "Permute" permute_param { order: 3 }', [x])
    assert top[0].shape == (5, 2, 3, 4)


def test_permute_identity_shares_data_and_diff():
    x = numpy.arange(24.0).reshape(2, 3, 4)
    dy = -numpy.arange(24.0).reshape(2, 3, 4)
    for text in ('type: "Permute" permute_param { order: 0 order: 1 order: 2 }', 'type: "Permute"'):
        _, bottom, top = run(text, [x], dy=dy)
        assert top[0].data is bottom[0].data
        assert bottom[0].diff is top[0].diff


def test_permute_gradient():
    x = numpy.random.default_rng(0).standard_normal((2, 3, 2, 4))
    layer = make_layer('type: "Permute" permute_param { order: 1 order: 3 order: 0 order: 2 }')
    assert check_gradient(layer, [x])["checked"] == x.size


def test_permute_respects_propagate_down():
    layer, bottom, top = run('type: "Permute" permute_param { order: 1 order: 0 }', [numpy.ones((2, 3))])
    bottom[0].diff[...] = 7
    top[0].diff[...] = 1
    layer.backward(top, [False], bottom)
    assert numpy.all(bottom[0].diff == 7)


BAD_ORDERS = [
    ("order: 0 order: 2 order: 2 order: 1", r"more than once.*order \[0, 2, 2, 1\].*repeated: \[2\]"),
    ("order: 0 order: 4", r"order \[0, 4\] \(value 4\).*Valid: 0 \.\. 3"),
]


@pytest.mark.parametrize("order, message", BAD_ORDERS)
def test_permute_bad_order_is_refused(order, message):
    layer = make_layer(f'type: "Permute" permute_param {{ {order} }}')
    with pytest.raises(InvalidParameterError, match=message):
        run_layer(layer, [numpy.zeros((2, 3, 4, 5))])


def test_permute_rank_change_after_setup_is_refused():
    layer, bottom, top = run('type: "Permute" permute_param { order: 1 order: 0 }', [numpy.ones((2, 3))])
    bottom[0].reshape((2, 3, 4))
    with pytest.raises(ShapeMismatchError, match=r"2-axis bottom.*Received shape \(2, 3, 4\)"):
        layer.reshape(bottom, top)


# --- Normalize ----------------------------------------------------------------------------------
def test_normalize_across_spatial_shared_scale_values():
    x = numpy.array([[3.0, 4.0]])
    layer, _, top = run('type: "Normalize"', [x])
    assert layer.blobs[0].shape == ()
    assert float(layer.blobs[0].data) == 1.0  # default filler: constant 1
    numpy.testing.assert_allclose(top[0].data, [[0.6, 0.8]])


def test_normalize_per_position_per_channel_values():
    # channel 0 = [3, 0], channel 1 = [4, 1] at two positions: norms 5 and 1
    x = numpy.array([3.0, 0.0, 4.0, 1.0]).reshape(1, 2, 1, 2)
    text = 'type: "Normalize" norm_param { across_spatial: false channel_shared: false eps: 0 }'
    layer, _, top = run(text, [x], params=[[2.0, 10.0]])
    assert layer.blobs[0].shape == (2,)
    numpy.testing.assert_allclose(top[0].data.ravel(), [1.2, 0.0, 8.0, 10.0])


def test_normalize_eps_is_added_under_the_root():
    x = numpy.array([[3.0, 4.0]])
    _, _, top = run('type: "Normalize" norm_param { eps: 11 }', [x])
    numpy.testing.assert_allclose(top[0].data, [[0.5, 4.0 / 6.0]], rtol=1e-6)  # sqrt(9 + 16 + 11) = 6


def test_normalize_scale_filler():
    text = 'type: "Normalize" norm_param { channel_shared: false scale_filler { type: "constant" value: 20 } }'
    layer, _, top = run(text, [numpy.array([[3.0, 4.0]])])
    numpy.testing.assert_array_equal(layer.blobs[0].data, [20.0, 20.0])
    numpy.testing.assert_allclose(top[0].data, [[12.0, 16.0]])


def test_normalize_backward_values_shared_scale():
    # y = 2 x / 5 for x = (3, 4); dy = (1, 0): dx = 2 (dy - x (x.dy) / 25) / 5 = (0.256, -0.192)
    _, bottom, _ = run('type: "Normalize" norm_param { eps: 0 }', [[[3.0, 4.0]]], params=[2.0], dy=[[1.0, 0.0]])
    numpy.testing.assert_allclose(bottom[0].diff, [[0.256, -0.192]])


def test_normalize_per_channel_bottom_diff_is_the_forks_formula():
    # Scales (1, 2), x = (3, 4) at one position, dy = (1, 0), norm 5. The fork scales the
    # shared-scale gradient per channel: dx_1 = 2 * (0 - 4 * 3 / 25) / 5 = -0.192, where the
    # exact gradient of y would be -4 * 3 / 125 = -0.096.
    x = numpy.array([3.0, 4.0]).reshape(1, 2, 1, 1)
    text = 'type: "Normalize" norm_param { across_spatial: false channel_shared: false eps: 0 }'
    layer, bottom, _ = run(text, [x], params=[[1.0, 2.0]], dy=numpy.array([1.0, 0.0]).reshape(1, 2, 1, 1))
    numpy.testing.assert_allclose(bottom[0].diff.ravel(), [0.128, -0.192])
    numpy.testing.assert_allclose(layer.blobs[0].diff, [0.6, 0.0])  # sum(dy * x / norm) per channel


def test_normalize_param_diff_accumulates():
    text = 'type: "Normalize" norm_param { eps: 0 }'
    layer, bottom, top = run(text, [[[3.0, 4.0]]], params=[2.0], dy=[[1.0, 1.0]])
    numpy.testing.assert_allclose(layer.blobs[0].diff, 1.4)
    layer.backward(top, [True], bottom)
    numpy.testing.assert_allclose(layer.blobs[0].diff, 2.8)


@pytest.mark.parametrize("across", ["true", "false"])
def test_normalize_gradient_shared_scale(across):
    x = numpy.random.default_rng(1).standard_normal((2, 3, 2, 3))
    filler = 'scale_filler { type: "constant" value: 1.5 }'
    layer = make_layer(f'type: "Normalize" norm_param {{ across_spatial: {across} {filler} }}')
    check_gradient(layer, [x])


@pytest.mark.parametrize("across", ["true", "false"])
def test_normalize_gradient_per_channel(across):
    """Bottom gradient is exact when the per-channel scales are equal (SSD's conv4_3_norm start: all 20)."""
    x = numpy.random.default_rng(2).standard_normal((2, 3, 2, 2))
    filler = 'scale_filler { type: "constant" value: 20 }'
    text = f'type: "Normalize" norm_param {{ across_spatial: {across} channel_shared: false {filler} }}'
    check_gradient(make_layer(text), [x])


@pytest.mark.parametrize("across", ["true", "false"])
def test_normalize_param_gradient_with_unequal_scales(across):
    x = numpy.random.default_rng(3).standard_normal((2, 3, 2, 2))
    filler = 'scale_filler { type: "uniform" min: -2 max: 2 }'
    text = f'type: "Normalize" norm_param {{ across_spatial: {across} channel_shared: false {filler} }}'
    check_gradient(make_layer(text), [x], check_bottoms=[])


def test_normalize_3d_and_2d_bottoms():
    x = numpy.array([3.0, 0.0, 4.0, 1.0]).reshape(1, 2, 2)
    _, _, top = run('type: "Normalize" norm_param { across_spatial: false eps: 0 }', [x])
    numpy.testing.assert_allclose(top[0].data.ravel(), [0.6, 0.0, 0.8, 1.0])
    x = numpy.random.default_rng(4).standard_normal((3, 4))
    check_gradient(make_layer('type: "Normalize" norm_param { across_spatial: false }'), [x])


def test_normalize_needs_two_axes():
    with pytest.raises(ShapeMismatchError, match=r"at least 2 axes.*Received shape \(4,\)"):
        run_layer(make_layer('type: "Normalize"'), [numpy.ones(4)])


def test_normalize_scale_blob_must_fit_channels():
    layer, bottom, top = run('type: "Normalize" norm_param { channel_shared: false }', [numpy.ones((1, 3, 2, 2))])
    bottom[0].reshape((1, 4, 2, 2))
    with pytest.raises(ShapeMismatchError, match=r"scale blob has 3 values but needs 4"):
        layer.reshape(bottom, top)


# --- PriorBox -----------------------------------------------------------------------------------
def priorbox(params, feature_shape, image_shape=None):
    bottoms = [numpy.zeros(feature_shape)] + ([numpy.zeros(image_shape)] if image_shape else [])
    layer, _, top = run(f'type: "PriorBox" prior_box_param {{ {params} }}', bottoms, phase=pb.TEST)
    return layer, top[0].data


def test_priorbox_min_only_values():
    layer, out = priorbox("min_size: 4", (1, 1, 1, 1), (1, 3, 10, 10))
    assert layer.num_priors == 1
    assert out.shape == (1, 2, 4)
    numpy.testing.assert_allclose(out[0, 0], [0.3, 0.3, 0.7, 0.7], rtol=1e-6)
    numpy.testing.assert_allclose(out[0, 1], [0.1] * 4, rtol=1e-6)


def test_priorbox_max_size_and_flipped_ratio_values():
    # feature 1 x 2 on a 10 x 20 image: step 10, centres (5, 5) and (15, 5)
    layer, out = priorbox("min_size: 4 max_size: 9 aspect_ratio: 2", (1, 1, 1, 2), (1, 3, 10, 20))
    assert layer.num_priors == 4
    assert out.shape == (1, 2, 2 * 4 * 4)
    r2 = math.sqrt(2.0)
    first_cell = [
        [3 / 20, 3 / 10, 7 / 20, 7 / 10],  # 4 x 4
        [2 / 20, 2 / 10, 8 / 20, 8 / 10],  # sqrt(4 * 9) = 6
        [(5 - 2 * r2) / 20, (5 - r2) / 10, (5 + 2 * r2) / 20, (5 + r2) / 10],  # ar 2: 4 sqrt2 x 2 sqrt2
        [(5 - r2) / 20, (5 - 2 * r2) / 10, (5 + r2) / 20, (5 + 2 * r2) / 10],  # ar 1/2
    ]
    boxes = out[0, 0].reshape(2, 4, 4)
    numpy.testing.assert_allclose(boxes[0], first_cell, rtol=1e-6)
    numpy.testing.assert_allclose(boxes[1], numpy.array(first_cell) + [0.5, 0, 0.5, 0], rtol=1e-6)


def test_priorbox_duplicate_ratios_dropped_and_no_flip():
    ratios = "aspect_ratio: 1 aspect_ratio: 2 aspect_ratio: 2.0 aspect_ratio: 0.5"
    layer, _ = priorbox(f"min_size: 4 {ratios}", (1, 1, 1, 1), (1, 1, 8, 8))
    assert layer.aspect_ratios == [1.0, 2.0, 0.5]
    layer, _ = priorbox("min_size: 4 aspect_ratio: 3 flip: false", (1, 1, 1, 1), (1, 1, 8, 8))
    assert layer.aspect_ratios == [1.0, 3.0]
    assert layer.num_priors == 2


def test_priorbox_sizes_truncated_to_int():
    _, out = priorbox("min_size: 4.9 max_size: 9.99", (1, 1, 1, 1), (1, 1, 10, 10))
    numpy.testing.assert_allclose(out[0, 0], [0.3, 0.3, 0.7, 0.7, 0.2, 0.2, 0.8, 0.8], rtol=1e-6)


def test_priorbox_clip_and_four_variances():
    params = "min_size: 8 clip: true variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4"
    _, out = priorbox(params, (1, 1, 1, 2), (1, 1, 4, 8))
    # step 4: centres x 2 and 6, y 2; box 8 x 8 -> x [-2, 6] and [2, 10] over 8, y [-2, 6] over 4
    numpy.testing.assert_allclose(out[0, 0], [0, 0, 0.75, 1, 0.25, 0, 1, 1], rtol=1e-6)
    numpy.testing.assert_allclose(out[0, 1], [0.1, 0.2, 0.3, 0.4] * 2, rtol=1e-6)


def test_priorbox_img_size_step_offset_one_bottom():
    _, out = priorbox("min_size: 2 img_size: 10 step: 3 offset: 0", (1, 1, 1, 2))
    # centres x 0 and 3, y 0; image 10 x 10
    numpy.testing.assert_allclose(out[0, 0], [-0.1, -0.1, 0.1, 0.1, 0.2, -0.1, 0.4, 0.1], rtol=1e-6)


def test_priorbox_img_hw_step_hw():
    _, out = priorbox("min_size: 2 img_h: 10 img_w: 20 step_h: 4 step_w: 6", (1, 1, 2, 1), (1, 1, 99, 99))
    # centres (x, y) = (3, 2) and (3, 6)
    numpy.testing.assert_allclose(out[0, 0], [0.1, 0.1, 0.2, 0.3, 0.1, 0.5, 0.2, 0.7], rtol=1e-6)


def test_priorbox_top_shape_follows_feature_map():
    layer, out = priorbox("min_size: 4 max_size: 8 aspect_ratio: 2 aspect_ratio: 3", (2, 5, 3, 4), (2, 3, 30, 40))
    assert layer.num_priors == 6
    assert out.shape == (1, 2, 3 * 4 * 6 * 4)


def test_priorbox_has_no_gradient():
    layer = make_layer('type: "PriorBox" prior_box_param { min_size: 4 }')
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)


BAD_PRIORBOX_PARAMS = [
    ("aspect_ratio: 2", r"at least one min_size\. Received: none"),
    ("min_size: 10 max_size: 10", r"greater than its min_size\. Received: max_size 10 for min_size 10"),
    ("min_size: 10 aspect_ratio: 2 aspect_ratio: 0", r"aspect_ratio must be positive\. Received: \[2.0, 0.0\]"),
    ("min_size: 10 variance: 0.1 variance: 0.1 variance: 0.2", r"1 or 4 values\. Received: 3 values"),
    ("min_size: 10 step: 8 step_h: 8 step_w: 8", r"either step or step_h/step_w, not both\. Received: step 8"),
    ("min_size: 10 img_size: 8 img_h: 8 img_w: 8", r"either img_size or img_h/img_w, not both"),
    ("min_size: 10 img_h: 8", r"img_h and img_w must both be positive\. Received: 8 and 0"),
    ("min_size: 10 step_w: 8", r"step_h and step_w must both be positive\. Received: 0 and 8"),
    ("min_size: 0", r"min_size must be positive\. Received: \[0.0\]"),
    ("min_size: 10 min_size: 20 max_size: 30", r"once per min_size \(2\).*Received: 1 values"),
    ("min_size: 10 variance: 0", r"variance must be positive\. Received: \[0.0\]"),
    ("min_size: 10 step: -1", r"step must be positive\. Received: -1"),
]


@pytest.mark.parametrize("params, message", BAD_PRIORBOX_PARAMS)
def test_priorbox_bad_parameters_are_refused(params, message):
    layer = make_layer(f'type: "PriorBox" prior_box_param {{ {params} }}', phase=pb.TEST)
    with pytest.raises(InvalidParameterError, match=message):
        run_layer(layer, [numpy.zeros((1, 1, 3, 3)), numpy.zeros((1, 3, 30, 30))])


def test_priorbox_without_image_needs_image_size():
    layer = make_layer('type: "PriorBox" prior_box_param { min_size: 4 }', phase=pb.TEST)
    with pytest.raises(ShapeMismatchError, match=r"needs the image as bottom 1.*Received: 1 bottom"):
        run_layer(layer, [numpy.zeros((1, 1, 3, 3))])
    layer = make_layer('type: "PriorBox" prior_box_param { min_size: 4 }', phase=pb.TEST)
    with pytest.raises(BlobCountError):
        run_layer(layer, [], num_top=1)


# --- GPU: one body on both backends ---------------------------------------------------------------
GPU_PRIORBOX = 'type: "PriorBox" prior_box_param { min_size: 4 max_size: 9 aspect_ratio: 2 clip: true }'
GPU_CASES = [
    ('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [(2, 3, 4, 5)]),
    ('type: "Normalize" norm_param { channel_shared: false scale_filler { type: "uniform" } }', [(2, 3, 4, 5)]),
    ('type: "Normalize" norm_param { across_spatial: false channel_shared: false }', [(2, 3, 4, 5)]),
    (GPU_PRIORBOX, [(1, 2, 3, 4), (1, 3, 24, 32)]),
]


@pytest.mark.gpu
@pytest.mark.parametrize("definition, shapes", GPU_CASES)
def test_gpu_matches_cpu(definition, shapes):
    rng = numpy.random.default_rng(5)
    check_gpu_matches_cpu(definition, [rng.standard_normal(s) for s in shapes])


# --- parity with the fork -------------------------------------------------------------------------
@parametrize_fork_cases("ssd", TYPES)
def test_parity_with_ssd_fork(case):
    errors = check_fork_case(case)
    assert "top_0" in errors
    if case["type"] != "PriorBox":
        assert "bottom_diff_0" in errors
    if case["type"] == "Normalize":
        assert "param_diff_0" in errors


REFUSAL_MESSAGES = {
    "permute_dup": (InvalidParameterError, r"names an axis more than once.*repeated: \[2\]"),
    "permute_out_of_range": (InvalidParameterError, r"Received: order \[0, 4\] \(value 4\)"),
    "priorbox_no_min": (InvalidParameterError, r"needs at least one min_size"),
    "priorbox_max_le_min": (InvalidParameterError, r"max_size must be greater than its min_size"),
    "priorbox_variance3": (InvalidParameterError, r"variance takes 1 or 4 values\. Received: 3 values"),
    "priorbox_step_and_hw": (InvalidParameterError, r"give either step or step_h/step_w, not both"),
}


@parametrize_fork_cases("ssd", TYPES, "refused")
def test_fork_refusals_are_refused(case):
    check_fork_refusal(case, REFUSAL_MESSAGES, forward=False)
