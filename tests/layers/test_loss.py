"""Tests of the loss layers and Accuracy (netdef/layers/loss.py)."""

import math

import numpy
import pytest

from netdef.errors import BlobCountError, DataSourceError, InvalidParameterError, ShapeMismatchError, WeightsFileError
from netdef.io.blobproto import write_binaryproto
from netdef.net import Net
from netdef.proto import netdef_pb2, parse_text
from netdef.testing import check_gpu_matches_cpu, check_gradient, make_blobs, make_layer, rand, run_backward, run_layer
from netdef.testing.parity import check_layer_case, parametrize_layer_cases

LN2 = math.log(2.0)
LN3 = math.log(3.0)

# Two samples, two classes: softmax([0, 0]) = [.5, .5], softmax([ln 3, 0]) = [.75, .25].
SCORES = numpy.array([[0.0, 0.0], [LN3, 0.0]])
LABELS = numpy.array([0.0, 1.0])


def forward(definition, bottoms, num_top=None):
    layer = make_layer(definition)
    _, top = run_layer(layer, bottoms, num_top)
    return layer, top


def backward(layer, bottoms, top, propagate=None):
    """One backward with the tops' seeded diffs (the loss weight); returns the bottom diffs."""
    bottom = make_blobs(bottoms, layer.dtype, layer.xp)
    layer.forward_step(bottom, top)
    return run_backward(layer, bottom, top, propagate_down=propagate or [True] + [False] * (len(bottom) - 1))


def labels(n, classes, seed=0):
    return numpy.random.default_rng(seed).integers(0, classes, size=n).astype(numpy.float64)


# --- SoftmaxWithLoss ------------------------------------------------------------------------
SWL = 'type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss"'


def test_softmax_with_loss_values_and_gradient():
    layer, top = forward(SWL, [SCORES, LABELS])
    assert top[0].data.shape == ()
    assert float(top[0].data) == pytest.approx((LN2 + 2 * LN2) / 2)
    dx, _ = backward(layer, [SCORES, LABELS], top)
    numpy.testing.assert_allclose(dx, [[-0.25, 0.25], [0.375, -0.375]])


@pytest.mark.parametrize(
    "loss_param, expected",
    [
        ("ignore_label: 1", LN2),  # VALID (default): one valid label
        ("ignore_label: 1 normalization: FULL", LN2 / 2),
        ("ignore_label: 1 normalization: BATCH_SIZE", LN2 / 2),
        ("ignore_label: 1 normalization: NONE", LN2),
        ("ignore_label: 1 normalize: false", LN2 / 2),  # legacy bool: false means BATCH_SIZE
        ("ignore_label: 1 normalize: true", LN2),
        ("ignore_label: 1 normalize: false normalization: VALID", LN2),  # normalization wins
    ],
)
def test_softmax_with_loss_normalization_modes(loss_param, expected):
    layer, top = forward(SWL + f" loss_param {{ {loss_param} }}", [SCORES, LABELS])
    assert float(top[0].data) == pytest.approx(expected)
    dx, _ = backward(layer, [SCORES, LABELS], top)
    numpy.testing.assert_allclose(dx[1], [0.0, 0.0])
    numpy.testing.assert_allclose(dx[0], numpy.array([-0.5, 0.5]) * expected / LN2)


def test_softmax_with_loss_all_ignored_is_zero_not_nan():
    _, top = forward(SWL + " loss_param { ignore_label: 7 }", [SCORES, [7.0, 7.0]])
    assert float(top[0].data) == 0.0


def test_softmax_with_loss_prob_top_and_loss_weight():
    layer, top = forward(SWL + ' top: "prob" loss_weight: 2 loss_weight: 0', [SCORES, LABELS])
    numpy.testing.assert_allclose(top[1].data, [[0.5, 0.5], [0.75, 0.25]])
    assert layer.loss_weights == [2.0, 0.0]
    dx, _ = backward(layer, [SCORES, LABELS], top)
    numpy.testing.assert_allclose(dx, [[-0.5, 0.5], [0.75, -0.75]])


def test_softmax_with_loss_default_loss_weight_and_force_backward_rules():
    layer, top = forward(SWL + ' top: "prob"', [SCORES, LABELS])
    assert layer.loss_weights == [1.0, 0.0]
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


