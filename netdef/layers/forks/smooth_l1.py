"""SmoothL1Loss: the box-regression loss of Fast R-CNN, as the SSD and Faster R-CNN forks ship it.

Both forks register the type ``SmoothL1Loss``. The SSD fork carries Fast R-CNN's original form
(two bottoms, no parameters); Faster R-CNN's adds ``smooth_l1_loss_param.sigma`` and optional
inside/outside weight bottoms. With ``sigma = 1`` and no weights the two compute the same
thing, so one class serves both. A three-bottom layer runs in neither fork (SSD's checks for
exactly two bottoms, Faster R-CNN's for both weights), and netdef refuses it as they do.
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import backend
from ...errors import BlobCountError, ShapeMismatchError
from ..base import LossLayer
from .registry import register_fork_layer


def _legacy_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Caffe's (num, channels, height, width) view of a shape of up to 4 axes (missing ones are 1)."""
    shape = tuple(shape)
    return shape + (1,) * (4 - len(shape)) if len(shape) <= 4 else shape


@register_fork_layer("SmoothL1Loss", "SSD", "Faster R-CNN")
class SmoothL1LossLayer(LossLayer):
    """Caffe type ``SmoothL1Loss`` (weiliu89/caffe ``ssd`` and rbgirshick/caffe-fast-rcnn ``faster-rcnn``).

    ``d = w_in * (pred - target)`` (``w_in = 1`` without weights), per element
    ``e = 0.5 * sigma^2 * d^2`` if ``|d| < 1 / sigma^2``, else ``|d| - 0.5 / sigma^2``;
    ``loss = sum(w_out * e) / N`` with ``N`` the first dimension of ``pred`` (the batch size), whatever
    ``loss_param`` says. Gradient: ``+-loss_weight / N * w_in * w_out * s`` with ``s = sigma^2 * d`` or
    ``sign(d)``, ``+`` for ``pred`` and ``-`` for ``target``; as in both forks the target gets its gradient
    too (``force_backward`` may ask for it), the weights get none.

    Bottoms: ``pred``, ``target`` and optionally (Faster R-CNN) ``inside_weights``, ``outside_weights``,
    all of one shape (Caffe compares num, channels, height and width). Top: the loss (0-D).
    """

    max_num_bottom = 4

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index < 2

    def setup(self, bottom, top):
        if len(bottom) == 3:
            raise self.error(
                "takes 2 bottoms (pred, target) or 4 (pred, target, inside weights, outside weights); "
                "a weighted loss needs both inside and outside weights. Received: 3 bottoms",
                BlobCountError,
            )
        sigma = float(self.param.smooth_l1_loss_param.sigma)
        if sigma == 0:
            raise self.error(
                "smooth_l1_loss_param.sigma must not be 0 (the loss would be 0 everywhere). Received: 0. "
                "Valid: any non-zero number (only sigma^2 is used; the default is 1)"
            )
        self.sigma2 = sigma * sigma
        self.has_weights = len(bottom) == 4

    def reshape(self, bottom, top):
        names = ("pred", "target", "inside weights", "outside weights")
        if bottom[1].shape[:1] != bottom[0].shape[:1]:
            raise self.error(
                "pred and target need the same first dimension (batch size). "
                f"Received: {bottom[0].shape} and {bottom[1].shape}",
                ShapeMismatchError,
            )
        want = _legacy_shape(bottom[0].shape)
        for i in range(1, len(bottom)):
            if _legacy_shape(bottom[i].shape) != want:
                raise self.error(
                    f"{names[i]} (bottom {i}) must have the shape of pred. "
                    f"Received: {bottom[i].shape}; pred: {bottom[0].shape}",
                    ShapeMismatchError,
                )
        top[0].reshape(())

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.array_module(x)
        d = x - bottom[1].data.reshape(x.shape)
        if self.has_weights:
            d = d * bottom[2].data.reshape(x.shape)
        a = xp.abs(d)
        near = a < 1.0 / self.sigma2
        e = xp.where(near, (0.5 * self.sigma2) * d * d, a - 0.5 / self.sigma2)
        slope = xp.where(near, self.sigma2 * d, xp.sign(d))
        if self.has_weights:
            outside = bottom[3].data.reshape(x.shape)
            e = e * outside
            slope = slope * bottom[2].data.reshape(x.shape) * outside
        self._num = max(1, x.shape[0]) if x.ndim else 1
        top[0].data[...] = e.sum() / self._num
        self._slope = slope

    def backward(self, top, propagate_down, bottom):
        xp = backend.array_module(self._slope)
        for i, down in enumerate(propagate_down):
            if not down:
                continue
            if i < 2:
                scale = top[0].diff * (1.0 if i == 0 else -1.0) / self._num
                bottom[i].diff = (scale * self._slope).astype(self.dtype).reshape(bottom[i].shape)
            else:
                bottom[i].diff = xp.zeros(bottom[i].shape, dtype=self.dtype)
