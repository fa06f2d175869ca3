"""MNIST's idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ... optionally gzipped).

An idx file starts with two zero bytes, a type code (0x08: unsigned bytes) and the
number of dimensions, then one big-endian uint32 per dimension, then the values.
Image files have 3 dimensions (count, rows, columns; magic number 2051), label files
one (magic number 2049).
"""

from __future__ import annotations

import gzip
import os

import numpy

from ..errors import DatasetError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise DatasetError(f"MNIST file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from None


def read_idx(path: str, magic: int | None = None) -> numpy.ndarray:
    """The uint8 array an idx file holds (gzipped or not); ``magic`` checks the file's magic number."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] or raw[1]:
        raise DatasetError(f"{path} is not an idx file (it must start with two zero bytes)")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        kinds = {IMAGES_MAGIC: "an image file (magic 2051)", LABELS_MAGIC: "a label file (magic 2049)"}
        raise DatasetError(f"{path}: expected {kinds.get(magic, magic)}. Received: magic number {found}")
    if raw[2] != 0x08:
        raise DatasetError(f"{path}: only unsigned-byte idx files (type 0x08) are read. Received: type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated (its header names {ndim} dimensions)")
    dims = tuple(int(d) for d in numpy.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(numpy.prod(dims, dtype=numpy.int64))
    if len(raw) - header != size:
        raise DatasetError(
            f"{path}: dimensions {dims} need {size} values after the header. Received: {len(raw) - header}"
        )
    return numpy.frombuffer(raw, dtype=numpy.uint8, offset=header).reshape(dims)


def read_mnist(images: str, labels: str) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(N x 1 x rows x cols uint8 images, N uint8 labels) from an image file and its label file."""
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if x.ndim != 3 or y.ndim != 1:
        raise DatasetError(f"{images} must hold N x rows x cols images and {labels} N labels")
    if len(x) != len(y):
        raise DatasetError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    return x[:, None], y


def write_idx(path: str, array) -> None:
    """Write a uint8 array as an idx file (gzipped when ``path`` ends with .gz): for tests and small tools."""
    a = numpy.ascontiguousarray(array, dtype=numpy.uint8)
    payload = bytes([0, 0, 0x08, a.ndim]) + numpy.asarray(a.shape, dtype=">u4").tobytes() + a.tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "read_idx", "read_mnist", "write_idx"]
