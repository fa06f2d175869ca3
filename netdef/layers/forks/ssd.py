"""Layers the SSD fork of Caffe added for single-shot detection: Permute, Normalize, PriorBox.

The fork is GitHub ``weiliu89/caffe`` (branch ``ssd``). Parameters follow its ``caffe.proto``
(``permute_param``, ``norm_param``, ``prior_box_param``); behaviour follows its layers,
including the quirks listed in each class's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy

from ... import backend
from ...blob import Blob
from ...errors import ShapeMismatchError
from ...proto import netdef_pb2 as pb
from ..base import Layer
from .registry import register_fork_layer


@register_fork_layer("Permute", "SSD")
class PermuteLayer(Layer):
    """Reorder the axes of a blob (Caffe type ``Permute``, from the SSD fork ``weiliu89/caffe``).

    ``top = transpose(bottom, order)``: top axis ``i`` is bottom axis ``order[i]``. Axes
    missing from ``permute_param.order`` are appended in increasing order (``order: 0 order: 2``
    on a 4-axis blob means ``0 2 1 3``). When the resulting order is the identity, the top
    shares the bottom's data and the backward shares the top's diff, as the fork does.
    ``dx = transpose(dy, inverse(order))``.

    Bottom: any shape with ``n`` axes. Top: the bottom's shape permuted, ``n`` axes.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.num_axes = bottom[0].num_axes
        given = [int(v) for v in self.param.permute_param.order]
        for v in given:
            if v >= self.num_axes:
                raise self.error(
                    f"permute_param.order must name axes of the {self.num_axes}-axis bottom {bottom[0].shape}. "
                    f"Received: order {given} (value {v}). Valid: 0 .. {self.num_axes - 1}"
                )
        if len(set(given)) != len(given):
            dups = sorted({v for v in given if given.count(v) > 1})
            raise self.error(
                f"permute_param.order names an axis more than once. Received: order {given} "
                f"(repeated: {dups}). Valid: each axis 0 .. {self.num_axes - 1} at most once"
            )
        self.order = tuple(given + [a for a in range(self.num_axes) if a not in given])
        self.inverse = tuple(int(a) for a in numpy.argsort(self.order))
        self.need_permute = self.order != tuple(range(self.num_axes))

    def reshape(self, bottom, top):
        if bottom[0].num_axes != self.num_axes:
            raise self.error(
                f"was set up for a {self.num_axes}-axis bottom (order {list(self.order)}). "
                f"Received shape {bottom[0].shape}",
                ShapeMismatchError,
            )
        top[0].reshape(tuple(bottom[0].shape[a] for a in self.order))

    def forward(self, bottom, top):
        x = bottom[0].data
        if not self.need_permute:
            top[0].data = x
            return
        top[0].data = backend.array_module(x).ascontiguousarray(x.transpose(self.order))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if not self.need_permute:
            bottom[0].diff = dy
            return
        bottom[0].diff = backend.array_module(dy).ascontiguousarray(dy.transpose(self.inverse))


