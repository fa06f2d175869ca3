"""Region-of-interest pooling from the detection forks: ROIPooling (Fast/Faster R-CNN) and
PSROIPooling (R-FCN).

Both read a feature map ``(N, C, H, W)`` and a list of boxes ``(R, 5)`` (or ``(R, 5, 1, 1)``,
the Fast R-CNN data layer's shape), each row ``[batch index, x1, y1, x2, y2]`` in image
coordinates; ``spatial_scale`` maps them onto the feature map. The boxes never receive a
gradient. Bins have data-dependent sizes, so instead of looping over boxes or bins the kernels
answer every bin at once from sparse tables of window maxima (ROIPooling) or a summed-area
table (PSROIPooling).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from ... import backend
from ...blob import Blob
from ...errors import DataSourceError, ShapeMismatchError
from ..base import Layer
from .registry import register_fork_layer

#: Elements of ROIPooling's range-maximum tables built at once (levels x N x channel slice x H x W).
_TABLE_BUDGET = 1 << 25


def _round_half_away(a, xp):
    """C's ``round``: halves go away from zero (NumPy's ``round`` goes to even)."""
    whole = xp.trunc(a)
    frac = xp.abs(a - whole)  # exact: subtracting the integer part loses nothing
    return whole + xp.sign(a) * (frac >= 0.5)


def _check_inputs(layer: Layer, bottom: Sequence[Blob]) -> None:
    """A 4-D feature map and at least 5 values per box row."""
    if bottom[0].num_axes != 4:
        raise layer.error(
            f"needs a 4-D feature map (N, C, H, W) as its first bottom. Received: shape {bottom[0].shape}",
            ShapeMismatchError,
        )
    rois = bottom[1]
    if rois.num_axes < 2 or rois.count_range(1) < 5:
        raise layer.error(
            "needs boxes of shape (R, 5) (or (R, 5, 1, 1)) as its second bottom, each row "
            f"[batch index, x1, y1, x2, y2]. Received: shape {rois.shape}",
            ShapeMismatchError,
        )


def _box_rows(layer: Layer, bottom: Sequence[Blob]):
    """The boxes as an (R, 5) array of the layer's dtype, and their batch indices (truncated toward zero).

    Caffe reads ``num()`` rows with a stride of ``count / num``, so only the first five values of a
    longer row are used. A batch index outside the batch is an error (the forks CHECK it or read
    out of bounds).
    """
    data = bottom[1].data
    xp = backend.array_module(data)
    rows = data.reshape(data.shape[0], bottom[1].count_range(1))[:, :5].astype(layer.dtype, copy=False)
    batch = xp.trunc(rows[:, 0]).astype(xp.int64)
    num = bottom[0].shape[0]
    bad = (batch < 0) | (batch >= num)
    if rows.shape[0] and bool(bad.any()):
        r = int(xp.argmax(bad))
        raise layer.error(
            f"box {r} has batch index {float(rows[r, 0]):g}, outside the batch of the feature map. "
            f"Received: batch index {int(batch[r])}. Valid: 0 .. {num - 1}",
            DataSourceError,
        )
    return rows, batch


def _zero_roi_diff(propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
    if len(propagate_down) > 1 and propagate_down[1]:
        bottom[1].diff = backend.array_module(bottom[1].data).zeros_like(bottom[1].data)


def _scatter_add(xp, index, values, size: int, dtype):
    """A flat array of ``size`` where each ``index`` gets the sum of its ``values``."""
    if index.size == 0:
        return xp.zeros(size, dtype=dtype)
    return xp.bincount(index, weights=values, minlength=size).astype(dtype, copy=False)


# --- ROIPooling ------------------------------------------------------------------------------
@register_fork_layer("ROIPooling", "Fast R-CNN", "Faster R-CNN")
class ROIPoolingLayer(Layer):
    """Caffe type ``ROIPooling`` (rbgirshick/caffe-fast-rcnn, Fast and Faster R-CNN): max pooling of each box
    onto a fixed ``pooled_h x pooled_w`` grid.

    For box ``r`` with scaled corners ``x1 = round(x1 * spatial_scale)`` (rounded half away from zero,
    the product in the layer's dtype) and likewise ``y1, x2, y2``, the box is ``h = max(y2 - y1 + 1, 1)``
    rows by ``w = max(x2 - x1 + 1, 1)`` columns (the end is inclusive; empty or inverted boxes become one
    cell). Bin ``(ph, pw)`` covers rows ``[floor(ph * h / pooled_h), ceil((ph + 1) * h / pooled_h))``
    (products in the layer's dtype) offset by ``y1`` and clipped to the map, columns likewise;
    ``top[r, c, ph, pw]`` is the bin's maximum of channel ``c`` of image ``batch index`` (truncated toward
    zero), or 0 for a bin wholly outside the map. Backward adds each bin's top diff to the cell holding
    its maximum (the first one in row-major order); the boxes get no gradient.

    Bottoms: feature map ``(N, C, H, W)``; boxes ``(R, 5)`` or ``(R, 5, 1, 1)``, rows
    ``[batch index, x1, y1, x2, y2]``. Top: ``(R, C, pooled_h, pooled_w)``.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom, top):
        p = self.param.roi_pooling_param
        for field in ("pooled_h", "pooled_w"):
            value = getattr(p, field)
            if value <= 0:
                raise self.error(
                    f"roi_pooling_param.{field} must be > 0. Received: {value}"
                    + ("" if self.param.HasField("roi_pooling_param") else " (no roi_pooling_param given)")
                )
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.spatial_scale = float(p.spatial_scale)

    def reshape(self, bottom, top):
        _check_inputs(self, bottom)
        top[0].reshape((bottom[1].shape[0], bottom[0].shape[1], *self.pooled))

    def _bins(self, rows, xp):
        """Per box, the clipped bin edges along each axis: (hs, he) of shape (R, PH), (ws, we) of (R, PW)."""
        scale = self.dtype.type(self.spatial_scale)
        corners = _round_half_away(rows[:, 1:5] * scale, xp).astype(xp.int64)
        x1, y1, x2, y2 = (corners[:, i] for i in range(4))
        height, width = self._map_hw
        edges = []
        for start, end, pooled, limit in ((y1, y2, self.pooled[0], height), (x1, x2, self.pooled[1], width)):
            size = xp.maximum(end - start + 1, 1).astype(self.dtype)
            bin_size = size / self.dtype.type(pooled)
            p = xp.arange(pooled, dtype=self.dtype)
            lo = xp.floor(p[None, :] * bin_size[:, None]).astype(xp.int64) + start[:, None]
            hi = xp.ceil((p[None, :] + 1) * bin_size[:, None]).astype(xp.int64) + start[:, None]
            edges.append((xp.clip(lo, 0, limit), xp.clip(hi, 0, limit)))
        return edges

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        self._map_hw = x.shape[2:]
        rows, batch = _box_rows(self, bottom)
        (hs, he), (ws, we) = self._bins(rows, xp)
        y, arg = _max_in_bins(x, batch, hs, he, ws, we)
        top[0].data = y
        self._batch, self._arg, self._x_shape = batch, arg, x.shape

    def backward(self, top, propagate_down, bottom):
        _zero_roi_diff(propagate_down, bottom)
        if not propagate_down[0]:
            return
        xp = backend.array_module(top[0].diff)
        n, c, h, w = self._x_shape
        arg = self._arg
        plane = self._batch[:, None, None, None] * c + xp.arange(c)[None, :, None, None]
        index = plane * (h * w) + arg.astype(xp.int64)
        hit = arg >= 0
        dx = _scatter_add(xp, index[hit], top[0].diff[hit], n * c * h * w, self.dtype)
        bottom[0].diff = dx.reshape(self._x_shape)


