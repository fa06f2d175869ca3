"""Tests of the SSD detection layers: DetectionOutput, DetectionEvaluate (netdef/layers/forks/detection.py)
and MultiBoxLoss (netdef/layers/forks/multibox.py)."""

import math

import numpy
import pytest

import netdef
from netdef.errors import DataSourceError, InvalidParameterError, ShapeMismatchError
from netdef.testing import check_gradient, make_layer, run_layer
from netdef.testing.gradient_check import check_gpu_matches_cpu
from netdef.testing.parity import check_fork_case, check_fork_refusal, parametrize_fork_cases

LN2, LN3 = math.log(2.0), math.log(3.0)


def priors_blob(boxes, variance=(0.1, 0.1, 0.2, 0.2)):
    """A PriorBox-shaped blob (1, 2, 4P): the boxes, then one variance row per box."""
    boxes = numpy.asarray(boxes, dtype=numpy.float64)
    var = numpy.tile(numpy.asarray(variance, dtype=numpy.float64), (len(boxes), 1))
    return numpy.stack([boxes.reshape(-1), var.reshape(-1)])[None]


# --- DetectionOutput --------------------------------------------------------------------------
def detout(params, bottoms):
    layer = make_layer(f'type: "DetectionOutput" detection_output_param {{ {params} }}', phase=netdef.TEST)
    _, top = run_layer(layer, bottoms)
    return top[0].data


# Two priors overlapping by 2/3; CORNER code, variance 0.1: a loc offset of 1 moves a corner by 0.1.
P2 = [[0.0, 0.0, 0.5, 0.5], [0.1, 0.0, 0.6, 0.5]]
CONF = numpy.array([[0.2, 0.6, 0.2, 0.1, 0.5, 0.4]])  # prior 0: [.2 .6 .2], prior 1: [.1 .5 .4]
LOC0 = numpy.zeros((1, 8))
BASE = "num_classes: 3 code_type: CORNER nms_param { nms_threshold: 0.45 }"


def test_detection_output_literal_rows():
    out = detout(BASE, [LOC0, CONF, priors_blob(P2, (0.1,) * 4)])
    # class 1: prior 0 (.6) suppresses prior 1 (.5); class 2: prior 1 (.4) suppresses prior 0 (.2)
    numpy.testing.assert_allclose(out, [[[[0, 1, 0.6, 0, 0, 0.5, 0.5], [0, 2, 0.4, 0.1, 0, 0.6, 0.5]]]], rtol=1e-6)


def test_detection_output_decodes_offsets_with_variance():
    loc = LOC0.copy()
    loc[0, :4] = [1.0, 2.0, -1.0, 0.0]
    out = detout(BASE, [loc, CONF, priors_blob(P2, (0.1,) * 4)])
    numpy.testing.assert_allclose(out[0, 0, 0, 3:], [0.1, 0.2, 0.4, 0.5], rtol=1e-6)
    out = detout(BASE + " variance_encoded_in_target: true", [loc, CONF, priors_blob(P2, (0.1,) * 4)])
    numpy.testing.assert_allclose(out[0, 0, 0, 3:], [1.0, 2.0, -0.5, 0.5], rtol=1e-6)


def test_detection_output_keep_top_k_and_threshold():
    out = detout(BASE + " keep_top_k: 1", [LOC0, CONF, priors_blob(P2)])
    numpy.testing.assert_allclose(out, [[[[0, 1, 0.6, 0, 0, 0.5, 0.5]]]], rtol=1e-6)
    out = detout(BASE + " confidence_threshold: 0.45", [LOC0, CONF, priors_blob(P2)])
    assert out.shape == (1, 1, 1, 7) and out[0, 0, 0, 1] == 1


def test_detection_output_nothing_detected_gives_one_minus_one_row_per_image():
    conf = numpy.vstack([CONF, CONF])
    out = detout(BASE + " confidence_threshold: 0.7", [numpy.zeros((2, 8)), conf, priors_blob(P2)])
    numpy.testing.assert_array_equal(out, [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]])