@register_fork_layer("Normalize", "SSD")
class NormalizeLayer(Layer):
    """L2 normalisation with a learned scale (Caffe type ``Normalize``, from the SSD fork ``weiliu89/caffe``).

    With ``x`` viewed as ``(N, C, S)`` (``S`` = product of the axes after 1):

    - ``across_spatial: true`` (default): ``norm_n = sqrt(sum_{c,s} x^2 + eps)``, one per sample;
    - ``across_spatial: false``: ``norm_{n,s} = sqrt(sum_c x^2 + eps)``, one per position.

    ``y = s_c * x / norm``; blob 0 holds ``s``: 0-D when ``channel_shared`` (default true),
    else ``(C,)``; filled by ``scale_filler`` (default constant 1).

    Backward: ``ds_c += sum(dy * x / norm)`` (over all but the channel when not shared).
    The bottom gradient reproduces the fork's formula
    ``dx = s_c * (dy - x * sum(x * dy) / norm^2) / norm`` (sums over the normalised axes):
    exact for a shared scale or equal per-channel scales, but for unequal per-channel
    scales it is not the gradient of ``y`` (the true one has ``sum(x * s * dy)``). Trained SSD
    models were trained with this gradient, so netdef keeps it.

    Bottom: ``(N, C, ...)``, at least 2 axes. Top: same shape as the bottom.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def _check_axes(self, bottom):
        if bottom[0].num_axes < 2:
            raise self.error(
                f"needs a bottom with at least 2 axes (N, C, ...). Received shape {bottom[0].shape}",
                ShapeMismatchError,
            )

    def setup(self, bottom, top):
        self._check_axes(bottom)
        p = self.param.norm_param
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(p.eps)
        shape = () if self.channel_shared else (bottom[0].shape[1],)
        filler = p.scale_filler if p.HasField("scale_filler") else pb.FillerParameter(type="constant", value=1.0)
        self.blobs = [self.filled_blob(shape, filler)]

    def reshape(self, bottom, top):
        self._check_axes(bottom)
        want = 1 if self.channel_shared else bottom[0].shape[1]
        if self.blobs[0].count != want:
            what = "channel_shared: true" if self.channel_shared else f"one per channel of bottom {bottom[0].shape}"
            raise self.error(
                f"the scale blob has {self.blobs[0].count} values but needs {want} ({what})",
                ShapeMismatchError,
            )
        top[0].reshape(bottom[0].shape)

    def _scale(self):
        s = self.blobs[0].data
        return s.reshape(1, 1, 1) if self.channel_shared else s.reshape(1, -1, 1)

    def _axes(self):
        return (1, 2) if self.across_spatial else (1,)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        norm = xp.sqrt((x3 * x3).sum(axis=self._axes(), keepdims=True) + self.eps)
        self._x, self._norm = x3, norm
        top[0].data = (x3 / norm * self._scale()).reshape(x.shape).astype(x.dtype, copy=False)

    def backward(self, top, propagate_down, bottom):
        x, norm = self._x, self._norm
        dy = top[0].diff.reshape(x.shape)
        if self.param_propagate_down and self.param_propagate_down[0]:
            contrib = dy * x / norm
            if self.channel_shared:
                self.blobs[0].diff += contrib.sum()
            else:
                self.blobs[0].diff += contrib.sum(axis=(0, 2))
        if propagate_down[0]:
            dot = (x * dy).sum(axis=self._axes(), keepdims=True)
            dx = (dy - x * (dot / (norm * norm))) / norm * self._scale()
            bottom[0].diff = dx.reshape(bottom[0].shape).astype(bottom[0].data.dtype, copy=False)


def _unique_ratios(ratios: Sequence[float], flip: bool) -> list[float]:
    """The fork's aspect-ratio list: 1, then each new ratio (and 1/ratio with flip); repeats within 1e-6 dropped."""
    out = [1.0]
    for ar in ratios:
        ar = float(numpy.float32(ar))
        if any(abs(ar - known) < 1e-6 for known in out):
            continue
        out.append(ar)
        if flip:
            out.append(float(numpy.float32(1.0 / ar)))
    return out


