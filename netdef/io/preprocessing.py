"""Preparing images for a net's input blobs: pycaffe's ``caffe.io.Transformer`` and ``load_image``.

A typical ImageNet-style model takes BGR images in [0, 255] with the mean
subtracted, laid out as C x H x W, while images load as RGB H x W x C in [0, 1]::

    t = Transformer({"data": net.blobs["data"].data.shape})
    t.set_transpose("data", (2, 0, 1))       # H x W x C -> C x H x W
    t.set_channel_swap("data", (2, 1, 0))    # RGB -> BGR
    t.set_raw_scale("data", 255)             # [0, 1] -> [0, 255]
    t.set_mean("data", numpy.array([104, 117, 123]))
    net.blobs["data"].data[0] = t.preprocess("data", load_image("cat.jpg"))

``preprocess`` applies, in order: float32, resize to the input's height and
width, transpose, channel swap, raw scale, mean subtraction, input scale.
``deprocess`` undoes them (except the resize).

This is deploy-time preprocessing of user images; the data layers' ``transform_param``
(crop, mirror, mean, scale of whole batches) is :mod:`netdef.data.transform`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy

from ..errors import InvalidParameterError, NetdefError, ShapeMismatchError


def resize_image(image: numpy.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> numpy.ndarray:
    """Resize an H x W x K array to ``new_dims`` = (height, width), float32 (pycaffe's ``caffe.io.resize_image``).

    ``interp_order`` 1 (the default) is bilinear, 0 nearest neighbour. Sample
    positions use pixel centres and clamp at the border (OpenCV's INTER_LINEAR,
    which Caffe's image data layers use); no anti-aliasing. pycaffe resized with
    scikit-image (``mode="constant"``, so an enlarged image's outermost pixels blend
    towards its minimum) or, for K other than 1 and 3, with ``scipy.ndimage.zoom``;
    values inside the image agree, borders may differ slightly. Any K works, and a
    constant image stays constant, as in pycaffe.
    """
    if interp_order not in (0, 1):
        raise InvalidParameterError(
            f"resize_image: interp_order must be 0 (nearest) or 1 (bilinear). Received: {interp_order!r}"
        )
    image = numpy.asarray(image)
    if image.ndim != 3:
        raise ShapeMismatchError(f"resize_image needs an H x W x K array. Received: shape {image.shape}")
    new_h, new_w = (int(d) for d in new_dims)
    if new_h < 1 or new_w < 1:
        raise InvalidParameterError(f"resize_image needs positive (height, width). Received: {tuple(new_dims)}")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ShapeMismatchError(f"resize_image cannot resize an empty image. Received: shape {image.shape}")
    image = image.astype(numpy.float32, copy=False)
    if (h, w) == (new_h, new_w):
        return image.copy()
    if interp_order == 0:
        rows = numpy.minimum(((numpy.arange(new_h) + 0.5) * (h / new_h)).astype(numpy.intp), h - 1)
        cols = numpy.minimum(((numpy.arange(new_w) + 0.5) * (w / new_w)).astype(numpy.intp), w - 1)
        return image[rows][:, cols].copy()
    y0, y1, wy = _sample_positions(h, new_h)
    x0, x1, wx = _sample_positions(w, new_w)
    wy = wy[:, None, None]
    rows = image[y0] * (1 - wy) + image[y1] * wy
    wx = wx[None, :, None]
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(numpy.float32, copy=False)


def _sample_positions(size: int, new_size: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """Neighbour indices and weights along one axis for ``new_size`` samples of ``size`` pixels."""
    pos = (numpy.arange(new_size, dtype=numpy.float64) + 0.5) * (size / new_size) - 0.5
    pos = numpy.clip(pos, 0, size - 1)
    lo = numpy.floor(pos).astype(numpy.intp)
    hi = numpy.minimum(lo + 1, size - 1)
    return lo, hi, (pos - lo).astype(numpy.float32)


def oversample(images, crop_dims: Sequence[int]) -> numpy.ndarray:
    """Ten crops of each image: four corners, centre, and the same five mirrored (pycaffe's ``caffe.io.oversample``).

    Args:
        images: a sequence (or N x H x W x K array) of H x W x K images; as in pycaffe,
            all are taken to have the first image's size.
        crop_dims: (height, width) of the crops.

    Returns:
        a 10N x height x width x K float32 array: per image the crops at the top-left,
        top-right, bottom-left and bottom-right corners, the centre crop, then those
        five flipped left-right. The centre crop starts at ``int(centre - crop / 2)``
        on each axis, pycaffe's rounding.
    """
    if len(images) == 0:
        raise ShapeMismatchError("oversample needs at least one image. Received: none")
    first = numpy.asarray(images[0])
    if first.ndim != 3:
        raise ShapeMismatchError(f"oversample needs H x W x K images. Received: shape {first.shape}")
    h, w = first.shape[:2]
    ch, cw = (int(d) for d in crop_dims)
    if not (0 < ch <= h and 0 < cw <= w):
        raise ShapeMismatchError(
            f"oversample: crops of (height, width) {(ch, cw)} must fit the images of size {(h, w)}. "
            f"Received: crop_dims {tuple(crop_dims)}"
        )
    centre_y, centre_x = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (centre_y, centre_x)]
    shapes = [numpy.shape(im) for im in images]
    if any(shape != first.shape for shape in shapes):
        raise ShapeMismatchError(f"oversample needs images of one size. Received: shapes {shapes}")
    batch = numpy.asarray(images, dtype=numpy.float32)
    crops = numpy.stack([batch[:, y : y + ch, x : x + cw] for y, x in corners], axis=1)
    crops = numpy.concatenate([crops, crops[:, :, :, ::-1]], axis=1)
    return numpy.ascontiguousarray(crops.reshape((-1, ch, cw) + batch.shape[3:]))


class Transformer:
    """Format arrays for a net's inputs (pycaffe's ``caffe.io.Transformer``).

    Args:
        inputs: ``{input blob name: blob shape (N, C, H, W)}``, for example
            ``{"data": net.blobs["data"].data.shape}``.

    The order of operations, the settings and their attribute dictionaries
    (``transformer.mean["data"]`` ...) are pycaffe's, including its habits: the
    channel swap applies after the transpose (so it indexes the first axis), the
    raw scale applies before the mean and the input scale after it, and a mean
    image of another size is resized to the input's. Where pycaffe misbehaves,
    netdef does not copy it: pycaffe's ``preprocess`` scales a float32 image of the
    input's size in place (the caller's array changes), and its ``deprocess``
    squeezes every axis of length 1 (so a one-channel item loses its channel axis
    and the transpose back fails); here ``preprocess`` never writes into its
    argument and ``deprocess`` drops only leading batch axes. Settings are checked
    when made (a transpose must be a permutation), where pycaffe checked lengths only.
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]]):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        for name, shape in self.inputs.items():
            if len(shape) < 2:
                raise ShapeMismatchError(
                    f'Transformer input "{name}" needs a shape with at least a batch and a channel axis '
                    f"(N, C, ...). Received: {shape}"
                )
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, numpy.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check_input(self, name: str) -> tuple[int, ...]:
        if name not in self.inputs:
            raise NetdefError(
                f'"{name}" is not one of the Transformer\'s inputs. Inputs: {", ".join(self.inputs) or "(none)"}'
            )
        return self.inputs[name]

    # --- settings ------------------------------------------------------------------
    def set_transpose(self, name: str, order: Sequence[int]) -> None:
        """Axis order applied to the image, e.g. ``(2, 0, 1)`` turns H x W x C into C x H x W."""
        shape = self._check_input(name)
        order = tuple(int(i) for i in order)
        if sorted(order) != list(range(len(shape) - 1)):
            raise InvalidParameterError(
                f'set_transpose("{name}"): the order must be a permutation of the {len(shape) - 1} axes of one '
                f"input item (blob shape {shape} without the batch axis). Received: {order}"
            )
        self.transpose[name] = order

    def set_channel_swap(self, name: str, order: Sequence[int]) -> None:
        """Channel order taken after the transpose, e.g. ``(2, 1, 0)`` turns RGB into BGR."""
        shape = self._check_input(name)
        order = tuple(int(i) for i in order)
        if sorted(order) != list(range(shape[1])):
            raise InvalidParameterError(
                f'set_channel_swap("{name}"): the order must be a permutation of the input\'s {shape[1]} '
                f"channels. Received: {order}"
            )
        self.channel_swap[name] = order

    def set_raw_scale(self, name: str, scale: float) -> None:
        """Multiply the image by ``scale`` before subtracting the mean (255 for [0, 255] models)."""
        self._check_input(name)
        self.raw_scale[name] = float(scale)

    def set_mean(self, name: str, mean) -> None:
        """Mean subtracted after the raw scale: one value per channel, or a C x H x W (or H x W) image.

        A mean image of another height and width is resized to the input's.
        """
        shape = self._check_input(name)
        mean = numpy.asarray(mean, dtype=numpy.float32)
        channels, spatial = shape[1], shape[2:]
        if mean.ndim == 1:
            if mean.shape[0] != channels:
                raise ShapeMismatchError(
                    f'set_mean("{name}"): a per-channel mean needs {channels} values (the input\'s channels). '
                    f"Received: {mean.shape[0]} values"
                )
            mean = mean.reshape((channels,) + (1,) * len(spatial))
        else:
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim == 2:
                mean = mean[None]
            if mean.ndim != 3 or len(shape) != 4:
                raise ShapeMismatchError(
                    f'set_mean("{name}"): the mean must be per channel ({channels},) or an image of shape '
                    f"(C, H, W) for input shape {shape}. Received: shape {numpy.shape(mean)}"
                )
            if mean.shape[0] != channels:
                raise ShapeMismatchError(
                    f'set_mean("{name}"): the mean image has {mean.shape[0]} channels but the input has '
                    f"{channels}. Received: shape {mean.shape}"
                )
            if mean.shape[1:] != spatial:
                mean = resize_image(mean.transpose(1, 2, 0), spatial).transpose(2, 0, 1)
        self.mean[name] = mean

    def set_input_scale(self, name: str, scale: float) -> None:
        """Multiply by ``scale`` after subtracting the mean (e.g. 1/255 or a standard deviation's inverse)."""
        self._check_input(name)
        self.input_scale[name] = float(scale)

    # --- transforms ------------------------------------------------------------------
    def preprocess(self, name: str, data) -> numpy.ndarray:
        """One H' x W' x K image (any size) as a K x H x W float32 array for input ``name``."""
        shape = self._check_input(name)
        x = numpy.array(data, dtype=numpy.float32)
        if x.ndim == 2 and len(shape) == 4:
            x = x[:, :, None]
        if x.ndim != len(shape) - 1:
            raise ShapeMismatchError(
                f'preprocess("{name}"): expected one {len(shape) - 1}-D item (H x W x K) for input shape {shape}. '
                f"Received: shape {x.shape}"
            )
        spatial = shape[2:]
        if len(spatial) == 2 and x.shape[:2] != spatial:
            x = resize_image(x, spatial)
        order = self.transpose.get(name)
        if order is not None:
            x = x.transpose(order)
        if x.shape[0] != shape[1]:
            raise ShapeMismatchError(
                f'preprocess("{name}"): the image has {x.shape[0]} channels along its first axis after the '
                f"transpose, but the input has {shape[1]} (input shape {shape}). Received: image shape "
                f"{numpy.shape(data)}"
            )
        swap = self.channel_swap.get(name)
        if swap is not None:
            x = x[list(swap)]
        if name in self.raw_scale:
            x = x * self.raw_scale[name]
        if name in self.mean:
            x = x - self.mean[name]
        if name in self.input_scale:
            x = x * self.input_scale[name]
        return numpy.ascontiguousarray(x, dtype=numpy.float32)

    def deprocess(self, name: str, data) -> numpy.ndarray:
        """Undo :meth:`preprocess` for one item (a leading batch axis of size 1 is dropped)."""
        shape = self._check_input(name)
        x = numpy.array(data, dtype=numpy.float32)
        while x.ndim > len(shape) - 1 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != len(shape) - 1:
            raise ShapeMismatchError(
                f'deprocess("{name}"): expected one item of shape {shape[1:]}. Received: shape {numpy.shape(data)}'
            )
        if name in self.input_scale:
            x = x / self.input_scale[name]
        if name in self.mean:
            x = x + self.mean[name]
        if name in self.raw_scale:
            x = x / self.raw_scale[name]
        swap = self.channel_swap.get(name)
        if swap is not None:
            x = x[numpy.argsort(swap)]
        order = self.transpose.get(name)
        if order is not None:
            x = x.transpose(numpy.argsort(order))
        return numpy.ascontiguousarray(x, dtype=numpy.float32)


