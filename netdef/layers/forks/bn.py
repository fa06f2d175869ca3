"""The fork layer type ``BN``: batch normalisation with a built-in scale and shift.

Two forks defined a type called ``BN`` with different blobs and semantics:

* SegNet (``alexgkendall/caffe-segnet``): 2 blobs, no running statistics, a ``bn_mode``
  of LEARN (batch statistics) or INFERENCE (``scale * x + shift`` with statistics folded in).
* PSPNet (``hszhao/PSPNet``, DeepLab-v2 lineage): 4 blobs (slope, bias, running mean,
  running variance), momentum updates, ``frozen`` / TEST use the running statistics.

netdef's ``bn_param`` holds the union of both forks' fields; one registered class picks
the variant from the fields a definition sets (see ``BNLayer``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import backend
from ...blob import Blob
from ...errors import BlobCountError, InvalidParameterError, ShapeMismatchError, layer_prefix
from ...proto import netdef_pb2 as pb
from ..base import NeuronLayer
from .registry import register_fork_layer

#: bn_param fields only SegNet's BNParameter has
SEGNET_FIELDS = ("bn_mode", "scale_filler", "shift_filler")
#: bn_param fields only PSPNet's BNParameter has
PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")

#: SegNet's fixed variance epsilon (not a parameter in that fork)
SEGNET_EPS = 1e-9


def _set_fields(layer_param) -> set[str]:
    """Names of the bn_param fields a definition sets explicitly."""
    if not layer_param.HasField("bn_param"):
        return set()
    return {field.name for field, _ in layer_param.bn_param.ListFields()}


def bn_variant(layer_param) -> str:
    """``"SegNet"`` or ``"PSPNet"``: which fork's BN a layer definition means (the rule of ``BNLayer``)."""
    fields = _set_fields(layer_param)
    segnet = sorted(fields.intersection(SEGNET_FIELDS))
    pspnet = sorted(fields.intersection(PSPNET_FIELDS))
    if segnet and pspnet:
        raise InvalidParameterError(
            f"{layer_prefix(layer_param.name, layer_param.type)}: bn_param mixes SegNet's fields "
            f"({', '.join(segnet)}) with PSPNet's ({', '.join(pspnet)}). Received both. Valid: only SegNet's "
            f"{', '.join(SEGNET_FIELDS)} (2 blobs), or only PSPNet's {', '.join(PSPNET_FIELDS)} (4 blobs)"
        )
    return "SegNet" if segnet else "PSPNet"


