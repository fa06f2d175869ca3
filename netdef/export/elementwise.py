"""ONNX forms of the element-wise and fully connected layers: neurons, Softmax, InnerProduct, Eltwise,
Reduction, ArgMax, Embed, the normalisations (BatchNorm, Scale, Bias, MVN) and LSTMUnit.

Each converter writes the operations netdef's forward performs, in the same order where the order
decides the rounding (Eltwise SUM, Power's affine base, MVN), so the exported model and netdef agree
to float32 rounding.
"""

from __future__ import annotations

import math

import numpy

from .context import LayerExport
from .registry import converts

_SUMMARY_OPS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}


def _channel_shape(ndim: int, channels: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector (axis 1) over an ``ndim``-axis tensor."""
    return (channels,) + (1,) * max(ndim - 2, 0)


# --- neurons -------------------------------------------------------------------------------------
@converts("ReLU")
def _relu(ctx: LayerExport) -> None:
    slope = ctx.layer.negative_slope
    if slope == 0:
        ctx.g.node("Relu", [ctx.x()], ctx.out())
    else:
        ctx.g.node("LeakyRelu", [ctx.x()], ctx.out(), alpha=slope)


@converts("PReLU")
def _prelu(ctx: LayerExport) -> None:
    slope = ctx.blob(0)
    ndim = len(ctx.in_shape())
    shape = (1,) if ctx.layer.channel_shared else _channel_shape(ndim, slope.size)
    ctx.g.node("PRelu", [ctx.x(), ctx.g.const(slope.reshape(shape), f"{ctx.name}_slope")], ctx.out())


@converts("ELU")
def _elu(ctx: LayerExport) -> None:
    ctx.g.node("Elu", [ctx.x()], ctx.out(), alpha=ctx.layer.alpha)


_UNARY = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


@converts(*_UNARY)
def _unary(ctx: LayerExport) -> None:
    ctx.g.node(_UNARY[ctx.type_name], [ctx.x()], ctx.out())


@converts("Dropout")
def _dropout(ctx: LayerExport) -> None:
    """Identity: the exported net is a TEST net, where Caffe's Dropout passes its input on."""
    ctx.alias(0, ctx.x())


@converts("Power")
def _power(ctx: LayerExport) -> None:
    """``(shift + scale * x) ^ power``; a constant when ``power * scale`` is 0, as in netdef."""
    layer, g = ctx.layer, ctx.g
    x = ctx.x()
    if layer.diff_scale == 0:
        with numpy.errstate(invalid="ignore", divide="ignore"):
            value = 1.0 if layer.power == 0 else float(numpy.power(numpy.float64(layer.shift), layer.power))
        g.node("Expand", [g.const(value, "constant"), g.node("Shape", [x])], ctx.out())
        return
    base = g.scaled(x, layer.scale)
    if layer.shift != 0:
        base = g.node("Add", [base, g.const(layer.shift, "shift")])
    if layer.power == 1:
        if base == x:
            ctx.alias(0, x)
        else:
            g.node("Identity", [base], ctx.out())
        return
    g.node("Pow", [base, g.const(layer.power, "exponent")], ctx.out())


@converts("Exp")
def _exp(ctx: LayerExport) -> None:
    layer, g = ctx.layer, ctx.g
    y = g.node("Exp", [g.scaled(ctx.x(), layer.inner_scale)])
    g.node("Mul", [y, g.const(layer.outer_scale, "factor")], ctx.out())


@converts("Log")
def _log(ctx: LayerExport) -> None:
    layer, g = ctx.layer, ctx.g
    base = g.scaled(ctx.x(), layer.input_scale)
    if layer.input_shift != 0:
        base = g.node("Add", [base, g.const(layer.input_shift, "shift")])
    y = g.node("Log", [base])
    g.node("Mul", [y, g.const(layer.base_scale, "factor")], ctx.out())


@converts("Threshold")
def _threshold(ctx: LayerExport) -> None:
    g = ctx.g
    above = g.node("Greater", [ctx.x(), g.const(ctx.layer.threshold, "threshold")])
    g.node("Cast", [above], ctx.out(), to=g.onnx.TensorProto.FLOAT)


@converts("Swish")
def _swish(ctx: LayerExport) -> None:
    g = ctx.g
    x = ctx.x()
    g.node("Mul", [x, g.node("Sigmoid", [g.scaled(x, ctx.layer.beta)])], ctx.out())


@converts("Clip")
def _clip(ctx: LayerExport) -> None:
    ctx.g.clip(ctx.x(), ctx.layer.lo, ctx.layer.hi, ctx.out())


# --- fully connected and Softmax ---------------------------------------------------------------
@converts("InnerProduct")
def _inner_product(ctx: LayerExport) -> None:
    """Flatten from ``axis`` to ``(M, K)``, one Gemm, and the top's shape."""
    layer, g = ctx.layer, ctx.g
    rows = g.node("Flatten", [ctx.x()], axis=layer.axis)
    inputs = [rows, g.const(ctx.blob(0), f"{ctx.name}_weight")]
    if layer.bias_term:
        inputs.append(g.const(ctx.blob(1), f"{ctx.name}_bias"))
    two_d = layer.axis == 1 and len(ctx.out_shape()) == 2
    y = g.node("Gemm", inputs, ctx.out() if two_d else None, transB=0 if layer.transpose else 1)
    if not two_d:
        ctx.reshape_out(y)


@converts("Softmax")
def _softmax(ctx: LayerExport) -> None:
    ctx.g.node("Softmax", [ctx.x()], ctx.out(), axis=ctx.layer.axis)


# --- Eltwise, Reduction, ArgMax, Embed -----------------------------------------------------------
@converts("Eltwise")
def _eltwise(ctx: LayerExport) -> None:
    """PROD and SUM pairwise left to right (netdef's order), MAX in one Max node."""
    layer, g = ctx.layer, ctx.g
    xs = [ctx.x(i) for i in range(ctx.num_bottoms)]
    if layer.op == layer.MAX:
        g.node("Max", xs, ctx.out())
        return
    if layer.op == layer.PROD:
        terms = xs
    else:
        terms = [g.scaled(x, c) for x, c in zip(xs, layer.coeffs, strict=True)]
    y = terms[0]
    op = "Mul" if layer.op == layer.PROD else "Add"
    for k, term in enumerate(terms[1:], start=2):
        y = g.node(op, [y, term], ctx.out() if k == len(terms) else None)


@converts("Reduction")
def _reduction(ctx: LayerExport) -> None:
    layer, g = ctx.layer, ctx.g
    if layer.op not in _SUMMARY_OPS:
        raise ctx.refuse(f"reduction_param.operation {layer.op} is not one of SUM, ASUM, SUMSQ, MEAN")
    x = ctx.x()
    if layer.op == layer.ASUM:
        x = g.node("Abs", [x])
    elif layer.op == layer.SUMSQ:
        x = g.node("Mul", [x, x])
    axes = list(range(layer.axis, len(ctx.in_shape())))
    total = g.reduce("ReduceSum", x, axes, keepdims=False, out=ctx.out() if layer.coeff == 1 else None)
    if layer.coeff != 1:
        g.node("Mul", [total, g.const(layer.coeff, "coeff")], ctx.out())


@converts("ArgMax")
def _argmax(ctx: LayerExport) -> None:
    """TopK on the reversed axis, so that equal values rank the larger index first (Caffe's order)."""
    layer, g = ctx.layer, ctx.g
    x = ctx.x()
    if layer.has_axis:
        axis = layer.axis
        length = ctx.in_shape()[axis]
    else:
        axis = 1
        length = math.prod(ctx.in_shape()[1:])
        x = g.node("Flatten", [x], axis=1)
    reversed_x = g.slice(x, [length - 1], [numpy.iinfo(numpy.int64).min], [axis], [-1])
    values, positions = g.multi(
        "TopK", [reversed_x, g.ints([layer.top_k], "k")], [g.fresh("top_values"), g.fresh("top_index")], axis=axis
    )
    index = g.node("Sub", [g.const(length - 1, "last", numpy.int64), positions])
    as_float = g.node("Cast", [index], to=g.onnx.TensorProto.FLOAT)
    if layer.has_axis:
        if layer.out_max_val:
            g.node("Identity", [values], ctx.out())
        else:
            g.node("Identity", [as_float], ctx.out())
        return
    rows = [g.unsqueeze(as_float, [1])]
    if layer.out_max_val:
        rows.append(g.unsqueeze(values, [1]))
    stacked = g.node("Concat", rows, axis=1) if len(rows) > 1 else rows[0]
    ctx.reshape_out(stacked)


@converts("Embed")
def _embed(ctx: LayerExport) -> None:
    """Float indices truncated to integers (netdef's cast), a Gather from the table, and the bias."""
    layer, g = ctx.layer, ctx.g
    index = g.node("Cast", [ctx.x()], to=g.onnx.TensorProto.INT64)
    table = g.const(ctx.blob(0), f"{ctx.name}_weight")
    rows = g.node("Gather", [table, index], None if layer.bias_term else ctx.out(), axis=0)
    if layer.bias_term:
        g.node("Add", [rows, g.const(ctx.blob(1), f"{ctx.name}_bias")], ctx.out())


# --- normalisation ---------------------------------------------------------------------------------
def _foldable_scale(ctx: LayerExport, channels: int):
    """The Scale layer that alone reads this layer's top, with a learned per-channel scale on axis 1, or None."""
    consumers = ctx.consumers(0)
    if len(consumers) != 1 or ctx.is_output(0):
        return None
    index, _ = consumers[0]
    rec = ctx.view.records[index]
    layer = rec.layer
    if layer.type_name != "Scale" or len(rec.bottom) != 1:
        return None
    ndim = len(ctx.out_shape())
    want = (1,) + _channel_shape(ndim, channels)
    if layer.blobs[0].shape != (channels,) or tuple(layer._scale_bc.view_shape) != want:
        return None
    if layer.bias_term and tuple(layer._bias_bc.view_shape) != want:
        return None
    return index, rec


def _batch_statistics(ctx: LayerExport, x: str, axes: list[int], eps: float, out: str) -> str:
    """``(x - mean) / sqrt(var + eps)`` with the mean and biased variance of this batch over ``axes``."""
    g = ctx.g
    d = g.node("Sub", [x, g.reduce("ReduceMean", x, axes, keepdims=True)])
    var = g.reduce("ReduceMean", g.node("Mul", [d, d]), axes, keepdims=True)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(eps, "eps")])])
    return g.node("Div", [d, std], out)


