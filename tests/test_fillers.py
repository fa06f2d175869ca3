"""Fillers: Caffe's seven types, their statistics and their literal special cases."""

import numpy
import pytest

from netdef import backend
from netdef.blob import Blob
from netdef.errors import InvalidParameterError
from netdef.fillers import fill
from netdef.proto import netdef_pb2 as pb


def filled(shape, **kw):
    b = Blob(shape, dtype=numpy.float64)
    fill(b, pb.FillerParameter(**kw))
    return b.data


def test_constant():
    numpy.testing.assert_array_equal(filled((2, 3), type="constant", value=1.5), numpy.full((2, 3), 1.5))


def test_default_filler_is_constant_zero():
    numpy.testing.assert_array_equal(filled((4,)), numpy.zeros(4))


def test_uniform_range():
    x = filled((2000,), type="uniform", min=-2, max=3)
    assert x.min() >= -2 and x.max() <= 3
    assert abs(x.mean() - 0.5) < 0.15


def test_gaussian_moments_and_sparse():
    x = filled((200, 50), type="gaussian", mean=1.0, std=2.0)
    assert abs(x.mean() - 1.0) < 0.1 and abs(x.std() - 2.0) < 0.1
    s = filled((100, 400), type="gaussian", std=1.0, sparse=10)
    frac = numpy.mean(s != 0)
    assert abs(frac - 10 / 100) < 0.02  # kept with probability sparse / num_outputs


def test_positive_unitball_rows_sum_to_one():
    x = filled((5, 2, 3), type="positive_unitball")
    assert (x >= 0).all()
    numpy.testing.assert_allclose(x.reshape(5, -1).sum(axis=1), numpy.ones(5))


@pytest.mark.parametrize("norm,n", [(0, 3 * 4 * 4), (1, 10 * 4 * 4), (2, (3 * 16 + 10 * 16) / 2)])
def test_xavier_limit_uses_variance_norm(norm, n):
    x = filled((10, 3, 4, 4), type="xavier", variance_norm=norm)
    limit = numpy.sqrt(3.0 / n)
    assert numpy.abs(x).max() <= limit
    assert numpy.abs(x).max() > 0.9 * limit


def test_msra_std():
    x = filled((64, 32, 3, 3), type="msra")
    assert abs(x.std() - numpy.sqrt(2.0 / (32 * 9))) < 0.01


def test_bilinear_literal_kernel():
    x = filled((1, 1, 4, 4), type="bilinear")
    w = numpy.array([0.25, 0.75, 0.75, 0.25])
    numpy.testing.assert_allclose(x[0, 0], numpy.outer(w, w))
    with pytest.raises(InvalidParameterError, match="square"):
        filled((1, 1, 3, 4), type="bilinear")


def test_unknown_filler_suggests():
    with pytest.raises(InvalidParameterError, match='Did you mean "xavier"'):
        filled((2,), type="xavir")


def test_seed_makes_fillers_reproducible():
    backend.set_random_seed(7)
    a = filled((10,), type="gaussian")
    backend.set_random_seed(7)
    b = filled((10,), type="gaussian")
    numpy.testing.assert_array_equal(a, b)
