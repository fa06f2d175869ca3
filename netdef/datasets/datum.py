"""Datum records (Caffe's ``Datum`` message) and the keys Caffe's tools store them under."""

from __future__ import annotations

import numpy

from ..errors import DatasetError
from ..proto import netdef_pb2 as pb


def datum_bytes(pixels=None, label: int = 0, *, encoded: bytes | None = None) -> bytes:
    """A serialised Datum.

    Args:
        pixels: a C x H x W array; uint8 values go to ``data`` (one byte each), any other
            dtype to ``float_data`` (as ``extract_features`` writes features). A 1-D or 2-D
            array counts as C x 1 x 1 or C x H x 1.
        label: the integer label.
        encoded: the bytes of a whole image file instead of pixels (``encoded: true``), as
            ``convert_imageset --encoded`` writes them; no channels, height or width are set.
    """
    datum = pb.Datum(label=int(label))
    if encoded is not None:
        datum.data = bytes(encoded)
        datum.encoded = True
        return datum.SerializeToString()
    arr = numpy.asarray(pixels)
    if arr.ndim < 1 or arr.ndim > 3 or arr.size == 0:
        raise DatasetError(f"a Datum holds a C x H x W array. Received: shape {arr.shape}")
    c, h, w = arr.shape + (1,) * (3 - arr.ndim)
    datum.channels, datum.height, datum.width = int(c), int(h), int(w)
    if arr.dtype == numpy.uint8:
        datum.data = numpy.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(numpy.asarray(arr, dtype=numpy.float32).ravel().tolist())
    return datum.SerializeToString()


def format_key(index: int, digits: int = 8, name: str | None = None) -> bytes:
    """A record key as Caffe's tools spell it: the zero-padded index, then ``_name`` when given.

    ``convert_imageset`` uses 8 digits and the image path (``00000042_cat/1.jpg``),
    ``convert_mnist_data`` 8 digits alone, ``convert_cifar_data`` 5 and
    ``extract_features`` 10. Keys sort in write order, which is the order the Data
    layer reads them in.
    """
    key = f"{int(index):0{int(digits)}d}"
    if name is not None:
        key += f"_{name}"
    return key.encode("utf-8")


__all__ = ["datum_bytes", "format_key"]
