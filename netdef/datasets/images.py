"""Image list files and images as Caffe's OpenCV-based tools see them (C x H x W uint8, BGR order)."""

from __future__ import annotations

import io
import os

import numpy

from ..errors import DatasetError, install_hint
from ..io.preprocessing import resize_image


def read_image_list(path: str) -> list[tuple[str, int]]:
    """The ``(path, label)`` entries of an image list file, one ``<path> <integer label>`` per line.

    As in Caffe's ``convert_imageset``, the label follows the last space, so paths may
    contain spaces; blank lines are skipped.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"image list file not found: {path} (looked in {os.getcwd()})")
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            name, _, label = line.rstrip().rpartition(" ")
            try:
                value = int(label)
            except ValueError:
                value = None
            if not name or value is None:
                raise DatasetError(f'{path} line {lineno}: expected "<image path> <integer label>". Received: {line!r}')
            entries.append((name, value))
    if not entries:
        raise DatasetError(f"image list {path} names no images")
    return entries


def _pillow():
    try:
        from PIL import Image  # optional (the image extra), imported when images are read or written
    except ImportError:
        raise DatasetError(
            "reading and writing image files needs Pillow, which is not installed: run "
            + install_hint("image", "pillow")
        ) from None
    return Image


def load_pixels(path: str, gray: bool = False, size: tuple[int, int] | None = None) -> numpy.ndarray:
    """An image file as uint8 C x H x W pixels: 3 channels in BGR order, or 1 grey channel.

    ``size`` = (height, width) resizes bilinearly (OpenCV's INTER_LINEAR, which Caffe's
    ``convert_imageset`` uses), rounding to whole pixel values.
    """
    Image = _pillow()
    if not os.path.isfile(path):
        raise DatasetError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            arr = numpy.asarray(im.convert("L" if gray else "RGB"), dtype=numpy.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr[:, :, ::-1]
    if size is not None and arr.shape[:2] != tuple(size):
        arr = numpy.clip(numpy.rint(resize_image(arr, size)), 0, 255).astype(numpy.uint8)
    return numpy.ascontiguousarray(arr.transpose(2, 0, 1))


def image_format(name: str) -> str | None:
    """Pillow's format name for a file name or an extension (``"png"``, ``".JPG"``), or None when unknown."""
    Image = _pillow()
    ext = name if name.startswith(".") else (os.path.splitext(name)[1] or "." + name)
    return Image.registered_extensions().get(ext.lower())


def encode_pixels(pixels: numpy.ndarray, encode_type: str) -> bytes:
    """C x H x W uint8 pixels (BGR or grey) as the bytes of an image file of type ``encode_type`` (png, jpg, ...)."""
    Image = _pillow()
    fmt = image_format(encode_type)
    if fmt is None:
        raise DatasetError(f"unknown --encode_type {encode_type!r}. Valid: an image type Pillow writes, e.g. png, jpg")
    arr = numpy.asarray(pixels, dtype=numpy.uint8)
    im = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr[::-1].transpose(1, 2, 0))
    out = io.BytesIO()
    options = {"quality": 95} if fmt == "JPEG" else {}  # OpenCV's default JPEG quality
    im.save(out, format=fmt, **options)
    return out.getvalue()


def encoded_image(path: str, gray: bool, size: tuple[int, int] | None, encode_type: str = "") -> bytes:
    """The image-file bytes ``convert_imageset --encoded`` stores for ``path``.

    The file's own bytes when nothing has to change (no resize, its type is
    ``encode_type`` or none is given, and its channels fit ``gray``), as Caffe does;
    otherwise the pixels after loading and resizing, encoded as ``encode_type`` (or as
    the file's own type).
    """
    own = image_format(path)
    wanted = image_format(encode_type) if encode_type else own
    if wanted is None:
        raise DatasetError(f"cannot tell the image type of {path}; give --encode_type (png, jpg, ...)")
    if size is None and wanted == own:
        Image = _pillow()
        try:
            with Image.open(path) as im:
                is_gray = im.mode in ("1", "L", "I", "I;16", "F")
        except (OSError, ValueError, SyntaxError) as err:
            raise DatasetError(f"cannot read image {path}: {err}") from None
        if is_gray == gray:
            with open(path, "rb") as f:
                return f.read()
    return encode_pixels(load_pixels(path, gray, size), encode_type or os.path.splitext(path)[1])


__all__ = ["encode_pixels", "encoded_image", "image_format", "load_pixels", "read_image_list"]
