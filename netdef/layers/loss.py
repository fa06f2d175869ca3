"""Loss layers and Accuracy: SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss,
MultinomialLogisticLoss, InfogainLoss, ContrastiveLoss.

Every loss top is a 0-D array. Backward scales the gradient by ``top[0].diff``,
which the net seeds with the layer's loss weight (1 by default on the first top),
exactly as Caffe does. Label bottoms hold class indices stored as floats (Caffe
casts them to int, truncating toward zero); ``force_backward`` never asks for
their gradient. When a net does ask (a label computed by a learnable layer), the
label diff is set to zero: the loss is piecewise constant in an integer label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy

from .. import backend
from ..blob import Blob
from ..errors import DataSourceError, ShapeMismatchError
from ..io.blobproto import read_binaryproto
from ..proto import netdef_pb2 as pb
from .base import Layer, LossLayer, register_layer
from .common import softmax

log = logging.getLogger("netdef")

#: Caffe's floor on probabilities before a log in SoftmaxWithLoss (FLT_MIN).
FLT_MIN = float(numpy.finfo(numpy.float32).tiny)
#: Caffe's kLOG_THRESHOLD, a float constant (so 1e-20 rounded to float32).
LOG_THRESHOLD = float(numpy.float32(1e-20))

_Norm = pb.LossParameter


def _split_axis(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    """(outer, classes, inner) counts around ``axis``."""
    outer = int(numpy.prod(shape[:axis], dtype=numpy.int64))
    inner = int(numpy.prod(shape[axis + 1 :], dtype=numpy.int64))
    return outer, int(shape[axis]), inner


def _class_labels(layer: Layer, label, num_classes: int, ignore_label: int | None):
    """Integer labels and their validity mask (flat); an error names any out-of-range label.

    Ignored positions get index 0 in the returned labels so they can be used for
    gathering; the mask removes their contribution.
    """
    xp = backend.array_module(label)
    flat = label.reshape(-1)
    lab = flat.astype(xp.int64)
    if ignore_label is None:
        valid = xp.ones(lab.shape, dtype=bool)
    else:
        valid = lab != ignore_label
    bad = valid & ((lab < 0) | (lab >= num_classes))
    if bool(bad.any()):
        pos = int(xp.argmax(bad))
        ignored = "" if ignore_label is None else f" (or the ignore_label {ignore_label})"
        raise layer.error(
            f"label at position {pos} is not a class index. Received: {float(flat[pos])}. "
            f"Valid: integers 0 .. {num_classes - 1}{ignored}",
            DataSourceError,
        )
    return xp.where(valid, lab, 0), valid


def _normalizer(mode: int, outer: int, inner: int, valid_count: int) -> float:
    """Caffe's LossLayer normaliser, never below 1."""
    if mode == _Norm.FULL:
        n = outer * inner
    elif mode == _Norm.VALID:
        n = valid_count
    elif mode == _Norm.BATCH_SIZE:
        n = outer
    else:
        n = 1
    return float(max(1, n))


def _zero_diff(blob: Blob) -> None:
    blob.diff = backend.array_module(blob.data).zeros_like(blob.data)


def _ignore_label(loss_param) -> int | None:
    return loss_param.ignore_label if loss_param.HasField("ignore_label") else None


