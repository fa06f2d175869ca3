"""Reading the blobs that SSD's detection layers share (SSD fork of Caffe, GitHub ``weiliu89/caffe``):
PriorBox outputs, loc/conf predictions and ``nms_param``; used by DetectionOutput and MultiBoxLoss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy

from ... import backend
from ...blob import Blob
from ...errors import NetdefError, ShapeMismatchError
from ..base import Layer


@contextlib.contextmanager
def named_errors(layer: Layer):
    """Give the box utilities' errors this layer's name and type."""
    try:
        yield
    except NetdefError as err:
        msg = str(err)
        if msg.startswith('Layer "'):
            raise
        raise layer.error(msg, type(err)) from None


def legacy_dim(shape: Sequence[int], axis: int) -> int:
    """Caffe's LegacyShape: the size of ``axis``, 1 beyond the blob's axes."""
    return int(shape[axis]) if axis < len(shape) else 1


def count_priors(layer: Layer, prior: Blob) -> int:
    """Priors in a PriorBox blob ``(1, 2, 4 * P)``: P boxes, then P variances."""
    p = legacy_dim(prior.shape, 2) // 4
    if p < 1 or prior.count < 8 * p:
        raise layer.error(
            f"the prior bottom must be a PriorBox output (1, 2, 4 * num_priors): boxes then variances. "
            f"Received: shape {prior.shape}",
            ShapeMismatchError,
        )
    return p


def read_priors(prior: Blob, num_priors: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    flat = backend.to_numpy(prior.data).reshape(-1)
    n = 4 * num_priors
    return flat[:n].reshape(num_priors, 4), flat[n : 2 * n].reshape(num_priors, 4)


def check_predictions(
    layer: Layer, bottom: Sequence[Blob], num_priors: int, loc_classes: int, num_classes: int
) -> None:
    """Batch sizes agree and loc/conf hold ``P * loc_classes * 4`` and ``P * num_classes`` values per image."""
    n0, n1 = legacy_dim(bottom[0].shape, 0), legacy_dim(bottom[1].shape, 0)
    if n0 != n1:
        raise layer.error(
            f"loc and conf predictions need the same batch size. Received: {bottom[0].shape} and {bottom[1].shape}",
            ShapeMismatchError,
        )
    want_loc = num_priors * loc_classes * 4
    if bottom[0].count != n0 * want_loc or legacy_dim(bottom[0].shape, 1) != want_loc:
        raise layer.error(
            f"the number of priors must match the location predictions: {num_priors} priors x {loc_classes} "
            f"location class(es) x 4 = {want_loc} values per image. Received: loc shape {bottom[0].shape}",
            ShapeMismatchError,
        )
    want_conf = num_priors * num_classes
    if bottom[1].count != n1 * want_conf or legacy_dim(bottom[1].shape, 1) != want_conf:
        raise layer.error(
            f"the number of priors must match the confidence predictions: {num_priors} priors x {num_classes} "
            f"classes = {want_conf} values per image. Received: conf shape {bottom[1].shape}",
            ShapeMismatchError,
        )


def nms_settings(layer: Layer, nms) -> tuple[float, float, int]:
    """(nms_threshold, eta, top_k) of a NonMaximumSuppressionParameter; top_k -1 when unset."""
    if nms.nms_threshold < 0:
        raise layer.error(f"nms_param.nms_threshold must be non-negative. Received: {nms.nms_threshold}")
    if not 0 < nms.eta <= 1:
        raise layer.error(f"nms_param.eta must be in (0, 1]. Received: {nms.eta}")
    return float(nms.nms_threshold), float(nms.eta), int(nms.top_k) if nms.HasField("top_k") else -1
