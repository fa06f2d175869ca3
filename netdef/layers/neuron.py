"""Element-wise (neuron) layers: activations, Power/Exp/Log, Threshold, Clip and Dropout.

Every layer here has one bottom and one top of the same shape and may run in
place (``top: "x"`` equal to ``bottom: "x"``). Forward passes assign a new array
to ``top[0].data``, so a layer that needs its input in the backward pass keeps a
reference to the bottom array it read (``self._x``): that array is never written
afterwards, even in place, and no copy is made. Layers whose gradient can be
told from the top (Sigmoid, TanH, ReLU and ELU with non-negative slope/alpha)
keep nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy

from .. import backend
from ..blob import Blob
from ..errors import ShapeMismatchError
from ..proto import netdef_pb2 as pb
from .base import NeuronLayer, register_layer


def _sigmoid(xp, x):
    # tanh form: no overflow in exp for large |x| (Caffe computes it the same way)
    return 0.5 * xp.tanh(0.5 * x) + 0.5


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """Rectified linear unit, optionally leaky (Caffe type ``ReLU``).

    ``y = max(x, 0) + negative_slope * min(x, 0)``;
    ``dx = dy * (1 if x > 0 else negative_slope)``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.negative_slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        # With a non-negative slope, y > 0 exactly where x > 0: backward reads the top and an
        # in-place ReLU keeps no second activation-sized array alive.
        self._x = x if self.negative_slope < 0 else None
        if self.negative_slope == 0.0:
            top[0].data = xp.maximum(x, 0)
        else:
            top[0].data = xp.maximum(x, 0) + self.negative_slope * xp.minimum(x, 0)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        positive = (top[0].data if self._x is None else self._x) > 0
        if self.negative_slope == 0.0:
            bottom[0].diff = dy * positive
        else:
            bottom[0].diff = backend.array_module(dy).where(positive, dy, dy * self.negative_slope)