# --- SoftmaxWithLoss -------------------------------------------------------------------
@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Caffe type ``SoftmaxWithLoss``: softmax followed by the multinomial logistic loss.

    ``p = softmax(x, axis)``; ``loss = -sum_{valid n} log(max(p[n, label_n], FLT_MIN)) / normalizer``.
    Gradient: ``(p - onehot(label)) * loss_weight / normalizer``, zero at ignored positions.

    The normaliser follows ``loss_param.normalization`` (default VALID: the number of
    non-ignored labels); the legacy ``normalize`` bool, when given without
    ``normalization``, means VALID (true) or BATCH_SIZE (false).

    Bottoms: scores ``(..., C, ...)`` with the classes on ``softmax_param.axis``; labels
    with ``outer * inner`` values (e.g. N for N x C scores, N x H x W for N x C x H x W).
    Tops: the loss (0-D); optionally the probabilities ``p`` (scores' shape). Like
    Caffe, backward ignores any diff on the probability top.
    """

    max_num_top = 2

    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore_label = _ignore_label(lp)
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.normalization = lp.normalization

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        shape = bottom[0].shape
        self.axis = self.canonical_axis(self.param.softmax_param.axis, len(shape), "softmax_param.axis")
        self.outer, self.classes, self.inner = _split_axis(shape, self.axis)
        if self.outer * self.inner != bottom[1].count:
            raise self.error(
                f"needs one label per prediction: {self.outer * self.inner} labels for scores of shape {shape} "
                f"with softmax axis {self.axis}. Received: labels of shape {bottom[1].shape}",
                ShapeMismatchError,
            )
        if len(top) > 1:
            top[1].reshape(shape)

    def forward(self, bottom, top):
        xp = backend.array_module(bottom[0].data)
        p = softmax(bottom[0].data.reshape(self.outer, self.classes, self.inner), 1)
        lab, valid = _class_labels(self, bottom[1].data, self.classes, self.ignore_label)
        lab = lab.reshape(self.outer, 1, self.inner)
        valid = valid.reshape(self.outer, self.inner)
        picked = xp.take_along_axis(p, lab, axis=1)[:, 0, :]
        logs = xp.log(xp.maximum(picked, FLT_MIN)) * valid
        count = int(valid.sum())
        top[0].data[...] = -logs.sum() / _normalizer(self.normalization, self.outer, self.inner, count)
        self._prob, self._label, self._valid, self._count = p, lab, valid, count
        if len(top) > 1:
            # A copy: a later in-place layer on the probability top must not change our gradient.
            top[1].data = p.reshape(bottom[0].shape).copy()

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            _zero_diff(bottom[1])
        if not propagate_down[0]:
            return
        xp = backend.array_module(self._prob)
        classes = xp.arange(self.classes).reshape(1, -1, 1)
        d = self._prob - (classes == self._label)
        d *= self._valid[:, None, :]
        d *= top[0].diff / _normalizer(self.normalization, self.outer, self.inner, self._count)
        bottom[0].diff = d.reshape(bottom[0].shape)


# --- Accuracy ----------------------------------------------------------------------------
@register_layer("Accuracy")
class AccuracyLayer(Layer):
    """Caffe type ``Accuracy``: fraction of labels among the ``top_k`` highest scores.

    A prediction counts as correct when fewer than ``top_k`` classes score at least
    as high as the true class (other than the true class itself; ties count against).
    ``accuracy = correct / non-ignored`` (0 when every label is ignored). Forward only:
    the layer has no gradient and cannot carry a loss weight.

    Unlike Caffe, a prediction whose scores include NaN or an infinity counts as wrong
    (Caffe's comparisons count a NaN score as correct, so a diverged net reports
    accuracy 1); the first time it happens the layer logs a warning.

    Bottoms: scores with the classes on ``accuracy_param.axis``; labels with
    ``outer * inner`` values. Tops: the accuracy (0-D); optionally per-class accuracy
    ``(C,)`` (0 for classes without labels).
    """

    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom, top):
        ap = self.param.accuracy_param
        if ap.top_k < 1:
            raise self.error(f"accuracy_param.top_k must be at least 1. Received: {ap.top_k}")
        if any(w != 0 for w in self.param.loss_weight):
            raise self.error(
                f"has no gradient, so it cannot be a loss. Received: loss_weight {list(self.param.loss_weight)}. "
                "Valid: no loss_weight, or 0"
            )
        self.top_k = int(ap.top_k)
        self.ignore_label = ap.ignore_label if ap.HasField("ignore_label") else None
        self.warned_non_finite = False

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = self.canonical_axis(self.param.accuracy_param.axis, len(shape), "accuracy_param.axis")
        self.outer, self.classes, self.inner = _split_axis(shape, self.axis)
        if self.outer * self.inner != bottom[1].count:
            raise self.error(
                f"needs one label per prediction: {self.outer * self.inner} labels for scores of shape {shape} "
                f"with label axis {self.axis}. Received: labels of shape {bottom[1].shape}",
                ShapeMismatchError,
            )
        if self.top_k > self.classes:
            raise self.error(
                f"accuracy_param.top_k must not exceed the number of classes. Received: {self.top_k}. "
                f"Valid: 1 .. {self.classes}"
            )
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.classes,))

    def forward(self, bottom, top):
        xp = backend.array_module(bottom[0].data)
        scores = bottom[0].data.reshape(self.outer, self.classes, self.inner)
        lab, valid = _class_labels(self, bottom[1].data, self.classes, self.ignore_label)
        true_score = xp.take_along_axis(scores, lab.reshape(self.outer, 1, self.inner), axis=1)
        rivals = (scores >= true_score).sum(axis=1).reshape(-1) - 1
        finite = xp.isfinite(scores).all(axis=1).reshape(-1)
        correct = (rivals < self.top_k) & valid & finite
        if not self.warned_non_finite and not bool(finite.all()):
            self.warned_non_finite = True
            log.warning(
                "%s: %d of %d predictions have NaN or infinite scores; they count as wrong (has training diverged?)",
                self.describe(),
                int((~finite).sum()),
                finite.size,
            )
        top[0].data[...] = correct.sum() / xp.maximum(valid.sum(), 1)
        if len(top) > 1:
            seen = xp.bincount(lab, weights=valid.astype(self.dtype), minlength=self.classes)
            hits = xp.bincount(lab, weights=correct.astype(self.dtype), minlength=self.classes)
            top[1].data[...] = xp.where(seen > 0, hits / xp.maximum(seen, 1), 0)

    def backward(self, top, propagate_down, bottom):
        for i, need in enumerate(propagate_down):
            if need:
                _zero_diff(bottom[i])


# --- EuclideanLoss -------------------------------------------------------------------------
@register_layer("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """Caffe type ``EuclideanLoss``: ``loss = sum((a - b)^2) / (2 N)``.

    Gradients: ``da = (a - b) * loss_weight / N``, ``db = -da``; both bottoms may
    receive one (``force_backward`` reaches the second bottom too, as in Caffe).

    Bottoms: ``a`` and ``b`` with the same first dimension ``N`` and the same count
    per sample. Top: the loss (0-D).
    """

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.error(
                f"needs inputs with the same number of values per sample. Received: shapes {bottom[0].shape} "
                f"and {bottom[1].shape}",
                ShapeMismatchError,
            )

    def forward(self, bottom, top):
        self._diff = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        num = max(bottom[0].shape[0], 1)
        top[0].data[...] = (self._diff * self._diff).sum() / num / 2

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                scale = top[0].diff * (sign / max(bottom[i].shape[0], 1))
                bottom[i].diff = (self._diff * scale).reshape(bottom[i].shape)


# --- SigmoidCrossEntropyLoss -----------------------------------------------------------
@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Caffe type ``SigmoidCrossEntropyLoss``: cross-entropy of ``sigmoid(x)`` against targets ``t``.

    Per element, in the overflow-free form
    ``l = -(x * (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])))``;
    ``loss = sum_{valid} l / normalizer``. Gradient: ``(sigmoid(x) - t) * loss_weight / normalizer``,
    zero where ``int(t) == ignore_label``.

    The normaliser defaults to BATCH_SIZE (Caffe's historical choice); ``normalization``,
    or else the legacy ``normalize`` (true: VALID, false: BATCH_SIZE), overrides it.

    Bottoms: scores ``x`` (N x ...) and targets ``t`` in [0, 1] with the same count.
    Top: the loss (0-D).
    """

    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore_label = _ignore_label(lp)
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.normalization = _Norm.BATCH_SIZE

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(
                f"needs as many targets as scores. Received: shapes {bottom[0].shape} and {bottom[1].shape}",
                ShapeMismatchError,
            )
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count_range(1)

    def forward(self, bottom, top):
        xp = backend.array_module(bottom[0].data)
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        pos = x >= 0
        per_elem = x * (t - pos) - xp.log1p(xp.exp(x - 2 * x * pos))
        if self.ignore_label is None:
            valid = None
            count = x.size
        else:
            valid = t.astype(xp.int64) != self.ignore_label
            per_elem = per_elem * valid
            count = int(valid.sum())
        self._norm = _normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = -per_elem.sum() / self._norm
        # 0.5 * tanh(0.5 x) + 0.5 is the sigmoid without overflow for large |x|.
        self._sigmoid = 0.5 * xp.tanh(0.5 * x) + 0.5
        self._valid = valid

    def backward(self, top, propagate_down, bottom):
        x_shape = bottom[0].shape
        t = bottom[1].data.reshape(x_shape)
        scale = top[0].diff / self._norm
        if propagate_down[0]:
            d = self._sigmoid - t
            if self._valid is not None:
                d = d * self._valid
            bottom[0].diff = d * scale
        if propagate_down[1]:
            # Soft targets are real numbers: d loss / d t = -x (zero where ignored).
            d = -bottom[0].data * scale
            if self._valid is not None:
                d = d * self._valid
            bottom[1].diff = d.reshape(bottom[1].shape)


class _OneLabelPerSampleLoss(LossLayer):
    """Losses over ``N x C`` scores (trailing axes flattened) with exactly one label per sample."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0]
        if bottom[1].count != self.num:
            raise self.error(
                f"needs one label per sample ({self.num}). Received: labels of shape {bottom[1].shape}",
                ShapeMismatchError,
            )


# --- HingeLoss ------------------------------------------------------------------------------
@register_layer("HingeLoss")
class HingeLossLayer(_OneLabelPerSampleLoss):
    """Caffe type ``HingeLoss``: one-vs-all hinge loss.

    With ``s[n, k] = -1`` for the true class and ``+1`` otherwise,
    ``m = max(0, 1 + s * x)``; L1 (default): ``loss = sum(m) / N``;
    L2: ``loss = sum(m^2) / N``. Gradients: L1 ``s * sign(m) * loss_weight / N``,
    L2 ``2 s m * loss_weight / N``.

    Caffe keeps ``m`` in the scores' diff between forward and backward; netdef keeps
    it in the layer instead, so forward leaves diffs alone (the gradient is the same).

    Bottoms: scores ``N x C`` (trailing axes are flattened into C) and ``N`` labels.
    Top: the loss (0-D).
    """

    def forward(self, bottom, top):
        xp = backend.array_module(bottom[0].data)
        x = bottom[0].data.reshape(self.num, -1)
        lab, _ = _class_labels(self, bottom[1].data, x.shape[1], None)
        sign = 1 - 2 * (xp.arange(x.shape[1]).reshape(1, -1) == lab.reshape(-1, 1)).astype(x.dtype)
        m = xp.maximum(1 + sign * x, 0)
        n = max(self.num, 1)
        if self.param.hinge_loss_param.norm == pb.HingeLossParameter.L2:
            top[0].data[...] = (m * m).sum() / n
        else:
            top[0].data[...] = m.sum() / n
        self._sign, self._margin = sign, m

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            _zero_diff(bottom[1])
        if not propagate_down[0]:
            return
        xp = backend.array_module(self._margin)
        scale = top[0].diff / max(self.num, 1)
        if self.param.hinge_loss_param.norm == pb.HingeLossParameter.L2:
            d = self._sign * self._margin * (2 * scale)
        else:
            d = self._sign * xp.sign(self._margin) * scale
        bottom[0].diff = d.reshape(bottom[0].shape)


# --- MultinomialLogisticLoss --------------------------------------------------------------
@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(_OneLabelPerSampleLoss):
    """Caffe type ``MultinomialLogisticLoss``: ``loss = -sum_n log(max(p[n, label_n], 1e-20)) / N``.

    Takes probabilities (e.g. a Softmax output), not scores. Gradient: only at the
    true class, ``-loss_weight / (N * max(p[n, label_n], 1e-20))``.

    Bottoms: probabilities ``N x C`` (trailing axes are flattened into C) and ``N`` labels.
    Top: the loss (0-D).
    """

    def forward(self, bottom, top):
        xp = backend.array_module(bottom[0].data)
        p = bottom[0].data.reshape(self.num, -1)
        lab, _ = _class_labels(self, bottom[1].data, p.shape[1], None)
        picked = xp.maximum(xp.take_along_axis(p, lab.reshape(-1, 1), axis=1), LOG_THRESHOLD)
        top[0].data[...] = -xp.log(picked).sum() / max(self.num, 1)
        self._label, self._picked = lab.reshape(-1, 1), picked

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            _zero_diff(bottom[1])
        if not propagate_down[0]:
            return
        xp = backend.array_module(self._picked)
        classes = bottom[0].count // max(self.num, 1)
        onehot = xp.arange(classes).reshape(1, -1) == self._label
        scale = top[0].diff * (-1.0 / max(self.num, 1))
        d = onehot * (scale / self._picked)
        bottom[0].diff = d.astype(self.dtype, copy=False).reshape(bottom[0].shape)


# --- InfogainLoss ---------------------------------------------------------------------------
@register_layer("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """Caffe type ``InfogainLoss``: softmax, then a loss weighted by an information-gain matrix ``H``.

    ``p = softmax(x, axis)``;
    ``loss = -sum_{valid n} sum_l H[label_n, l] * log(max(p[n, l], 1e-20)) / normalizer``
    (``H = I`` gives SoftmaxWithLoss). Gradient:
    ``(p[n, l] * sum_k H[label_n, k] - H[label_n, l]) * loss_weight / normalizer``.
    When ``H`` is a bottom that a net asks a gradient for, netdef gives
    ``dH[k, l] = -sum_{n: label_n = k} log(max(p[n, l], 1e-20)) * loss_weight / normalizer``
    (Caffe refuses); ``force_backward`` does not ask for it.

    ``H`` is the third bottom, or read from ``infogain_loss_param.source`` (a
    ``.binaryproto`` path relative to the working directory). Normalisation follows
    ``loss_param.normalization`` (default VALID); the legacy ``normalize`` is refused,
    as in Caffe.

    Bottoms: scores with the classes (C) on ``infogain_loss_param.axis``; labels with
    ``outer * inner`` values; optionally ``H`` with C*C values. Tops: the loss (0-D);
    optionally the probabilities ``p`` (scores' shape; its diff is ignored).
    """

    max_num_bottom = 3
    max_num_top = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom, top):
        lp = self.param.loss_param
        if lp.HasField("normalize"):
            raise self.error(
                f"loss_param.normalize is deprecated for this layer. Received: normalize: {lp.normalize}. "
                "Valid: loss_param.normalization (FULL, VALID, BATCH_SIZE or NONE)"
            )
        self.normalization = lp.normalization
        self.ignore_label = _ignore_label(lp)
        self._infogain = None
        if len(bottom) < 3:
            source = self.param.infogain_loss_param.source
            if not source:
                raise self.error(
                    "needs the infogain matrix H. Received: no infogain_loss_param.source and 2 bottoms. "
                    "Valid: a .binaryproto path in infogain_loss_param.source, or H as a third bottom"
                )
            self._infogain = read_binaryproto(source)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        shape = bottom[0].shape
        self.axis = self.canonical_axis(self.param.infogain_loss_param.axis, len(shape), "infogain_loss_param.axis")
        self.outer, self.classes, self.inner = _split_axis(shape, self.axis)
        if self.outer * self.inner != bottom[1].count:
            raise self.error(
                f"needs one label per prediction: {self.outer * self.inner} labels for scores of shape {shape} "
                f"with axis {self.axis}. Received: labels of shape {bottom[1].shape}",
                ShapeMismatchError,
            )
        h_count = bottom[2].count if len(bottom) > 2 else int(self._infogain.size)
        if h_count != self.classes * self.classes:
            raise self.error(
                f"needs an infogain matrix H of {self.classes} x {self.classes} values for {self.classes} classes. "
                f"Received: {h_count} values",
                ShapeMismatchError,
            )
        if len(top) > 1:
            top[1].reshape(shape)

    def _matrix(self, bottom):
        xp = backend.array_module(bottom[0].data)
        if len(bottom) > 2:
            h = bottom[2].data
        else:
            if backend.array_module(self._infogain) is not xp or self._infogain.dtype != self.dtype:
                self._infogain = backend.asarray(self._infogain, xp, self.dtype)
            h = self._infogain
        return h.reshape(self.classes, self.classes)

    def _rows(self, a):
        """(outer, C, inner) -> (outer * inner, C): one row of class values per prediction."""
        return a.transpose(0, 2, 1).reshape(-1, self.classes)

    def forward(self, bottom, top):
        xp = backend.array_module(bottom[0].data)
        p = self._rows(softmax(bottom[0].data.reshape(self.outer, self.classes, self.inner), 1))
        lab, valid = _class_labels(self, bottom[1].data, self.classes, self.ignore_label)
        h = self._matrix(bottom)
        logp = xp.log(xp.maximum(p, LOG_THRESHOLD))
        count = int(valid.sum())
        loss = -(h[lab] * logp * valid[:, None]).sum()
        top[0].data[...] = loss / _normalizer(self.normalization, self.outer, self.inner, count)
        self._prob, self._logp, self._label, self._valid, self._count = p, logp, lab, valid, count
        if len(top) > 1:
            top[1].data = (
                p.reshape(self.outer, self.inner, self.classes).transpose(0, 2, 1).reshape(bottom[0].shape).copy()
            )

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            _zero_diff(bottom[1])
        scale = top[0].diff / _normalizer(self.normalization, self.outer, self.inner, self._count)
        h = self._matrix(bottom)
        mask = self._valid[:, None]
        if propagate_down[0]:
            rows = h[self._label]
            d = (self._prob * rows.sum(axis=1, keepdims=True) - rows) * mask * scale
            d = d.reshape(self.outer, self.inner, self.classes).transpose(0, 2, 1)
            bottom[0].diff = d.reshape(bottom[0].shape)
        if len(bottom) > 2 and propagate_down[2]:
            xp = backend.array_module(self._prob)
            onehot = (xp.arange(self.classes).reshape(1, -1) == self._label[:, None]) * mask
            dh = -(onehot.astype(self.dtype).T @ self._logp) * scale
            bottom[2].diff = dh.reshape(bottom[2].shape)


# --- ContrastiveLoss ----------------------------------------------------------------------
@register_layer("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Caffe type ``ContrastiveLoss``: pulls similar pairs together, pushes dissimilar ones past a margin.

    ``d2_n = ||a_n - b_n||^2``, ``d_n = sqrt(d2_n)``;
    ``loss = sum_n (y_n d2_n + (1 - y_n) max(margin - d_n, 0)^2) / (2 N)``, with
    ``y_n = int(sim_n) != 0``. ``legacy_version: true`` uses ``max(margin - d2_n, 0)``
    for dissimilar pairs instead.

    Gradient for ``a`` (``b`` gets its negative), times ``loss_weight / N``: similar
    ``a - b``; dissimilar, while inside the margin, ``-(margin - d) / (d + 1e-4) * (a - b)``
    (Caffe's 1e-4 guards d = 0), or ``-(a - b)`` in the legacy form.

    Bottoms: ``a`` and ``b`` (N x C, trailing axes flattened into C), similarity ``sim`` (N).
    Top: the loss (0-D).
    """

    exact_num_bottom = 3
    min_num_bottom = None
    max_num_bottom = None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].shape != bottom[1].shape:
            raise self.error(
                f"needs two feature bottoms of the same shape. Received: {bottom[0].shape} and {bottom[1].shape}",
                ShapeMismatchError,
            )
        self.num = bottom[0].shape[0]
        if bottom[2].count != self.num:
            raise self.error(
                f"needs one similarity label per pair ({self.num}). Received: shape {bottom[2].shape}",
                ShapeMismatchError,
            )

    def forward(self, bottom, top):
        xp = backend.array_module(bottom[0].data)
        cp = self.param.contrastive_loss_param
        margin = float(numpy.float32(cp.margin))
        diff = (bottom[0].data - bottom[1].data).reshape(self.num, -1)
        dist_sq = (diff * diff).sum(axis=1)
        similar = bottom[2].data.reshape(-1).astype(xp.int64) != 0
        if cp.legacy_version:
            apart = xp.maximum(margin - dist_sq, 0)
        else:
            apart = xp.maximum(margin - xp.sqrt(dist_sq), 0) ** 2
        per_pair = xp.where(similar, dist_sq, apart)
        top[0].data[...] = per_pair.sum() / max(self.num, 1) / 2
        self._diff, self._dist_sq, self._similar = diff, dist_sq, similar

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            _zero_diff(bottom[2])
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = backend.array_module(self._diff)
        cp = self.param.contrastive_loss_param
        margin = float(numpy.float32(cp.margin))
        if cp.legacy_version:
            inside = margin - self._dist_sq
            coef = -(inside > 0).astype(self.dtype)
        else:
            dist = xp.sqrt(self._dist_sq)
            inside = margin - dist
            coef = xp.where(inside > 0, -inside / (dist + 1e-4), 0)
        coef = xp.where(self._similar, 1, coef).astype(self.dtype, copy=False)
        grad = self._diff * coef[:, None] * (top[0].diff / max(self.num, 1))
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff = (grad if sign > 0 else -grad).reshape(bottom[i].shape)
