"""BlobProto <-> array conversion and ``.binaryproto`` files (e.g. mean images)."""

from __future__ import annotations

import numpy

from .. import limits
from ..errors import WeightsFileError
from ..proto import netdef_pb2 as pb

#: Largest dimension a stored blob may have (Caffe's Blob keeps dimensions and counts in an int).
MAX_DIM = (1 << 31) - 1


def check_stored_shape(shape: tuple[int, ...], values: int, what: str = "BlobProto") -> tuple[int, ...]:
    """Refuse a stored blob shape with negative or oversized dims, or that does not hold ``values`` values."""
    bad = [d for d in shape if not 0 <= d <= MAX_DIM]
    if bad:
        raise WeightsFileError(
            f"{what} has shape {shape}, with dimension {bad[0]} out of range. Valid: dimensions in 0 .. {MAX_DIM}"
        )
    expected = limits.shape_count(shape)
    if values != expected:
        raise WeightsFileError(f"{what} holds {values} values but its shape {shape} needs {expected}")
    return shape


def blob_shape(proto) -> tuple[int, ...]:
    """The shape a BlobProto describes: ``shape.dim`` or the legacy num/channels/height/width."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    n = len(proto.data) or len(proto.double_data)
    return (n,) if n else ()


def proto_to_array(proto, diff: bool = False) -> numpy.ndarray:
    """The values of a BlobProto (float or double storage) as a NumPy array of its shape."""
    shape = blob_shape(proto)
    if diff:
        values = proto.double_diff if len(proto.double_diff) else proto.diff
    else:
        values = proto.double_data if len(proto.double_data) else proto.data
    dtype = numpy.float64 if (len(proto.double_diff) if diff else len(proto.double_data)) else numpy.float32
    check_stored_shape(shape, len(values))
    return numpy.asarray(values, dtype=dtype).reshape(shape)


def array_to_proto(data, diff=None, proto=None):
    """Fill (or create) a BlobProto with ``data`` (and ``diff``) in the modern shape form."""
    proto = proto if proto is not None else pb.BlobProto()
    data = numpy.asarray(data)
    proto.shape.dim.extend(int(d) for d in data.shape)
    if data.dtype == numpy.float64:
        proto.double_data.extend(data.ravel().tolist())
    else:
        proto.data.extend(data.astype(numpy.float32, copy=False).ravel().tolist())
    if diff is not None:
        diff = numpy.asarray(diff)
        if diff.dtype == numpy.float64:
            proto.double_diff.extend(diff.ravel().tolist())
        else:
            proto.diff.extend(diff.astype(numpy.float32, copy=False).ravel().tolist())
    return proto


def read_binaryproto(path: str) -> numpy.ndarray:
    """Read a ``.binaryproto`` BlobProto file (a mean image, an infogain matrix) as an array."""
    proto = pb.BlobProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except FileNotFoundError:
        raise WeightsFileError(f"BlobProto file not found: {path}") from None
    except Exception as err:  # protobuf raises DecodeError with little context
        raise WeightsFileError(f"{path}: not a valid binary BlobProto ({err})") from None
    try:
        return proto_to_array(proto)
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: {err}") from None


def write_binaryproto(path: str, array) -> None:
    """Write ``array`` as a ``.binaryproto`` BlobProto file."""
    with open(path, "wb") as f:
        f.write(array_to_proto(array).SerializeToString())


# --- wire encoding: packed values written by NumPy in one go ------------------------
# Protobuf's Python containers would turn every value into a Python float first
# (seconds and gigabytes for a VGG-sized model); these write the same bytes directly.
def varint(value: int) -> bytes:
    """Protobuf base-128 varint (negative values in the ten-byte two's-complement form)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` with wire type 2 (bytes, strings, sub-messages, packed values)."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


# BlobProto field numbers: diff 6, data 5, shape 7, double_data 8, double_diff 9
def encode_blob(data, diff=None) -> bytes:
    """A serialised BlobProto ``{shape, data[, diff]}`` (double_* fields for float64 arrays)."""
    data = numpy.asarray(data)
    wide = data.dtype == numpy.float64
    kind = "<f8" if wide else "<f4"
    fields = {}
    if data.size:
        fields[8 if wide else 5] = numpy.ascontiguousarray(data, dtype=kind).tobytes()
    if diff is not None and numpy.size(diff):
        fields[9 if wide else 6] = numpy.ascontiguousarray(diff, dtype=kind).tobytes()
    dims = b"".join(varint(int(d)) for d in data.shape)
    fields[7] = length_delimited(1, dims) if dims else b""
    # protobuf writes fields in number order; Caffe's files do too
    return b"".join(length_delimited(n, fields[n]) for n in sorted(fields))
