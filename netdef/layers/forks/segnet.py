"""The fork layer type ``Upsample``, as SegNet and the YOLOv3 Caffe ports define it.

* SegNet (``alexgkendall/caffe-segnet``): max-unpooling. Two bottoms, the values and the
  mask top of a MAX Pooling layer; each value goes to the position the mask names.
* YOLOv3 ports (``ChenYingpeng/caffe-yolov3``'s layer files, ``eric612/MobileNet-YOLO``):
  nearest-neighbour upsampling of one bottom by an integer ``scale``.

Both forks named the type ``Upsample`` and the field ``upsample_param``; one registered
class picks the behaviour by its number of bottoms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from ... import backend
from ...blob import Blob
from ...errors import InvalidParameterError, ShapeMismatchError
from ..base import Layer
from .registry import register_fork_layer

#: upsample_param fields that only SegNet's (two-bottom) layer reads
SEGNET_ONLY_FIELDS = ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")


@register_fork_layer("Upsample", "SegNet", "YOLOv3 ports (caffe-yolov3, MobileNet-YOLO)")
class UpsampleLayer(Layer):
    """Upsampling (Caffe type ``Upsample``; SegNet and YOLOv3-port forks), chosen by the number of bottoms.

    **Two bottoms (SegNet, max-unpooling).** Bottoms: values ``x`` ``(N, C, H, W)`` and a
    mask of the same shape holding, as floats, flat indices ``h * W_out + w`` into each
    ``(n, c)`` output plane (the mask top of a MAX Pooling layer). Top ``(N, C, H_out, W_out)``:
    zero except ``top[n, c].flat[int(mask[n, c, i])] = x[n, c].flat[i]`` (mask values are
    truncated toward zero; on a repeated index the later ``i`` wins). Backward gathers:
    ``dx[n, c].flat[i] = dtop[n, c].flat[int(mask[n, c, i])]`` (so a repeated index hands
    its gradient to every source); the mask gets no gradient.

    Output size: ``upsample_h`` and ``upsample_w`` when both are set (each > 1; one alone
    is ignored); otherwise ``H * scale_h - pad_out_h`` and ``W * scale_w - pad_out_w``, with
    ``scale_h = scale_w = scale`` (default 2) unless both ``scale_h`` and ``scale_w`` are set
    (then without ``scale``). Scales must be > 1, and ``pad_out_*`` needs that scale to be 2.
    A mask index outside the output plane is an error.

    **One bottom (YOLOv3 ports, nearest neighbour).** ``top[..., h, w] = x[..., h // s, w // s]``
    over the last two axes, ``s = scale`` (the ports' default 1 when unset; must be >= 1);
    top ``(..., H * s, W * s)``. Backward sums each ``s x s`` block of the top gradient.
    """

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.param.upsample_param
        self.unpool = len(bottom) == 2
        if self.unpool:
            self._setup_unpool(p)
            return
        extra = [name for name in SEGNET_ONLY_FIELDS if p.HasField(name)]
        if extra:
            raise self.error(
                f"with one bottom is nearest-neighbour upsampling by `scale` alone; {', '.join(extra)} "
                f"belong to SegNet's max-unpooling, which needs the pooling mask as a second bottom. "
                f"Received: {', '.join(extra)} with 1 bottom. Valid: only upsample_param.scale, or 2 bottoms",
            )
        self.scale = int(p.scale) if p.HasField("scale") else 1
        if self.scale < 1:
            raise self.error(f"upsample_param.scale must be at least 1. Received: {self.scale}. Valid: >= 1")

    def _setup_unpool(self, p) -> None:
        self.out_hw: tuple[int, int] | None = None
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            for name in ("upsample_h", "upsample_w"):
                if getattr(p, name) <= 1:
                    raise self.error(
                        f"upsample_param.{name} must be greater than 1. Received: {getattr(p, name)}. Valid: >= 2"
                    )
            self.out_hw = (int(p.upsample_h), int(p.upsample_w))
            return
        has_h, has_w = p.HasField("scale_h"), p.HasField("scale_w")
        if (has_h or has_w) and not (has_h and has_w and not p.HasField("scale")):
            raise self.error(
                "needs upsample_h and upsample_w, or else (deprecated) scale, or scale_h and scale_w together "
                "without scale. Received: "
                + ", ".join(f"{n} {getattr(p, n)}" for n in ("scale", "scale_h", "scale_w") if p.HasField(n))
            )
        self.scales = (int(p.scale_h), int(p.scale_w)) if has_h else (int(p.scale), int(p.scale))
        self.pad_out = (int(bool(p.pad_out_h)), int(bool(p.pad_out_w)))
        for axis, s, pad in zip("hw", self.scales, self.pad_out):
            field = f"scale_{axis}" if has_h else "scale"
            if s <= 1:
                raise self.error(f"upsample_param.{field} must be greater than 1. Received: {s}. Valid: >= 2")
            if pad and s != 2:
                raise self.error(
                    f"upsample_param.pad_out_{axis} needs a scale of 2 on that axis (otherwise the output size "
                    f"is ill-defined). Received: pad_out_{axis} true with {field} {s}. Valid: {field} 2, or "
                    "give the output size with upsample_h and upsample_w"
                )

    def reshape(self, bottom, top):
        x_shape = bottom[0].shape
        if not self.unpool:
            if len(x_shape) < 2:
                raise self.error(
                    f"upsamples the last two axes, so its bottom needs at least 2. Received shape {x_shape}",
                    ShapeMismatchError,
                )
            top[0].reshape(x_shape[:-2] + (x_shape[-2] * self.scale, x_shape[-1] * self.scale))
            return
        if len(x_shape) != 4 or bottom[1].shape != x_shape:
            raise self.error(
                f"needs a 4-axis bottom (N, C, H, W) and a mask bottom of the same shape. "
                f"Received: {x_shape} and {bottom[1].shape}",
                ShapeMismatchError,
            )
        if self.out_hw is not None:
            out_h, out_w = self.out_hw
        else:
            out_h = x_shape[2] * self.scales[0] - self.pad_out[0]
            out_w = x_shape[3] * self.scales[1] - self.pad_out[1]
        top[0].reshape(x_shape[:2] + (out_h, out_w))

    def _targets(self, bottom, top):
        """Flat indices into top of every bottom value: plane offset + truncated mask index."""
        mask = bottom[1].data
        xp = backend.array_module(mask)
        n, c, h, w = bottom[0].shape
        plane = top[0].shape[2] * top[0].shape[3]
        idx = mask.reshape(n * c, h * w).astype(numpy.int64)
        bad = (idx < 0) | (idx >= plane)
        if bool(bad.any()):
            first = int(backend.to_numpy(idx.reshape(-1)[xp.argmax(bad.reshape(-1))]))
            raise self.error(
                f"mask index {first} is out of range for the {top[0].shape[2]}x{top[0].shape[3]} output plane. "
                f"Valid: 0 .. {plane - 1}; check that the upsample sizes match the pooling layer that made the mask",
                InvalidParameterError,
            )
        return (idx + xp.arange(n * c, dtype=numpy.int64)[:, None] * plane).reshape(-1)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        if not self.unpool:
            s = self.scale
            top[0].data = xp.repeat(xp.repeat(x, s, axis=-2), s, axis=-1)
            return
        targets = self._targets(bottom, top)
        values = x.reshape(-1)
        y = xp.zeros(top[0].count, dtype=x.dtype)
        if targets.size and int(xp.bincount(targets).max()) > 1:
            # A repeated index keeps the value of its last source, as the fork's sequential loop does.
            key = targets * targets.size + xp.arange(targets.size, dtype=numpy.int64)
            order = xp.argsort(key)
            sorted_targets = targets[order]
            last = xp.ones(targets.size, dtype=bool)
            last[:-1] = sorted_targets[:-1] != sorted_targets[1:]
            targets, values = sorted_targets[last], values[order[last]]
        y[targets] = values
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if not self.unpool:
            s = self.scale
            shape = bottom[0].shape
            blocks = dy.reshape(shape[:-2] + (shape[-2], s, shape[-1], s))
            bottom[0].diff = blocks.sum(axis=(-3, -1))
            return
        targets = self._targets(bottom, top)
        bottom[0].diff = dy.reshape(-1)[targets].reshape(bottom[0].shape)
