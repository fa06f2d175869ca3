"""Layer types of Caffe's mobile-network ports: MobileNet, ShuffleNet, SENet and MobileNet-YOLO.

``ConvolutionDepthwise`` and ``DepthwiseConvolution`` are grouped convolutions built on BVLC's
:class:`~netdef.layers.conv.ConvolutionLayer` (im2col + one batched GEMM over the groups),
``ShuffleChannel`` is a reshape-transpose, ``ReLU6`` a clipped ReLU, ``Axpy`` the fused
``a * x + y`` of SENet, and ``Yolov3DetectionOutput`` decodes YOLOv3 heads and applies
non-maximum suppression (forward only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy

from ... import backend
from ...blob import Blob
from ...errors import InvalidParameterError, ShapeMismatchError
from ...proto import netdef_pb2 as pb
from ..base import Layer, NeuronLayer
from ..conv import ConvolutionLayer
from .registry import register_fork_layer


def _sigmoid(xp, x):
    # tanh form: no overflow warning for large negative inputs
    return 0.5 * xp.tanh(0.5 * x) + 0.5


# --- depthwise convolution -----------------------------------------------------------------------
@register_fork_layer("ConvolutionDepthwise", "MobileNet", "ShuffleNet", "MobileNet-SSD", "MobileNet-YOLO")
class ConvolutionDepthwiseLayer(ConvolutionLayer):
    """Caffe type ``ConvolutionDepthwise``: one 2-D filter per input channel.

    Defined by farmingyard/caffe-mobilenet (``conv_dw_layer``), used by farmingyard/ShuffleNet,
    chuanqi305/MobileNet-SSD and copied into many forks (eric612/MobileNet-YOLO among them).

    ``y[n, c, i, j] = b[c] + sum_{u, v} W[c, 0, u, v] * x_pad[n, c, i*sh + u*dh, j*sw + v*dw]``
    (``s``: stride, ``d``: dilation).

    Geometry (kernel, stride, pad, dilation; ``kernel_h``/``kernel_w`` style too) comes from
    ``convolution_param``. As in the fork, ``num_output``, ``group`` and ``axis`` are ignored:
    the output always has as many channels as the input and the layer is the grouped
    convolution with ``group = num_output = C``.

    Blobs: ``W`` of shape ``(C, 1, kernel_h, kernel_w)``, bias ``(C,)`` when ``bias_term``.

    Bottom: ``(N, C, H, W)`` (exactly one). Top: ``(N, C, H_out, W_out)`` with
    ``H_out = (H + 2*pad_h - dilation_h*(kernel_h - 1) - 1) // stride_h + 1`` (same for W).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        if x.num_axes != 4:
            raise self.error(f"takes a 4-axis bottom (N, C, H, W). Received: shape {x.shape}", ShapeMismatchError)
        channels = x.shape[1]
        if channels <= 0:
            raise self.error(f"needs at least one input channel. Received: shape {x.shape}", ShapeMismatchError)
        depthwise = pb.LayerParameter()
        depthwise.CopyFrom(self.param)
        cp = depthwise.convolution_param
        cp.num_output = channels
        cp.group = channels
        cp.ClearField("axis")
        # BVLC's set-up reads self.param; give it the depthwise view for that one call only, so the
        # user's definition (what the net saves) is left as written.
        written, self.param = self.param, depthwise
        try:
            super().setup(bottom, top)
        finally:
            self.param = written