def test_softmax_with_loss_spatial_axis_and_float_labels():
    # N=1, C=2, H=1, W=2 with labels 1.0 and 0.9 (cast to int: 1 and 0).
    x = numpy.array([[[[0.0, LN3]], [[0.0, 0.0]]]])
    _, top = forward(SWL, [x, numpy.array([[[[1.0, 0.9]]]])])
    assert float(top[0].data) == pytest.approx((LN2 + math.log(4 / 3)) / 2)


def test_softmax_with_loss_gradient():
    check_gradient(make_layer(SWL), [rand(3, 4, 2), labels(6, 4).reshape(3, 2)], check_bottoms=[0])


def test_softmax_with_loss_gradient_axis_ignore_full():
    definition = SWL + " softmax_param { axis: 2 } loss_param { ignore_label: 0 normalization: FULL }"
    check_gradient(make_layer(definition), [rand(2, 3, 4), labels(6, 4).reshape(2, 3)], check_bottoms=[0])


def test_softmax_with_loss_errors():
    with pytest.raises(ShapeMismatchError, match="Received: labels of shape"):
        forward(SWL, [SCORES, [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]])
    with pytest.raises(InvalidParameterError, match="softmax_param.axis.*Received: 3"):
        forward(SWL + " softmax_param { axis: 3 }", [SCORES, LABELS])
    with pytest.raises(DataSourceError, match="Received: 2.0"):
        forward(SWL, [SCORES, [0.0, 2.0]])
    with pytest.raises(BlobCountError):
        forward(SWL + ' top: "a" top: "b"', [SCORES, LABELS])


# --- Accuracy -----------------------------------------------------------------------------------
ACC = 'type: "Accuracy" bottom: "x" bottom: "y" top: "acc"'
ACC_SCORES = numpy.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
ACC_LABELS = numpy.array([2.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("", 0.25),  # only sample 1 is right
        ("accuracy_param { top_k: 2 }", 0.5),  # sample 0 too; sample 3 ties with class 0 and loses
        ("accuracy_param { ignore_label: 2 }", 1 / 3),
    ],
)
def test_accuracy_values(extra, expected):
    layer, top = forward(ACC + " " + extra, [ACC_SCORES, ACC_LABELS])
    assert top[0].data.shape == ()
    assert float(top[0].data) == pytest.approx(expected)
    assert layer.loss_weights == [0.0]


def test_accuracy_per_class_top():
    _, top = forward(ACC + ' top: "per_class"', [ACC_SCORES, ACC_LABELS])
    numpy.testing.assert_allclose(top[1].data, [0.5, 0.0, 0.0])
    _, top = forward(ACC + ' top: "per_class"', [ACC_SCORES[:2], [0.0, 0.0]])
    numpy.testing.assert_allclose(top[1].data, [0.5, 0.0, 0.0])  # classes without labels read 0


def test_accuracy_spatial_axis():
    # Scores N=1 x H=2 x C=3 (axis 2); predictions: class 1 and class 0.
    x = numpy.array([[[0.0, 1.0, 0.5], [2.0, 1.0, 0.0]]])
    _, top = forward(ACC + " accuracy_param { axis: -1 }", [x, [[1.0, 2.0]]])
    assert float(top[0].data) == pytest.approx(0.5)


def test_accuracy_counts_non_finite_scores_as_wrong_and_warns_once(caplog):
    scores = numpy.full((4, 3), numpy.nan)  # a diverged net: Caffe reports accuracy 1 here
    scores[3] = [numpy.inf, 0.0, 1.0]
    layer = make_layer(ACC + ' top: "per_class"')
    with caplog.at_level("WARNING", logger="netdef"):
        _, top = run_layer(layer, [scores, ACC_LABELS])
        assert float(top[0].data) == 0.0
        numpy.testing.assert_array_equal(top[1].data, [0.0, 0.0, 0.0])
        mixed = ACC_SCORES.copy()
        mixed[0, 0] = numpy.nan  # sample 0 (label 2) would be wrong anyway; sample 1 is right
        mixed[1, 2] = numpy.nan  # ... and now is not
        layer.forward(*make_blobs_pair(mixed))
    warnings = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert warnings == ['Layer "L" (type Accuracy): 4 of 4 predictions have NaN or infinite scores; they count as '
                        "wrong (has training diverged?)"]  # fmt: skip


