"""Caffe's data transformation (``transform_param``) applied to whole batches.

The data layers (``Data``, ``ImageData``, ``WindowData``) hand a batch of raw
samples, N x C x H x W with pixel values as stored (0..255 for images), to a
:class:`DataTransformer`, which does what Caffe's ``DataTransformer`` does to
each sample:

1. crop ``crop_size`` x ``crop_size``: at a random offset in the TRAIN phase,
   centred (``(H - crop_size) // 2``) in the TEST phase;
2. mirror (flip left-right) with probability 1/2 when ``mirror`` is set — in
   every phase, as Caffe does;
3. subtract the mean: ``mean_file`` (a C x H x W ``.binaryproto`` image of the
   uncropped size, cut with the same offsets and flipped with the data) or
   ``mean_value`` (one value for all channels, or one per channel);
4. multiply by ``scale``.

That is ``y = (crop_mirror(x) - crop_mirror(mean)) * scale``, computed in the
float type of the net. Random choices come from the generator the layer passes (its net's stream)
(seeded by :func:`netdef.set_random_seed`), drawn per batch as arrays: first the
N mirror flags, then the N row offsets, then the N column offsets.

:meth:`DataTransformer.transform` is two steps: :meth:`~DataTransformer.prepare` (mean
and scale over the uncropped batch; draws nothing, so prefetching runs it in its background
thread) and :meth:`~DataTransformer.finish` (draws, crops and mirrors, in the layer's thread
when forward takes the batch).
"""

from __future__ import annotations

import os

import numpy

from .. import backend
from ..errors import MeanFileError, ShapeMismatchError, WeightsFileError
from ..io.blobproto import read_binaryproto
from ..io.paths import resolve_path
from .errors import ErrorFactory, plain_error

TRAIN = 0


def read_mean_file(path: str, error: ErrorFactory = plain_error) -> numpy.ndarray:
    """A ``.binaryproto`` mean image as a C x H x W float32 array (a leading axis of 1 is dropped).

    A missing or unreadable file is a :class:`~netdef.errors.MeanFileError` (a data problem,
    not a weights one) that says how such a file is made.
    """
    if not os.path.isfile(path):
        raise error(
            f"transform_param.mean_file not found: {path} (looked in {os.getcwd()}, then beside the net file). "
            "Make one with `netdef compute_image_mean`",
            MeanFileError,
        )
    try:
        mean = read_binaryproto(path)
    except WeightsFileError as err:
        raise error(f"transform_param.mean_file: {err}", MeanFileError) from None
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim == 2:
        mean = mean[None]
    if mean.ndim != 3:
        raise error(
            f"transform_param.mean_file {path} must hold one C x H x W image. Received: shape {mean.shape}",
            MeanFileError,
        )
    return numpy.asarray(mean, dtype=numpy.float32)


