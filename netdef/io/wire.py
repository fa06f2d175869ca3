"""A minimal protobuf wire-format reader for weights files, one layer at a time.

Parsing a whole ``.caffemodel`` with protobuf holds the file's bytes and the
parsed message at once (twice the file size, over a gigabyte for VGG-16).
Here the file is memory-mapped and each blob's packed values become a NumPy
view of the mapping; only the small non-blob part of each layer goes through
protobuf. Anything unusual (V0 nets, unpacked values) makes the caller fall
back to the plain protobuf reader.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy

from .blobproto import check_stored_shape

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class Unsupported(Exception):
    """The file uses a form this reader leaves to protobuf."""


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Unsupported("varint longer than 10 bytes")


def fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(number, wire_type, value_start, value_end)`` for each field in ``buf[start:end]``.

    For varints the value itself is returned as ``value_start`` (``value_end`` is -1).
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, kind = key >> 3, key & 7
        if kind == VARINT:
            value, pos = _varint(buf, pos)
            yield number, kind, value, -1
        elif kind == LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise Unsupported("field runs past the end of its message (truncated file?)")
            yield number, kind, pos, pos + size
            pos += size
        elif kind == FIXED32:
            yield number, kind, pos, pos + 4
            pos += 4
        elif kind == FIXED64:
            yield number, kind, pos, pos + 8
            pos += 8
        else:
            raise Unsupported(f"wire type {kind}")


def _shape_dims(buf, start: int, end: int) -> list[int]:
    """The ``dim`` values (field 1, packed or not) of a BlobShape message."""
    dims: list[int] = []
    for number, kind, a, b in fields(buf, start, end):
        if number != 1:
            continue
        if kind != LENGTH:
            dims.append(a)
            continue
        pos = a
        while pos < b:
            value, pos = _varint(buf, pos)
            dims.append(value)
    return dims


def _joined(values: list) -> numpy.ndarray:
    if len(values) == 1:
        return values[0]
    return numpy.concatenate(values) if values else numpy.zeros(0, numpy.float32)


def _blob(buf, start: int, end: int) -> tuple[numpy.ndarray, bool]:
    """A BlobProto's values (a view when possible) and whether its shape is the legacy 4-D form."""
    legacy = [0, 0, 0, 0]
    dims: list[int] | None = None
    parts: dict[int, list] = {5: [], 8: []}
    for number, kind, a, b in fields(buf, start, end):
        if number in (1, 2, 3, 4) and kind == VARINT:
            legacy[number - 1] = a
        elif number == 7 and kind == LENGTH:
            dims = _shape_dims(buf, a, b)
        elif number in (5, 8):
            if kind != LENGTH:
                raise Unsupported("unpacked blob values")
            itemsize = 4 if number == 5 else 8
            parts[number].append(numpy.frombuffer(buf, dtype=f"<f{itemsize}", count=(b - a) // itemsize, offset=a))
    arr = _joined(parts[8] or parts[5])
    if dims is not None:
        shape, is_legacy = tuple(dims), False
    elif any(legacy):
        shape, is_legacy = tuple(legacy), True
    else:
        shape, is_legacy = (arr.size,) if arr.size else (), True
    # varints are unsigned here; protobuf reads dims of 2**63 and more as negative int64 values
    shape = tuple(d - (1 << 64) if d >= 1 << 63 else d for d in shape)
    check_stored_shape(shape, arr.size, "a blob")
    return arr.reshape(shape), is_legacy


def read_layers(path: str) -> dict[str, list[tuple[numpy.ndarray, bool]]]:
    """``{layer name: [(values, legacy_shape)]}`` of a binary NetParameter file, memory-mapped.

    Raises Unsupported for forms left to protobuf (V0 layers, unpacked values).
    """
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise Unsupported("an empty file")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out: dict[str, list[tuple[numpy.ndarray, bool]]] = {}
    size = len(buf)
    for number, kind, a, b in fields(buf, 0, size):
        if kind != LENGTH or number not in (2, 100):
            continue
        # LayerParameter (100): name 1, blobs 7.  V1LayerParameter (2): V0 layer 1, name 4, blobs 6.
        name_field, blob_field = (1, 7) if number == 100 else (4, 6)
        name, blobs = "", []
        for n2, k2, a2, b2 in fields(buf, a, b):
            if number == 2 and n2 == 1:
                raise Unsupported("V0 layer")
            if n2 == name_field and k2 == LENGTH:
                name = bytes(buf[a2:b2]).decode("utf-8")
            elif n2 == blob_field and k2 == LENGTH:
                blobs.append(_blob(buf, a2, b2))
        if blobs:
            out[name] = blobs
    return out