def test_accuracy_of_partly_non_finite_scores():
    mixed = ACC_SCORES.copy()
    mixed[1, 2] = numpy.nan  # the only right prediction now has a NaN score
    mixed[3, 1] = -numpy.inf  # the label's score of a wrong prediction
    _, top = forward(ACC, [mixed, ACC_LABELS])
    assert float(top[0].data) == 0.0
    _, top = forward(ACC + " accuracy_param { top_k: 2 }", [mixed, ACC_LABELS])
    assert float(top[0].data) == pytest.approx(0.25)  # sample 0 stays right


def make_blobs_pair(scores):
    bottom = make_blobs([scores, ACC_LABELS], numpy.float64, numpy)
    top = make_blobs([numpy.zeros(()), numpy.zeros(3)], numpy.float64, numpy)
    return bottom, top


def test_accuracy_has_no_gradient():
    layer = make_layer(ACC)
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)


def test_accuracy_errors():
    with pytest.raises(InvalidParameterError, match="top_k.*Received: 4"):
        forward(ACC + " accuracy_param { top_k: 4 }", [ACC_SCORES, ACC_LABELS])
    with pytest.raises(InvalidParameterError, match="top_k.*Received: 0"):
        forward(ACC + " accuracy_param { top_k: 0 }", [ACC_SCORES, ACC_LABELS])
    with pytest.raises(InvalidParameterError, match="loss_weight"):
        forward(ACC + " loss_weight: 1", [ACC_SCORES, ACC_LABELS])
    with pytest.raises(ShapeMismatchError):
        forward(ACC, [ACC_SCORES, [0.0, 1.0]])


# --- EuclideanLoss --------------------------------------------------------------------------------
EUC = 'type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"'


def test_euclidean_values_and_gradient():
    a = numpy.array([[1.0, 2.0], [3.0, 4.0]])
    b = numpy.array([[0.0, 2.0], [1.0, 1.0]])
    layer, top = forward(EUC, [a, b])
    assert float(top[0].data) == pytest.approx(14 / 4)
    da, db = backward(layer, [a, b], top, [True, True])
    numpy.testing.assert_allclose(da, [[0.5, 0.0], [1.0, 1.5]])
    numpy.testing.assert_allclose(db, -da)
    assert layer.allow_force_backward(1)


def test_euclidean_gradient():
    check_gradient(make_layer(EUC), [rand(3, 2, 2), rand(3, 4, seed=1)])


def test_euclidean_errors():
    with pytest.raises(ShapeMismatchError, match="Received: shapes"):
        forward(EUC, [rand(3, 4), rand(3, 5)])
    with pytest.raises(InvalidParameterError, match="first dimension"):
        forward(EUC, [rand(3, 4), rand(4, 3)])


# --- SigmoidCrossEntropyLoss ----------------------------------------------------------------------
SCE = 'type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss"'
SCE_X = numpy.array([[0.0, LN3], [-LN3, 0.0]])  # sigmoids .5, .75, .25, .5


def test_sigmoid_cross_entropy_values_and_gradient():
    t = numpy.array([[1.0, 0.0], [1.0, 0.5]])
    layer, top = forward(SCE, [SCE_X, t])
    # per element: -log .5, -log .25, -log .25, ln 2 (t = .5 at p = .5); BATCH_SIZE divides by 2
    assert float(top[0].data) == pytest.approx(6 * LN2 / 2)
    dx, _ = backward(layer, [SCE_X, t], top)
    numpy.testing.assert_allclose(dx, [[-0.25, 0.375], [-0.375, 0.0]])


def test_sigmoid_cross_entropy_ignore_and_valid():
    t = numpy.array([[1.0, -1.0], [1.0, 0.5]])
    layer, top = forward(SCE + " loss_param { ignore_label: -1 normalization: VALID }", [SCE_X, t])
    assert float(top[0].data) == pytest.approx(4 * LN2 / 3)
    dx, _ = backward(layer, [SCE_X, t], top)
    numpy.testing.assert_allclose(dx, numpy.array([[-0.5, 0.0], [-0.75, 0.0]]) / 3)


