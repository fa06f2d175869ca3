"""Reading and writing Caffe's binary files (weights, mean files, solver states) and input preprocessing.

Also pycaffe's ``caffe.io``: ``load_image``, ``resize_image``, ``oversample``,
``Transformer``, the BlobProto/Datum converters (``blobproto_to_array``,
``array_to_blobproto``, ``arraylist_to_blobprotovector_str``,
``blobprotovector_str_to_arraylist``, ``array_to_datum``, ``datum_to_array``) and
``caffe_pb2``, which pycaffe's ``caffe.io`` imported and scripts reach through it.
"""

from ..proto import caffe_pb2  # noqa: F401
from .preprocessing import Transformer, load_image, oversample, resize_image  # noqa: F401
from .protoarray import (  # noqa: F401
    array_to_blobproto,
    array_to_datum,
    arraylist_to_blobprotovecor_str,
    arraylist_to_blobprotovector_str,
    blobproto_to_array,
    blobprotovector_str_to_arraylist,
    datum_to_array,
)
