"""Data sources and transformations behind the database and image data layers.

- :mod:`netdef.data.transform`: :class:`DataTransformer`, Caffe's ``transform_param``
  (crop, mirror, mean, scale) applied to a whole batch;
- :mod:`netdef.data.sources`: LMDB / LevelDB readers of ``Datum`` records and
  Datum decoding (raw bytes, float_data, encoded JPEG/PNG);
- :mod:`netdef.data.prefetch`: :class:`Prefetcher`, reading a data layer's next batches
  in a background thread (``data_param.prefetch``).
"""

from .prefetch import Prefetcher
from .sources import LEVELDB, LMDB, DatabaseReader, LevelDBReader, LMDBReader, decode_datum, open_database
from .transform import DataTransformer, read_mean_file

__all__ = [
    "LEVELDB",
    "LMDB",
    "DataTransformer",
    "DatabaseReader",
    "LMDBReader",
    "LevelDBReader",
    "Prefetcher",
    "decode_datum",
    "open_database",
    "read_mean_file",
]
