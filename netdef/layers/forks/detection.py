"""Detection layers of the SSD fork of Caffe (GitHub ``weiliu89/caffe``, branch ``ssd``):
DetectionOutput and DetectionEvaluate (MultiBoxLoss is in :mod:`netdef.layers.forks.multibox`).

Parameters follow the fork's ``caffe.proto`` (``detection_output_param``,
``detection_evaluate_param``, ``nms_param``); behaviour follows the fork's CPU code, quirks
included (each class lists the ones it reproduces). NMS and matching are sequential decisions
over boxes and run on the host (as in the fork); the arrays going in and out live on the
layer's module (NumPy or CuPy). Box arithmetic is in :mod:`netdef.layers.forks.bbox`.
"""

from __future__ import annotations

import numpy

from ... import backend
from ...errors import DataSourceError, ShapeMismatchError
from ..base import Layer
from . import bbox
from .detection_blobs import check_predictions, count_priors, legacy_dim, named_errors, nms_settings, read_priors
from .registry import register_fork_layer

#: -FLT_MAX: DetectionOutput's confidence threshold when none is given (every box is a candidate)
NO_THRESHOLD = -float(numpy.finfo(numpy.float32).max)


# --- DetectionOutput ----------------------------------------------------------------------
@register_fork_layer("DetectionOutput", "SSD")
class DetectionOutputLayer(Layer):
    """Caffe type ``DetectionOutput`` (SSD fork): decode, per-class NMS, keep the best boxes.

    For each image and each class ``c`` other than ``background_label_id``: boxes are
    decoded from the loc offsets and the priors (``code_type``, variances from the prior
    blob unless ``variance_encoded_in_target``); candidates score ``conf[c] >
    confidence_threshold``; greedy NMS (``nms_param``: threshold, ``top_k`` best candidates,
    adaptive ``eta``) keeps boxes; then at most ``keep_top_k`` boxes of the image survive,
    by score. Boxes are not clipped.

    Bottoms: loc ``(N, P * L * 4)`` (``L`` = 1 with ``share_location``, else ``num_classes``;
    prior-major, class inside), conf ``(N, P * num_classes)`` (scores, e.g. softmax output),
    priors ``(1, 2, P * 4)`` (PriorBox output). A fourth bottom (the fork's visualisation
    image) is accepted and ignored.
    Top: ``(1, 1, K, 7)`` rows ``[image, label, score, xmin, ymin, xmax, ymax]``, images in
    order, labels ascending within an image, scores descending within a label. With no
    detection at all the top is ``(1, 1, N, 7)``: one row ``[i, -1, -1, -1, -1, -1, -1]`` per image.

    Refused (the fork aborts or writes files): ``share_location`` with
    ``background_label_id: -1``; ``save_output_param.output_directory`` set.
    """

    min_num_bottom = 3
    max_num_bottom = 4
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom, top):
        p = self.param.detection_output_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error(f"detection_output_param.num_classes is required (>= 1). Received: {p.num_classes}")
        self.num_classes = int(p.num_classes)
        self.share_location = bool(p.share_location)
        self.loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        if self.share_location and self.background == -1:
            raise self.error(
                "background_label_id -1 (no background class) needs share_location: false; the fork cannot find "
                "the shared location predictions (their label is -1, which it skips as background). "
                "Received: share_location true, background_label_id -1"
            )
        self.code_type = int(p.code_type)
        if self.code_type not in bbox.CODE_TYPE_NAMES:
            raise self.error(f"unknown code_type. Received: {self.code_type}. Valid: CORNER, CENTER_SIZE, CORNER_SIZE")
        self.variance_in_target = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = (
            float(p.confidence_threshold) if p.HasField("confidence_threshold") else NO_THRESHOLD
        )
        self.nms_threshold, self.eta, self.top_k = nms_settings(self, p.nms_param)
        out_dir = p.save_output_param.output_directory
        if out_dir:
            raise self.error(
                "writing detection files (save_output_param) is not supported; use the top blob instead. "
                f"Received: save_output_param.output_directory {out_dir!r}. Valid: leave it empty"
            )

    def reshape(self, bottom, top):
        self.num_priors = count_priors(self, bottom[2])
        check_predictions(self, bottom, self.num_priors, self.loc_classes, self.num_classes)
        top[0].reshape((1, 1, 1, 7))

    def forward(self, bottom, top):
        with named_errors(self):
            rows = self._detect(bottom)
        xp = backend.array_module(bottom[0].data)
        top[0].reshape(rows.shape)
        top[0].data = backend.asarray(rows, xp, self.dtype)

    def _detect(self, bottom) -> numpy.ndarray:
        n, p, c = legacy_dim(bottom[0].shape, 0), self.num_priors, self.num_classes
        loc = backend.to_numpy(bottom[0].data).reshape(n, p, self.loc_classes, 4).transpose(0, 2, 1, 3)
        conf = backend.to_numpy(bottom[1].data).reshape(n, p, c)
        priors, variances = read_priors(bottom[2], p)
        boxes = bbox.decode(priors, variances, loc, self.code_type, self.variance_in_target)
        rows = [self._image_rows(i, boxes[i], conf[i]) for i in range(n)]
        if sum(len(r) for r in rows) == 0:
            empty = numpy.full((n, 7), -1.0)
            empty[:, 0] = numpy.arange(n)
            return empty.reshape(1, 1, n, 7)
        return numpy.concatenate(rows).reshape(1, 1, -1, 7)

    def _image_rows(self, image: int, boxes: numpy.ndarray, conf: numpy.ndarray) -> numpy.ndarray:
        """Rows for one image: ``boxes (L, P, 4)`` decoded, ``conf (P, C)`` scores."""
        labels, indices = [], []
        for c in range(self.num_classes):
            if c == self.background:
                continue
            kept = bbox.nms_fast(
                boxes[0 if self.share_location else c],
                conf[:, c],
                self.confidence_threshold,
                self.nms_threshold,
                self.eta,
                self.top_k,
            )
            labels.append(numpy.full(kept.size, c, dtype=numpy.int64))
            indices.append(kept)
        labels = numpy.concatenate(labels) if labels else numpy.zeros(0, numpy.int64)
        indices = numpy.concatenate(indices) if indices else numpy.zeros(0, numpy.int64)
        scores = conf[indices, labels]
        if -1 < self.keep_top_k < labels.size:
            best = numpy.argsort(-scores, kind="stable")[: self.keep_top_k]
            # survivors are listed per label (ascending), best first within a label
            best = best[numpy.argsort(labels[best], kind="stable")]
            labels, indices, scores = labels[best], indices[best], scores[best]
        loc_rows = numpy.zeros_like(labels) if self.share_location else labels
        out = numpy.empty((labels.size, 7), dtype=numpy.float64)
        out[:, 0] = image
        out[:, 1] = labels
        out[:, 2] = scores
        out[:, 3:] = boxes[loc_rows, indices]
        return out


