"""MultiBoxLoss, the training loss of the SSD fork of Caffe (GitHub ``weiliu89/caffe``, branch ``ssd``).

Parameters follow the fork's ``caffe.proto`` (``multibox_loss_param``, ``nms_param``); behaviour
follows the fork's CPU code, quirks included (the class lists the ones it reproduces). Matching
and mining are sequential decisions over boxes and run on the host (as in the fork); the arrays
going in and out live on the layer's module (NumPy or CuPy).
"""

from __future__ import annotations

import numpy

from ... import backend
from ...errors import DataSourceError, ShapeMismatchError
from ...proto import netdef_pb2 as pb
from ..base import LossLayer
from . import bbox
from .detection_blobs import check_predictions, count_priors, legacy_dim, named_errors, nms_settings, read_priors
from .registry import register_fork_layer

#: the floor on probabilities before a log (FLT_MIN), as in SoftmaxWithLoss
FLT_MIN = float(numpy.finfo(numpy.float32).tiny)

# The fork's enum numbers (MultiBoxLossParameter), kept here so the code reads by name.
LOC_L2, LOC_SMOOTH_L1 = 0, 1
CONF_SOFTMAX, CONF_LOGISTIC = 0, 1
MINING_NONE, MINING_MAX_NEGATIVE, MINING_HARD_EXAMPLE = 0, 1, 2
_MINING_NAMES = {MINING_NONE: "NONE", MINING_MAX_NEGATIVE: "MAX_NEGATIVE", MINING_HARD_EXAMPLE: "HARD_EXAMPLE"}
_Norm = pb.LossParameter