def test_detection_output_no_background_without_shared_location():
    # every class is a detection class; class c reads its own offsets (prior-major, class inside)
    loc = numpy.zeros((1, 2 * 3 * 4))
    out = detout(
        "num_classes: 3 share_location: false background_label_id: -1 code_type: CORNER "
        "nms_param { nms_threshold: 0.45 }",
        [loc, CONF, priors_blob(P2)],
    )
    assert out[0, 0, :, 1].tolist() == [0, 1, 2]
    numpy.testing.assert_allclose(out[0, 0, :, 2], [0.2, 0.6, 0.4], rtol=1e-6)


@pytest.mark.parametrize(
    "params, bottoms, error, match",
    [
        ("num_classes: 3 background_label_id: -1", None, InvalidParameterError, "share_location"),
        ("code_type: CORNER", None, InvalidParameterError, "num_classes is required"),
        ("num_classes: 3 nms_param { eta: 1.5 }", None, InvalidParameterError, "eta"),
        ("num_classes: 3 nms_param { nms_threshold: -0.1 }", None, InvalidParameterError, "nms_threshold"),
        ('num_classes: 3 save_output_param { output_directory: "out" }', None, InvalidParameterError, "not supported"),
        (BASE, [numpy.zeros((1, 12)), CONF, priors_blob(P2)], ShapeMismatchError, "location predictions"),
        (BASE, [LOC0, CONF[:, :4], priors_blob(P2)], ShapeMismatchError, "confidence predictions"),
        (BASE, [numpy.zeros((2, 8)), CONF, priors_blob(P2)], ShapeMismatchError, "same batch size"),
    ],
)
def test_detection_output_refusals(params, bottoms, error, match):
    with pytest.raises(error, match=match) as info:
        detout(params, bottoms or [LOC0, CONF, priors_blob(P2)])
    assert 'Layer "L" (type DetectionOutput)' in str(info.value)


# --- MultiBoxLoss ---------------------------------------------------------------------------------
# Three priors; one ground-truth box of class 1 overlapping prior 0 by 0.8 and nothing else.
P3 = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.5, 0.0, 1.0, 0.5]]
GT1 = numpy.array([[[[0, 1, 0, 0.1, 0.0, 0.5, 0.5, 0]]]])
# CORNER code with variance 1: target for prior 0 = gt - prior = [0.1, 0, 0, 0]; d = [0.5, 0, 2, 0]
LOC3 = numpy.array([[0.6, 0, 2, 0] + [0.3] * 8])
# logits: prior 0 [0, 0] (-log .5), prior 1 [ln 3, 0] (-log .75 for background), prior 2 [0, 0]
CONF3 = numpy.array([[0.0, 0.0, LN3, 0.0, 0.0, 0.0]])
MBOX = (
    'type: "MultiBoxLoss" multibox_loss_param {{ num_classes: 2 code_type: CORNER {} }} '
    "loss_param {{ normalization: {} }}"
)


def mbox_layer(extra="", norm="VALID", dtype=numpy.float64):
    return make_layer(MBOX.format(extra, norm), dtype=dtype)


def mbox_run(extra, bottoms, norm="VALID"):
    layer = mbox_layer(extra, norm)
    bottom, top = run_layer(layer, bottoms)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True, False, False], bottom)
    return float(top[0].data), bottom[0].diff, bottom[1].diff


def test_multibox_loss_literal_no_mining():
    loss, dloc, dconf = mbox_run("mining_type: NONE", [LOC3, CONF3, priors_blob(P3, (1, 1, 1, 1)), GT1])
    # smooth L1: 0.5 * 0.5^2 + (2 - 0.5) = 1.625; conf: ln 2 + (-ln .75) + ln 2; one match -> normaliser 1
    assert loss == pytest.approx(1.625 + 2 * LN2 - math.log(0.75))
    numpy.testing.assert_allclose(dloc, [[0.5, 0, 1, 0] + [0] * 8], atol=1e-12)
    numpy.testing.assert_allclose(dconf, [[0.5, -0.5, -0.25, 0.25, -0.5, 0.5]], atol=1e-12)


def test_multibox_loss_max_negative_mining_picks_the_hardest_negative():
    # ratio 1 with one positive: one negative, prior 2 (loss ln 2) beats prior 1 (loss -ln .75)
    loss, _, dconf = mbox_run(
        "mining_type: MAX_NEGATIVE neg_pos_ratio: 1", [LOC3, CONF3, priors_blob(P3, (1, 1, 1, 1)), GT1]
    )
    assert loss == pytest.approx(1.625 + 2 * LN2)
    numpy.testing.assert_allclose(dconf, [[0.5, -0.5, 0, 0, -0.5, 0.5]], atol=1e-12)


