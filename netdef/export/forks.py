"""ONNX forms of the fork layer types netdef runs (MobileNet/ShuffleNet/SENet ports, SSD, SegNet,
PSPNet/DeepLab), and the reasons the others are refused.

Depthwise convolutions are written by :mod:`netdef.export.vision` with the other convolutions.
"""

from __future__ import annotations

import numpy

from ..layers.forks.bn import SEGNET_EPS
from .context import LayerExport
from .registry import converts, refuse


def _channel_shape(ndim: int, channels: int) -> tuple[int, ...]:
    return (channels,) + (1,) * max(ndim - 2, 0)


# --- mobile networks ----------------------------------------------------------------------------------
@converts("ReLU6")
def _relu6(ctx: LayerExport) -> None:
    """``min(max(x, 0) + slope * min(x, 0), 6)``: a Clip, or a LeakyRelu clipped at 6."""
    g = ctx.g
    slope = ctx.layer.negative_slope
    if slope == 0:
        g.clip(ctx.x(), 0.0, 6.0, ctx.out())
    else:
        g.clip(g.node("LeakyRelu", [ctx.x()], alpha=slope), None, 6.0, ctx.out())


@converts("Axpy")
def _axpy(ctx: LayerExport) -> None:
    """``a * x + y`` with ``a`` (N, C) broadcast over the spatial axes of ``x``."""
    g = ctx.g
    shape, varying = ctx.in_shape(1), ctx.in_varying(1)
    view = shape[:2] + (1,) * (len(shape) - 2)
    a = g.reshape(ctx.x(0), ctx.target(view, varying[:2] + (False,) * (len(shape) - 2)))
    g.node("Add", [g.node("Mul", [a, ctx.x(1)]), ctx.x(2)], ctx.out())