def _floor_log2(v, xp):
    """floor(log2(v)) of positive integers, exact (the float estimate is corrected by one step)."""
    k = xp.floor(xp.log2(v.astype(numpy.float64))).astype(xp.int64)
    k += (xp.left_shift(1, k + 1) <= v).astype(xp.int64)
    k -= (xp.left_shift(1, k) > v).astype(xp.int64)
    return k


def _merge(val, pos, other_val, other_pos) -> None:
    """Keep, in place, the larger of two (value, flat position) maxima; on a tie the earlier position."""
    xp = backend.array_module(val)
    take = (other_val > val) | ((other_val == val) & (other_pos < pos))
    val[...] = xp.where(take, other_val, val)
    pos[...] = xp.where(take, other_pos, pos)


def _range_max_tables(x, levels_h: int, levels_w: int):
    """Sparse tables of window maxima: ``val[k, l, n, c, h, w]`` is the maximum of the ``2^k x 2^l`` window
    whose top-left cell is ``(h, w)`` (where it fits in the map), ``pos`` the flat ``h * W + w`` of its first
    maximum in row-major order."""
    xp = backend.array_module(x)
    height, width = x.shape[2:]
    val = xp.empty((levels_h, levels_w, *x.shape), dtype=x.dtype)
    pos = xp.empty(val.shape, dtype=xp.int32)
    val[0, 0] = x
    pos[0, 0] = xp.arange(height * width, dtype=xp.int32).reshape(height, width)
    for l in range(1, levels_w):
        s = 1 << (l - 1)
        val[0, l], pos[0, l] = val[0, l - 1], pos[0, l - 1]
        _merge(val[0, l, ..., : width - s], pos[0, l, ..., : width - s], val[0, l - 1, ..., s:], pos[0, l - 1, ..., s:])
    for k in range(1, levels_h):
        s = 1 << (k - 1)
        val[k], pos[k] = val[k - 1], pos[k - 1]
        _merge(
            val[k, ..., : height - s, :], pos[k, ..., : height - s, :], val[k - 1, ..., s:, :], pos[k - 1, ..., s:, :]
        )
    return val, pos


