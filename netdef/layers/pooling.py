"""Pooling layers: Pooling and SPP, and the 2-D pooling windows they (and LRN) are built on.

Pooling is separable: a window maximum (or sum) is taken along the width, then along the
height, each a loop over the kernel offsets of one axis, with strided views of the whole
batch (on NumPy arrays, contiguous slices of a phase layout: :mod:`netdef.layers.pool_kernels`). The
argmax is the first maximum in row-major scan order, as in Caffe.

The output size follows BVLC's rule. One fork rule can be switched on for the nets built
while it is in force (:func:`using_pooling_rule`, :func:`set_pooling_rule` or the environment
variable ``NETDEF_POOLING_RULE``): ``caffe-yolov3``, the patched Pooling of the
``ChenYingpeng/caffe-yolov3`` port, which darknet's size-2 stride-1 max pool needs to keep its size.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
from collections.abc import Iterator, Sequence

import numpy

from .. import backend, limits
from ..blob import Blob
from ..errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from ..proto import netdef_pb2 as pb
from .base import Layer, register_layer
from .im2col import interior
from .pool_kernels import PhasePlan

_MAX, _AVE, _STOCHASTIC = pb.PoolingParameter.MAX, pb.PoolingParameter.AVE, pb.PoolingParameter.STOCHASTIC
_POOL_NAMES = {_MAX: "MAX", _AVE: "AVE", _STOCHASTIC: "STOCHASTIC"}

log = logging.getLogger("netdef")

#: the output-size rules Pooling knows: BVLC's, and the caffe-yolov3 port's patched one
BVLC_RULE, YOLOV3_RULE = "bvlc", "caffe-yolov3"
POOLING_RULES = (BVLC_RULE, YOLOV3_RULE)
#: the environment variable that names the rule when no API call has set one
POOLING_RULE_ENV = "NETDEF_POOLING_RULE"
_process_rule: str | None = None
_scoped_rule: contextvars.ContextVar[str | None] = contextvars.ContextVar("pooling_rule", default=None)
_hinted = False


def _checked_rule(rule: str, where: str) -> str:
    if rule not in POOLING_RULES:
        raise InvalidParameterError(
            f"{where}: unknown pooling rule. Received: {rule!r}. Valid: {', '.join(repr(r) for r in POOLING_RULES)}"
        )
    return rule


def set_pooling_rule(rule: str | None) -> None:
    """Use ``rule`` for the Pooling layers of every net this process builds from now on.

    ``"bvlc"`` (BVLC Caffe's output size, the default) or ``"caffe-yolov3"`` (see
    :func:`pooled_shape`). None forgets the setting, so that ``NETDEF_POOLING_RULE`` decides
    again. A :func:`using_pooling_rule` block (and so ``Net(..., pooling_rule=...)``) wins over it.
    """
    global _process_rule
    _process_rule = None if rule is None else _checked_rule(rule, "set_pooling_rule")


@contextlib.contextmanager
def using_pooling_rule(rule: str | None) -> Iterator[None]:
    """Use ``rule`` for the Pooling layers of the nets built inside the block; None changes nothing."""
    if rule is None:
        yield
        return
    token = _scoped_rule.set(_checked_rule(rule, "using_pooling_rule"))
    try:
        yield
    finally:
        _scoped_rule.reset(token)


def current_pooling_rule() -> str:
    """The rule a Pooling layer set up now uses: the block's, else the process's, else the environment's."""
    for rule in (_scoped_rule.get(), _process_rule):
        if rule is not None:
            return rule
    value = os.environ.get(POOLING_RULE_ENV, "").strip()
    return _checked_rule(value, POOLING_RULE_ENV) if value else BVLC_RULE


