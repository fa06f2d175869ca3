"""Tests of the SSD box utilities (netdef/layers/forks/bbox.py), on boxes small enough to check by hand."""

import math

import numpy
import pytest

from netdef.errors import DataSourceError, InvalidParameterError
from netdef.layers.forks import bbox

A = numpy.array([[0.0, 0.0, 0.5, 0.5]])


def test_box_size_and_invalid_box():
    boxes = numpy.array([[0.0, 0.0, 0.5, 0.4], [0.5, 0.0, 0.4, 1.0]])
    numpy.testing.assert_allclose(bbox.box_size(boxes), [0.2, 0.0])


def test_jaccard_literal_values():
    others = numpy.array(
        [
            [0.25, 0.25, 0.75, 0.75],  # inter 1/16, union 7/16
            [0.5, 0.0, 1.0, 0.5],  # touches along x = 0.5: no overlap
            [0.6, 0.6, 0.9, 0.9],  # disjoint
            [0.0, 0.0, 0.5, 0.5],  # identical
        ]
    )
    numpy.testing.assert_allclose(bbox.jaccard(A, others), [[1 / 7, 0.0, 0.0, 1.0]])
    assert bbox.jaccard(A, others).shape == (1, 4)


PRIOR = numpy.array([[0.1, 0.1, 0.3, 0.5]])  # w 0.2, h 0.4, centre (0.2, 0.3)
GT = numpy.array([[0.1, 0.2, 0.5, 0.6]])  # w 0.4, h 0.4, centre (0.3, 0.4)
VAR = numpy.array([[0.1, 0.1, 0.2, 0.2]])


@pytest.mark.parametrize(
    "code, want",
    [
        (bbox.CORNER, [0.0, 1.0, 1.0, 0.5]),  # (gt - prior) / var
        (bbox.CENTER_SIZE, [5.0, 2.5, math.log(2) / 0.2, 0.0]),  # centre offset / size / var, log size ratio / var
        (bbox.CORNER_SIZE, [0.0, 2.5, 5.0, 1.25]),  # (gt - prior) / [w, h, w, h] / var
    ],
)
def test_encode_literal_and_decode_inverts_it(code, want):
    enc = bbox.encode(PRIOR, VAR, GT, code, False)
    numpy.testing.assert_allclose(enc, [want], atol=1e-12)
    numpy.testing.assert_allclose(bbox.decode(PRIOR, VAR, enc, code, False), GT, atol=1e-12)
    # variance encoded in the target: offsets are not divided by the variance
    raw = bbox.encode(PRIOR, VAR, GT, code, True)
    numpy.testing.assert_allclose(raw, enc * VAR, atol=1e-12)
    numpy.testing.assert_allclose(bbox.decode(PRIOR, VAR, raw, code, True), GT, atol=1e-12)


def test_decode_broadcasts_over_leading_axes():
    loc = numpy.zeros((2, 3, 1, 4))
    out = bbox.decode(PRIOR, VAR, loc, bbox.CENTER_SIZE, False)
    assert out.shape == (2, 3, 1, 4)
    numpy.testing.assert_allclose(out[1, 2, 0], PRIOR[0])


def test_encode_refuses_degenerate_boxes_and_variances():
    with pytest.raises(DataSourceError, match="ground-truth box 0 has no positive width"):
        bbox.encode(PRIOR, VAR, numpy.array([[0.3, 0.2, 0.3, 0.6]]), bbox.CENTER_SIZE, False)
    with pytest.raises(DataSourceError, match="variances of prior 0 must be positive"):
        bbox.encode(PRIOR, numpy.array([[0.1, 0.0, 0.2, 0.2]]), GT, bbox.CORNER, False)
    with pytest.raises(InvalidParameterError, match="code_type"):
        bbox.decode(PRIOR, VAR, GT, 7, False)


GT2 = numpy.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
PRIORS4 = numpy.array(
    [
        [0.0, 0.0, 0.5, 0.5],  # IoU 1 with gt 0
        [0.0, 0.0, 0.5, 0.4],  # IoU 0.8 with gt 0
        [0.5, 0.5, 0.9, 0.9],  # IoU 0.64 with gt 1
        [0.6, 0.6, 1.0, 1.0],  # IoU 0.64 with gt 1 (a tie: the earlier prior wins the bipartite round)
    ]
)


def test_bipartite_matching_takes_one_prior_per_box():
    idx, ov = bbox.match(GT2, PRIORS4, bbox.BIPARTITE, 0.5)
    assert idx.tolist() == [0, -1, 1, -1]
    numpy.testing.assert_allclose(ov, [1.0, 0.8, 0.64, 0.64])


def test_per_prediction_matching_adds_priors_above_threshold():
    idx, _ = bbox.match(GT2, PRIORS4, bbox.PER_PREDICTION, 0.5)
    assert idx.tolist() == [0, 0, 1, 1]
    idx, _ = bbox.match(GT2, PRIORS4, bbox.PER_PREDICTION, 0.7)
    assert idx.tolist() == [0, 0, 1, -1]


def test_matching_cross_boundary_and_no_ground_truth():
    priors = numpy.vstack([PRIORS4, [[-0.1, 0.0, 0.5, 0.5]]])
    idx, ov = bbox.match(GT2, priors, bbox.PER_PREDICTION, 0.5, ignore_cross_boundary=True)
    assert idx.tolist() == [0, 0, 1, 1, -2]
    assert ov[4] == 0
    idx, ov = bbox.match(GT2[:0], PRIORS4, bbox.PER_PREDICTION, 0.5)
    assert idx.tolist() == [-1] * 4 and not ov.any()


BOXES = numpy.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.9], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]])
SCORES = numpy.array([0.9, 0.8, 0.7, 0.01])  # IoU(0, 1) = 0.9, IoU(0, 2) = 0.25


def test_nms_fast_threshold_top_k_and_eta():
    assert bbox.nms_fast(BOXES, SCORES, 0.05, 0.5).tolist() == [0, 2]
    assert bbox.nms_fast(BOXES, SCORES, 0.05, 0.5, top_k=1).tolist() == [0]
    assert bbox.nms_fast(BOXES, SCORES, 0.05, 0.95).tolist() == [0, 1, 2]
    # adaptive: after keeping box 0 the threshold drops to 0.475, which removes box 1
    assert bbox.nms_fast(BOXES, SCORES, 0.05, 0.95, eta=0.5).tolist() == [0, 2]
    assert bbox.nms_fast(BOXES, SCORES, -1.0, 0.5).tolist() == [0, 2, 3]  # box 3 overlaps 0.04 and 0.16


def test_nms_ranked_top_k_zero_and_small_boxes():
    assert bbox.nms_ranked(BOXES, SCORES, 0.5, -1).tolist() == [0, 2, 3]
    assert bbox.nms_ranked(BOXES, SCORES, 0.5, 0).tolist() == []
    assert bbox.nms_ranked(BOXES, SCORES, 0.5, 1).tolist() == [0]
    tiny = numpy.vstack([[[0.0, 0.0, 0.001, 0.001]], BOXES])
    assert bbox.nms_ranked(tiny, numpy.r_[1.0, SCORES], 0.5, -1).tolist() == [1, 3, 4]