@register_fork_layer("PriorBox", "SSD")
class PriorBoxLayer(Layer):
    """Default (prior) boxes for one feature map (Caffe type ``PriorBox``, from the SSD fork ``weiliu89/caffe``).

    For every cell ``(h, w)`` of bottom 0 (an ``H x W`` feature map) the centre is
    ``cx = (w + offset) * step_w``, ``cy = (h + offset) * step_h``; the image size comes from
    ``img_size`` / ``img_h``+``img_w`` or else from bottom 1's height and width, the step from
    ``step`` / ``step_h``+``step_w`` or else ``img / feature`` size. For each ``min_size`` ``m``
    (in order) the boxes are: ``m x m``; then ``sqrt(m*M) x sqrt(m*M)`` when ``max_size`` ``M`` is
    given; then ``m*sqrt(ar) x m/sqrt(ar)`` for every aspect ratio other than 1 (ratios
    de-duplicated, each followed by ``1/ar`` when ``flip``). A box is written as
    ``(cx - bw/2) / img_w, (cy - bh/2) / img_h, (cx + bw/2) / img_w, (cy + bh/2) / img_h``,
    clipped to ``[0, 1]`` when ``clip``. Channel 1 repeats the ``variance`` (1 value, or 4 values
    per box; default 0.1).

    Quirks kept from the fork: ``min_size``/``max_size`` are truncated to integers when the
    boxes are built (checks use the given floats), the layer has no gradient, and bottom 1 is
    only read when no image size is given (one bottom suffices then).

    Bottom: ``(N, C, H, W)`` feature map, optionally ``(N, C, H_img, W_img)`` image.
    Top: ``(1, 2, H * W * num_priors * 4)``.
    """

    min_num_bottom = 1
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom, top):
        p = self.param.prior_box_param
        if any(not ar > 0 for ar in p.aspect_ratio):
            raise self.error(f"every aspect_ratio must be positive. Received: {list(p.aspect_ratio)}")
        self.aspect_ratios = _unique_ratios(p.aspect_ratio, bool(p.flip))
        self._read_sizes(p)
        self.clip = bool(p.clip)
        self.variance = self._read_variance(p)
        self.img_h, self.img_w = self._read_pair(p, "img_size", "img_h", "img_w")
        self.step_h, self.step_w = self._read_pair(p, "step", "step_h", "step_w")
        self.offset = float(p.offset)
        if self.img_h == 0 and len(bottom) < 2:
            raise self.error(
                "needs the image as bottom 1 when no img_size or img_h/img_w is given. "
                f"Received: {len(bottom)} bottom(s) and no image size",
                ShapeMismatchError,
            )
        self._cache_key = None

    def _read_sizes(self, p) -> None:
        if not p.min_size:
            raise self.error("prior_box_param needs at least one min_size. Received: none")
        for m in p.min_size:
            if not m > 0:
                raise self.error(f"min_size must be positive. Received: {list(p.min_size)}")
        if p.max_size and len(p.max_size) != len(p.min_size):
            raise self.error(
                f"max_size must be given once per min_size ({len(p.min_size)}) or not at all. "
                f"Received: {len(p.max_size)} values {list(p.max_size)}"
            )
        for m, big in zip(p.min_size, p.max_size):
            if not big > m:
                raise self.error(
                    f"max_size must be greater than its min_size. Received: max_size {big:g} for min_size {m:g}"
                )
        # the fork stores the sizes as floats but builds the boxes from int copies
        self.min_sizes = [int(m) for m in p.min_size]
        self.max_sizes = [int(m) for m in p.max_size]
        self.num_priors = len(self.aspect_ratios) * len(self.min_sizes) + len(self.max_sizes)

    def _read_variance(self, p) -> list[float]:
        values = [float(v) for v in p.variance]
        if len(values) not in (0, 1, 4):
            raise self.error(f"variance takes 1 or 4 values. Received: {len(values)} values {values}")
        if any(not v > 0 for v in values):
            raise self.error(f"every variance must be positive. Received: {values}")
        return values or [0.1]

    def _read_pair(self, p, single: str, name_h: str, name_w: str) -> tuple[float, float]:
        """(h, w) from ``single`` or the ``name_h``/``name_w`` pair, 0 when neither is given."""
        if p.HasField(name_h) or p.HasField(name_w):
            if p.HasField(single):
                raise self.error(
                    f"give either {single} or {name_h}/{name_w}, not both. Received: {single} "
                    f"{getattr(p, single):g}, {name_h} {getattr(p, name_h):g}, {name_w} {getattr(p, name_w):g}"
                )
            h, w = getattr(p, name_h), getattr(p, name_w)
            if not (h > 0 and w > 0):
                raise self.error(f"{name_h} and {name_w} must both be positive. Received: {h:g} and {w:g}")
            return h, w
        if p.HasField(single):
            v = getattr(p, single)
            if not v > 0:
                raise self.error(f"{single} must be positive. Received: {v:g}")
            return v, v
        return 0, 0

    @staticmethod
    def _spatial(shape: tuple[int, ...]) -> tuple[int, int]:
        """Caffe's legacy height()/width(): axes 2 and 3, 1 where the blob has fewer axes."""
        return (shape[2] if len(shape) > 2 else 1), (shape[3] if len(shape) > 3 else 1)

    def reshape(self, bottom, top):
        if bottom[0].num_axes > 4:
            raise self.error(
                f"reads height and width of a bottom with at most 4 axes. Received shape {bottom[0].shape}",
                ShapeMismatchError,
            )
        h, w = self._spatial(bottom[0].shape)
        if h * w == 0:
            raise self.error(f"needs a non-empty feature map. Received shape {bottom[0].shape}", ShapeMismatchError)
        top[0].reshape((1, 2, h * w * self.num_priors * 4))

    def _box_sizes(self) -> numpy.ndarray:
        """Widths and heights of the priors of one cell, in output order: shape (num_priors, 2)."""
        sizes = []
        for s, m in enumerate(self.min_sizes):
            sizes.append((m, m))
            if self.max_sizes:
                side = math.sqrt(m * self.max_sizes[s])
                sizes.append((side, side))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                root = math.sqrt(ar)
                sizes.append((m * root, m / root))
        # the fork keeps box sizes in float variables
        return numpy.asarray(sizes, dtype=numpy.float32).astype(numpy.float64).reshape(-1, 2)

    def priors(self, feature_hw: tuple[int, int], image_hw: tuple[int, int]) -> numpy.ndarray:
        """The top's values (float64, shape (1, 2, H*W*num_priors*4)) for a feature map and image size."""
        layer_h, layer_w = feature_hw
        img_h, img_w = (self.img_h, self.img_w) if self.img_h else image_hw
        f32 = numpy.float32
        if self.step_h:
            step_h, step_w = f32(self.step_h), f32(self.step_w)
        else:  # the fork divides in float
            step_h, step_w = f32(img_h) / f32(layer_h), f32(img_w) / f32(layer_w)
        offset = f32(self.offset)
        cy = ((numpy.arange(layer_h, dtype=f32) + offset) * step_h).astype(numpy.float64)
        cx = ((numpy.arange(layer_w, dtype=f32) + offset) * step_w).astype(numpy.float64)
        half = self._box_sizes() / 2.0
        bw, bh = half[:, 0], half[:, 1]
        boxes = numpy.empty((layer_h, layer_w, len(half), 4))
        boxes[..., 0] = (cx[None, :, None] - bw) / img_w
        boxes[..., 1] = (cy[:, None, None] - bh) / img_h
        boxes[..., 2] = (cx[None, :, None] + bw) / img_w
        boxes[..., 3] = (cy[:, None, None] + bh) / img_h
        if self.clip:
            numpy.clip(boxes, 0.0, 1.0, out=boxes)
        variance = numpy.broadcast_to(numpy.asarray(self.variance, dtype=numpy.float64), boxes.shape)
        return numpy.stack([boxes.reshape(-1), variance.reshape(-1)])[None]

    def forward(self, bottom, top):
        feature_hw = self._spatial(bottom[0].shape)
        image_hw = (0, 0) if self.img_h else self._spatial(bottom[1].shape)
        if image_hw != (0, 0) and 0 in image_hw:
            raise self.error(f"needs a non-empty image bottom. Received shape {bottom[1].shape}", ShapeMismatchError)
        key = (feature_hw, image_hw)
        if key != self._cache_key:
            self._cache = self.priors(feature_hw, image_hw)
            self._cache_key = key
        top[0].data[...] = backend.asarray(self._cache, backend.array_module(top[0].data), top[0].data.dtype)