def test_sigmoid_cross_entropy_large_scores_stay_finite():
    _, top = forward(SCE, [[[100.0, -100.0]], [[1.0, 0.0]]])
    assert float(top[0].data) == pytest.approx(0.0, abs=1e-30)
    _, top = forward(SCE, [[[100.0, -100.0]], [[0.0, 1.0]]])
    assert float(top[0].data) == pytest.approx(200.0)


def test_sigmoid_cross_entropy_gradient():
    t = numpy.random.default_rng(3).uniform(0, 1, size=(3, 4))
    check_gradient(make_layer(SCE + " loss_param { normalize: true }"), [rand(3, 4), t])


def test_sigmoid_cross_entropy_errors():
    with pytest.raises(ShapeMismatchError, match="targets"):
        forward(SCE, [rand(3, 4), rand(3, 5)])


# --- HingeLoss --------------------------------------------------------------------------------------
HINGE = 'type: "HingeLoss" bottom: "x" bottom: "y" top: "loss"'
HINGE_X = numpy.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
HINGE_Y = numpy.array([0.0, 2.0])


def test_hinge_l1_values_and_gradient():
    layer, top = forward(HINGE, [HINGE_X, HINGE_Y])
    assert float(top[0].data) == pytest.approx(4.5 / 2)
    dx, _ = backward(layer, [HINGE_X, HINGE_Y], top)
    numpy.testing.assert_allclose(dx, [[0.0, 0.5, 0.0], [0.5, 0.5, -0.5]])


def test_hinge_l2_values_and_gradient():
    layer, top = forward(HINGE + " hinge_loss_param { norm: L2 }", [HINGE_X, HINGE_Y])
    assert float(top[0].data) == pytest.approx(5.25 / 2)
    dx, _ = backward(layer, [HINGE_X, HINGE_Y], top)
    numpy.testing.assert_allclose(dx, [[0.0, 1.5, 0.0], [1.0, 1.0, -1.0]])


def test_hinge_forward_leaves_bottom_diff_alone():
    layer = make_layer(HINGE)
    bottom, _ = run_layer(layer, [HINGE_X, HINGE_Y])
    numpy.testing.assert_array_equal(bottom[0].diff, 0)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient(norm):
    check_gradient(
        make_layer(HINGE + f" hinge_loss_param {{ norm: {norm} }}"), [rand(3, 4), labels(3, 4)], check_bottoms=[0]
    )


def test_hinge_errors():
    with pytest.raises(ShapeMismatchError, match="one label per sample"):
        forward(HINGE, [HINGE_X, [[0.0, 1.0], [0.0, 1.0]]])
    with pytest.raises(DataSourceError, match="Received: 3.0"):
        forward(HINGE, [HINGE_X, [0.0, 3.0]])


# --- MultinomialLogisticLoss -------------------------------------------------------------------------
MLL = 'type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "loss"'


def test_multinomial_logistic_values_and_gradient():
    p = numpy.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    y = numpy.array([0.0, 1.0])
    layer, top = forward(MLL, [p, y])
    assert float(top[0].data) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    dp, _ = backward(layer, [p, y], top)
    numpy.testing.assert_allclose(dp, [[-1.0, 0.0, 0.0], [0.0, -0.625, 0.0]])


def test_multinomial_logistic_clamps_zero_probability():
    layer, top = forward(MLL, [[[0.0, 1.0]], [0.0]])
    thr = float(numpy.float32(1e-20))
    assert float(top[0].data) == pytest.approx(-math.log(thr))
    dp, _ = backward(layer, [[[0.0, 1.0]], [0.0]], top)
    assert dp[0, 0] == pytest.approx(-1 / thr) and dp[0, 1] == 0


def test_multinomial_logistic_gradient():
    p = numpy.random.default_rng(2).uniform(0.1, 1.0, size=(3, 4))
    check_gradient(make_layer(MLL), [p, labels(3, 4)], check_bottoms=[0])


def test_multinomial_logistic_errors():
    with pytest.raises(ShapeMismatchError, match="one label per sample"):
        forward(MLL, [rand(2, 3), [[0.0, 1.0], [0.0, 1.0]]])


# --- InfogainLoss --------------------------------------------------------------------------------------
INFO = 'type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "loss"'
INFO_H = numpy.array([[1.0, 0.5], [0.0, 2.0]])


def test_infogain_identity_matches_softmax_with_loss():
    _, top = forward(INFO, [SCORES, LABELS, numpy.eye(2)])
    assert float(top[0].data) == pytest.approx(1.5 * LN2)