@converts("BatchNorm")
def _batch_norm(ctx: LayerExport) -> None:
    """The stored statistics as ONNX's BatchNormalization, with a following Scale layer folded in."""
    layer, g = ctx.layer, ctx.g
    x = ctx.x()
    ndim = len(ctx.in_shape())
    if not layer.use_global_stats:
        axes = [a for a in range(ndim) if a != 1 or ndim == 1]
        _batch_statistics(ctx, x, axes, layer.eps, ctx.out())
        return
    mean_sum, var_sum, factor = ctx.blob(0), ctx.blob(1), ctx.blob(2).reshape(-1)[:1]
    inv = (factor != 0) / (factor + (factor == 0))
    mean, var = (mean_sum * inv).astype(numpy.float32), (var_sum * inv).astype(numpy.float32)
    if ndim < 2:
        std = numpy.sqrt(var + numpy.float32(layer.eps)).astype(numpy.float32)
        d = g.node("Sub", [x, g.const(mean, f"{ctx.name}_mean")])
        g.node("Div", [d, g.const(std, f"{ctx.name}_std")], ctx.out())
        return
    gamma = numpy.ones_like(mean)
    beta = numpy.zeros_like(mean)
    folded = _foldable_scale(ctx, mean.size)
    if folded is not None:
        index, rec = folded
        gamma = rec.layer.blobs[0].data.astype(numpy.float32).reshape(-1)
        if rec.layer.bias_term:
            beta = rec.layer.blobs[1].data.astype(numpy.float32).reshape(-1)
    inputs = [gamma, beta, mean, var]
    names = [g.const(v, f"{ctx.name}_{k}") for v, k in zip(inputs, ("scale", "shift", "mean", "var"), strict=True)]
    y = g.node("BatchNormalization", [x, *names], ctx.out(), epsilon=layer.eps)
    if folded is not None:
        ctx.view.absorbed[folded[0]] = y