def pooled_shape(
    in_hw: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    ceil_mode: bool = True,
    rule: str = BVLC_RULE,
) -> tuple[int, int]:
    """Caffe's pooled (height, width).

    Rounded up by default (down with ``ceil_mode=False``). With ``rule="caffe-yolov3"``, one
    is then added to both sizes whenever ``kernel_h - stride_h`` is odd and positive (the port's
    patch; its extra window is clipped at the bottom/right edge, as darknet's max pool is). With
    any padding, a last window that would start inside the bottom/right padding is then dropped,
    on both axes.
    """
    out = []
    for s, k, st, p in zip(in_hw, kernel, stride, pad, strict=True):
        span = s + 2 * p - k
        out.append((-(-span // st) if ceil_mode else span // st) + 1)
    # C++'s % keeps the sign, so the port's test "(kernel_h - stride_h) % 2 == 1" fails for negative odd differences
    if rule == YOLOV3_RULE and kernel[0] - stride[0] > 0 and (kernel[0] - stride[0]) % 2 == 1:
        out = [o + 1 for o in out]
    if any(pad):
        out = [o - 1 if (o - 1) * st >= s + p else o for o, st, s, p in zip(out, stride, in_hw, pad, strict=True)]
    return tuple(out)


def _index_dtype(k: int):
    return numpy.int8 if k < 128 else numpy.int32


class PoolWindows:
    """2-D pooling windows over ``(N, C, H, W)`` with Caffe's geometry, and the pooling kernels.

    MAX and AVE are separable: reduce along the width (one strided view per kernel column), then along
    the height. The argmax is stored per axis: ``aw`` (N, C, padded H, PW) is the first maximum's column
    offset in each row segment, ``ah`` (N, C, PH, PW) the first maximising row; together they give the
    first maximum of each window in row-major scan order, as Caffe's strict ``>`` scan does.

    NumPy arrays (but for global windows) take the same passes in the contiguous phase layout of
    :mod:`netdef.layers.pool_kernels`; CuPy arrays and STOCHASTIC pooling keep the strided views.
    """

    def __init__(
        self,
        in_hw: Sequence[int],
        kernel: Sequence[int],
        stride: Sequence[int],
        pad: Sequence[int],
        ceil_mode: bool = True,
        rule: str = BVLC_RULE,
    ):
        self.in_hw = tuple(int(v) for v in in_hw)
        self.kernel = tuple(int(v) for v in kernel)
        self.stride = tuple(int(v) for v in stride)
        self.pad = tuple(int(v) for v in pad)
        self.out_hw = pooled_shape(self.in_hw, self.kernel, self.stride, self.pad, ceil_mode, rule)
        # Rows/cols the windows touch: top/left padding, the image, and any bottom/right overhang.
        self.padded_hw = tuple(
            max(p + s, (o - 1) * st + k)
            for s, k, st, p, o in zip(self.in_hw, self.kernel, self.stride, self.pad, self.out_hw, strict=True)
        )
        self.needs_pad = any(self.pad) or self.padded_hw != self.in_hw
        self.overlap = tuple(st < k for st, k in zip(self.stride, self.kernel, strict=True))
        self.is_global = self.out_hw == (1, 1) and self.kernel == self.in_hw and not any(self.pad)
        self._plan: PhasePlan | None = None

    def plan(self, x) -> PhasePlan | None:
        """The NumPy phase-layout kernels for ``x`` (None for CuPy arrays and global windows: they keep the
        strided code)."""
        if self.is_global or backend.array_module(x) is not numpy:
            return None
        if self._plan is None:
            self._plan = PhasePlan(self)
        return self._plan

    # layout helpers ---------------------------------------------------------------------------
    def pad_input(self, x, fill):
        """``x`` placed in the padded grid, ``fill`` elsewhere (``x`` itself when nothing is padded)."""
        if not self.needs_pad:
            return x
        xp = backend.array_module(x)
        out = xp.full((*x.shape[:2], *self.padded_hw), fill, dtype=x.dtype)
        out[(slice(None), slice(None), *interior(self.pad, self.in_hw))] = x
        return out

    def unpad(self, a):
        if not self.needs_pad:
            return a
        xp = backend.array_module(a)
        return xp.ascontiguousarray(a[(slice(None), slice(None), *interior(self.pad, self.in_hw))])

    def axis_views(self, a, axis: int) -> Iterator[tuple[int, object]]:
        """``(offset, view)`` for each kernel offset along ``axis`` (2: height, 3: width)."""
        d = axis - 2
        k, s, o = self.kernel[d], self.stride[d], self.out_hw[d]
        index = [slice(None)] * 4
        for j in range(k):
            index[axis] = slice(j, j + s * (o - 1) + 1, s)
            yield j, a[tuple(index)]

    def views(self, a) -> Iterator[tuple[int, object]]:
        """``(offset index, view)`` for every 2-D kernel offset, in row-major scan order."""
        kw = self.kernel[1]
        for i, rows in self.axis_views(a, 2):
            for j, v in self.axis_views(rows, 3):
                yield i * kw + j, v

    def _spread(self, g, axis: int, shape, arg=None):
        """Adjoint of a window reduction along ``axis``: send ``g`` back to every offset of its windows
        (with ``arg``, only to the offset ``arg`` names, the adjoint of the running maximum)."""
        xp = backend.array_module(g)
        d = axis - 2
        overlap = self.overlap[d]
        # Without overlap or gaps every element is written exactly once, so no zero fill is needed.
        covered = self.stride[d] == self.kernel[d] and self.out_hw[d] * self.kernel[d] == shape[axis]
        out = xp.empty(shape, dtype=g.dtype) if covered else xp.zeros(shape, dtype=g.dtype)
        for j, view in self.axis_views(out, axis):
            if arg is None:
                if overlap:
                    view += g
                else:
                    view[...] = g
            elif overlap:
                view += g * (arg == j)
            else:
                xp.multiply(g, arg == j, out=view)
        return out

    def _sum(self, a, axis: int):
        views = self.axis_views(a, axis)
        _, first = next(views)
        s = first.copy()
        for _, v in views:
            s += v
        return s

    def _max(self, a, axis: int):
        """Running maximum along ``axis`` and the offset of the first maximum (strict ``>``)."""
        xp = backend.array_module(a)
        dtype = _index_dtype(self.kernel[axis - 2])
        views = self.axis_views(a, axis)
        _, m = next(views)
        arg = None
        for j, v in views:
            better = v > m
            # fmax keeps the running value where v is NaN, like a failed comparison in Caffe's scan.
            if arg is None:
                m = xp.fmax(m, v)
                arg = better.astype(dtype) if j == 1 else better * dtype(j)
            else:
                xp.fmax(m, v, out=m)
                arg += better * (j - arg)
        if arg is None:
            return xp.ascontiguousarray(m), xp.zeros(m.shape, dtype=dtype)
        return m, arg

    def divisors(self, xp, dtype):
        """Caffe's AVE divisor per output: the window clipped to the padded image (padding counts)."""
        sizes = []
        for s, k, st, p, o in zip(self.in_hw, self.kernel, self.stride, self.pad, self.out_hw, strict=True):
            start = numpy.arange(o) * st - p
            sizes.append(numpy.minimum(start + k, s + p) - start)
        return xp.asarray(numpy.outer(sizes[0], sizes[1]).astype(dtype))

    # MAX ---------------------------------------------------------------------------------------------
    def max_forward(self, x):
        """Window maxima and the argmax state used by :meth:`max_backward` and :meth:`max_mask`."""
        xp = backend.array_module(x)
        n, c = x.shape[:2]
        if self.is_global:
            flat = x.reshape(n, c, math.prod(self.in_hw))
            idx = xp.argmax(flat, axis=-1)[..., None]
            return xp.take_along_axis(flat, idx, axis=-1).reshape(n, c, 1, 1), ("flat", idx)
        plan = self.plan(x)
        if plan is not None:
            y, chunks = plan.max_forward(x)
            return y, ("phase", chunks, x.shape)
        # Padding holds Caffe's starting value -FLT_MAX, so it never wins against image values.
        rows, aw = self._max(self.pad_input(x, numpy.finfo(x.dtype).min), 3)
        y, ah = self._max(rows, 2)
        return y, ("separable", ah, aw)

    def max_mask(self, state, dtype):
        """Caffe's mask top: the argmax as a flat index ``h * W + w`` in the channel plane, as floats."""
        if state[0] == "phase":
            return self._plan.max_mask(state[1], state[2], dtype)
        xp = backend.array_module(state[1])
        if state[0] == "flat":
            return state[1].reshape(*state[1].shape[:2], 1, 1).astype(dtype)
        _, ah, aw = state
        ah = ah.astype(numpy.int64)
        col = xp.zeros(ah.shape, dtype=numpy.int64)
        for i, rows in self.axis_views(aw, 2):
            col += (ah == i) * rows
        h = (xp.arange(self.out_hw[0]) * self.stride[0] - self.pad[0])[:, None] + ah
        w = (xp.arange(self.out_hw[1]) * self.stride[1] - self.pad[1])[None, :] + col
        return (h * self.in_hw[1] + w).astype(dtype)

    def max_backward(self, dy, state, x_shape):
        xp = backend.array_module(dy)
        n, c = x_shape[:2]
        if state[0] == "flat":
            hit = xp.arange(self.in_hw[0] * self.in_hw[1]) == state[1]
            return (hit * dy.reshape(n, c, 1)).reshape(x_shape)
        if state[0] == "phase":
            return self._plan.max_backward(dy, state[1], x_shape)
        _, ah, aw = state
        rows = self._spread(dy, 2, (n, c, self.padded_hw[0], self.out_hw[1]), ah)
        return self.unpad(self._spread(rows, 3, (n, c, *self.padded_hw), aw))

    # AVE -------------------------------------------------------------------------------------------
    def ave_forward(self, x):
        xp = backend.array_module(x)
        n, c = x.shape[:2]
        if self.is_global:
            return x.reshape(n, c, math.prod(self.in_hw)).sum(axis=-1).reshape(n, c, 1, 1) / x.dtype.type(
                math.prod(self.in_hw)
            )
        plan = self.plan(x)
        if plan is not None:
            return plan.ave_forward(x, self.divisors(xp, x.dtype))
        y = self._sum(self._sum(self.pad_input(x, 0), 3), 2)
        y /= self.divisors(xp, x.dtype)
        return y

    def ave_backward(self, dy, x_shape):
        xp = backend.array_module(dy)
        n, c = x_shape[:2]
        if self.is_global:
            return xp.ascontiguousarray(xp.broadcast_to(dy / dy.dtype.type(math.prod(self.in_hw)), x_shape))
        plan = self.plan(dy)
        if plan is not None:
            return plan.ave_backward(dy, x_shape, self.divisors(xp, dy.dtype))
        g = dy / self.divisors(xp, dy.dtype)
        rows = self._spread(g, 2, (n, c, self.padded_hw[0], self.out_hw[1]))
        return self.unpad(self._spread(rows, 3, (n, c, *self.padded_hw)))

    # STOCHASTIC --------------------------------------------------------------------------------------
    def stochastic_train(self, x, u):
        """Pick the first element whose running window sum reaches ``u * window sum`` (scan order).

        Returns the picked values and their 2-D kernel-offset index.
        """
        xp = backend.array_module(x)
        stack = xp.stack([v for _, v in self.views(self.pad_input(x, 0))])
        running = xp.cumsum(stack, axis=0)
        idx = xp.argmax(running >= u * running[-1], axis=0)
        y = xp.take_along_axis(stack, idx[None], axis=0)[0]
        return y, idx.astype(_index_dtype(math.prod(self.kernel)))

    def stochastic_train_backward(self, dy, idx, x_shape):
        """Route each window's gradient to the element it picked."""
        xp = backend.array_module(dy)
        dx = xp.zeros((*x_shape[:2], *self.padded_hw), dtype=dy.dtype)
        for k, view in self.views(dx):
            view += dy * (idx == k)
        return self.unpad(dx)

    def stochastic_test(self, x):
        """Probability-weighted window average ``sum(x^2) / sum(x)`` (0 where the sum is not positive).

        Returns the output and the window sums (kept for the backward pass).
        """
        xp = backend.array_module(x)
        xpad = self.pad_input(x, 0)
        s1 = self._sum(self._sum(xpad, 3), 2)
        s2 = self._sum(self._sum(xpad * xpad, 3), 2)
        positive = s1 > 0
        return xp.where(positive, s2 / xp.where(positive, s1, 1), 0).astype(x.dtype, copy=False), s1

    def stochastic_test_backward(self, dy, x, y, s1):
        """``d(sum x^2 / sum x)/dx_i = (2 x_i - y) / sum x``, summed over the windows holding ``x_i``."""
        xp = backend.array_module(dy)
        n, c = x.shape[:2]
        g = xp.where(s1 > 0, dy / xp.where(s1 > 0, s1, 1), 0).astype(dy.dtype, copy=False)

        def spread(v):
            rows = self._spread(v, 2, (n, c, self.padded_hw[0], self.out_hw[1]))
            return self.unpad(self._spread(rows, 3, (n, c, *self.padded_hw)))

        return 2 * x * spread(g) - spread(g * y)


def _pool_problem(method: int, kernel: Sequence[int], pad: Sequence[int]) -> str | None:
    """What Caffe's set-up checks reject in padded pooling, or None."""
    if any(pad):
        if method not in (_MAX, _AVE):
            return (
                f"padding is implemented only for MAX and AVE pooling. Received: pool "
                f"{_POOL_NAMES.get(method)} with pad {list(pad)}"
            )
        if any(p >= k for p, k in zip(pad, kernel, strict=True)):
            return f"pad must be smaller than the kernel. Received: pad {list(pad)}, kernel {list(kernel)}"
    return None


class _Pooler:
    """One pooling operation (method + windows) with its forward/backward state."""

    def __init__(self, method: int, windows: PoolWindows, train: bool, rng: backend.RandomStreams):
        self.method, self.windows, self.train, self.rng = method, windows, train, rng

    def forward(self, x):
        win = self.windows
        self.x_shape = x.shape
        if self.method == _MAX:
            y, self.state = win.max_forward(x)
        elif self.method == _AVE:
            y = win.ave_forward(x)
        elif self.train:
            xp = backend.array_module(x)
            u = self.rng.uniform(xp, (*x.shape[:2], *win.out_hw), 0.0, 1.0, x.dtype)
            y, self.state = win.stochastic_train(x, u)
        else:
            y, s1 = win.stochastic_test(x)
            self.state = (x, y, s1)
        return y

    def backward(self, dy):
        win = self.windows
        if self.method == _MAX:
            return win.max_backward(dy, self.state, self.x_shape)
        if self.method == _AVE:
            return win.ave_backward(dy, self.x_shape)
        if self.train:
            return win.stochastic_train_backward(dy, self.state, self.x_shape)
        x, y, s1 = self.state
        return win.stochastic_test_backward(dy, x, y, s1)


def check_4d(layer: Layer, blob: Blob) -> None:
    """An error naming ``layer`` unless ``blob`` is N x C x H x W."""
    if blob.num_axes != 4:
        raise layer.error(
            f"input must have 4 axes (num, channels, height, width). Received: shape {blob.shape}",
            ShapeMismatchError,
        )


@register_layer("Pooling")
class PoolingLayer(Layer):
    """Caffe type ``Pooling``: MAX, AVE or STOCHASTIC pooling over 2-D windows.

    Output size ``ceil((H + 2*pad - k) / stride) + 1`` (``floor`` with ``round_mode: FLOOR``); with
    padding, a last window that would start inside the padding is dropped. MAX takes the first maximum
    in row-major scan order; AVE divides by the window clipped to ``H + pad`` (padding counts);
    STOCHASTIC samples an element with probability proportional to its value in TRAIN and returns
    ``sum(x^2) / sum(x)`` in TEST.

    The output-size rule in force when the layer is set up (:func:`current_pooling_rule`) is kept
    in ``pooling_rule``: ``"bvlc"``, or ``"caffe-yolov3"``, which adds one output row and column
    whenever ``kernel_h - stride_h`` is odd (not for global pooling).

    Bottom: ``(N, C, H, W)``. Tops: ``(N, C, PH, PW)``; for MAX an optional second top with the argmax
    as a float flat index ``h * W + w`` within each channel plane.
    """

    exact_num_bottom = 1
    min_num_top = 1
    max_num_top = 2

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        pp = self.param.pooling_param
        has = pp.HasField
        self.method = pp.pool
        if len(top) == 2 and self.method != _MAX:
            raise self.error(
                f"only MAX pooling has a second (mask) top. Received: 2 tops with pool {_POOL_NAMES[self.method]}",
                BlobCountError,
            )
        self.global_pooling = pp.global_pooling
        given = [f"{f}={getattr(pp, f)}" for f in ("kernel_size", "kernel_h", "kernel_w") if has(f)]
        if self.global_pooling:
            if given:
                raise self.error(
                    f"with global_pooling the kernel comes from the input and cannot be given. Received: "
                    f"{', '.join(given)}"
                )
            self.kernel = None
        else:
            if not (has("kernel_size") or (has("kernel_h") and has("kernel_w"))) or (
                has("kernel_size") and has("kernel_h") and has("kernel_w")
            ):
                raise self.error(
                    f"give the kernel as kernel_size or as both kernel_h and kernel_w. Received: "
                    f"{', '.join(given) or 'none'}"
                )
            self.kernel = (pp.kernel_size,) * 2 if has("kernel_size") else (pp.kernel_h, pp.kernel_w)
            if min(self.kernel) <= 0:
                raise self.error(f"kernel dimensions must be positive. Received: {list(self.kernel)}")
        for name in ("pad", "stride"):
            both, either = has(f"{name}_h") and has(f"{name}_w"), has(f"{name}_h") or has(f"{name}_w")
            if either and (has(name) or not both):
                raise self.error(
                    f"give {name} or both {name}_h and {name}_w. Received: "
                    + ", ".join(f"{f}={getattr(pp, f)}" for f in (name, f"{name}_h", f"{name}_w") if has(f))
                )
        self.pad = (pp.pad_h, pp.pad_w) if has("pad_h") else (pp.pad, pp.pad)
        self.stride = (pp.stride_h, pp.stride_w) if has("stride_h") else (pp.stride, pp.stride)
        if min(self.stride) <= 0:
            raise self.error(f"stride must be positive. Received: {list(self.stride)}")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.error(
                f"global pooling takes only pad 0 and stride 1. Received: pad {list(self.pad)}, "
                f"stride {list(self.stride)}"
            )
        problem = self.kernel and _pool_problem(self.method, self.kernel, self.pad)
        if problem:
            raise self.error(problem)
        # ceil_mode: false (the fork field of BVLC PR #3057, in many MobileNet/SSD ports) means round_mode: FLOOR
        self.ceil_mode = pp.round_mode == pb.PoolingParameter.CEIL and pp.ceil_mode
        try:
            self.pooling_rule = current_pooling_rule()
        except InvalidParameterError as err:
            raise self.error(str(err)) from None
        self._hint_rule()
        self.pooler: _Pooler | None = None

    def _hint_rule(self) -> None:
        """Say once per process when a pool looks like darknet's size-keeping one but BVLC's rule shrinks it."""
        global _hinted
        darknet_like = self.kernel and self.stride[0] == 1 and self.kernel[0] % 2 == 0 and not any(self.pad)
        if darknet_like and self.pooling_rule == BVLC_RULE and not _hinted:
            _hinted = True
            log.warning(
                "%s: kernel %s with stride 1 makes the output one smaller than the input under BVLC's rule. "
                "Nets converted from darknet by caffe-yolov3 expect that port's rule, which keeps the size: "
                "%s=%s, netdef.layers.pooling.set_pooling_rule(%r), or a using_pooling_rule block",
                self.describe(),
                list(self.kernel),
                POOLING_RULE_ENV,
                YOLOV3_RULE,
                YOLOV3_RULE,
            )

    def _windows(self, in_hw: tuple[int, ...]) -> PoolWindows:
        kernel = in_hw if self.global_pooling else self.kernel
        # the port's patch would also grow global pooling of even-sized inputs to 2 x 2; that is not kept
        rule = BVLC_RULE if self.global_pooling else self.pooling_rule
        windows = PoolWindows(in_hw, kernel, self.stride, self.pad, self.ceil_mode, rule)
        if min(in_hw) <= 0 or min(windows.out_hw) <= 0:
            raise self.error(
                f"the pooling window does not fit the input. Received: input {in_hw}, kernel {list(kernel)}, "
                f"pad {list(self.pad)}, stride {list(self.stride)} -> output {windows.out_hw}",
                ShapeMismatchError,
            )
        return windows

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        check_4d(self, x)
        in_hw = x.shape[2:]
        if self.pooler is None or self.pooler.windows.in_hw != in_hw:
            windows = self._windows(in_hw)
            self.pooler = _Pooler(self.method, windows, self.phase == pb.TRAIN, self.rng)
        # a stride or pad far beyond the input would make the padded working grid huge
        limits.check_bytes(
            f"{self.describe()} padded input", (*x.shape[:2], *self.pooler.windows.padded_hw), x.dtype.itemsize
        )
        for t in top:
            t.reshape((*x.shape[:2], *self.pooler.windows.out_hw))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        top[0].data = self.pooler.forward(bottom[0].data)
        if len(top) > 1:
            top[1].data = self.pooler.windows.max_mask(self.pooler.state, bottom[0].dtype)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if propagate_down[0]:
            bottom[0].diff = self.pooler.backward(top[0].diff)


@register_layer("SPP")
class SPPLayer(Layer):
    """Caffe type ``SPP``: spatial pyramid pooling.

    Level ``l`` (0 .. pyramid_height-1) pools with ``2^l`` bins per side: kernel ``ceil(H / 2^l)``,
    stride = kernel, pad ``(kernel * 2^l - H + 1) // 2`` (Pooling's rules otherwise). Each level is
    flattened and the levels are concatenated. As in Caffe, the inner pooling always runs in the
    TRAIN phase (STOCHASTIC samples even in TEST nets).

    Bottom: ``(N, C, H, W)``. Top: ``(N, C * sum_l bins_l)``; with ``pyramid_height: 1`` the single
    pooling output ``(N, C, PH, PW)`` is passed on unflattened.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        sp = self.param.spp_param
        self.height = int(sp.pyramid_height)
        if self.height < 1:
            raise self.error(f"pyramid_height must be at least 1. Received: {sp.pyramid_height}")
        self.method = sp.pool
        self.poolers: list[_Pooler] = []
        self._in_hw: tuple[int, ...] | None = None

    def _level(self, level: int, in_hw: Sequence[int]) -> _Pooler:
        bins = 2**level
        kernel = tuple(-(-s // bins) for s in in_hw)
        pad = tuple((k * bins - s + 1) // 2 for k, s in zip(kernel, in_hw, strict=True))
        problem = _pool_problem(self.method, kernel, pad)
        if problem:
            raise self.error(
                f"pyramid level {level} ({bins} bins) cannot pool an input of {tuple(in_hw)}: {problem}",
                ShapeMismatchError,
            )
        return _Pooler(self.method, PoolWindows(in_hw, kernel, kernel, pad), train=True, rng=self.rng)

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0]
        check_4d(self, x)
        in_hw = x.shape[2:]
        if min(in_hw) <= 0:
            raise self.error(f"input height and width must be positive. Received: {in_hw}", ShapeMismatchError)
        if self._in_hw != in_hw:
            self.poolers = [self._level(i, in_hw) for i in range(self.height)]
            self._in_hw = in_hw
        n, c = x.shape[:2]
        if self.height == 1:
            top[0].reshape((n, c, *self.poolers[0].windows.out_hw))
        else:
            top[0].reshape((n, sum(c * math.prod(p.windows.out_hw) for p in self.poolers)))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x = bottom[0].data
        xp = backend.array_module(x)
        if self.height == 1:
            top[0].data = self.poolers[0].forward(x)
            return
        n = x.shape[0]
        parts = [p.forward(x) for p in self.poolers]
        top[0].data = xp.concatenate([y.reshape(n, math.prod(y.shape[1:])) for y in parts], axis=1)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.height == 1:
            bottom[0].diff = self.poolers[0].backward(dy)
            return
        n, c = bottom[0].shape[:2]
        dx, start = None, 0
        for p in self.poolers:
            size = c * math.prod(p.windows.out_hw)
            part = p.backward(dy[:, start : start + size].reshape(n, c, *p.windows.out_hw))
            dx = part if dx is None else dx + part
            start += size
        bottom[0].diff = dx