def test_infogain_values_and_gradient():
    layer, top = forward(INFO + ' top: "prob"', [SCORES, LABELS, INFO_H])
    # sample 0: -(1 log .5 + .5 log .5) = 1.5 ln 2; sample 1: -(2 log .25) = 4 ln 2; VALID divides by 2
    assert float(top[0].data) == pytest.approx(2.75 * LN2)
    numpy.testing.assert_allclose(top[1].data, [[0.5, 0.5], [0.75, 0.25]])
    dx, _, _ = backward(layer, [SCORES, LABELS, INFO_H], top)
    numpy.testing.assert_allclose(dx, [[-0.125, 0.125], [0.75, -0.75]])
    _, _, dh = backward(layer, [SCORES, LABELS, INFO_H], top, [False, False, True])
    numpy.testing.assert_allclose(dh, numpy.array([[LN2, LN2], [math.log(4 / 3), 2 * LN2]]) / 2)


def test_infogain_source_relative_to_working_directory(tmp_path, monkeypatch):
    write_binaryproto(str(tmp_path / "H.binaryproto"), INFO_H.reshape(1, 1, 2, 2).astype(numpy.float32))
    monkeypatch.chdir(tmp_path)
    definition = 'type: "InfogainLoss" bottom: "x" bottom: "y" top: "loss" '
    definition += 'infogain_loss_param { source: "H.binaryproto" }'
    layer, top = forward(definition, [SCORES, LABELS])
    assert float(top[0].data) == pytest.approx(2.75 * LN2)
    dx, _ = backward(layer, [SCORES, LABELS], top)
    numpy.testing.assert_allclose(dx, [[-0.125, 0.125], [0.75, -0.75]])


def test_infogain_force_backward_only_reaches_scores():
    layer = make_layer(INFO)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, False, False]


def test_infogain_gradient():
    h = numpy.random.default_rng(4).uniform(0, 1, size=(3, 3))
    definition = INFO + " infogain_loss_param { axis: 2 } loss_param { ignore_label: 1 }"
    check_gradient(make_layer(definition), [rand(2, 2, 3), labels(4, 3).reshape(2, 2), h], check_bottoms=[0, 2])


