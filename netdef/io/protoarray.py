"""Arrays to and from BlobProto, BlobProtoVector and Datum messages (pycaffe's ``caffe.io`` converters).

These keep pycaffe's names, arguments and results, including its habits:

- values read from a message come back as float64 arrays (pycaffe builds them
  from Python floats), except Datum bytes, which stay uint8;
- arrays written into a BlobProto are stored as float32 ``data``/``diff``,
  whatever their dtype (pycaffe never writes ``double_data``);
- a BlobProto with any of the legacy ``num``/``channels``/``height``/``width``
  fields is read as 4-D from those, otherwise from ``shape``.

Messages are built from packed bytes rather than one Python float at a time, so
large blobs convert quickly.
"""

from __future__ import annotations

import io as _bytes_io

import numpy

from ..errors import NetdefError, ShapeMismatchError
from ..proto import netdef_pb2 as pb
from .blobproto import encode_blob, proto_to_array


def blobproto_to_array(blob, return_diff: bool = False) -> numpy.ndarray:
    """The values (or with ``return_diff`` the gradient) of a BlobProto as a float64 array of its shape."""
    return proto_to_array(blob, diff=return_diff).astype(numpy.float64)


def array_to_blobproto(arr, diff=None):
    """A BlobProto holding ``arr`` (and ``diff``) as float32, with ``shape`` set from ``arr``.

    As in pycaffe, ``diff`` is not checked against ``arr``'s shape.
    """
    data = numpy.asarray(arr, dtype=numpy.float32)
    grad = None if diff is None else numpy.asarray(diff, dtype=numpy.float32)
    return pb.BlobProto.FromString(encode_blob(data, grad))


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """Serialised BlobProtoVector of the arrays in ``arraylist`` (each as :func:`array_to_blobproto` stores it)."""
    vec = pb.BlobProtoVector()
    for arr in arraylist:
        vec.blobs.add().CopyFrom(array_to_blobproto(arr))
    return vec.SerializeToString()


#: the spelling older pycaffe releases shipped
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(data: bytes) -> list[numpy.ndarray]:
    """The arrays of a serialised BlobProtoVector (float64, as :func:`blobproto_to_array`)."""
    vec = pb.BlobProtoVector()
    try:
        vec.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError says little more
        raise NetdefError(f"not a serialised BlobProtoVector ({err})") from None
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label: int | None = None):
    """A Datum of a C x H x W array: uint8 arrays as ``data`` bytes, anything else as ``float_data``.

    ``label`` is set only when given (pycaffe's current behaviour; older releases
    always wrote 0).
    """
    arr = numpy.asarray(arr)
    if arr.ndim != 3:
        raise ShapeMismatchError(f"array_to_datum needs a C x H x W array. Received: shape {arr.shape}")
    datum = pb.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == numpy.uint8:
        datum.data = numpy.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(numpy.float64).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum) -> numpy.ndarray:
    """A Datum's values as C x H x W: uint8 for ``data`` bytes, float64 for ``float_data``.

    The label is not returned (read ``datum.label``). An ``encoded`` Datum (JPEG or
    PNG bytes, as ``convert_imageset --encoded`` writes) is decoded with Pillow to
    uint8 C x H x W (BGR for colour, one channel for grey images), what Caffe's Data layer sees;
    pycaffe cannot read those.
    """
    shape = (datum.channels, datum.height, datum.width)
    if datum.encoded:
        return _decode(datum)
    if len(datum.data):
        values = numpy.frombuffer(datum.data, dtype=numpy.uint8)
    else:
        values = numpy.asarray(datum.float_data, dtype=numpy.float64)
    if values.size != int(numpy.prod(shape)):
        raise ShapeMismatchError(
            f"Datum holds {values.size} values but says it is {' x '.join(map(str, shape))} (channels x height x "
            f"width). Received: channels {shape[0]}, height {shape[1]}, width {shape[2]}"
        )
    return values.reshape(shape).copy()


def _decode(datum) -> numpy.ndarray:
    try:
        from PIL import Image  # optional (the image extra)
    except ImportError:
        raise NetdefError(
            "decoding an encoded Datum (JPEG/PNG bytes) needs Pillow, which is not installed: run `pip install pillow`"
        ) from None
    try:
        with Image.open(_bytes_io.BytesIO(datum.data)) as im:
            grey = im.mode in ("L", "LA", "I", "I;16", "F", "1")
            pixels = numpy.asarray(im.convert("L" if grey else "RGB"), dtype=numpy.uint8)
    except OSError as err:
        raise NetdefError(f"cannot decode the Datum's encoded image ({err})") from None
    if pixels.ndim == 2:
        return pixels[None].copy()
    return numpy.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1))


__all__ = [
    "array_to_blobproto",
    "array_to_datum",
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "datum_to_array",
]