def _legacy_4d(layer, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Caffe's num/channels/height/width of a blob of at most 4 axes (missing trailing axes are 1)."""
    if len(shape) > 4:
        raise layer.error(
            f"reads its bottom as (num, channels, height, width), so it takes at most 4 axes. "
            f"Received shape {shape} ({len(shape)} axes). Valid: 1 to 4 axes",
            ShapeMismatchError,
        )
    full = tuple(shape) + (1,) * (4 - len(shape))
    return full[0], full[1], full[2], full[3]


@register_fork_layer("BN", "SegNet", "PSPNet")
class BNLayer(NeuronLayer):
    """Batch normalisation with a learned per-channel scale and shift (Caffe type ``BN``; SegNet, PSPNet forks).

    Which fork's layer a definition builds (the instance is a ``SegNetBNLayer`` or a
    ``PSPNetBNLayer``) follows the ``bn_param`` fields it sets:

    * any of SegNet's ``bn_mode``, ``scale_filler``, ``shift_filler`` -> SegNet (2 blobs);
    * any of PSPNet's ``slope_filler``, ``bias_filler``, ``momentum``, ``eps``, ``frozen``,
      ``engine``, or none of either (no ``bn_param`` at all) -> PSPNet (4 blobs);
    * fields of both -> InvalidParameterError.

    Write ``bn_mode: LEARN`` to get SegNet's layer with all defaults. A weights file from
    either fork loads into the matching variant (copied by layer name; 2 or 4 blobs).

    Bottom: ``(N, C, H, W)`` or fewer axes (missing trailing axes count as 1), at most 4.
    """

    exact_num_bottom = 1
    exact_num_top = None
    min_num_top = 1
    max_num_top = 1
    #: "SegNet" or "PSPNet"
    variant = ""

    def __new__(cls, param, *args, **kwargs):
        if cls is BNLayer:
            cls = SegNetBNLayer if bn_variant(param) == "SegNet" else PSPNetBNLayer
        return super().__new__(cls)

    def channel_shape(self, channels: int) -> tuple[int, int, int, int]:
        return (1, channels, 1, 1)

    def check_channels(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        dims = _legacy_4d(self, x_shape)
        if self.blobs and dims[1] != self.blobs[0].shape[1]:
            raise self.error(
                f"was set up for {self.blobs[0].shape[1]} channels but the bottom has shape {x_shape} "
                f"({dims[1]} channels). Valid: a bottom with {self.blobs[0].shape[1]} channels (axis 1)",
                ShapeMismatchError,
            )
        return dims


class SegNetBNLayer(BNLayer):
    """SegNet's ``BN`` (alexgkendall/caffe-segnet): 2 blobs, scale ``(1, C, 1, 1)`` and shift ``(1, C, 1, 1)``.

    ``bn_mode: LEARN`` (default), in either phase, normalises with the batch statistics
    over N, H, W: ``y = scale * (x - mean) / sqrt(var + 1e-9) + shift`` with the biased
    variance ``var = E[x^2] - E[x]^2`` (clamped at 0); optional tops 2 and 3 are the batch
    mean and variance ``(1, C, 1, 1)``. ``bn_mode: INFERENCE`` is ``y = scale * x + shift``
    (statistics folded into the blobs beforehand) and takes exactly 1 top.

    The top is always 4-D ``(N, C, H, W)``, even for a 2-D bottom (as in the fork).
    The fork overwrites its parameter gradients; netdef adds into them like every layer,
    which is the same for one backward per update.
    """

    variant = "SegNet"
    max_num_top = 3

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.param.bn_param
        self.learn = p.bn_mode == pb.BNParameter.LEARN
        if not self.learn and len(top) > 1:
            raise self.error(
                f"in bn_mode INFERENCE produces exactly 1 top. Received: {len(top)} tops. "
                "Valid: 1 top, or bn_mode LEARN for up to 3 (output, batch mean, batch variance)",
                BlobCountError,
            )
        channels = self.check_channels(bottom[0].shape)[1]
        self.blobs = [
            self.filled_blob(self.channel_shape(channels), p.scale_filler),
            self.filled_blob(self.channel_shape(channels), p.shift_filler),
        ]

    def reshape(self, bottom, top):
        dims = self.check_channels(bottom[0].shape)
        top[0].reshape(dims)
        for t in top[1:]:
            t.reshape(self.channel_shape(dims[1]))

    def forward(self, bottom, top):
        dims = self.check_channels(bottom[0].shape)
        x = bottom[0].data.reshape(dims)
        xp = backend.array_module(x)
        scale, shift = self.blobs[0].data, self.blobs[1].data
        if not self.learn:
            top[0].data = x * scale + shift
            return
        axes = (0, 2, 3)
        mean = x.mean(axis=axes, keepdims=True)
        var = xp.maximum((x * x).mean(axis=axes, keepdims=True) - mean * mean, 0)
        std = xp.sqrt(var + SEGNET_EPS).astype(x.dtype, copy=False)
        x_norm = (x - mean) / std
        self._x_norm, self._std = x_norm, std
        top[0].data = x_norm * scale + shift
        if len(top) > 1:
            top[1].data = mean.astype(x.dtype, copy=False)
        if len(top) > 2:
            top[2].data = var.astype(x.dtype, copy=False)

    def backward(self, top, propagate_down, bottom):
        dims = self.check_channels(bottom[0].shape)
        dy = top[0].diff.reshape(dims)
        axes = (0, 2, 3)
        scale = self.blobs[0].data
        x_hat = self._x_norm if self.learn else bottom[0].data.reshape(dims)
        if self.param_propagate_down and self.param_propagate_down[0]:
            self.blobs[0].diff += (dy * x_hat).sum(axis=axes, keepdims=True)
        if len(self.param_propagate_down) > 1 and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=axes, keepdims=True)
        if not propagate_down[0]:
            return
        g = dy * scale
        if self.learn:
            g = (g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)) / self._std
        bottom[0].diff = g.reshape(bottom[0].shape)


