"""ONNX forms of the vision layers: the convolutions, Im2col, Pooling (Caffe's geometry), SPP and LRN.

Caffe's pooling does not match ONNX's ``ceil_mode`` rules, so the exporter never relies on
them: the output size netdef computes (rounded up, a last window starting in the padding
dropped) is reached with explicit end padding and ``ceil_mode: 0``. MAX pooling pads with
values that never win; AVE pooling pads with zeros and then divides as Caffe does (by the
window clipped to the input plus its padding), with a constant correction where that differs
from the kernel area.
"""

from __future__ import annotations

import math

import numpy

from ..layers.pooling import PoolWindows
from ..proto import netdef_pb2 as pb
from .context import LayerExport
from .registry import converts

_MAX, _AVE, _STOCHASTIC = pb.PoolingParameter.MAX, pb.PoolingParameter.AVE, pb.PoolingParameter.STOCHASTIC


# --- convolutions ---------------------------------------------------------------------------------
def _as_batch_of_images(ctx: LayerExport, value: str, i: int, axis: int) -> str:
    """Bottom ``i`` viewed as ``(count(0, axis), C, *spatial)``, for a channel axis other than 1."""
    shape, varying = ctx.in_shape(i), ctx.in_varying(i)
    folded = (math.prod(shape[:axis]), *shape[axis:])
    return ctx.g.reshape(value, ctx.target(folded, (any(varying[:axis]), *varying[axis:])))


def _conv_attrs(layer) -> dict:
    return {
        "kernel_shape": list(layer.kernel),
        "strides": list(layer.stride),
        "pads": list(layer.pad) * 2,
        "dilations": list(layer.dilation),
        "group": int(layer.group),
    }


@converts("Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution")
def _convolution(ctx: LayerExport) -> None:
    """Conv / ConvTranspose with Caffe's weights as they are (same layouts); one node per bottom."""
    layer, g = ctx.layer, ctx.g
    op = "ConvTranspose" if layer.transposed else "Conv"
    inputs = [g.const(ctx.blob(0), f"{ctx.name}_weight")]
    if layer.bias_term:
        inputs.append(g.const(ctx.blob(1), f"{ctx.name}_bias"))
    for i in range(ctx.num_bottoms):
        x = ctx.x(i)
        if layer.axis != 1:
            y = g.node(op, [_as_batch_of_images(ctx, x, i, layer.axis), *inputs], **_conv_attrs(layer))
            ctx.reshape_out(y, i)
        else:
            g.node(op, [x, *inputs], ctx.out(i), **_conv_attrs(layer))


@converts("Im2col")
def _im2col(ctx: LayerExport) -> None:
    """A grouped convolution whose filters pick one kernel offset each (one-hot), in Caffe's row order."""
    layer, g = ctx.layer, ctx.g
    taps = math.prod(layer.kernel)
    one_hot = numpy.eye(taps, dtype=numpy.float32).reshape(taps, 1, *layer.kernel)
    weight = numpy.tile(one_hot, (layer.channels, 1) + (1,) * len(layer.kernel))
    attrs = {
        "kernel_shape": list(layer.kernel),
        "strides": list(layer.stride),
        "pads": list(layer.pad) * 2,
        "dilations": list(layer.dilation),
        "group": int(layer.channels),
    }
    x = ctx.x()
    if layer.axis != 1:
        y = g.node("Conv", [_as_batch_of_images(ctx, x, 0, layer.axis), g.const(weight, f"{ctx.name}_taps")], **attrs)
        ctx.reshape_out(y)
    else:
        g.node("Conv", [x, g.const(weight, f"{ctx.name}_taps")], ctx.out(), **attrs)


# --- pooling ---------------------------------------------------------------------------------------
def _end_padding(ctx: LayerExport, win: PoolWindows) -> list[int]:
    """Padding after the input that makes floor-mode pooling produce Caffe's output size."""
    ends = []
    for s, k, st, p, o in zip(win.in_hw, win.kernel, win.stride, win.pad, win.out_hw, strict=True):
        end = (o - 1) * st + k - s - p
        if end >= k:
            raise ctx.refuse(
                f"its last pooling window starts beyond the input (input {win.in_hw}, kernel {win.kernel}, stride "
                f"{win.stride}, pad {win.pad} -> output {win.out_hw}); Caffe fills such windows with -FLT_MAX or "
                "0/0, which ONNX pooling cannot reproduce"
            )
        ends.append(max(end, 0))
    return ends