def _max_in_bins(x, batch, hs, he, ws, we):
    """Each bin's maximum and the flat (h * W + w) position of its first maximum (-1 for an empty bin).

    A range-maximum query: every bin is covered by four (overlapping) power-of-two windows whose maxima
    come from sparse tables, built a slice of channels at a time to bound memory. The first maximum of
    the bin is the first maximum of one of those windows, so among the four the largest value at the
    earliest position is the bin's, which is what the fork's strict ``>`` scan finds.
    """
    xp = backend.array_module(x)
    n, c, height, width = x.shape
    r, ph = hs.shape
    pw = ws.shape[1]
    if r == 0 or c == 0 or height == 0 or width == 0:
        return xp.zeros((r, c, ph, pw), dtype=x.dtype), xp.full((r, c, ph, pw), -1, dtype=xp.int32)
    y = xp.empty((r, c, ph, pw), dtype=x.dtype)
    arg = xp.empty((r, c, ph, pw), dtype=xp.int32)
    lh = _floor_log2(xp.maximum(he - hs, 1), xp)[:, None, :, None]
    lw = _floor_log2(xp.maximum(we - ws, 1), xp)[:, None, None, :]
    levels_h, levels_w = int(lh.max()) + 1, int(lw.max()) + 1
    rows = [xp.clip(v, 0, height - 1) for v in (hs[:, None, :, None], he[:, None, :, None] - xp.left_shift(1, lh))]
    cols = [xp.clip(v, 0, width - 1) for v in (ws[:, None, None, :], we[:, None, None, :] - xp.left_shift(1, lw))]
    b = batch[:, None, None, None]
    step = max(1, _TABLE_BUDGET // (levels_h * levels_w * n * height * width))
    for c0 in range(0, c, step):
        part = slice(c0, c0 + step)
        val, pos = _range_max_tables(x[:, part], levels_h, levels_w)
        cc = val.shape[3]
        # flat index of (level_h, level_w, image, channel) planes; one take per candidate is much
        # faster than six-array fancy indexing
        plane = (((lh * levels_w + lw) * n + b) * cc + xp.arange(cc)[None, :, None, None]) * (height * width)
        val, pos = val.reshape(-1), pos.reshape(-1)
        best_v, best_p = None, None
        for h in rows:
            for w in cols:
                at = plane + (h * width + w)
                v, p = val.take(at), pos.take(at)
                if best_v is None:
                    best_v, best_p = v, p
                else:
                    _merge(best_v, best_p, v, p)
        y[:, part], arg[:, part] = best_v, best_p
    empty = (he <= hs)[:, None, :, None] | (we <= ws)[:, None, None, :]
    if bool(empty.any()):
        y = xp.where(empty, xp.zeros((), dtype=y.dtype), y)
        arg = xp.where(empty, xp.full((), -1, dtype=arg.dtype), arg)
    return y, arg


# --- PSROIPooling ----------------------------------------------------------------------------
@register_fork_layer("PSROIPooling", "R-FCN")
class PSROIPoolingLayer(Layer):
    """Caffe type ``PSROIPooling`` (daijifeng001/caffe-rfcn, R-FCN): position-sensitive average pooling of
    each box onto a ``group_size x group_size`` grid.

    With ``G = group_size`` and ``D = output_dim`` the map has ``D * G * G`` channels. The box starts at
    ``round(x1) * spatial_scale`` and ends at ``(round(x2) + 1) * spatial_scale`` (rounded half away from
    zero before scaling; no rounding after), so it is ``w = max(end - start, 0.1)`` wide and likewise
    ``h`` high, all in the layer's dtype. Bin ``(i, j)`` covers rows
    ``[floor(i * h / G + y_start), ceil((i + 1) * h / G + y_start))`` and columns likewise, clipped to
    the map. ``top[r, d, i, j]`` is the mean of channel ``(d * G + i) * G + j`` of image ``batch index``
    over the bin, or 0 for an empty bin. Backward spreads each bin's top diff evenly over its cells;
    the boxes get no gradient.

    Bottoms: score maps ``(N, D * G * G, H, W)``; boxes ``(R, 5)`` or ``(R, 5, 1, 1)``, rows
    ``[batch index, x1, y1, x2, y2]``. Top: ``(R, D, G, G)``.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom, top):
        p = self.param.psroi_pooling_param
        if not p.HasField("spatial_scale"):
            raise self.error(
                "psroi_pooling_param.spatial_scale is required (as in R-FCN's caffe.proto), e.g. 0.0625 for "
                "a stride-16 feature map. Received: no spatial_scale"
            )
        for field in ("output_dim", "group_size"):
            value = getattr(p, field)
            if value <= 0:
                raise self.error(f"psroi_pooling_param.{field} must be > 0. Received: {value}")
        self.output_dim = int(p.output_dim)
        self.group_size = int(p.group_size)
        self.spatial_scale = float(p.spatial_scale)

    def reshape(self, bottom, top):
        _check_inputs(self, bottom)
        d, g = self.output_dim, self.group_size
        if bottom[0].shape[1] != d * g * g:
            raise self.error(
                f"needs output_dim * group_size^2 = {d} * {g}^2 = {d * g * g} channels in its feature map. "
                f"Received: {bottom[0].shape[1]} channels (shape {bottom[0].shape})",
                ShapeMismatchError,
            )
        top[0].reshape((bottom[1].shape[0], d, g, g))

    def _bins(self, rows, xp, height: int, width: int):
        """Per box, the clipped bin edges: (hs, he) and (ws, we), each of shape (R, G)."""
        t = self.dtype.type
        scale, g = t(self.spatial_scale), self.group_size
        rounded = _round_half_away(rows[:, 1:5], xp).astype(self.dtype)
        starts = rounded[:, 0:2] * scale
        ends = (rounded[:, 2:4] + t(1)) * scale
        sizes = xp.maximum(ends - starts, t(0.1))
        bins = sizes / t(g)
        p = xp.arange(g, dtype=self.dtype)
        edges = []
        for axis, limit in ((1, height), (0, width)):
            lo = xp.floor(p[None, :] * bins[:, axis, None] + starts[:, axis, None]).astype(xp.int64)
            hi = xp.ceil((p[None, :] + 1) * bins[:, axis, None] + starts[:, axis, None]).astype(xp.int64)
            edges.append((xp.clip(lo, 0, limit), xp.clip(hi, 0, limit)))
        return edges

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        n, c, height, width = x.shape
        rows, batch = _box_rows(self, bottom)
        (hs, he), (ws, we) = self._bins(rows, xp, height, width)
        g = self.group_size
        # channel of output (d, i, j): (d * G + i) * G + j, i.e. d * G^2 + i * G + j
        channel = xp.arange(c).reshape(self.output_dim, g, g)
        b = batch[:, None, None, None]
        ch = channel[None]
        h0, h1 = hs[:, None, :, None], he[:, None, :, None]
        w0, w1 = ws[:, None, None, :], we[:, None, None, :]
        table = xp.zeros((n, c, height + 1, width + 1), dtype=numpy.float64)
        table[:, :, 1:, 1:] = x.astype(numpy.float64).cumsum(axis=2).cumsum(axis=3)
        total = table[b, ch, h1, w1] - table[b, ch, h0, w1] - table[b, ch, h1, w0] + table[b, ch, h0, w0]
        area = (h1 - h0) * (w1 - w0)
        top[0].data = xp.where(area > 0, total / xp.maximum(area, 1), 0).astype(self.dtype)
        self._saved = (batch, h0, h1, w0, w1, area, x.shape)

    def backward(self, top, propagate_down, bottom):
        _zero_roi_diff(propagate_down, bottom)
        if not propagate_down[0]:
            return
        xp = backend.array_module(top[0].diff)
        batch, h0, h1, w0, w1, area, (n, c, height, width) = self._saved
        share = xp.where(area > 0, top[0].diff.astype(numpy.float64) / xp.maximum(area, 1), 0)
        # Spread each bin's share over its rectangle: +share at two opposite corners, -share at the
        # other two of an (H + 1) x (W + 1) difference table, then a 2-D running sum.
        plane = batch[:, None, None, None] * c + xp.arange(c).reshape(1, self.output_dim, *([self.group_size] * 2))
        plane = plane * ((height + 1) * (width + 1))
        cols = width + 1
        index = xp.stack(
            [plane + h0 * cols + w0, plane + h0 * cols + w1, plane + h1 * cols + w0, plane + h1 * cols + w1]
        ).reshape(-1)
        share = xp.broadcast_to(share, plane.shape)
        weights = xp.stack([share, -share, -share, share]).reshape(-1)
        delta = _scatter_add(xp, index, weights, n * c * (height + 1) * cols, numpy.float64)
        dx = delta.reshape(n, c, height + 1, cols).cumsum(axis=2).cumsum(axis=3)[:, :, :height, :width]
        bottom[0].diff = xp.ascontiguousarray(dx).astype(self.dtype)
