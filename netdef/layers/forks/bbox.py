"""Box utilities of the SSD fork (``weiliu89/caffe``, branch ``ssd``), written for NumPy arrays.

Boxes are ``(..., 4)`` arrays ``[xmin, ymin, xmax, ymax]`` in normalised image coordinates.
The functions follow the fork's ``bbox_util`` semantics (its box size, Jaccard overlap,
encoding and decoding for the three code types, the matching rules and both NMS
variants), including its tie-breaking: the first candidate in index order wins a tie.

They run on the host: matching and NMS are sequential, data-dependent decisions over a
few thousand boxes, which the fork also makes on the CPU. Problems are reported as
``InvalidParameterError`` / ``DataSourceError`` without a layer name; layers add theirs.
"""

from __future__ import annotations

import numpy

from ...errors import DataSourceError, InvalidParameterError

#: PriorBoxParameter.CodeType values (the fork's enum numbers)
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3
CODE_TYPE_NAMES = {CORNER: "CORNER", CENTER_SIZE: "CENTER_SIZE", CORNER_SIZE: "CORNER_SIZE"}
#: MultiBoxLossParameter.MatchType values
BIPARTITE, PER_PREDICTION = 0, 1
#: overlaps at or below this count as "no overlap" when matching (the fork's constant)
MIN_OVERLAP = 1e-6
#: boxes smaller than this are skipped by the ranked NMS used for hard-example mining
MIN_BOX_SIZE = 1e-5