def test_multibox_loss_l2_weight_and_normalisation():
    bottoms = [LOC3, CONF3, priors_blob(P3, (1, 1, 1, 1)), GT1]
    loss, dloc, _ = mbox_run("mining_type: NONE loc_loss_type: L2 loc_weight: 2", bottoms, norm="BATCH_SIZE")
    assert loss == pytest.approx(2 * 0.5 * (0.25 + 4) + 2 * LN2 - math.log(0.75))
    numpy.testing.assert_allclose(dloc[0, :4], [1.0, 0, 4.0, 0], atol=1e-12)
    loss, dloc, _ = mbox_run("mining_type: NONE", bottoms, norm="FULL")  # 1 image x 3 priors
    assert loss == pytest.approx((1.625 + 2 * LN2 - math.log(0.75)) / 3)
    numpy.testing.assert_allclose(dloc[0, :4], [0.5 / 3, 0, 1 / 3, 0], atol=1e-12)


def test_multibox_loss_without_ground_truth_is_zero():
    none = numpy.full((1, 1, 1, 8), -1.0)
    loss, dloc, dconf = mbox_run("", [LOC3, CONF3, priors_blob(P3), none])
    assert loss == 0 and not dloc.any() and not dconf.any()


def test_multibox_loss_difficult_boxes_can_be_skipped():
    gt = GT1.copy()
    gt[..., 7] = 1
    loss, _, _ = mbox_run("mining_type: NONE use_difficult_gt: false", [LOC3, CONF3, priors_blob(P3, (1,) * 4), gt])
    assert loss == pytest.approx(2 * LN2 - math.log(0.75))  # no match: every prior is background, no loc loss


def test_multibox_loss_logistic_literal():
    # one image, no mining: targets onehot(1) for prior 0 and all-zero rows (the fill value 0) otherwise
    loss, _, dconf = mbox_run(
        "mining_type: NONE conf_loss_type: LOGISTIC", [LOC3, CONF3, priors_blob(P3, (1, 1, 1, 1)), GT1]
    )
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 - softplus: -log(1 - s(x)) = sp(x), -log s(x) = sp(-x)
    conf_loss = (sp(0) + sp(-0.0)) + (sp(LN3) + sp(0)) + 2 * sp(0)
    assert loss == pytest.approx(1.625 + conf_loss)
    numpy.testing.assert_allclose(dconf, [[0.5, -0.5, 0.75, 0.5, 0.5, 0.5]], atol=1e-12)


def random_case(num=2, seed=0, loc_classes=1, num_classes=3):
    """A small SSD-like batch: a 3x3 grid of priors (two sizes), a few boxes per image."""
    rng = numpy.random.default_rng(seed)
    centres = (numpy.arange(3) + 0.5) / 3
    boxes = []
    for cy in centres:
        for cx in centres:
            for s in (0.3, 0.45):
                boxes.append([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2])
    p = len(boxes)
    gt = []
    for i in range(num):
        for k in range(2):
            b = numpy.array(boxes[rng.integers(p)]) + rng.uniform(-0.04, 0.04, 4)
            gt.append([i, 1 + (i + k) % (num_classes - 1), 0, *b, 0])
    loc = rng.normal(0, 0.5, (num, p * loc_classes * 4))
    conf = rng.normal(0, 1, (num, p * num_classes))
    return [loc, conf, priors_blob(boxes), numpy.array(gt)[None, None]]


@pytest.mark.parametrize(
    "extra",
    [
        "code_type: CENTER_SIZE mining_type: MAX_NEGATIVE neg_pos_ratio: 2",
        "code_type: CENTER_SIZE mining_type: NONE loc_loss_type: L2 loc_weight: 0.5",
        "code_type: CORNER_SIZE mining_type: HARD_EXAMPLE sample_size: 6",
        "code_type: CENTER_SIZE mining_type: NONE conf_loss_type: LOGISTIC",
        "code_type: CENTER_SIZE mining_type: MAX_NEGATIVE conf_loss_type: LOGISTIC match_type: BIPARTITE",
    ],
)
def test_multibox_loss_gradient(extra):
    layer = make_layer(MBOX.format("num_classes: 3 " + extra, "VALID").replace("num_classes: 2 ", ""))
    result = check_gradient(layer, random_case(), check_bottoms=[0, 1])
    assert result["checked"] > 0