def test_infogain_errors(tmp_path, monkeypatch):
    two = 'type: "InfogainLoss" bottom: "x" bottom: "y" top: "loss"'
    with pytest.raises(InvalidParameterError, match="infogain_loss_param.source"):
        forward(two, [SCORES, LABELS])
    with pytest.raises(InvalidParameterError, match="normalize"):
        forward(INFO + " loss_param { normalize: true }", [SCORES, LABELS, INFO_H])
    with pytest.raises(ShapeMismatchError, match="Received: 9 values"):
        forward(INFO, [SCORES, LABELS, numpy.eye(3)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsFileError, match="missing.binaryproto"):
        forward(two + ' infogain_loss_param { source: "missing.binaryproto" }', [SCORES, LABELS])


# --- ContrastiveLoss ------------------------------------------------------------------------------------
CON = 'type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" contrastive_loss_param { margin: 2 '
CON_A = numpy.zeros((3, 2))
CON_B = numpy.array([[3.0, 4.0], [0.5, 0.0], [3.0, 4.0]])  # distances 5, .5, 5
CON_SIM = numpy.array([1.0, 0.0, 0.0])


def test_contrastive_values_and_gradient():
    layer, top = forward(CON + "}", [CON_A, CON_B, CON_SIM])
    # similar: 25; dissimilar inside the margin: (2 - .5)^2; dissimilar outside: 0; divided by 2N = 6
    assert float(top[0].data) == pytest.approx((25 + 2.25) / 6)
    da, db, _ = backward(layer, [CON_A, CON_B, CON_SIM], top, [True, True, False])
    beta = -(1 / 3) * 1.5 / (0.5 + 1e-4)
    numpy.testing.assert_allclose(da, [[-1.0, -4 / 3], [-0.5 * beta, 0.0], [0.0, 0.0]])
    numpy.testing.assert_allclose(db, -da)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


def test_contrastive_legacy_values_and_gradient():
    layer, top = forward(CON + "legacy_version: true }", [CON_A, CON_B, CON_SIM])
    assert float(top[0].data) == pytest.approx((25 + 1.75) / 6)
    da, _, _ = backward(layer, [CON_A, CON_B, CON_SIM], top, [True, False, False])
    numpy.testing.assert_allclose(da, [[-1.0, -4 / 3], [0.5 / 3, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("legacy, tol", [("false", 2e-3), ("true", 1e-4)])
def test_contrastive_gradient(legacy, tol):
    # Caffe's gradient divides by d + 1e-4 instead of d: a relative error of about 1e-4 / d.
    a, b = rand(4, 3), rand(4, 3, seed=1)
    check_gradient(
        make_layer(CON + f"legacy_version: {legacy} }}"),
        [a, b, numpy.array([1.0, 0.0, 1.0, 0.0])],
        check_bottoms=[0, 1],
        tol=tol,
    )


def test_contrastive_errors():
    with pytest.raises(ShapeMismatchError, match="same shape"):
        forward(CON + "}", [rand(3, 2), rand(3, 3), CON_SIM])
    with pytest.raises(ShapeMismatchError, match="similarity"):
        forward(CON + "}", [rand(3, 2), rand(3, 2), [1.0, 0.0, 1.0, 0.0]])
    with pytest.raises(BlobCountError):
        forward('type: "ContrastiveLoss" bottom: "a" bottom: "b" top: "loss"', [rand(3, 2), rand(3, 2)])


# --- float32 nets keep float32 ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition, bottoms",
    [
        (SWL, [SCORES, LABELS]),
        (EUC, [SCORES, SCORES * 2]),
        (SCE, [SCE_X, numpy.ones((2, 2))]),
        (HINGE, [HINGE_X, HINGE_Y]),
        (MLL, [[[0.5, 0.5]], [1.0]]),
        (INFO, [SCORES, LABELS, INFO_H]),
        (CON + "}", [CON_A, CON_B, CON_SIM]),
    ],
)
def test_float32_in_float32_out(definition, bottoms):
    layer = make_layer(definition, dtype=numpy.float32)
    bottom, top = run_layer(layer, bottoms)
    layer.backward(top, [True] * len(bottom), bottom)
    assert top[0].data.dtype == numpy.float32
    assert all(b.diff.dtype == numpy.float32 for b in bottom)


# --- Caffe parity -----------------------------------------------------------------------------------------
TYPES = {
    "SoftmaxWithLoss",
    "Accuracy",
    "EuclideanLoss",
    "SigmoidCrossEntropyLoss",
    "HingeLoss",
    "MultinomialLogisticLoss",
    "InfogainLoss",
    "ContrastiveLoss",
}


@parametrize_layer_cases(TYPES)
def test_caffe_parity(case):
    check_layer_case(case)


# --- GPU: the same bodies on CuPy ----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "definition, bottoms",
    [
        (SWL + ' top: "prob"', [SCORES, LABELS]),
        (ACC + ' top: "pc"', [ACC_SCORES, ACC_LABELS]),
        (SCE, [SCE_X, numpy.ones((2, 2))]),
        (HINGE, [HINGE_X, HINGE_Y]),
        (MLL, [[[0.5, 0.5]], [1.0]]),
        (INFO, [SCORES, LABELS, INFO_H]),
        (CON + "}", [CON_A, CON_B, CON_SIM]),
        (EUC, [SCORES, SCORES * 2]),
    ],
)
def test_gpu_matches_cpu(definition, bottoms):
    check_gpu_matches_cpu(definition, bottoms, propagate_down=[True] + [False] * (len(bottoms) - 1))


# --- inside a net ---------------------------------------------------------------------------------------
def test_force_backward_in_a_net_leaves_labels_alone():
    text = """
        force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
        layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 2 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" loss_weight: 3 }
    """
    net = Net(parse_text(text, netdef_pb2.NetParameter(), "<net>"), netdef_pb2.TRAIN, dtype=numpy.float64)
    net.blobs["x"].data[...] = SCORES
    net.blobs["y"].data[...] = LABELS
    net.forward()
    assert net.loss == pytest.approx(3 * 1.5 * LN2)
    net.backward()
    numpy.testing.assert_allclose(net.blobs["x"].diff, 3 * numpy.array([[-0.25, 0.25], [0.375, -0.375]]))
    numpy.testing.assert_array_equal(net.blobs["y"].diff, 0)