# --- DetectionEvaluate ---------------------------------------------------------------------
@register_fork_layer("DetectionEvaluate", "SSD")
class DetectionEvaluateLayer(Layer):
    """Caffe type ``DetectionEvaluate`` (SSD fork): mark detections true/false positive for mAP.

    Per class other than the background, one row ``[-1, c, num_pos, -1, -1]`` (``num_pos``: the
    ground-truth boxes of class ``c`` in the batch, difficult ones only with
    ``evaluate_difficult_gt``). Then per detection (images ascending, labels ascending, scores
    descending) ``[image, label, score, tp, fp]``: a detection takes the same-class ground truth it
    overlaps most; overlap >= ``overlap_threshold`` and that box not yet taken: tp 1; taken: fp 1;
    a non-evaluated difficult box: tp 0 and fp 0; lower overlap or no box of that class: fp 1.

    Bottoms: detections ``(1, 1, D, 7)`` (DetectionOutput's top; rows with label -1 are skipped),
    ground truth ``(1, 1, G, 8)`` (rows up to the first image id -1). Top:
    ``(1, 1, num_pos_classes + valid detections, 5)``. Boxes are compared in normalised
    coordinates; ``name_size_file`` (rescaling to pixel sizes) is refused.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom, top):
        p = self.param.detection_evaluate_param
        if not p.HasField("num_classes"):
            raise self.error("detection_evaluate_param.num_classes is required. Received: nothing")
        if not p.overlap_threshold > 0:
            raise self.error(f"overlap_threshold must be positive. Received: {p.overlap_threshold}")
        if p.name_size_file:
            raise self.error(
                "rescaling boxes to image sizes (name_size_file) is not supported. "
                f"Received: name_size_file {p.name_size_file!r}. Valid: leave it empty (normalised boxes)"
            )
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)
        self.threshold = float(p.overlap_threshold)
        self.evaluate_difficult = bool(p.evaluate_difficult_gt)

    def reshape(self, bottom, top):
        for blob, width, what in ((bottom[0], 7, "detection"), (bottom[1], 8, "ground-truth")):
            s = blob.shape
            if legacy_dim(s, 0) != 1 or legacy_dim(s, 1) != 1 or legacy_dim(s, 3) != width or len(s) > 4:
                raise self.error(
                    f"the {what} bottom must be (1, 1, rows, {width}). Received: shape {s}", ShapeMismatchError
                )
        det = backend.to_numpy(bottom[0].data).reshape(-1, 7)
        classes = self.num_classes - (0 if self.background == -1 else 1)
        top[0].reshape((1, 1, classes + int((det[:, 1] != -1).sum()), 5))

    def forward(self, bottom, top):
        det = backend.to_numpy(bottom[0].data).reshape(-1, 7)
        gt = backend.to_numpy(bottom[1].data).reshape(-1, 8)
        with named_errors(self):
            rows = self._rows(det, gt)
        out = numpy.zeros(top[0].shape)
        out.reshape(-1, 5)[: len(rows)] = rows
        top[0].data = backend.asarray(out, backend.array_module(bottom[0].data), self.dtype)

    def _ground_truth(self, gt: numpy.ndarray) -> numpy.ndarray:
        ends = numpy.nonzero(gt[:, 0].astype(numpy.int64) == -1)[0]
        gt = gt[: ends[0]] if ends.size else gt
        if (gt[:, 1].astype(numpy.int64) == self.background).any():
            raise DataSourceError(f"found the background label {self.background} in the ground truth")
        return gt

    def _rows(self, det: numpy.ndarray, gt: numpy.ndarray) -> numpy.ndarray:
        gt = self._ground_truth(gt)
        det = det[det[:, 0].astype(numpy.int64) != -1]
        if (det[:, 1].astype(numpy.int64) == self.background).any():
            raise DataSourceError(f"found the background label {self.background} in the detections")
        g_img, g_lab = gt[:, 0].astype(numpy.int64), gt[:, 1].astype(numpy.int64)
        counted = gt[:, 7] == 0 if not self.evaluate_difficult else numpy.ones(len(gt), bool)
        rows = [
            [-1, c, int((counted & (g_lab == c)).sum()), -1, -1]
            for c in range(self.num_classes)
            if c != self.background
        ]
        d_img, d_lab = det[:, 0].astype(numpy.int64), det[:, 1].astype(numpy.int64)
        for image in numpy.unique(d_img):
            for label in numpy.unique(d_lab[d_img == image]):
                if label == -1:
                    continue
                mine = det[(d_img == image) & (d_lab == label)]
                mine = mine[numpy.argsort(-mine[:, 2], kind="stable")]
                match = (g_img == image) & (g_lab == label)
                if match.any():
                    tp, fp = bbox.mark_detections(
                        mine[:, 3:7], gt[match, 3:7], gt[match, 7] != 0, self.threshold, self.evaluate_difficult
                    )
                else:
                    tp, fp = numpy.zeros(len(mine)), numpy.ones(len(mine))
                rows += [[image, label, s, t, f] for s, t, f in zip(mine[:, 2], tp, fp)]
        return numpy.array(rows, dtype=numpy.float64).reshape(-1, 5)