def load_image(path: str, color: bool = True) -> numpy.ndarray:
    """An image file as float32 H x W x 3 (RGB, ``color=True``) or H x W x 1 (intensity) in [0, 1].

    Reads PNG, JPEG and the other formats Pillow knows (``pip install pillow``).
    A ``.npy`` file holding an H x W or H x W x K array is read with NumPy and
    taken as is (no rescaling), so pipelines can run without Pillow.

    This is pycaffe's ``caffe.io.load_image`` (8-bit files scaled by 1/255, 16-bit
    by 1/65535, alpha dropped, grey files repeated to three channels when ``color``).
    One difference: a colour file read with ``color=False`` becomes grey with the
    ITU-R 601 weights that OpenCV, and so Caffe's ImageData layer, use; pycaffe's
    scikit-image used the Rec. 709 weights (0.2125, 0.7154, 0.0721), so grey values
    of strongly coloured pixels differ by a few percent.
    """
    if not os.path.exists(path):
        raise NetdefError(f"Image file not found: {path}")
    if path.lower().endswith(".npy"):
        try:
            img = numpy.load(path, allow_pickle=False)
        except ValueError as err:
            raise NetdefError(f"{path}: not a NumPy .npy array file ({err})") from None
        if img.ndim not in (2, 3) or img.size == 0:
            raise ShapeMismatchError(f"{path}: an image array must be H x W or H x W x K. Received: shape {img.shape}")
        img = img.astype(numpy.float32)
    else:
        img = _read_with_pillow(path, color)
    if img.ndim == 2:
        img = img[:, :, None]
    if color and img.shape[2] == 1:
        img = numpy.repeat(img, 3, axis=2)
    elif color and img.shape[2] == 4:
        img = img[:, :, :3]
    elif not color and img.shape[2] == 3:
        # ITU-R 601-2 luma, the weights Pillow's "L" conversion uses
        img = img @ numpy.array([0.299, 0.587, 0.114], dtype=numpy.float32)
        img = img[:, :, None]
    return numpy.ascontiguousarray(img, dtype=numpy.float32)


def _read_with_pillow(path: str, color: bool) -> numpy.ndarray:
    try:
        from PIL import Image  # optional (the image extra), imported when an image file is read
    except ImportError:
        raise NetdefError(
            f"Reading {os.path.basename(path)} needs Pillow, which is not installed: run `pip install pillow` "
            "(or pass the image as an H x W x C .npy array)"
        ) from None
    try:
        with Image.open(path) as im:
            im.load()
            # 16-bit greyscale files open as "I;16*" or, with older Pillow, "I"
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return numpy.asarray(im, dtype=numpy.float32) / 65535.0
            if im.mode == "F":
                return numpy.asarray(im, dtype=numpy.float32)
            if color:
                im = im.convert("RGB")
            else:
                im = im.convert("L")
            return numpy.asarray(im, dtype=numpy.float32) / 255.0
    except OSError as err:
        raise NetdefError(f"{path}: cannot read the image ({err})") from None


__all__ = ["Transformer", "load_image", "oversample", "resize_image"]