def box_size(boxes: numpy.ndarray) -> numpy.ndarray:
    """Area of each box; 0 for an invalid box (``xmax < xmin`` or ``ymax < ymin``)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return numpy.where((w < 0) | (h < 0), 0, w * h).astype(boxes.dtype, copy=False)


def jaccard(a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    """Pairwise intersection over union of ``a (A, 4)`` and ``b (B, 4)``: an ``(A, B)`` array.

    Disjoint boxes, and boxes that only touch, overlap 0.
    """
    a = a[:, None, :]
    b = b[None, :, :]
    disjoint = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    iw = numpy.minimum(a[..., 2], b[..., 2]) - numpy.maximum(a[..., 0], b[..., 0])
    ih = numpy.minimum(a[..., 3], b[..., 3]) - numpy.maximum(a[..., 1], b[..., 1])
    hit = ~disjoint & (iw > 0) & (ih > 0)
    inter = numpy.where(hit, iw * ih, 0)
    union = box_size(a) + box_size(b) - inter
    with numpy.errstate(divide="ignore", invalid="ignore"):
        out = numpy.where(hit, inter / numpy.where(hit, union, 1), 0)
    return out.astype(numpy.result_type(a.dtype, b.dtype), copy=False)


def _wh(boxes: numpy.ndarray, what: str) -> tuple[numpy.ndarray, numpy.ndarray]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    bad = ~((w > 0) & (h > 0))
    if bad.any():
        k = int(numpy.argmax(bad.reshape(-1)))
        box = boxes.reshape(-1, 4)[k]
        raise DataSourceError(
            f"{what} {k} has no positive width and height. Received: {box.tolist()}. Valid: xmax > xmin and ymax > ymin"
        )
    return w, h


def check_variances(variances: numpy.ndarray) -> None:
    """Refuse a non-positive prior variance (offsets are divided by it)."""
    bad = (variances <= 0).reshape(-1, 4).any(axis=1)
    if bad.any():
        k = int(numpy.argmax(bad))
        raise DataSourceError(
            f"the variances of prior {k} must be positive. Received: {variances.reshape(-1, 4)[k].tolist()}"
        )


def _check_code_type(code_type: int) -> None:
    if code_type not in CODE_TYPE_NAMES:
        raise InvalidParameterError(
            f"unknown code_type. Received: {code_type}. Valid: CORNER, CENTER_SIZE, CORNER_SIZE"
        )


def decode(
    priors: numpy.ndarray,
    variances: numpy.ndarray,
    loc: numpy.ndarray,
    code_type: int,
    variance_encoded_in_target: bool,
) -> numpy.ndarray:
    """Boxes from offsets ``loc (..., P, 4)`` relative to ``priors (P, 4)``.

    CORNER: ``prior + v * loc``; CORNER_SIZE: ``prior + v * loc * [w, h, w, h]``;
    CENTER_SIZE: centre ``v0 * l0 * w + cx``, ``v1 * l1 * h + cy``, size ``w * exp(v2 * l2)``,
    ``h * exp(v3 * l3)``. ``v`` is the prior variance, or 1 when the variance is encoded
    in the target.
    """
    _check_code_type(code_type)
    v = numpy.ones_like(variances) if variance_encoded_in_target else variances
    if code_type == CORNER:
        return priors + v * loc
    pw, ph = _wh(priors, "prior box")
    if code_type == CORNER_SIZE:
        scale = numpy.stack([pw, ph, pw, ph], axis=-1)
        return priors + v * loc * scale
    pcx = (priors[..., 0] + priors[..., 2]) / 2
    pcy = (priors[..., 1] + priors[..., 3]) / 2
    cx = v[..., 0] * loc[..., 0] * pw + pcx
    cy = v[..., 1] * loc[..., 1] * ph + pcy
    w = numpy.exp(v[..., 2] * loc[..., 2]) * pw
    h = numpy.exp(v[..., 3] * loc[..., 3]) * ph
    return numpy.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def encode(
    priors: numpy.ndarray,
    variances: numpy.ndarray,
    boxes: numpy.ndarray,
    code_type: int,
    encode_variance_in_target: bool,
) -> numpy.ndarray:
    """Offsets of ``boxes (M, 4)`` relative to the row-aligned ``priors (M, 4)`` (the inverse of ``decode``).

    With ``encode_variance_in_target`` the offsets are not divided by the variance
    (the loss layer divides prediction and target instead).
    """
    _check_code_type(code_type)
    if not encode_variance_in_target:
        check_variances(variances)
    v = numpy.ones_like(variances) if encode_variance_in_target else variances
    if code_type == CORNER:
        return (boxes - priors) / v
    pw, ph = _wh(priors, "prior box")
    if code_type == CORNER_SIZE:
        return (boxes - priors) / numpy.stack([pw, ph, pw, ph], axis=-1) / v
    bw, bh = _wh(boxes, "ground-truth box")
    pcx = (priors[..., 0] + priors[..., 2]) / 2
    pcy = (priors[..., 1] + priors[..., 3]) / 2
    bcx = (boxes[..., 0] + boxes[..., 2]) / 2
    bcy = (boxes[..., 1] + boxes[..., 3]) / 2
    out = numpy.stack([(bcx - pcx) / pw, (bcy - pcy) / ph, numpy.log(bw / pw), numpy.log(bh / ph)], axis=-1)
    return out / v


def cross_boundary(boxes: numpy.ndarray) -> numpy.ndarray:
    """Whether any coordinate of each box lies outside ``[0, 1]``."""
    return ((boxes < 0) | (boxes > 1)).any(axis=-1)


def match(
    gt: numpy.ndarray,
    preds: numpy.ndarray,
    match_type: int,
    overlap_threshold: float,
    ignore_cross_boundary: bool = False,
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Match predictions (or priors) ``preds (P, 4)`` to ground truth ``gt (G, 4)``.

    First a greedy bipartite matching: repeatedly the globally largest overlap between an
    unmatched prediction and an unused ground truth is taken. With PER_PREDICTION every
    remaining prediction then takes its best ground truth when that overlap is at least
    ``overlap_threshold``. Overlaps of ``MIN_OVERLAP`` or less never match.

    Returns:
        ``(indices, overlaps)``: per prediction the matched ground-truth row (-1: none,
        -2: ignored as a cross-boundary box) and its overlap (the best overlap with any
        ground truth when unmatched).
    """
    num_pred = preds.shape[0]
    indices = numpy.full(num_pred, -1, dtype=numpy.int64)
    overlaps = numpy.zeros(num_pred, dtype=preds.dtype)
    if gt.shape[0] == 0:
        return indices, overlaps
    ov = jaccard(preds, gt)
    if ignore_cross_boundary:
        crossing = cross_boundary(preds)
        indices[crossing] = -2
        ov[crossing] = 0
    pos = ov > MIN_OVERLAP
    ov = numpy.where(pos, ov, 0)
    overlaps[:] = ov.max(axis=1)
    free = (indices == -1) & pos.any(axis=1)
    unused = numpy.ones(gt.shape[0], dtype=bool)
    while unused.any():
        cand = numpy.where(pos & free[:, None] & unused[None, :], ov, -1)
        k = int(numpy.argmax(cand))
        i, j = divmod(k, gt.shape[0])
        if cand[i, j] < 0:
            break
        indices[i], overlaps[i] = j, ov[i, j]
        free[i] = False
        unused[j] = False
    if match_type == PER_PREDICTION:
        thr = numpy.asarray(overlap_threshold, dtype=ov.dtype)
        cand = numpy.where(pos & (ov >= thr), ov, -1)
        best = numpy.argmax(cand, axis=1)
        take = free & (cand.max(axis=1) >= 0)
        indices[take] = best[take]
        overlaps[take] = ov[take, best[take]]
    elif match_type != BIPARTITE:
        raise InvalidParameterError(f"unknown match_type. Received: {match_type}. Valid: BIPARTITE, PER_PREDICTION")
    return indices, overlaps


