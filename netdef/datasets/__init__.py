"""Writing data sets the way Caffe's tools did: Datum records in LMDB/LevelDB, HDF5 files and list files.

- :mod:`.datum`: Datum encoding and Caffe's key spellings;
- :mod:`.writers`: database and HDF5 writers whose output appears whole or not at all;
- :mod:`.images`: image list files and image loading as Caffe's OpenCV sees images (BGR, 0..255);
- :mod:`.mnist`, :mod:`.cifar`: readers of the MNIST idx files and the CIFAR-10/100 batches;
- :mod:`.mean`: mean images over a database, HDF5 files or an image list.

Their progress bar is :mod:`netdef.progress`.

The commands built on them are ``netdef convert_imageset``, ``compute_image_mean``,
``convert_mnist``, ``convert_cifar`` and ``extract_features`` (:mod:`netdef.tools`).
"""

from .datum import datum_bytes, format_key
from .writers import HDF5Writer, hdf5_list_path, open_db_writer, write_list_file

__all__ = ["HDF5Writer", "datum_bytes", "format_key", "hdf5_list_path", "open_db_writer", "write_list_file"]