@converts("ShuffleChannel")
def _shuffle_channel(ctx: LayerExport) -> None:
    """Channels viewed as a ``group x C/group`` matrix and transposed: Reshape, Transpose, Reshape."""
    g = ctx.g
    shape, varying = ctx.in_shape(), ctx.in_varying()
    groups = ctx.layer.group
    spatial = int(numpy.prod(shape[2:], dtype=numpy.int64))
    grid = ctx.target((shape[0], groups, shape[1] // groups, spatial), (varying[0], False, False, False))
    swapped = g.node("Transpose", [g.reshape(ctx.x(), grid)], perm=[0, 2, 1, 3])
    ctx.reshape_out(swapped)


# --- SSD ---------------------------------------------------------------------------------------------------
@converts("Permute")
def _permute(ctx: LayerExport) -> None:
    if not ctx.layer.need_permute:
        ctx.alias(0, ctx.x())
        return
    ctx.g.node("Transpose", [ctx.x()], ctx.out(), perm=list(ctx.layer.order))


@converts("Normalize")
def _normalize(ctx: LayerExport) -> None:
    """``x / sqrt(sum x^2 + eps) * s`` with the sum per sample (across_spatial) or per position."""
    layer, g = ctx.layer, ctx.g
    x = ctx.x()
    ndim = len(ctx.in_shape())
    axes = list(range(1, ndim)) if layer.across_spatial else [1]
    total = g.reduce("ReduceSum", g.node("Mul", [x, x]), axes, keepdims=True)
    norm = g.node("Sqrt", [g.node("Add", [total, g.const(layer.eps, "eps")])])
    s = ctx.blob(0)
    s = s.reshape(1) if layer.channel_shared else s.reshape(_channel_shape(ndim, s.size))
    g.node("Mul", [g.node("Div", [x, norm]), g.const(s, f"{ctx.name}_scale")], ctx.out())


@converts("PriorBox")
def _prior_box(ctx: LayerExport) -> None:
    """The boxes depend only on shapes, so they are one constant."""
    layer = ctx.layer
    feature = layer._spatial(ctx.in_shape(0))
    image = (0, 0) if layer.img_h else layer._spatial(ctx.in_shape(1))
    boxes = layer.priors(feature, image).astype(numpy.float32)
    ctx.alias(0, ctx.g.const(boxes, f"{ctx.name}_boxes"))


# --- BN (SegNet and PSPNet) ----------------------------------------------------------------------------
def _as_4d(ctx: LayerExport, x: str) -> str:
    """Bottom 0 with missing trailing axes as 1s (the forks read (num, channels, height, width))."""
    shape = ctx.in_shape()
    if len(shape) == 4:
        return x
    full = tuple(shape) + (1,) * (4 - len(shape))
    return ctx.g.reshape(x, ctx.target(full, tuple(ctx.in_varying()) + (False,) * (4 - len(shape))))


def _segnet_batch_norm(ctx: LayerExport, x: str, scale: str, shift: str) -> None:
    """SegNet's LEARN mode: this batch's mean and variance ``E[x^2] - E[x]^2`` (clamped at 0) over N, H, W."""
    g = ctx.g
    axes = [0, 2, 3]
    mean = g.reduce("ReduceMean", x, axes, keepdims=True)
    mean_square = g.reduce("ReduceMean", g.node("Mul", [x, x]), axes, keepdims=True)
    var = g.node("Max", [g.node("Sub", [mean_square, g.node("Mul", [mean, mean])]), g.const(0.0, "zero")])
    std = g.node("Sqrt", [g.node("Add", [var, g.const(SEGNET_EPS, "eps")])])
    x_norm = g.node("Div", [g.node("Sub", [x, mean]), std])
    g.node("Add", [g.node("Mul", [x_norm, scale]), shift], ctx.out(0))
    if ctx.num_tops > 1:
        g.node("Identity", [mean], ctx.out(1))
    if ctx.num_tops > 2:
        g.node("Identity", [var], ctx.out(2))


@converts("BN")
def _bn(ctx: LayerExport) -> None:
    layer, g = ctx.layer, ctx.g
    x = _as_4d(ctx, ctx.x())
    if layer.variant == "SegNet":
        scale = g.const(ctx.blob(0), f"{ctx.name}_scale")
        shift = g.const(ctx.blob(1), f"{ctx.name}_shift")
        if layer.learn:
            _segnet_batch_norm(ctx, x, scale, shift)
        else:
            g.node("Add", [g.node("Mul", [x, scale]), shift], ctx.out())
        return
    if not layer.use_global_stats:
        raise ctx.refuse("it normalises with batch statistics only in TRAIN, and the exported net is a TEST net")
    names = ("slope", "bias", "mean", "var")
    params = [g.const(ctx.blob(k).reshape(-1), f"{ctx.name}_{names[k]}") for k in range(4)]
    four_d = len(ctx.in_shape()) == 4
    y = g.node("BatchNormalization", [x, *params], ctx.out() if four_d else None, epsilon=layer.eps)
    if not four_d:
        ctx.reshape_out(y)


# --- resizing ------------------------------------------------------------------------------------------
def _sizes(ctx: LayerExport, x: str, spatial: tuple[int, int]) -> str:
    """Resize's ``sizes``: (N, C) of ``x`` and the new height and width (N read at run time when it varies)."""
    g = ctx.g
    shape = ctx.out_shape()
    if not any(ctx.out_varying()):
        return g.ints([shape[0], shape[1], *spatial], "sizes")
    lead = g.slice(g.node("Shape", [x]), [0], [2], [0])
    return g.node("Concat", [lead, g.ints(list(spatial), "spatial")], axis=0)


@converts("Interp")
def _interp(ctx: LayerExport) -> None:
    """Crop by ``pad_beg``/``pad_end``, then bilinear Resize with aligned corners (the fork's sampling)."""
    layer, g = ctx.layer, ctx.g
    x = _as_4d(ctx, ctx.x())
    begin = -layer.pad_beg
    if begin or layer.pad_end:
        ends = [begin + layer.eff[0], begin + layer.eff[1]]
        x = g.slice(x, [begin, begin], ends, [2, 3])
    g.node(
        "Resize",
        [x, "", "", _sizes(ctx, x, layer.out)],
        ctx.out(),
        mode="linear",
        coordinate_transformation_mode="align_corners",
    )


def _mask_source(ctx: LayerExport):
    """The Pooling layer whose mask top is bottom 1 (through Splits), or None."""
    name = ctx.rec.bottom_names[1]
    for rec in reversed(ctx.view.records[: ctx.index]):
        if name not in rec.top_names:
            continue
        if rec.layer.type_name == "Split":
            name = rec.bottom_names[0]
            continue
        if rec.layer.type_name == "Pooling" and rec.top_names.index(name) == 1:
            return rec.layer
        return None
    return None


def _unpool(ctx: LayerExport) -> None:
    """SegNet's max-unpooling: each value scattered to the position its mask names in a zero plane."""
    g = ctx.g
    pool = _mask_source(ctx)
    win = pool.pooler.windows if pool is not None else None
    if win is None or any(st < k for st, k in zip(win.stride, win.kernel, strict=True)):
        raise ctx.refuse(
            "its mask must be the mask top of a MAX Pooling layer whose windows do not overlap (stride >= kernel): "
            "otherwise two values may land on one position, and ONNX leaves the winner of such a scatter to the "
            "runtime"
        )
    n, c, h, w = ctx.out_shape()
    flat_shape = [0, 0, -1]
    values = g.reshape(ctx.x(0), flat_shape)
    index = g.node("Cast", [g.reshape(ctx.x(1), flat_shape)], to=g.onnx.TensorProto.INT64)
    if any(ctx.out_varying()):
        lead = g.slice(g.node("Shape", [ctx.x(0)]), [0], [2], [0])
        zeros_shape = g.node("Concat", [lead, g.ints([h * w], "plane")], axis=0)
    else:
        zeros_shape = g.ints([n, c, h * w], "plane_shape")
    zero = g.onnx.helper.make_tensor("zero", g.onnx.TensorProto.FLOAT, [1], [0.0])
    zeros = g.node("ConstantOfShape", [zeros_shape], value=zero)
    planes = g.node("ScatterElements", [zeros, index, values], axis=2)
    g.reshape(planes, [0, 0, h, w], ctx.out())


@converts("Upsample")
def _upsample(ctx: LayerExport) -> None:
    """Two bottoms: SegNet's max-unpooling. One bottom: nearest-neighbour upsampling by ``scale``."""
    if ctx.layer.unpool:
        _unpool(ctx)
        return
    g = ctx.g
    s = float(ctx.layer.scale)
    scales = [1.0] * (len(ctx.in_shape()) - 2) + [s, s]
    g.node(
        "Resize",
        [ctx.x(), "", g.const(scales, "scales")],
        ctx.out(),
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


# --- DeepLab v1 ----------------------------------------------------------------------------------------
@converts("Padding")
def _padding(ctx: LayerExport) -> None:
    """Zero padding (both amounts >= 0) or cropping (both <= 0) of the two spatial axes."""
    g = ctx.g
    beg, end = ctx.layer.beg, ctx.layer.end
    if beg >= 0 and end >= 0:
        g.node("Pad", [ctx.x(), g.ints([0, 0, beg, beg, 0, 0, end, end], "pads")], ctx.out())
        return
    h, w = ctx.in_shape()[2:]
    g.slice(ctx.x(), [-beg, -beg], [h + end, w + end], [2, 3], out=ctx.out())


refuse("it writes MATLAB files while the net runs, which an ONNX model cannot do", "MatWrite")

refuse(
    "it decodes boxes and runs per-class non-maximum suppression with keep_top_k into an output whose size "
    "depends on the data; ONNX's NonMaxSuppression does not reproduce its ordering, ties and adaptive "
    "threshold (eta) exactly. Export the net without it (its inputs, e.g. the mbox_loc, mbox_conf_flatten and "
    "mbox_priorbox blobs, become outputs) and decode outside the model",
    "DetectionOutput",
    "Yolov3DetectionOutput",
)
refuse(
    "there is no verified exact ONNX form of its region pooling (Fast R-CNN's rounding of box corners and bin "
    "edges); the boxes also come from a proposal step outside ONNX",
    "ROIPooling",
    "PSROIPooling",
)
refuse(
    "it only trains or evaluates a detector (it needs ground-truth boxes); export the deploy net",
    "MultiBoxLoss",
    "DetectionEvaluate",
    "SmoothL1Loss",
)