class DataTransformer:
    """Crop, mirror, mean subtraction and scale of a ``TransformationParameter``, over a batch.

    Args:
        param: the layer's ``transform_param``.
        phase: ``netdef.TRAIN`` (0) or ``netdef.TEST`` (1); decides random or centre crops.
        error: makes the exception to raise from a message and an error class (a layer passes
            its ``error`` method so that messages name the layer).
        base_dir: ``mean_file`` is looked up relative to the working directory first (Caffe's
            rule), then relative to this folder.
        rng: the generator random crops and mirrors draw from (the layer's stream).
    """

    def __init__(
        self,
        param,
        phase: int = TRAIN,
        error: ErrorFactory = plain_error,
        base_dir: str | None = None,
        rng: numpy.random.Generator | None = None,
    ):
        self.error = error
        self.rng = rng if rng is not None else backend.new_streams().numpy
        self.phase = int(phase)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise error("transform_param cannot set both force_color and force_gray. Received: both true")
        has_mean_file = param.HasField("mean_file") and bool(param.mean_file)
        if has_mean_file and len(param.mean_value):
            raise error(
                "transform_param takes mean_file or mean_value, not both. Received: mean_file "
                f'"{param.mean_file}" and {len(param.mean_value)} mean_value(s)'
            )
        self.mean_image: numpy.ndarray | None = None
        self.mean_values: numpy.ndarray | None = None
        if has_mean_file:
            self.mean_image = read_mean_file(resolve_path(param.mean_file, base_dir), error)
        elif len(param.mean_value):
            self.mean_values = numpy.asarray(param.mean_value, dtype=numpy.float32)

    @property
    def random_crop(self) -> bool:
        """Whether crops are drawn at random (TRAIN phase with a crop size)."""
        return bool(self.crop_size) and self.phase == TRAIN

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The N x C x H' x W' shape a batch of ``shape`` (N, C, H, W) becomes; errors if it cannot crop."""
        n, c, h, w = (int(d) for d in shape)
        if c < 1:
            raise self.error(f"data needs at least one channel. Received: shape {tuple(shape)}", ShapeMismatchError)
        if self.crop_size:
            if self.crop_size > h or self.crop_size > w:
                raise self.error(
                    f"transform_param.crop_size {self.crop_size} is larger than the data ({h} x {w}). "
                    f"Valid: crop_size <= {min(h, w)}",
                    ShapeMismatchError,
                )
            return (n, c, self.crop_size, self.crop_size)
        return (n, c, h, w)

    def _check_mean(self, c: int, h: int, w: int) -> None:
        if self.mean_image is not None and self.mean_image.shape != (c, h, w):
            raise self.error(
                f"the mean_file image must have the data's shape before cropping ({c}, {h}, {w}). "
                f"Received: mean shape {self.mean_image.shape}",
                ShapeMismatchError,
            )
        if self.mean_values is not None and self.mean_values.size not in (1, c):
            raise self.error(
                f"transform_param needs 1 mean_value or one per channel ({c}). Received: {self.mean_values.size}",
            )

    def stack(self, samples: list, names: list[str]) -> numpy.ndarray:
        """The samples (C x H x W each) as one N x C x H x W batch; Caffe takes the batch shape from
        its first sample, so all must have it (``names`` name them in the error)."""
        first = samples[0].shape
        for sample, name in zip(samples, names):
            if sample.shape != first:
                raise self.error(
                    f"all samples of a batch need the shape of its first one {first}. "
                    f"Received: {sample.shape} for {name}",
                    ShapeMismatchError,
                )
        return numpy.stack(samples)

    def draw(self, n: int, h: int, w: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """Per-sample mirror flags, row offsets and column offsets for ``n`` samples of h x w."""
        rng = self.rng
        flips = rng.integers(0, 2, size=n).astype(bool) if self.mirror else numpy.zeros(n, dtype=bool)
        if self.random_crop:
            rows = rng.integers(0, h - self.crop_size + 1, size=n)
            cols = rng.integers(0, w - self.crop_size + 1, size=n)
        elif self.crop_size:
            rows = numpy.full(n, (h - self.crop_size) // 2)
            cols = numpy.full(n, (w - self.crop_size) // 2)
        else:
            rows = cols = numpy.zeros(n, dtype=numpy.int64)
        return flips, rows, cols

    def transform(self, batch, dtype=numpy.float32) -> numpy.ndarray:
        """Transform an N x C x H x W batch (any real dtype; uint8 for images) into a ``dtype`` array."""
        return self.finish(self.prepare(batch, dtype))

    def prepare(self, batch, dtype=numpy.float32) -> numpy.ndarray:
        """The part of :meth:`transform` that draws nothing: the shape checks, then ``(x - mean) * scale``
        of the whole uncropped batch as a new ``dtype`` array; :meth:`finish` crops and mirrors it.

        Prefetching runs this in its background thread. Every element goes through the same
        operations in the same order as when the crop comes first (cropping and flipping only
        pick elements), so ``finish(prepare(x))`` is ``transform(x)`` bit for bit.
        """
        x = numpy.asarray(batch)
        if x.ndim != 4:
            raise self.error(
                f"the transformer takes an N x C x H x W batch. Received: shape {x.shape}", ShapeMismatchError
            )
        _, c, h, w = x.shape
        self.output_shape(x.shape)
        self._check_mean(c, h, w)
        dtype = numpy.dtype(dtype)
        y = x.astype(dtype)
        if self.mean_image is not None:
            y -= self.mean_image.astype(dtype)
        elif self.mean_values is not None:
            y -= numpy.broadcast_to(self.mean_values.astype(dtype), (c,))[None, :, None, None]
        if self.scale != 1:
            y *= dtype.type(numpy.float32(self.scale))
        return y

    def finish(self, prepared: numpy.ndarray) -> numpy.ndarray:
        """Crop and mirror a batch :meth:`prepare` made, drawing the flips and offsets (:meth:`draw`) now."""
        n, _, h, w = prepared.shape
        _, _, ch, cw = self.output_shape(prepared.shape)
        flips, rows, cols = self.draw(n, h, w)
        y = numpy.ascontiguousarray(_cut(prepared, numpy.arange(n), rows, cols, ch, cw))
        if flips.any():
            # the mean was subtracted before the cut, so it is flipped with the data, as Caffe's indexing does
            y[flips] = y[flips][..., ::-1]
        return y


def _cut(
    a: numpy.ndarray, index: numpy.ndarray, rows: numpy.ndarray, cols: numpy.ndarray, ch: int, cw: int
) -> numpy.ndarray:
    """``a[index[i], :, rows[i]:rows[i] + ch, cols[i]:cols[i] + cw]`` for every i, as one N x C x ch x cw array.

    Equal offsets (no crop, or TEST-phase crops) are one slice; per-sample offsets are one gather
    from a sliding-window view (no copy until the gather).
    """
    if (rows == rows[0]).all() and (cols == cols[0]).all():
        r, q = int(rows[0]), int(cols[0])
        return a[:, :, r : r + ch, q : q + cw]
    windows = numpy.lib.stride_tricks.sliding_window_view(a, (ch, cw), axis=(2, 3))
    return windows[index, :, rows, cols]


__all__ = ["DataTransformer", "read_mean_file"]