def _operand(ctx: LayerExport, blob_index: int | None, view_shape: tuple[int, ...], axis: int) -> str:
    """A Scale/Bias operand broadcast against bottom 0: a learned blob, or bottom 1 reshaped."""
    g = ctx.g
    if blob_index is not None:
        return g.const(ctx.blob(blob_index).reshape(view_shape), f"{ctx.name}_{blob_index}")
    shape, varying = ctx.in_shape(1), ctx.in_varying(1)
    # a scalar operand lines up anywhere (Caffe ignores the axis then)
    lead = (axis % len(view_shape)) if shape else 0
    full_varying = (False,) * lead + tuple(varying) + (False,) * (len(view_shape) - lead - len(shape))
    return g.reshape(ctx.x(1), ctx.target(view_shape, full_varying))


@converts("Scale")
def _scale(ctx: LayerExport) -> None:
    layer, g = ctx.layer, ctx.g
    view = tuple(layer._scale_bc.view_shape)
    factor = _operand(ctx, None if ctx.num_bottoms == 2 else 0, view, layer.param.scale_param.axis)
    y = g.node("Mul", [ctx.x(), factor], None if layer.bias_term else ctx.out())
    if layer.bias_term:
        bias = g.const(ctx.blob(len(layer.blobs) - 1).reshape(layer._bias_bc.view_shape), f"{ctx.name}_bias")
        g.node("Add", [y, bias], ctx.out())