def max_pool(ctx: LayerExport, x: str, win: PoolWindows, out: str | None = None, mask: str | None = None) -> str:
    """Caffe's MAX pooling of ``x``; with ``mask``, also the argmax as a float index ``h * W + w`` per plane."""
    g = ctx.g
    if win.is_global and mask is None:
        return g.node("GlobalMaxPool", [x], out)
    attrs = {
        "kernel_shape": list(win.kernel),
        "strides": list(win.stride),
        "pads": [*win.pad, *_end_padding(ctx, win)],
    }
    if mask is None:
        return g.node("MaxPool", [x], out, **attrs)
    y, index = g.multi("MaxPool", [x], [out or g.fresh("pool"), g.fresh("argmax")], **attrs)
    plane = g.node("Mod", [index, g.const(win.in_hw[0] * win.in_hw[1], "plane", numpy.int64)])
    g.node("Cast", [plane], mask, to=g.onnx.TensorProto.FLOAT)
    return y


def _zero_padded(ctx: LayerExport, x: str, win: PoolWindows) -> str:
    """``x`` with Caffe's zero padding before and the end padding after (``x`` itself when none)."""
    ends = _end_padding(ctx, win)
    if not any(win.pad) and not any(ends):
        return x
    pads = [0, 0, *win.pad, 0, 0, *ends]
    return ctx.g.node("Pad", [x, ctx.g.ints(pads, "pads")])


def ave_pool(ctx: LayerExport, x: str, win: PoolWindows, out: str | None = None) -> str:
    """Caffe's AVE pooling: zero padding counts in the divisor, the overhang past it does not."""
    g = ctx.g
    if win.is_global:
        return g.node("GlobalAveragePool", [x], out)
    area = numpy.float32(win.kernel[0] * win.kernel[1])
    divisors = win.divisors(numpy, numpy.float32)
    fix = None if bool(numpy.all(divisors == area)) else area / divisors
    y = g.node(
        "AveragePool",
        [_zero_padded(ctx, x, win)],
        out if fix is None else None,
        kernel_shape=list(win.kernel),
        strides=list(win.stride),
    )
    if fix is None:
        return y
    return g.node("Mul", [y, g.const(fix, "divisor_fix")], out)


def stochastic_test_pool(ctx: LayerExport, x: str, win: PoolWindows, out: str | None = None) -> str:
    """STOCHASTIC pooling at test time: ``sum(x^2) / sum(x)`` per window, 0 where the sum is not positive."""
    g = ctx.g
    attrs = {"kernel_shape": list(win.kernel), "strides": list(win.stride)}
    padded = _zero_padded(ctx, x, win)
    # Both sums are taken as means over the same window: their ratio is the ratio of the sums.
    s1 = g.node("AveragePool", [padded], **attrs)
    s2 = g.node("AveragePool", [g.node("Mul", [padded, padded])], **attrs)
    positive = g.node("Greater", [s1, g.const(0.0, "zero")])
    return g.node("Where", [positive, g.node("Div", [s2, s1]), g.const(0.0, "zero")], out)


def _pool(ctx: LayerExport, method: int, x: str, win: PoolWindows, out: str | None = None) -> str:
    if method == _MAX:
        return max_pool(ctx, x, win, out)
    if method == _AVE:
        return ave_pool(ctx, x, win, out)
    return stochastic_test_pool(ctx, x, win, out)


@converts("Pooling")
def _pooling(ctx: LayerExport) -> None:
    windows = ctx.layer.pooler.windows
    method = ctx.layer.method
    if ctx.num_tops == 2:
        out = ctx.out(0)
        max_pool(ctx, ctx.x(), windows, out, mask=ctx.out(1))
        return
    _pool(ctx, method, ctx.x(), windows, ctx.out())


@converts("SPP")
def _spp(ctx: LayerExport) -> None:
    """Each pyramid level pooled with its own geometry, flattened and concatenated (one level: not flattened)."""
    layer, g = ctx.layer, ctx.g
    if layer.method == _STOCHASTIC:
        raise ctx.refuse("its STOCHASTIC pooling samples at random even in a TEST net (as in Caffe)")
    if layer.height == 1:
        _pool(ctx, layer.method, ctx.x(), layer.poolers[0].windows, ctx.out())
        return
    parts = [g.node("Flatten", [_pool(ctx, layer.method, ctx.x(), p.windows)], axis=1) for p in layer.poolers]
    g.node("Concat", parts, ctx.out(), axis=1)


# --- LRN ----------------------------------------------------------------------------------------------
@converts("LRN")
def _lrn(ctx: LayerExport) -> None:
    """ACROSS_CHANNELS is ONNX's LRN; WITHIN_CHANNEL is ``x * (1 + alpha * avgpool(x^2))^-beta``."""
    layer, g = ctx.layer, ctx.g
    x = ctx.x()
    if not layer.within:
        g.node("LRN", [x], ctx.out(), size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
        return
    mean_square = ave_pool(ctx, g.node("Mul", [x, x]), layer.windows)
    scale = g.node("Add", [g.const(1.0, "one"), g.scaled(mean_square, layer.alpha)])
    g.node("Mul", [x, g.node("Pow", [scale, g.const(-layer.beta, "exponent")])], ctx.out())