def test_multibox_loss_gradient_without_shared_location():
    layer = make_layer(
        MBOX.format("num_classes: 3 share_location: false mining_type: NONE code_type: CENTER_SIZE", "VALID").replace(
            "num_classes: 2 ", ""
        )
    )
    check_gradient(layer, random_case(loc_classes=3), check_bottoms=[0, 1])


def test_multibox_loss_matching_on_decoded_predictions_gradient():
    layer = make_layer(
        MBOX.format(
            "num_classes: 3 use_prior_for_matching: false mining_type: MAX_NEGATIVE code_type: CENTER_SIZE", "VALID"
        ).replace("num_classes: 2 ", "")
    )
    bottoms = random_case()
    bottoms[0] *= 0.1  # predictions near their priors, so some of them match
    check_gradient(layer, bottoms, check_bottoms=[0, 1])


@pytest.mark.parametrize(
    "extra, bottoms_fix, error, match",
    [
        ("", "bg_in_gt", DataSourceError, "background label"),
        ("", "label_too_big", DataSourceError, "not a class"),
        ("share_location: false", None, InvalidParameterError, "share_location"),
        ("background_label_id: 5", None, InvalidParameterError, "background_label_id"),
        ("mining_type: HARD_EXAMPLE sample_size: 0", None, InvalidParameterError, "sample_size"),
        ("do_neg_mining: false", None, InvalidParameterError, "do_neg_mining"),
        ("", "gt_width", ShapeMismatchError, "ground-truth bottom"),
        ("", "prior_short", ShapeMismatchError, "prior bottom"),
    ],
)
def test_multibox_loss_refusals(extra, bottoms_fix, error, match):
    bottoms = [LOC3, CONF3, priors_blob(P3), GT1.copy()]
    if bottoms_fix == "bg_in_gt":
        bottoms[3][..., 1] = 0
    elif bottoms_fix == "label_too_big":
        bottoms[3][..., 1] = 2
    elif bottoms_fix == "gt_width":
        bottoms[3] = numpy.zeros((1, 1, 1, 7))
    elif bottoms_fix == "prior_short":
        bottoms[2] = bottoms[2][:, :1]
    with pytest.raises(error, match=match) as info:
        run_layer(mbox_layer(extra), bottoms)
    assert 'Layer "L" (type MultiBoxLoss)' in str(info.value)


def test_multibox_loss_needs_num_classes():
    with pytest.raises(InvalidParameterError, match="num_classes is required"):
        run_layer(make_layer('type: "MultiBoxLoss" multibox_loss_param { }'), [LOC3, CONF3, priors_blob(P3), GT1])


def test_multibox_loss_propagate_down_selects_the_terms():
    layer = make_layer(
        MBOX.format("mining_type: NONE", "VALID") + " propagate_down: false propagate_down: true "
        "propagate_down: false propagate_down: false"
    )
    _, top = run_layer(layer, [LOC3, CONF3, priors_blob(P3, (1,) * 4), GT1])
    assert float(top[0].data) == pytest.approx(2 * LN2 - math.log(0.75))


@pytest.mark.parametrize(
    "definition, bottoms",
    [
        (MBOX.format("num_classes: 3 code_type: CENTER_SIZE", "VALID").replace("num_classes: 2 ", ""), random_case()),
    ],
)
def test_multibox_loss_gpu_matches_cpu(definition, bottoms):
    check_gpu_matches_cpu(definition, bottoms)


def test_detection_output_gpu_matches_cpu():
    check_gpu_matches_cpu(
        f'type: "DetectionOutput" detection_output_param {{ {BASE} }}', [LOC0, CONF, priors_blob(P2)], phase=netdef.TEST
    )


# --- parity with the SSD fork -----------------------------------------------------------------
@parametrize_fork_cases("ssd", {"DetectionOutput", "MultiBoxLoss"})
def test_fork_parity(case):
    errors = check_fork_case(case)
    assert "top_0" in errors
    if case["type"] == "MultiBoxLoss":
        assert "bottom_diff_0" in errors and "bottom_diff_1" in errors