class _GroundTruth:
    """Ground-truth boxes of a batch, padded per image: ``boxes (N, G, 4)``, ``labels (N, G)``, ``count (N,)``."""

    def __init__(self, rows: numpy.ndarray, num_images: int, background: int, use_difficult: bool):
        items = rows[:, 0].astype(numpy.int64)
        labels = rows[:, 1].astype(numpy.int64)
        keep = items != -1
        bad = keep & (labels == background)
        if bad.any():
            k = int(numpy.argmax(bad))
            raise DataSourceError(
                f"found the background label in the ground truth: row {k} is {rows[k].tolist()}. "
                f"Valid: object labels other than background_label_id {background}"
            )
        if not use_difficult:
            keep &= rows[:, 7] == 0
        self.count = numpy.zeros(num_images, dtype=numpy.int64)
        per_image = [numpy.nonzero(keep & (items == i))[0] for i in range(num_images)]
        width = max([len(r) for r in per_image] + [1])
        self.boxes = numpy.zeros((num_images, width, 4), dtype=rows.dtype)
        self.labels = numpy.full((num_images, width), -1, dtype=numpy.int64)
        for i, r in enumerate(per_image):
            self.count[i] = len(r)
            self.boxes[i, : len(r)] = rows[r, 3:7]
            self.labels[i, : len(r)] = labels[r]
        self.used_labels = labels[keep]

    def of(self, image: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        g = int(self.count[image])
        return self.boxes[image, :g], self.labels[image, :g]


@register_fork_layer("MultiBoxLoss", "SSD")
class MultiBoxLossLayer(LossLayer):
    """Caffe type ``MultiBoxLoss`` (SSD fork): SSD's matching, hard-negative mining and joint loss.

    1. Match: priors (``use_prior_for_matching``) or decoded predictions are matched to the
       image's ground truth by Jaccard overlap: greedy bipartite matching, then with
       PER_PREDICTION each remaining prior takes its best box with overlap >= ``overlap_threshold``.
    2. Mine (``mining_type``): MAX_NEGATIVE picks the ``int(num_pos * neg_pos_ratio)`` unmatched
       priors (overlap < ``neg_overlap``) with the highest confidence loss; HARD_EXAMPLE keeps the
       ``sample_size`` priors with the highest conf + loc loss (unpicked positives are dropped);
       with ``nms_param`` (threshold > 0) the ranking goes through NMS first. NONE uses every prior.
    3. Loss: ``loc_weight * Lloc / norm + Lconf / norm``. ``Lloc`` sums SMOOTH_L1
       (``0.5 d^2`` for ``|d| < 1``, else ``|d| - 0.5``) or L2 (``0.5 d^2``) of ``d = pred - encode(gt)``
       over matched priors; ``Lconf`` sums the SOFTMAX cross-entropy (targets: the matched label,
       background for negatives) or the LOGISTIC (sigmoid) cross-entropy; ``norm`` follows
       ``loss_param.normalization`` (VALID: the number of matches, at least 1).
    Gradients flow to loc and conf only; matching and mining are held fixed (piecewise constant).

    Quirks reproduced: with ``encode_variance_in_target`` prediction and target are divided by the
    variance and the gradient w.r.t. the divided prediction is written as the loc gradient;
    LOGISTIC without mining places image ``i``'s targets at offset ``i * P`` (not ``i * P * C``) and
    leaves unmatched rows all-zero (filled with ``background_label_id``); ``nms_param`` without
    ``top_k`` mines with top_k 0 (nothing kept); images without ground truth get no negatives.

    Bottoms: loc ``(N, P * L * 4)``, conf ``(N, P * C)``, priors ``(1, 2, P * 4)``, ground truth
    ``(1, 1, G, 8)`` rows ``[image, label, instance, xmin, ymin, xmax, ymax, difficult]`` (image -1:
    none). Top: the loss (0-D).
    """

    exact_num_bottom = 4
    min_num_bottom = max_num_bottom = None
    exact_num_top = 1
    min_num_top = max_num_top = None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index in (0, 1)

    def setup(self, bottom, top):
        p = self.param.multibox_loss_param
        self.mp = p
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error(f"multibox_loss_param.num_classes is required (>= 1). Received: {p.num_classes}")
        self.num_classes = c = int(p.num_classes)
        self.share_location = bool(p.share_location)
        self.loc_classes = 1 if self.share_location else c
        self.background = int(p.background_label_id)
        self.mining = int(p.mining_type)
        self._check_settings(p)
        lp = self.param.loss_param
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        self.loc_weight = float(p.loc_weight)
        self.has_nms = p.HasField("nms_param")
        if self.has_nms:
            self.nms_threshold, _, _ = nms_settings(self, p.nms_param)
            self.nms_top_k = int(p.nms_param.top_k)  # no [default] in the proto: 0 when unset
        pd = list(self.param.propagate_down)
        self.use_loc = pd[0] if pd else True
        self.use_conf = pd[1] if len(pd) > 1 else True

    def _check_settings(self, p) -> None:
        c, bg = self.num_classes, self.background
        if p.HasField("do_neg_mining") and p.do_neg_mining != (self.mining != MINING_NONE):
            raise self.error(
                f"do_neg_mining (deprecated) contradicts mining_type. Received: do_neg_mining {p.do_neg_mining}, "
                f"mining_type {_MINING_NAMES.get(self.mining, self.mining)}. Valid: drop do_neg_mining"
            )
        if self.mining not in _MINING_NAMES:
            raise self.error(f"unknown mining_type. Received: {self.mining}. Valid: NONE, MAX_NEGATIVE, HARD_EXAMPLE")
        if self.mining != MINING_NONE and not self.share_location:
            raise self.error(
                f"negative mining needs share_location: true. Received: share_location false, mining_type "
                f"{_MINING_NAMES[self.mining]}. Valid: share_location true, or mining_type NONE"
            )
        if self.mining == MINING_HARD_EXAMPLE and p.sample_size <= 0:
            raise self.error(f"HARD_EXAMPLE mining needs sample_size > 0. Received: {p.sample_size}")
        if p.loc_loss_type not in (LOC_L2, LOC_SMOOTH_L1):
            raise self.error(f"unknown loc_loss_type. Received: {p.loc_loss_type}. Valid: L2, SMOOTH_L1")
        if p.conf_loss_type not in (CONF_SOFTMAX, CONF_LOGISTIC):
            raise self.error(f"unknown conf_loss_type. Received: {p.conf_loss_type}. Valid: SOFTMAX, LOGISTIC")
        if p.conf_loss_type == CONF_SOFTMAX and not 0 <= bg < c:
            raise self.error(f"background_label_id must be a class for SOFTMAX. Received: {bg}. Valid: 0 .. {c - 1}")
        if p.map_object_to_agnostic and (c != 2 or bg + 1 >= c):
            raise self.error(
                f"map_object_to_agnostic needs num_classes 2 with background 0. Received: num_classes {c}, "
                f"background_label_id {bg}"
            )
        if int(p.code_type) not in bbox.CODE_TYPE_NAMES:
            raise self.error(f"unknown code_type. Received: {p.code_type}. Valid: CORNER, CENTER_SIZE, CORNER_SIZE")
        if p.match_type not in (bbox.BIPARTITE, bbox.PER_PREDICTION):
            raise self.error(f"unknown match_type. Received: {p.match_type}. Valid: BIPARTITE, PER_PREDICTION")

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num_priors = count_priors(self, bottom[2])
        check_predictions(self, bottom, self.num_priors, self.loc_classes, self.num_classes)
        if legacy_dim(bottom[3].shape, 3) != 8 or bottom[3].count != 8 * legacy_dim(bottom[3].shape, 2):
            raise self.error(
                f"the ground-truth bottom must be (1, 1, G, 8) rows [image, label, instance, xmin, ymin, xmax, "
                f"ymax, difficult]. Received: shape {bottom[3].shape}",
                ShapeMismatchError,
            )

    # --- forward ----------------------------------------------------------------------
    def forward(self, bottom, top):
        with named_errors(self):
            loss = self._forward(bottom)
        top[0].data[...] = loss

    def _forward(self, bottom) -> float:
        n, p = legacy_dim(bottom[0].shape, 0), self.num_priors
        self.num = n
        loc = backend.to_numpy(bottom[0].data).reshape(n, p, self.loc_classes, 4)
        conf = backend.to_numpy(bottom[1].data).reshape(n, p, self.num_classes)
        priors, variances = read_priors(bottom[2], p)
        gt = _GroundTruth(
            backend.to_numpy(bottom[3].data).reshape(-1, 8), n, self.background, bool(self.mp.use_difficult_gt)
        )
        self._check_gt_labels(gt)
        match, overlaps, present = self._match(loc, priors, variances, gt)
        negatives = self._mine(loc, conf, priors, variances, gt, match, overlaps, present)
        self.num_matches = int((match > -1).sum())
        self.normalizer = self._normalizer()
        self._loc_forward(loc, priors, variances, gt, match)
        self._conf_forward(conf, gt, match, negatives)
        loss = 0.0
        if self.use_loc:
            loss += self.loc_weight * self.loc_loss / self.normalizer
        if self.use_conf:
            loss += self.conf_loss / self.normalizer
        return loss

    def _check_gt_labels(self, gt: _GroundTruth) -> None:
        if self.mp.map_object_to_agnostic:
            return
        bad = (gt.used_labels < 0) | (gt.used_labels >= self.num_classes)
        if bad.any():
            raise DataSourceError(
                f"a ground-truth label is not a class. Received: {int(gt.used_labels[bad][0])}. "
                f"Valid: 0 .. {self.num_classes - 1}"
            )

    def _normalizer(self) -> float:
        mode = self.normalization
        if mode == _Norm.FULL:
            v = self.num * self.num_priors
        elif mode == _Norm.VALID:
            v = self.num_matches
        elif mode == _Norm.BATCH_SIZE:
            v = self.num
        else:
            v = 1
        return float(max(1, v))

    def _match(self, loc, priors, variances, gt: _GroundTruth):
        """``match (N, L, P)`` ground-truth rows (-1: none), ``overlaps (N, L, P)``, ``present (N, L)``.

        ``present`` marks the (image, location class) pairs the fork matches at all: images with
        ground truth, location classes other than the background (without share_location).
        """
        mp = self.mp
        n, lc, p = self.num, self.loc_classes, self.num_priors
        match = numpy.full((n, lc, p), -1, dtype=numpy.int64)
        overlaps = numpy.zeros((n, lc, p), dtype=priors.dtype)
        present = numpy.zeros((n, lc), dtype=bool)
        args = (int(mp.match_type), float(mp.overlap_threshold), bool(mp.ignore_cross_boundary_bbox))
        classes = [k for k in range(lc) if self.share_location or k != self.background]
        for i in range(n):
            if gt.count[i] == 0:
                continue
            boxes, labels = gt.of(i)
            present[i, classes] = True
            if mp.use_prior_for_matching:
                idx, ov = bbox.match(boxes, priors, *args)
                for k in classes:
                    hit = idx > -1
                    if not self.share_location:
                        hit &= labels[numpy.maximum(idx, 0)] == k
                    match[i, k] = numpy.where(hit, idx, -1) if not self.share_location else idx
                    overlaps[i, k] = ov
                continue
            decoded = bbox.decode(
                priors, variances, loc[i].transpose(1, 0, 2), int(mp.code_type), bool(mp.encode_variance_in_target)
            )
            for k in classes:
                rows = numpy.arange(len(labels)) if self.share_location else numpy.nonzero(labels == k)[0]
                idx, ov = bbox.match(boxes[rows], decoded[k], *args)
                match[i, k] = numpy.where(idx >= 0, rows[numpy.maximum(idx, 0)], idx)
                overlaps[i, k] = ov
        return match, overlaps, present

    # --- mining ---------------------------------------------------------------------------
    def _prior_labels(self, gt: _GroundTruth, match, last: bool = False) -> numpy.ndarray:
        """The conf target of every prior ``(N, P)``: the matched box's label, else the background.

        A prior matched under several location classes takes the first class's box (as the
        fork's mining does) or, with ``last``, the last one (as its target encoding does).
        """
        lab = numpy.full((self.num, self.num_priors), self.background, dtype=numpy.int64)
        ks = range(self.loc_classes) if last else range(self.loc_classes - 1, -1, -1)
        for k in ks:
            m = match[:, k]
            rows = numpy.nonzero(m > -1)
            lab[rows] = gt.labels[rows[0], m[rows]]
        return lab

    def _conf_losses(self, conf, labels) -> numpy.ndarray:
        """Per-prior confidence loss ``(N, P)`` for target ``labels (N, P)`` (the fork's ComputeConfLoss)."""
        onehot = numpy.arange(self.num_classes) == labels[..., None]
        if self.mp.conf_loss_type == CONF_SOFTMAX:
            x = conf - conf.max(axis=-1, keepdims=True)
            prob = numpy.exp(x) / numpy.exp(x).sum(axis=-1, keepdims=True)
            picked = (prob * onehot).sum(axis=-1)
            return -numpy.log(numpy.maximum(picked, FLT_MIN))
        return _sigmoid_xent(conf, onehot.astype(conf.dtype)).sum(axis=-1)

    def _mine(self, loc, conf, priors, variances, gt, match, overlaps, present) -> list[numpy.ndarray]:
        """Pick negatives (and, for HARD_EXAMPLE, drop unpicked positives from ``match``, in place)."""
        empty = [numpy.zeros(0, dtype=numpy.int64) for _ in range(self.num)]
        if self.mining == MINING_NONE:
            return empty
        loss = self._conf_losses(conf, self._prior_labels(gt, match))
        if self.mining == MINING_HARD_EXAMPLE:
            loss = loss + self._loc_losses_per_prior(loc, priors, variances, gt, match)
        for i in range(self.num):
            if present[i, 0]:
                empty[i] = self._mine_image(i, loss[i], loc, priors, variances, match[i, 0], overlaps[i, 0])
        return empty

    def _mine_image(self, i, loss, loc, priors, variances, m, ov) -> numpy.ndarray:
        mp = self.mp
        if self.mining == MINING_MAX_NEGATIVE:
            eligible = (m == -1) & (ov < numpy.asarray(mp.neg_overlap, dtype=ov.dtype))
            num_pos = int((m > -1).sum())
            limit = int(numpy.float32(num_pos) * numpy.float32(mp.neg_pos_ratio))
        else:
            eligible = numpy.ones(m.shape, dtype=bool)
            limit = int(mp.sample_size)
        cand = numpy.nonzero(eligible)[0]
        num_sel = min(limit, cand.size)
        if self.has_nms and self.nms_threshold > 0:
            if mp.use_prior_for_nms:
                boxes = priors[cand]
            else:
                boxes = bbox.decode(
                    priors, variances, loc[i, :, 0], int(mp.code_type), bool(mp.encode_variance_in_target)
                )[cand]
            kept = bbox.nms_ranked(boxes, loss[cand], self.nms_threshold, self.nms_top_k)
            picked = cand[kept[: min(kept.size, num_sel)]]
        else:
            picked = cand[numpy.argsort(-loss[cand], kind="stable")[:num_sel]]
        chosen = numpy.zeros(m.shape, dtype=bool)
        chosen[picked] = True
        negatives = numpy.nonzero((m == -1) & chosen)[0]
        if self.mining == MINING_HARD_EXAMPLE:
            m[(m > -1) & ~chosen] = -1
        return negatives

    # --- localisation -----------------------------------------------------------------------
    def _loc_pairs(self, loc, priors, variances, gt, match):
        """Predictions and encoded targets ``(M, 4)`` of the matched priors, with their (image, prior, class)."""
        mp = self.mp
        ii, kk, jj = numpy.nonzero(match > -1)
        boxes = gt.boxes[ii, match[ii, kk, jj]]
        code, in_target = int(mp.code_type), bool(mp.encode_variance_in_target)
        target = bbox.encode(priors[jj], variances[jj], boxes, code, in_target)
        pred = loc[ii, jj, kk]
        if mp.bp_inside:
            ref = (
                priors[jj]
                if mp.use_prior_for_matching
                else bbox.decode(priors[jj], variances[jj], pred, code, in_target)
            )
            pred = numpy.where((ref < 0) | (ref > 1), target, pred)
        if in_target:
            bbox.check_variances(variances[jj])
            pred = pred / variances[jj]
            target = target / variances[jj]
        return pred, target, (ii, jj, kk)

    def _loc_terms(self, d):
        """Per-element loss and gradient of the loc loss for differences ``d``."""
        if self.mp.loc_loss_type == LOC_SMOOTH_L1:
            small = numpy.abs(d) < 1
            return numpy.where(small, 0.5 * d * d, numpy.abs(d) - 0.5), numpy.where(small, d, numpy.sign(d))
        return 0.5 * d * d, d

    def _loc_losses_per_prior(self, loc, priors, variances, gt, match) -> numpy.ndarray:
        out = numpy.zeros((self.num, self.num_priors), dtype=loc.dtype)
        if (match > -1).any():
            pred, target, (ii, jj, _) = self._loc_pairs(loc, priors, variances, gt, match)
            out[ii, jj] = self._loc_terms(pred - target)[0].sum(axis=1)
        return out

    def _loc_forward(self, loc, priors, variances, gt, match) -> None:
        self._loc_where = None
        self.loc_loss = 0.0
        if self.num_matches < 1:
            return
        pred, target, where = self._loc_pairs(loc, priors, variances, gt, match)
        terms, grad = self._loc_terms(pred - target)
        self.loc_loss = float(terms.sum(dtype=terms.dtype))
        self._loc_grad, self._loc_where = grad, where

    # --- confidence ------------------------------------------------------------------------
    def _conf_forward(self, conf, gt, match, negatives) -> None:
        mp = self.mp
        n, p, c = self.num, self.num_priors, self.num_classes
        labels = self._prior_labels(gt, match, last=True)
        if mp.map_object_to_agnostic:
            labels = numpy.where(match.max(axis=1) > -1, self.background + 1, labels)
        matched = (match > -1).any(axis=1)
        if self.mining != MINING_NONE:
            ii, jj = numpy.nonzero(matched)
            neg_i = numpy.concatenate([numpy.full(len(r), i) for i, r in enumerate(negatives)]).astype(numpy.int64)
            neg_j = numpy.concatenate(negatives).astype(numpy.int64)
            # per image: its positives, then its negatives
            rows_i = numpy.concatenate([ii, neg_i])
            rows_j = numpy.concatenate([jj, neg_j])
            order = numpy.argsort(rows_i, kind="stable")
            rows_i, rows_j = rows_i[order], rows_j[order]
            is_pos = numpy.concatenate([numpy.ones(ii.size, bool), numpy.zeros(neg_i.size, bool)])[order]
            self._conf_rows = (rows_i, rows_j)
            x = conf[rows_i, rows_j]
            target = numpy.where(is_pos, labels[rows_i, rows_j], self.background)
            if mp.conf_loss_type == CONF_LOGISTIC:
                target = self._logistic_rows(target, is_pos, x.dtype)
        else:
            self._conf_rows = None
            x = conf.reshape(n * p, c)
            target = numpy.where(matched, labels, self.background).reshape(-1)
            if mp.conf_loss_type == CONF_LOGISTIC:
                target = self._logistic_offset_targets(gt, match, x.dtype)
        self.num_conf = x.shape[0]
        if self.num_conf < 1:
            self.conf_loss, self._conf_grad = 0.0, None
            return
        if mp.conf_loss_type == CONF_SOFTMAX:
            e = numpy.exp(x - x.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
            onehot = numpy.arange(c) == target[:, None]
            self.conf_loss = float(-numpy.log(numpy.maximum(prob[onehot], FLT_MIN)).sum())
            self._conf_grad = prob - onehot
        else:
            self.conf_loss = float(_sigmoid_xent(x, target).sum())
            self._conf_grad = 1 / (1 + numpy.exp(-x)) - target

    def _logistic_rows(self, labels, is_pos, dtype) -> numpy.ndarray:
        """LOGISTIC targets for mined rows: 1 at the label (background for negatives), the rest the fill value."""
        c, bg = self.num_classes, self.background
        t = numpy.full((labels.size, c), bg, dtype=dtype)
        on = is_pos | ((bg >= 0) & (bg < c))
        t[numpy.nonzero(on)[0], labels[on]] = 1
        return t

    def _logistic_offset_targets(self, gt: _GroundTruth, match, dtype) -> numpy.ndarray:
        """LOGISTIC targets without mining, laid out as the fork writes them (image offset ``i * P``)."""
        n, p, c = self.num, self.num_priors, self.num_classes
        t = numpy.full(n * p * c, self.background, dtype=dtype)
        for k in range(self.loc_classes):
            ii, jj = numpy.nonzero(match[:, k] > -1)
            if self.mp.map_object_to_agnostic:
                labels = numpy.full(ii.size, self.background + 1)
            else:
                labels = gt.labels[ii, match[ii, k, jj]]
            t[ii * p + jj * c + labels] = 1
        return t.reshape(n * p, c)

    # --- backward ----------------------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        xp = backend.array_module(bottom[0].data)
        scale = float(backend.to_numpy(top[0].diff)) / self.normalizer
        if propagate_down[0]:
            d = numpy.zeros((self.num, self.num_priors, self.loc_classes, 4), dtype=self.dtype)
            if self._loc_where is not None:
                ii, jj, kk = self._loc_where
                d[ii, jj, kk] = self._loc_grad * (self.loc_weight * scale)
            bottom[0].diff = backend.asarray(d.reshape(bottom[0].shape), xp, self.dtype)
        if propagate_down[1]:
            d = numpy.zeros((self.num, self.num_priors, self.num_classes), dtype=self.dtype)
            if self._conf_grad is not None:
                g = self._conf_grad * scale
                if self._conf_rows is None:
                    d = g.reshape(d.shape)
                else:
                    d[self._conf_rows] = g
            bottom[1].diff = backend.asarray(d.reshape(bottom[1].shape), xp, self.dtype)


def _sigmoid_xent(x: numpy.ndarray, t: numpy.ndarray) -> numpy.ndarray:
    """Element-wise sigmoid cross-entropy ``-(t log s(x) + (1 - t) log(1 - s(x)))``, in the stable form."""
    pos = (x >= 0).astype(x.dtype)
    return -(x * (t - pos) - numpy.log1p(numpy.exp(-numpy.abs(x))))