@converts("Bias")
def _bias(ctx: LayerExport) -> None:
    view = tuple(ctx.layer._bc.view_shape)
    operand = _operand(ctx, None if ctx.num_bottoms == 2 else 0, view, ctx.layer.param.bias_param.axis)
    ctx.g.node("Add", [ctx.x(), operand], ctx.out())


@converts("MVN")
def _mvn(ctx: LayerExport) -> None:
    """``x - mean`` and, with ``normalize_variance``, divided by ``sqrt(var) + eps`` (eps on the deviation)."""
    layer, g = ctx.layer, ctx.g
    x = ctx.x()
    axes = list(range(1 if layer.across_channels else 2, len(ctx.in_shape())))

    def mean(v: str) -> str:
        # with no axis left to average over, every value is its own group (as in netdef)
        return g.reduce("ReduceMean", v, axes, keepdims=True) if axes else v

    d = g.node("Sub", [x, mean(x)], None if layer.normalize_variance else ctx.out())
    if not layer.normalize_variance:
        return
    deviation = g.node("Sqrt", [mean(g.node("Mul", [d, d]))])
    g.node("Div", [d, g.node("Add", [deviation, g.const(layer.eps, "eps")])], ctx.out())


# --- LSTMUnit -------------------------------------------------------------------------------------
@converts("LSTMUnit")
def _lstm_unit(ctx: LayerExport) -> None:
    """One LSTM step: gates i, f, o, g split from the last axis; f is exactly 0 where ``cont`` is 0."""
    g = ctx.g
    d = ctx.in_shape(0)[2]
    parts = g.split(ctx.x(1), [d] * 4, 2, [g.fresh(k) for k in ("gate_i", "gate_f", "gate_o", "gate_g")])
    i, f, o = (g.node("Sigmoid", [p]) for p in parts[:3])
    cell_in = g.node("Tanh", [parts[3]])
    cont = g.unsqueeze(ctx.x(2), [2])
    stopped = g.node("Equal", [cont, g.const(0.0, "zero")])
    f = g.node("Where", [stopped, g.const(0.0, "zero"), g.node("Mul", [cont, f])])
    c = g.node("Add", [g.node("Mul", [f, ctx.x(0)]), g.node("Mul", [i, cell_in])], ctx.out(0))
    g.node("Mul", [o, g.node("Tanh", [c])], ctx.out(1))