#: the named error each refused fork case must raise
REFUSALS = {
    "detout_no_bg": (InvalidParameterError, "background_label_id -1 .* needs share_location: false"),
    "detout_prior_mismatch": (ShapeMismatchError, "the number of priors must match the location predictions"),
    "mbox_bg_label_in_gt": (DataSourceError, "found the background label in the ground truth"),
}


def refused_bottoms(net, case):
    """Feed a refused case well-formed values where the fork reads them (a gt row, priors)."""
    if "b2" in net.blobs:
        blob = net.blobs["b2"].data
        p = blob.shape[-1] // 4
        boxes = numpy.tile([0.1, 0.1, 0.4, 0.4], p)
        blob[...] = numpy.concatenate([boxes, numpy.full(p * 4, 0.1)]).reshape(blob.shape)
    if "b3" in net.blobs:
        net.blobs["b3"].data[...] = [0, 0, 0, 0.1, 0.1, 0.4, 0.4, 0]  # background label 0 in the ground truth


@parametrize_fork_cases("ssd", {"DetectionOutput", "MultiBoxLoss"}, "refused")
def test_fork_refusals(case):
    check_fork_refusal(case, REFUSALS, feed=refused_bottoms)


# --- DetectionEvaluate ------------------------------------------------------------------------
EVAL_GT = numpy.array(
    [
        [
            [
                [0, 1, 0, 0.0, 0.0, 0.5, 0.5, 0],
                [0, 2, 0, 0.5, 0.5, 1.0, 1.0, 1],  # difficult
                [1, 1, 0, 0.0, 0.0, 0.5, 0.5, 0],
            ]
        ]
    ]
)
EVAL_DET = numpy.array(
    [
        [
            [
                [0, 1, 0.9, 0.0, 0.0, 0.5, 0.5],  # takes the class-1 box: tp
                [0, 1, 0.8, 0.0, 0.0, 0.5, 0.5],  # the same box again: fp
                [0, 1, 0.95, 0.6, 0.0, 1.0, 0.4],  # no overlap: fp (listed first: best score)
                [0, 2, 0.7, 0.5, 0.5, 1.0, 1.0],  # the difficult box
                [1, -1, -1, -1, -1, -1, -1],  # "nothing detected" row: skipped
                [2, 1, 0.5, 0.0, 0.0, 0.5, 0.5],  # image without ground truth: fp
            ]
        ]
    ]
)


@pytest.mark.parametrize("difficult, class2_count, class2_row", [("true", 1, [1, 0]), ("false", 0, [0, 0])])
def test_detection_evaluate_literal_rows(difficult, class2_count, class2_row):
    layer = make_layer(
        f'type: "DetectionEvaluate" detection_evaluate_param {{ num_classes: 3 evaluate_difficult_gt: {difficult} }}',
        phase=netdef.TEST,
    )
    _, top = run_layer(layer, [EVAL_DET, EVAL_GT])
    want = [
        [-1, 1, 2, -1, -1],
        [-1, 2, class2_count, -1, -1],
        [0, 1, 0.95, 0, 1],
        [0, 1, 0.9, 1, 0],
        [0, 1, 0.8, 0, 1],
        [0, 2, 0.7, *class2_row],
        [2, 1, 0.5, 0, 1],
    ]
    numpy.testing.assert_allclose(top[0].data, [[want]])


@pytest.mark.parametrize(
    "params, bottoms, error, match",
    [
        ("num_classes: 3", [EVAL_DET, EVAL_GT[..., :7]], ShapeMismatchError, "ground-truth bottom"),
        ("overlap_threshold: 0.5", [EVAL_DET, EVAL_GT], InvalidParameterError, "num_classes"),
        ('num_classes: 3 name_size_file: "sizes.txt"', [EVAL_DET, EVAL_GT], InvalidParameterError, "not supported"),
        ("num_classes: 3 background_label_id: 2", [EVAL_DET, EVAL_GT], DataSourceError, "background label"),
    ],
)
def test_detection_evaluate_refusals(params, bottoms, error, match):
    layer = make_layer(f'type: "DetectionEvaluate" detection_evaluate_param {{ {params} }}', phase=netdef.TEST)
    with pytest.raises(error, match=match):
        run_layer(layer, bottoms)