@register_layer("PReLU")
class PReLULayer(NeuronLayer):
    """Parametric ReLU with a learned negative slope per channel (Caffe type ``PReLU``).

    ``y = max(x, 0) + a_c * min(x, 0)`` with ``c`` the index on axis 1.
    Blob 0 holds the slopes: shape ``(C,)``, or 0-D when ``channel_shared``
    (default filler: constant 0.25).

    Bottom: ``(N, C, ...)``, at least 2 axes. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        p = self.param.prelu_param
        if bottom[0].num_axes < 2:
            raise self.error(
                f"needs a bottom with at least 2 axes (N, C, ...). Received shape {bottom[0].shape}",
                ShapeMismatchError,
            )
        self.channel_shared = bool(p.channel_shared)
        shape = () if self.channel_shared else (bottom[0].shape[1],)
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = pb.FillerParameter(type="constant", value=0.25)
        self.blobs = [self.filled_blob(shape, filler)]

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise self.error(
                f"needs a bottom with at least 2 axes (N, C, ...). Received shape {bottom[0].shape}",
                ShapeMismatchError,
            )
        want = 1 if self.channel_shared else bottom[0].shape[1]
        if self.blobs[0].count != want:
            raise self.error(
                f"the slope blob has {self.blobs[0].count} values but needs {want} "
                f"({'channel_shared' if self.channel_shared else 'one per channel of bottom ' + str(bottom[0].shape)})",
                ShapeMismatchError,
            )
        top[0].reshape(bottom[0].shape)

    def _slope(self, ndim):
        a = self.blobs[0].data
        if self.channel_shared:
            return a.reshape((1,) * ndim)
        return a.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        self._x = x
        top[0].data = xp.maximum(x, 0) + self._slope(x.ndim) * xp.minimum(x, 0)

    def backward(self, top, propagate_down, bottom):
        x, dy = self._x, top[0].diff
        xp = backend.array_module(dy)
        negative = x <= 0
        if self.param_propagate_down and self.param_propagate_down[0]:
            contrib = dy * x * negative
            axes = tuple(range(x.ndim)) if self.channel_shared else (0,) + tuple(range(2, x.ndim))
            self.blobs[0].diff += contrib.sum(axis=axes).reshape(self.blobs[0].shape)
        if propagate_down[0]:
            bottom[0].diff = xp.where(negative, dy * self._slope(x.ndim), dy)


@register_layer("ELU")
class ELULayer(NeuronLayer):
    """Exponential linear unit (Caffe type ``ELU``).

    ``y = x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise;
    ``dx = dy`` for ``x > 0``, ``dy * (y + alpha)`` otherwise.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        self.alpha = float(self.param.elu_param.alpha)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        # For alpha >= 0 the sign of y is that of x, so only the top is needed in backward.
        self._x = x if self.alpha < 0 else None
        top[0].data = xp.maximum(x, 0) + self.alpha * (xp.exp(xp.minimum(x, 0)) - 1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        positive = (y if self._x is None else self._x) > 0
        bottom[0].diff = backend.array_module(dy).where(positive, dy, dy * (y + self.alpha))


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """Logistic sigmoid (Caffe type ``Sigmoid``).

    ``y = 1 / (1 + exp(-x))``; ``dx = dy * y * (1 - y)``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data = _sigmoid(backend.array_module(x), x)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff = top[0].diff * y * (1 - y)


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    """Hyperbolic tangent (Caffe type ``TanH``).

    ``y = tanh(x)``; ``dx = dy * (1 - y^2)``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data = backend.array_module(x).tanh(x)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff = top[0].diff * (1 - y * y)


@register_layer("AbsVal")
class AbsValLayer(NeuronLayer):
    """Absolute value (Caffe type ``AbsVal``).

    ``y = |x|``; ``dx = sign(x) * dy`` (0 at ``x = 0``).

    Bottom: any shape. Top: same shape as the bottom. (Caffe refuses in-place
    use; netdef allows it.)
    """

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = x
        top[0].data = backend.array_module(x).abs(x)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff
            bottom[0].diff = dy * backend.array_module(dy).sign(self._x)


@register_layer("Power")
class PowerLayer(NeuronLayer):
    """Power of an affine function (Caffe type ``Power``).

    ``y = (shift + scale * x) ^ power``;
    ``dx = dy * power * scale * (shift + scale * x) ^ (power - 1)``.
    When ``power * scale == 0`` the output is the constant ``shift ^ power``
    (1 when ``power == 0``) and the gradient is 0.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        self._x = x
        if self.diff_scale == 0:
            with numpy.errstate(invalid="ignore", divide="ignore"):
                value = 1.0 if self.power == 0 else float(numpy.power(numpy.float64(self.shift), self.power))
            top[0].data = xp.full(x.shape, value, dtype=x.dtype)
            return
        base = x * self.scale + self.shift if (self.scale != 1 or self.shift != 0) else x
        top[0].data = base if self.power == 1 else xp.power(base, self.power)
        if top[0].data is x:
            top[0].data = x.copy()

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        xp = backend.array_module(dy)
        if self.diff_scale == 0:
            bottom[0].diff = xp.zeros_like(dy)
        elif self.power == 1:
            bottom[0].diff = dy * self.diff_scale
        elif self.power == 2:
            bottom[0].diff = dy * (self.diff_scale * (self.scale * self._x + self.shift))
        else:
            # The derivative is computed directly, not as y / base as in Caffe, so that a zero
            # base gives the true derivative rather than NaN.
            base = self.scale * self._x + self.shift
            bottom[0].diff = dy * (self.diff_scale * xp.power(base, self.power - 1))


def _log_of_base(layer, base: float) -> float:
    if base == -1:
        return 1.0
    if not base > 0:
        raise layer.error(f"base must be strictly positive, or -1 for e. Received: base {base}. Valid: > 0 or -1")
    return math.log(base)


@register_layer("Exp")
class ExpLayer(NeuronLayer):
    """Exponential (Caffe type ``Exp``).

    ``y = base ^ (shift + scale * x)`` (``base == -1`` means e);
    ``dx = dy * y * ln(base) * scale``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        p = self.param.exp_param
        base = float(p.base)
        log_base = _log_of_base(self, base)
        self.inner_scale = log_base * float(p.scale)
        shift = float(p.shift)
        if shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1 else base**shift

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        y = xp.exp(x if self.inner_scale == 1 else self.inner_scale * x)
        top[0].data = y if self.outer_scale == 1 else y * self.outer_scale

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = top[0].diff * top[0].data
            bottom[0].diff = g if self.inner_scale == 1 else g * self.inner_scale


@register_layer("Log")
class LogLayer(NeuronLayer):
    """Logarithm (Caffe type ``Log``).

    ``y = log_base(shift + scale * x)`` (``base == -1`` means e);
    ``dx = dy * scale / ((shift + scale * x) * ln(base))``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        p = self.param.log_param
        base = float(p.base)
        log_base = _log_of_base(self, base)
        if log_base == 0:
            raise self.error(f"base 1 has no logarithm (ln(1) = 0). Received: base {base}. Valid: > 0 and != 1, or -1")
        self.base_scale = 1.0 / log_base
        self.input_scale, self.input_shift = float(p.scale), float(p.shift)
        self.backward_num_scale = self.input_scale / log_base

    def _affine(self, x):
        if self.input_scale != 1:
            x = x * self.input_scale
        if self.input_shift != 0:
            x = x + self.input_shift
        return x

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = x
        y = backend.array_module(x).log(self._affine(x))
        top[0].data = y if self.base_scale == 1 else y * self.base_scale

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff = top[0].diff * (self.backward_num_scale / self._affine(self._x))


@register_layer("BNLL")
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood, i.e. softplus (Caffe type ``BNLL``).

    ``y = log(1 + exp(x))`` (evaluated as ``max(x, 0) + log(1 + exp(-|x|))``);
    ``dx = dy * sigmoid(x)``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        self._x = x
        top[0].data = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x
            xp = backend.array_module(x)
            # exp(x) / (1 + exp(x)) as Caffe, arranged so that exp never overflows and tiny values survive
            e = xp.exp(-xp.abs(x))
            numerator = e + (x >= 0) * (1 - e)
            bottom[0].diff = top[0].diff * (numerator / (1 + e))


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """Step function (Caffe type ``Threshold``).

    ``y = 1 if x > threshold else 0``. The gradient is zero almost everywhere:
    Caffe aborts when asked for it, netdef writes zeros.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data = (x > self.threshold).astype(x.dtype)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff
            bottom[0].diff = backend.array_module(dy).zeros_like(dy)


@register_layer("Swish")
class SwishLayer(NeuronLayer):
    """Swish / SiLU (Caffe type ``Swish``).

    ``y = x * sigmoid(beta * x)``;
    ``dx = dy * (beta * y + sigmoid(beta * x) * (1 - beta * y))``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        self.beta = float(self.param.swish_param.beta)

    def forward(self, bottom, top):
        x = bottom[0].data
        s = _sigmoid(backend.array_module(x), self.beta * x)
        self._sig = s
        top[0].data = x * s

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            by = self.beta * top[0].data
            bottom[0].diff = top[0].diff * (by + self._sig * (1 - by))


@register_layer("Clip")
class ClipLayer(NeuronLayer):
    """Clamp to an interval (Caffe type ``Clip``).

    ``y = max(min, min(x, max))``; ``dx = dy`` where ``min <= x <= max``, else 0.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        p = self.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error(
                f"clip_param needs both min and max. Received: "
                f"min {'set' if p.HasField('min') else 'missing'}, max {'set' if p.HasField('max') else 'missing'}"
            )
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise self.error(
                f"clip_param min must not exceed max. Received: min {self.lo}, max {self.hi}. Valid: min <= max"
            )

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = x
        top[0].data = backend.array_module(x).clip(x, self.lo, self.hi)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x
            bottom[0].diff = top[0].diff * ((x >= self.lo) & (x <= self.hi))


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """Inverted dropout (Caffe type ``Dropout``).

    TRAIN: ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` drawn from
    netdef's random stream (reproducible with ``netdef.set_random_seed``);
    ``dx = dy * m / (1 - p)``. TEST: ``y = x``, ``dx = dy``.
    ``p`` is ``dropout_param.dropout_ratio``.

    Bottom: any shape. Top: same shape as the bottom.
    """

    def setup(self, bottom, top):
        ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= ratio < 1.0:
            raise self.error(f"dropout_ratio must be a probability below 1. Received: {ratio}. Valid: 0 <= ratio < 1")
        self.ratio = ratio
        self.scale = 1.0 / (1.0 - ratio)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.phase != pb.TRAIN:
            if top[0] is not bottom[0]:
                top[0].data[...] = x
            return
        xp = backend.array_module(x)
        keep = self.rng.uniform(xp, x.shape, dtype=x.dtype) >= self.ratio
        self._mask = keep.astype(x.dtype) * x.dtype.type(self.scale)
        top[0].data = x * self._mask

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase != pb.TRAIN:
            if top[0] is not bottom[0]:
                bottom[0].diff[...] = top[0].diff
            return
        bottom[0].diff = top[0].diff * self._mask
