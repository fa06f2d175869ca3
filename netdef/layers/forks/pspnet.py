"""The fork layer type ``Interp`` (DeepLab-v2 lineage, as in ``hszhao/PSPNet``): bilinear resizing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from ... import backend
from ...blob import Blob
from ...errors import InvalidParameterError, ShapeMismatchError
from ..base import Layer
from .registry import register_fork_layer


def interp_matrix(n_in: int, n_out: int) -> numpy.ndarray:
    """The ``(n_out, n_in)`` matrix of align-corners linear resampling along one axis, as the fork computes it.

    Output ``j`` reads input position ``r * j`` with ``r = (n_in - 1) / (n_out - 1)`` (0 when
    ``n_out`` is 1); the ratio, the position and the two weights are float32, as in the fork
    (whatever the blob type). Equal sizes give the identity (the fork's plain copy).
    """
    if n_in == n_out:
        return numpy.eye(n_out, dtype=numpy.float32)
    ratio = numpy.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else numpy.float32(0)
    pos = ratio * numpy.arange(n_out, dtype=numpy.float32)
    lo = pos.astype(numpy.int64)
    hi = lo + (lo < n_in - 1)
    frac = pos - lo.astype(numpy.float32)
    m = numpy.zeros((n_out, n_in), dtype=numpy.float32)
    rows = numpy.arange(n_out)
    numpy.add.at(m, (rows, lo), numpy.float32(1) - frac)
    numpy.add.at(m, (rows, hi), frac)
    return m


@register_fork_layer("Interp", "PSPNet", "DeepLab v2")
class InterpLayer(Layer):
    """Bilinear resizing with aligned corners (Caffe type ``Interp``; DeepLab v2 / PSPNet forks).

    The bottom is read as ``(N, C, H, W)`` (missing trailing axes count as 1, at most 4).
    First ``pad_beg`` and ``pad_end`` (both <= 0) crop the input to
    ``x[:, :, -pad_beg : H + pad_end, -pad_beg : W + pad_end]`` (eff size ``H_e x W_e``), then it
    is resampled to ``(N, C, H_out, W_out)`` by the first rule whose fields are set:

    1. ``shrink_factor`` s without ``zoom_factor``: ``(H_e - 1) // s + 1``;
    2. ``zoom_factor`` z without ``shrink_factor``: ``H_e + (H_e - 1) * (z - 1)``;
    3. ``height`` and ``width``: those values;
    4. ``shrink_factor`` and ``zoom_factor``: shrink, then zoom.

    (the same for widths). Output ``(i, j)`` reads the input at ``(r_h * i, r_w * j)`` with
    ``r = (in - 1) / (out - 1)`` (0 for an output of 1), linearly interpolated between its
    two neighbours on each axis: ``y = A_h @ x_crop @ A_w^T`` (see ``interp_matrix``).
    Backward is the adjoint, ``dx_crop = A_h^T @ dy @ A_w``, zero on the cropped border.

    Top: always 4-D ``(N, C, H_out, W_out)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.param.interp_param
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        for name, value in (("pad_beg", self.pad_beg), ("pad_end", self.pad_end)):
            if value > 0:
                raise self.error(
                    f"interp_param.{name} only crops (padding is not supported). Received: {value}. Valid: <= 0"
                )
        has = {name: p.HasField(name) for name in ("shrink_factor", "zoom_factor", "height", "width")}
        if not (has["shrink_factor"] or has["zoom_factor"] or (has["height"] and has["width"])):
            given = [name for name, on in has.items() if on]
            raise self.error(
                "needs an output size: interp_param with shrink_factor, zoom_factor, or both height and width. "
                f"Received: {', '.join(given) if given else 'none of them'}"
            )
        for name in ("shrink_factor", "zoom_factor"):
            if has[name] and getattr(p, name) < 1:
                raise self.error(f"interp_param.{name} must be at least 1. Received: {getattr(p, name)}. Valid: >= 1")
        self.has = has
        self._matrices: dict = {}

    def _out_size(self, n_eff: int, explicit: int) -> int:
        p = self.param.interp_param
        has = self.has
        if has["shrink_factor"] and not has["zoom_factor"]:
            return (n_eff - 1) // p.shrink_factor + 1
        if has["zoom_factor"] and not has["shrink_factor"]:
            return n_eff + (n_eff - 1) * (p.zoom_factor - 1)
        if has["height"] and has["width"]:
            return explicit
        shrunk = (n_eff - 1) // p.shrink_factor + 1
        return shrunk + (shrunk - 1) * (p.zoom_factor - 1)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) > 4:
            raise self.error(
                f"reads its bottom as (num, channels, height, width), so it takes at most 4 axes. "
                f"Received shape {shape}. Valid: 1 to 4 axes",
                ShapeMismatchError,
            )
        n, c, h, w = tuple(shape) + (1,) * (4 - len(shape))
        crop = self.pad_beg + self.pad_end
        h_eff, w_eff = h + crop, w + crop
        if h_eff <= 0 or w_eff <= 0:
            raise self.error(
                f"crops away the whole input: pad_beg {self.pad_beg} and pad_end {self.pad_end} leave "
                f"{h_eff}x{w_eff} of the {h}x{w} input. Valid: pad_beg + pad_end > -{min(h, w)}",
                ShapeMismatchError,
            )
        p = self.param.interp_param
        h_out, w_out = self._out_size(h_eff, int(p.height)), self._out_size(w_eff, int(p.width))
        if h_out <= 0 or w_out <= 0:
            raise self.error(
                f"the output size must be positive. Received: height {h_out}, width {w_out}",
                InvalidParameterError,
            )
        self.dims = (n, c, h, w)
        self.eff = (h_eff, w_eff)
        self.out = (h_out, w_out)
        top[0].reshape((n, c, h_out, w_out))

    def _operators(self, xp, dtype):
        key = (self.eff, self.out, xp.__name__, numpy.dtype(dtype).str)
        if key not in self._matrices:
            a_h = interp_matrix(self.eff[0], self.out[0])
            a_w = interp_matrix(self.eff[1], self.out[1])
            self._matrices[key] = (backend.asarray(a_h, xp, dtype), backend.asarray(a_w.T, xp, dtype))
        return self._matrices[key]

    def _window(self):
        b = -self.pad_beg
        return (slice(None), slice(None), slice(b, b + self.eff[0]), slice(b, b + self.eff[1]))

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        a_h, a_w_t = self._operators(xp, x.dtype)
        crop = x.reshape(self.dims)[self._window()]
        top[0].data = xp.matmul(xp.matmul(a_h, crop), a_w_t).astype(x.dtype, copy=False)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        xp = backend.array_module(dy)
        a_h, a_w_t = self._operators(xp, dy.dtype)
        dx = xp.zeros(self.dims, dtype=dy.dtype)
        dx[self._window()] = xp.matmul(xp.matmul(a_h.T, dy), a_w_t.T)
        bottom[0].diff = dx.reshape(bottom[0].shape)