class PSPNetBNLayer(BNLayer):
    """PSPNet's ``BN`` (hszhao/PSPNet): 4 blobs ``(1, C, 1, 1)``: slope, bias, running mean, running variance.

    ``y = slope * (x - mean) / sqrt(var + eps) + bias`` per channel, statistics over N, H, W.
    TRAIN and not ``frozen``: batch mean and biased batch variance, and each forward updates
    ``running = (1 - momentum) * batch + momentum * running``. ``frozen`` or TEST: the
    running statistics. Defaults: ``momentum`` 0.9, ``eps`` 1e-5; an absent filler is
    constant 0; the running variance starts at 1 when ``frozen``, else 0.

    The running statistics are never learned (their ``lr_mult`` is set to 0, as the fork
    does), nor slope and bias when ``frozen``. Backward when frozen: ``dx = dy * slope /
    sqrt(running_var + eps)`` and no parameter gradients. Backward otherwise uses the
    batch-statistics formula with the ``x_hat`` and ``var`` of the forward pass, also in
    TEST (where those came from the running statistics), as the fork does.

    Bottom: up to 4 axes; top: the bottom's shape. In-place use is allowed.
    """

    variant = "PSPNet"

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.param.bn_param
        self.frozen = bool(p.frozen)
        self.momentum = float(p.momentum)
        self.eps = float(p.eps)
        if self.eps < 0:
            raise self.error(f"bn_param.eps must not be negative. Received: {self.eps}. Valid: >= 0")
        self.use_global_stats = self.frozen or self.phase == pb.TEST
        shape = self.channel_shape(self.check_channels(bottom[0].shape)[1])
        running_var = self.new_blob(shape)
        running_var.data[...] = 1.0 if self.frozen else 0.0
        self.blobs = [
            self.filled_blob(shape, p.slope_filler),
            self.filled_blob(shape, p.bias_filler),
            self.new_blob(shape),
            running_var,
        ]
        # Like the fork: the statistics (and, when frozen, slope and bias) take no solver updates.
        while len(self.param.param) < 4:
            self.param.param.add()
        for k in (0, 1, 2, 3) if self.frozen else (2, 3):
            self.param.param[k].lr_mult = 0.0
            self.param.param[k].decay_mult = 0.0

    def reshape(self, bottom, top):
        self.check_channels(bottom[0].shape)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        dims = self.check_channels(bottom[0].shape)
        x = bottom[0].data.reshape(dims)
        xp = backend.array_module(x)
        slope, bias, running_mean, running_var = (b.data for b in self.blobs)
        axes = (0, 2, 3)
        if self.use_global_stats:
            mean, var = running_mean, running_var
            d = x - mean
        else:
            mean = x.mean(axis=axes, keepdims=True)
            d = x - mean
            var = (d * d).mean(axis=axes, keepdims=True)
            m = self.momentum
            running_mean[...] = (1 - m) * mean + m * running_mean
            running_var[...] = (1 - m) * var + m * running_var
        inv_std = (1 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        x_norm = d * inv_std
        self._x_norm, self._inv_std = x_norm, inv_std
        top[0].data = (x_norm * slope + bias).reshape(bottom[0].shape)

    def backward(self, top, propagate_down, bottom):
        dims = self.check_channels(bottom[0].shape)
        dy = top[0].diff.reshape(dims)
        slope = self.blobs[0].data
        if self.frozen:
            if propagate_down[0]:
                inv_std = 1 / backend.array_module(dy).sqrt(self.blobs[3].data + self.eps)
                bottom[0].diff = (dy * (slope * inv_std)).reshape(bottom[0].shape)
            return
        axes = (0, 2, 3)
        x_hat = self._x_norm
        if self.param_propagate_down and self.param_propagate_down[0]:
            self.blobs[0].diff += (dy * x_hat).sum(axis=axes, keepdims=True)
        if len(self.param_propagate_down) > 1 and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=axes, keepdims=True)
        if propagate_down[0]:
            g = dy * slope
            dx = g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)
            bottom[0].diff = (dx * self._inv_std).reshape(bottom[0].shape)