def _descending(scores: numpy.ndarray) -> numpy.ndarray:
    """Indices ordering ``scores`` high to low; ties keep index order (a stable sort)."""
    return numpy.argsort(-scores, kind="stable")


def nms_fast(
    boxes: numpy.ndarray,
    scores: numpy.ndarray,
    score_threshold: float,
    nms_threshold: float,
    eta: float = 1.0,
    top_k: int = -1,
) -> numpy.ndarray:
    """Greedy NMS as DetectionOutput runs it (the fork's ``ApplyNMSFast``).

    Candidates score above ``score_threshold``; the ``top_k`` best (all when -1) are
    visited high to low and a box is kept when its overlap with every kept box is at
    most the threshold. Adaptive NMS: after each kept box the threshold is multiplied
    by ``eta`` while it is above 0.5.

    Returns:
        Indices into ``boxes`` of the kept boxes, best first.
    """
    cand = numpy.nonzero(scores > numpy.asarray(score_threshold, dtype=scores.dtype))[0]
    order = cand[_descending(scores[cand])]
    if top_k > -1:
        order = order[:top_k]
    ov = jaccard(boxes[order], boxes[order])
    thr = numpy.float32(nms_threshold)
    eta = numpy.float32(eta)
    kept: list[int] = []
    for a in range(order.size):
        if kept and not (ov[a, kept] <= thr).all():
            continue
        kept.append(a)
        if eta < 1 and thr > 0.5:
            thr = numpy.float32(thr * eta)
    return order[kept]


def nms_ranked(boxes: numpy.ndarray, scores: numpy.ndarray, nms_threshold: float, top_k: int) -> numpy.ndarray:
    """Greedy NMS as hard-example mining runs it (the fork's ``ApplyNMS``).

    All boxes are ranked by score and cut to ``top_k`` (when > -1: a ``top_k`` of 0
    keeps nothing); boxes smaller than ``MIN_BOX_SIZE`` are skipped; the best remaining
    box is kept and every remaining box overlapping it by more than the threshold is
    dropped; it stops once ``top_k`` boxes are kept.

    Returns:
        Indices into ``boxes`` of the kept boxes, best first.
    """
    order = _descending(scores)
    if -1 < top_k < order.size:
        order = order[:top_k]
    ov = jaccard(boxes[order], boxes[order])
    small = box_size(boxes[order]) < MIN_BOX_SIZE
    alive = ~small
    thr = numpy.float32(nms_threshold)
    kept: list[int] = []
    for a in range(order.size):
        if not alive[a]:
            continue
        kept.append(a)
        alive[a] = False
        if top_k > -1 and len(kept) >= top_k:
            break
        alive &= ~(ov[a] > thr)
    return order[kept]


def mark_detections(
    boxes: numpy.ndarray,
    gt: numpy.ndarray,
    gt_difficult: numpy.ndarray,
    overlap_threshold: float,
    evaluate_difficult: bool,
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """True/false positive flags of one image's detections of one class (the fork's DetectionEvaluate rule).

    ``boxes (D, 4)`` are visited in the given order (best score first); each takes the
    ground truth it overlaps most. At least ``overlap_threshold``: a true positive the
    first time that box is taken, a false positive after; a difficult box that is not
    evaluated marks neither. Below the threshold: a false positive.

    Returns:
        ``(tp, fp)``: two ``(D,)`` arrays of 0/1.
    """
    tp = numpy.zeros(boxes.shape[0])
    fp = numpy.zeros(boxes.shape[0])
    ov = jaccard(boxes, gt)
    taken = numpy.zeros(gt.shape[0], dtype=bool)
    thr = numpy.asarray(overlap_threshold, dtype=ov.dtype)
    for d in range(boxes.shape[0]):
        j = int(numpy.argmax(ov[d]))
        if ov[d, j] < thr:
            fp[d] = 1
        elif evaluate_difficult or not gt_difficult[j]:
            tp[d], fp[d] = (0, 1) if taken[j] else (1, 0)
            taken[j] = True
    return tp, fp
