"""netdef's protobuf messages under Caffe's module name, for pycaffe scripts (``caffe.proto.caffe_pb2``).

``from netdef.proto import caffe_pb2`` gives the very classes of
:mod:`netdef.proto.netdef_pb2` (``caffe_pb2.NetParameter is netdef_pb2.NetParameter``),
so messages built either way mix freely. The schema keeps Caffe's field names,
numbers and enums, so binary files read and written with these classes are Caffe's;
only the protobuf package name (``netdef`` instead of ``caffe``) differs, which
matters to nothing but ``Any``-style type URLs.
"""

from .netdef_pb2 import *  # noqa: F403
