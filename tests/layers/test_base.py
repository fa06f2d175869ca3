"""Tests of netdef/layers/base.py: the Layer helpers every layer type relies on."""

import numpy
import pytest

from netdef.blob import Blob, canonical_axis_index
from netdef.errors import InvalidParameterError
from netdef.testing import make_blobs, make_layer


@pytest.mark.parametrize("axis, num_axes, want", [(0, 4, 0), (3, 4, 3), (-1, 4, 3), (-4, 4, 0), (0, 0, 0), (-1, 1, 0)])
def test_canonical_axis_index_counts_negative_axes_from_the_end(axis, num_axes, want):
    assert canonical_axis_index(axis, num_axes) == want


@pytest.mark.parametrize("axis, num_axes", [(4, 4), (-5, 4), (1, 0), (-2, 1)])
def test_canonical_axis_out_of_range_names_the_layer_field_value_and_range(axis, num_axes):
    layer = make_layer('type: "Softmax"')
    message = (
        f'Layer "L" (type Softmax): softmax_param.axis {axis} is out of range for a {num_axes}-axis bottom. '
        f"Received: {axis}. Valid: {-num_axes} .. {num_axes - 1}"
    )
    with pytest.raises(InvalidParameterError) as info:
        layer.canonical_axis(axis, num_axes, "softmax_param.axis")
    assert str(info.value) == message


def test_blob_canonical_axis_uses_the_same_rule():
    blob = Blob((2, 3, 4), dtype=numpy.float64, xp=numpy, name="data")
    assert blob.canonical_axis(-1) == 2
    with pytest.raises(InvalidParameterError, match=r"axis 3 is out of range for blob 'data' of shape \(2, 3, 4\)"):
        blob.canonical_axis(3)


def test_error_and_describe_start_with_the_layer_name_and_type():
    layer = make_layer('name: "fc" type: "InnerProduct"')
    assert layer.describe() == 'Layer "fc" (type InnerProduct)'
    err = layer.error("bad", ValueError)
    assert isinstance(err, ValueError) and str(err) == 'Layer "fc" (type InnerProduct): bad'
    assert isinstance(layer.error("bad"), InvalidParameterError)


def test_forward_step_reshapes_runs_forward_and_returns_the_weighted_loss():
    layer = make_layer('type: "EuclideanLoss" loss_weight: 3')
    bottom = make_blobs([[[1.0, 2.0]], [[0.0, 0.0]]], numpy.float64, numpy)
    top = make_blobs([0.0], numpy.float64, numpy, prefix="t")
    layer.layer_setup(bottom, top)
    # EuclideanLoss = sum((a - b)^2) / (2 N) = 5 / 2; weighted by 3
    assert layer.forward_step(bottom, top) == pytest.approx(7.5)
    bottom[0].data = numpy.array([[2.0, 2.0]])
    assert layer.forward_step(bottom, top) == pytest.approx(12.0)
    assert top[0].diff == 3.0  # the loss weight seeded at set-up