@register_fork_layer("DepthwiseConvolution", "DepthwiseConvolution (yonghenglh6)", "MobileNet-YOLO")
class DepthwiseConvolutionLayer(ConvolutionLayer):
    """Caffe type ``DepthwiseConvolution``: BVLC's grouped ``Convolution`` under another name.

    Defined by yonghenglh6/DepthwiseConvolution (also in eric612/MobileNet-YOLO).

    The fork's class derives from ``ConvolutionLayer``: set-up, shapes, parameters and its CPU
    path are Convolution's, so ``num_output`` and ``group`` are read as written (depthwise
    models set ``group = num_output = C``). Its CUDA kernel only gives that same result when
    ``group == C == num_output`` and ignores dilation; netdef computes the convolution as
    written on both devices.

    ``y[n, o, p] = b[o] + sum_{c in group(o), k} W[o, c, k] * x_pad[n, c, p*stride + k*dilation]``.

    Blobs: ``W`` of shape ``(num_output, C/group, *kernel)``, optional bias ``(num_output,)``.

    Bottom: ``(N, C, *spatial)``. Top: ``(N, num_output, *out_spatial)``.
    """


# --- channel shuffle ------------------------------------------------------------------------------
@register_fork_layer("ShuffleChannel", "ShuffleNet")
class ShuffleChannelLayer(Layer):
    """Caffe type ``ShuffleChannel``: ShuffleNet's channel shuffle (farmingyard/ShuffleNet).

    With ``g = shuffle_channel_param.group`` and ``C = g * m``, input channel ``i*m + j``
    (``i < g``, ``j < m``) becomes output channel ``j*g + i``: view the channels as a
    ``g x m`` matrix and transpose it. Backward applies the inverse permutation to the diff.

    Bottom: ``(N, C, ...)`` with ``C`` divisible by ``group``. Top: same shape.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.group = int(self.param.shuffle_channel_param.group)
        if self.group <= 0:
            raise self.error(f"shuffle_channel_param.group must be positive. Received: {self.group}")

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        if x.num_axes < 2:
            raise self.error(
                f"needs a bottom with a channel axis (N, C, ...). Received: shape {x.shape}", ShapeMismatchError
            )
        channels = x.shape[1]
        if channels % self.group:
            raise self.error(
                f"shuffle_channel_param.group must divide the channels. Received: group={self.group}, "
                f"channels={channels} (shape {x.shape}). Valid: a divisor of {channels}",
                ShapeMismatchError,
            )
        top[0].reshape(x.shape)

    @staticmethod
    def _permute(a, rows: int, cols: int):
        # channels as a rows x cols matrix -> its transpose, per sample, spatial block untouched
        return a.reshape(a.shape[0], rows, cols, math.prod(a.shape[2:])).transpose(0, 2, 1, 3).reshape(a.shape)

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0].data
        top[0].data = self._permute(x, self.group, x.shape[1] // self.group)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff
        bottom[0].diff = self._permute(dy, dy.shape[1] // self.group, self.group)


# --- ReLU6 -----------------------------------------------------------------------------------------
@register_fork_layer("ReLU6", "MobileNet-YOLO", "MobileNet-v2")
class ReLU6Layer(NeuronLayer):
    """Caffe type ``ReLU6``: a ReLU clipped at 6, optionally leaky below 0.

    As in eric612/MobileNet-YOLO (MobileNet-v2 ports without ``relu6_param`` compute the same
    with slope 0).

    ``y = min(max(x, 0) + negative_slope * min(x, 0), 6)`` with ``negative_slope`` from
    ``relu6_param`` (a ReLUParameter; default 0, i.e. ``y = min(max(x, 0), 6)``).
    ``dx = dy * ((x > 0) + negative_slope * (x <= 0)) * (x < 6)``, the fork's rule at the kinks.

    Bottom: any shape. Top: same shape as the bottom (in place allowed).
    """

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.negative_slope = float(self.param.relu6_param.negative_slope)

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0].data
        xp = backend.array_module(x)
        # kept for backward: the top cannot tell x >= 6 from x == 6, nor x <= 0 from x == 0
        self._x = x
        y = xp.maximum(x, 0)
        if self.negative_slope != 0.0:
            y = y + self.negative_slope * xp.minimum(x, 0)
        top[0].data = xp.minimum(y, 6)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        x, dy = self._x, top[0].diff
        xp = backend.array_module(dy)
        slope = xp.where(x > 0, 1.0, self.negative_slope).astype(dy.dtype, copy=False)
        bottom[0].diff = dy * slope * (x < 6)


# --- Axpy ----------------------------------------------------------------------------------------------
@register_fork_layer("Axpy", "SENet")
class AxpyLayer(Layer):
    """Caffe type ``Axpy``: SENet's fused channel scale and residual sum (hujie-frank/SENet).

    ``top[n, c, ...] = a[n, c] * x[n, c, ...] + y[n, c, ...]``.
    Gradients: ``da[n, c] = sum_{...} dtop * x``, ``dx = a * dtop``, ``dy = dtop``.

    Bottoms: ``a`` of shape ``(N, C)`` or ``(N, C, 1, 1)`` (any trailing axes of size 1),
    ``x`` of shape ``(N, C, ...)``, ``y`` of the same shape as ``x``. Top: shape of ``x``.
    """

    exact_num_bottom = 3
    exact_num_top = 1

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        a, x, y = bottom
        if x.num_axes < 2 or a.num_axes < 2 or a.shape[:2] != x.shape[:2] or a.count != x.count_range(0, 2):
            raise self.error(
                f"the scale bottom must be (N, C) or (N, C, 1, 1) with N and C of the second bottom "
                f"(N, C, ...). Received: scale {a.shape}, x {x.shape}",
                ShapeMismatchError,
            )
        if y.shape != x.shape:
            raise self.error(
                f"the second and third bottoms need the same shape. Received: {x.shape} and {y.shape}",
                ShapeMismatchError,
            )
        top[0].reshape(x.shape)

    def _scale(self, a, x):
        return a.reshape(x.shape[:2] + (1,) * (x.ndim - 2))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        a, x, y = (b.data for b in bottom)
        top[0].data = self._scale(a, x) * x + y

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        dtop = top[0].diff
        a, x = bottom[0].data, bottom[1].data
        if propagate_down[0]:
            prod = (dtop * x).reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
            bottom[0].diff = prod.sum(axis=2).reshape(bottom[0].shape)
        if propagate_down[1]:
            bottom[1].diff = self._scale(a, x) * dtop
        if propagate_down[2]:
            bottom[2].diff = dtop.copy()


# --- YOLOv3 detection output --------------------------------------------------------------------
def _greedy_nms(boxes: numpy.ndarray, threshold: float) -> numpy.ndarray:
    """Indices kept by the fork's class-agnostic greedy NMS over ``boxes`` (rows cx, cy, w, h, best first).

    A box is dropped when its IoU with an earlier kept box is ``>= threshold``; the IoU is computed in
    centre form with ``union = w1*h1 + w2*h2 - intersection``, as the fork does.
    """
    count = len(boxes)
    suppressed = numpy.zeros(count, dtype=bool)
    half_w, half_h = boxes[:, 2] / 2, boxes[:, 3] / 2
    left, right = boxes[:, 0] - half_w, boxes[:, 0] + half_w
    low, high = boxes[:, 1] - half_h, boxes[:, 1] + half_h
    area = boxes[:, 2] * boxes[:, 3]
    for i in range(count - 1):
        if suppressed[i]:
            continue
        rest = slice(i + 1, None)
        iw = numpy.minimum(right[i], right[rest]) - numpy.maximum(left[i], left[rest])
        ih = numpy.minimum(high[i], high[rest]) - numpy.maximum(low[i], low[rest])
        inter = numpy.where((iw < 0) | (ih < 0), 0, iw * ih)
        with numpy.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (area[i] + area[rest] - inter)
        suppressed[rest] |= iou >= threshold
    return numpy.flatnonzero(~suppressed)


@register_fork_layer("Yolov3DetectionOutput", "MobileNet-YOLO")
class Yolov3DetectionOutputLayer(Layer):
    """Caffe type ``Yolov3DetectionOutput``: decode YOLOv3 heads, keep confident boxes, apply NMS.

    Defined by eric612/MobileNet-YOLO (``yolov3_detection_output_param``).

    Bottom ``t`` (one per ``mask_group_num``) is a head of shape ``(N, num_box * L, H, W)`` with
    ``L = 5 + num_classes`` (``9 + num_classes`` with ``gaussian_box``), channels ``n*L + k`` for
    anchor slot ``n``. With ``s = sigmoid``, anchor ``a = mask[t*G + n]`` (``G = len(mask) /
    mask_group_num``) and ``S = anchors_scale[t]``, the cell ``(i, j)`` (column, row) predicts

    ``cx = (i + s(tx)) / W``, ``cy = (j + s(ty)) / H``,
    ``w = exp(tw) * biases[2a] / (W*S)``, ``h = exp(th) * biases[2a+1] / (H*S)``,
    ``confidence_c = s(class_c) * s(objectness)``

    (Gaussian heads: ``tx, ty, tw, th`` are channels 0, 2, 4, 6 and the objectness is multiplied
    by ``1 - mean`` of the four sigmoid uncertainties 1, 3, 5, 7). Every (box, class) with
    ``confidence > confidence_threshold`` is a candidate; candidates of all heads and all images
    are sorted by confidence (ties keep decoding order, the fork's ``std::sort`` leaves them
    unspecified) and reduced by one class-agnostic greedy NMS (``IoU >= nms_threshold`` drops).

    Top: ``(1, 1, K, 7)``, rows ``[image_id, label, confidence, xmin, ymin, xmax, ymax]`` with
    ``label = class + 1``, unclipped normalised corners and, as in the fork, ``image_id`` 0 for
    every row even when ``N > 1``. Without detections: ``(1, 1, N, 7)`` of -1 with
    ``image_id = n`` in row ``n``. No backward.
    """

    min_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.param.yolov3_detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("yolov3_detection_output_param.num_classes must be given. Received: not set")
        self.num_classes = int(p.num_classes)
        self.num_box = int(p.num_box)
        self.confidence_threshold = float(p.confidence_threshold)
        self.nms_threshold = float(p.nms_threshold)
        self.gaussian = bool(p.gaussian_box)
        self.biases = numpy.asarray(p.biases, dtype=numpy.float64)
        self.mask = [int(m) for m in p.mask]
        self.anchors_scale = [int(s) for s in p.anchors_scale]
        groups = int(p.mask_group_num)
        if groups <= 0 or len(bottom) != groups:
            raise self.error(
                f"takes one bottom per mask group. Received: {len(bottom)} bottoms, mask_group_num={p.mask_group_num}",
                InvalidParameterError if groups <= 0 else ShapeMismatchError,
            )
        self.mask_step = len(self.mask) // groups
        self._check_anchors(len(bottom))

    def _check_anchors(self, heads: int) -> None:
        if self.num_classes <= 0 or self.num_box <= 0:
            raise self.error(
                f"num_classes and num_box must be positive. Received: num_classes={self.num_classes}, "
                f"num_box={self.num_box}"
            )
        if len(self.anchors_scale) < heads:
            raise self.error(f"anchors_scale needs one value per bottom ({heads}). Received: {self.anchors_scale}")
        if any(s <= 0 for s in self.anchors_scale[:heads]):
            raise self.error(f"anchors_scale values must be positive. Received: {self.anchors_scale}")
        needed = (heads - 1) * self.mask_step + self.num_box
        if len(self.mask) < needed:
            raise self.error(
                f"mask needs at least {needed} entries for {heads} bottoms of num_box={self.num_box} anchors. "
                f"Received: {self.mask}"
            )
        if self.mask and (min(self.mask) < 0 or 2 * max(self.mask) + 1 >= len(self.biases)):
            raise self.error(
                f"every mask entry must name an anchor of biases (pairs w, h: 0 .. {len(self.biases) // 2 - 1}). "
                f"Received: mask {self.mask}, {len(self.biases)} biases"
            )

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        length = (9 if self.gaussian else 5) + self.num_classes
        for t, b in enumerate(bottom):
            if b.num_axes != 4 or b.shape[1] != self.num_box * length or b.shape[0] != bottom[0].shape[0]:
                raise self.error(
                    f"bottom {t} must be (N, num_box * {length}, H, W) = (N, {self.num_box * length}, H, W) "
                    f"with the N of bottom 0. Received: {b.shape}",
                    ShapeMismatchError,
                )
        top[0].reshape((1, 1, 1, 7))

    def _decode(self, t: int, blob: Blob):
        """Candidates of head ``t`` in the fork's order (image, cell, anchor, class): (boxes, class, confidence)."""
        z = blob.data
        xp = backend.array_module(z)
        n, _, height, width = blob.shape
        z = z.reshape(n, self.num_box, -1, height * width)
        s = _sigmoid(xp, z)
        if self.gaussian:
            tx, ty, tw, th = s[:, :, 0], s[:, :, 2], z[:, :, 4], z[:, :, 6]
            obj = s[:, :, 8] * (4 - s[:, :, 1] - s[:, :, 3] - s[:, :, 5] - s[:, :, 7]) / 4
            cls = s[:, :, 9:]
        else:
            tx, ty, tw, th, obj, cls = s[:, :, 0], s[:, :, 1], z[:, :, 2], z[:, :, 3], s[:, :, 4], s[:, :, 5:]
        anchors = self.mask[t * self.mask_step : t * self.mask_step + self.num_box]
        aw = xp.asarray(self.biases[[2 * a for a in anchors]], dtype=z.dtype)[:, None]
        ah = xp.asarray(self.biases[[2 * a + 1 for a in anchors]], dtype=z.dtype)[:, None]
        cell = xp.arange(height * width)
        scale = self.anchors_scale[t]
        boxes = xp.stack(
            [
                (cell % width + tx) / width,
                (cell // width + ty) / height,
                xp.exp(tw) * aw / (width * scale),
                xp.exp(th) * ah / (height * scale),
            ],
            axis=-1,
        )  # (N, num_box, HW, 4)
        conf = (cls * obj[:, :, None, :]).transpose(0, 3, 1, 2)  # (N, HW, num_box, classes)
        img, pos, slot, label = xp.nonzero(conf > self.confidence_threshold)
        return (
            backend.to_numpy(boxes[img, slot, pos]),
            backend.to_numpy(label),
            backend.to_numpy(conf[img, pos, slot, label]),
        )

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        parts = [self._decode(t, b) for t, b in enumerate(bottom)]
        boxes = numpy.concatenate([p[0] for p in parts]).reshape(-1, 4)
        labels = numpy.concatenate([p[1] for p in parts])
        conf = numpy.concatenate([p[2] for p in parts])
        order = numpy.argsort(-conf, kind="stable")
        boxes, labels, conf = boxes[order], labels[order], conf[order]
        keep = _greedy_nms(boxes, self.nms_threshold) if len(conf) else numpy.zeros(0, dtype=numpy.intp)
        if len(keep):
            b = boxes[keep]
            rows = numpy.zeros((len(keep), 7))
            rows[:, 1] = labels[keep] + 1
            rows[:, 2] = conf[keep]
            rows[:, 3:5] = b[:, :2] - b[:, 2:] / 2
            rows[:, 5:7] = b[:, :2] + b[:, 2:] / 2
        else:
            num = bottom[0].shape[0]
            rows = numpy.full((num, 7), -1.0)
            rows[:, 0] = numpy.arange(num)
        top[0].reshape((1, 1, len(rows), 7))
        top[0].data = backend.asarray(rows.reshape(top[0].shape), backend.array_module(bottom[0].data), self.dtype)
