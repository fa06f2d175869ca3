"""Databases of ``Datum`` records, read the way Caffe's ``Data`` layer reads them.

A Caffe database (made by ``convert_imageset`` or by hand) maps keys to
serialised :class:`Datum` messages: ``channels`` x ``height`` x ``width`` pixels
as ``data`` bytes (uint8) or ``float_data``, a ``label``, and with ``encoded``
set, ``data`` holding a whole JPEG/PNG file. Records are read in key order and
the cursor starts again from the first record after the last, as in Caffe.

Backends: LMDB (package ``lmdb``, the ``db`` extra) and LevelDB
(package ``plyvel``, when installed). Both modules are imported only when a
database of that kind is opened.
"""

from __future__ import annotations

import io
import logging
import os
import threading

import numpy

from ..errors import DataSourceError, InvalidParameterError, install_hint
from ..proto import netdef_pb2 as pb
from .errors import ErrorFactory, plain_error

log = logging.getLogger("netdef")

LEVELDB = pb.DataParameter.LEVELDB
LMDB = pb.DataParameter.LMDB


# --- Datum decoding -----------------------------------------------------------------------------------
def decode_image_bytes(data: bytes, color: bool | None = None) -> numpy.ndarray:
    """An encoded image (JPEG, PNG, ...) as a uint8 C x H x W array, channels in OpenCV's BGR order.

    ``color=None`` keeps the file's own channels (grey: 1, colour: 3, with alpha: 4), as
    OpenCV's "unchanged" decoding does; True gives 3 channels, False one grey channel.
    16-bit images are reduced to 8 bits.
    """
    try:
        from PIL import Image  # optional (the image extra), imported when an encoded datum needs it
    except ImportError:
        raise DataSourceError(
            "decoding encoded datums (JPEG/PNG bytes) needs Pillow, which is not installed: run "
            + install_hint("image", "pillow")
        ) from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # OpenCV reduces 16-bit samples to 8 bits the same way when it converts
                arr = numpy.clip(numpy.asarray(im, dtype=numpy.int64) >> 8, 0, 255).astype(numpy.uint8)
                im = Image.fromarray(arr)
            if color is None:
                has_alpha = "A" in im.mode or "transparency" in im.info
                target = "L" if im.mode in ("1", "L") else ("RGBA" if has_alpha else "RGB")
            else:
                target = "RGB" if color else "L"
            arr = numpy.asarray(im.convert(target) if im.mode != target else im, dtype=numpy.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataSourceError(f"cannot decode the encoded image ({len(data)} bytes): {err}") from None
    if arr.ndim == 2:
        return arr[None].copy()
    # RGB(A) -> BGR(A), the channel order Caffe's OpenCV decoding produces
    order = [2, 1, 0, 3][: arr.shape[2]]
    return numpy.ascontiguousarray(arr[:, :, order].transpose(2, 0, 1))


def decode_datum(value: bytes, force_color: bool = False, force_gray: bool = False) -> tuple[numpy.ndarray, int]:
    """A serialised Datum as (C x H x W array, label): uint8 for ``data`` bytes and images, float32 for float_data."""
    datum = pb.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as err:  # protobuf's DecodeError carries no position worth showing
        raise DataSourceError(f"not a serialised Datum ({len(value)} bytes): {err}") from None
    if datum.encoded:
        color = True if force_color else (False if force_gray else None)
        return decode_image_bytes(datum.data, color), int(datum.label)
    shape = (int(datum.channels), int(datum.height), int(datum.width))
    if min(shape) < 1:
        raise DataSourceError(f"Datum needs positive channels, height and width. Received: {shape}")
    size = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != size:
            raise DataSourceError(f"Datum of shape {shape} needs {size} data bytes. Received: {len(datum.data)}")
        arr = numpy.frombuffer(datum.data, dtype=numpy.uint8)
    elif len(datum.float_data):
        if len(datum.float_data) != size:
            raise DataSourceError(
                f"Datum of shape {shape} needs {size} float_data values. Received: {len(datum.float_data)}"
            )
        arr = numpy.asarray(datum.float_data, dtype=numpy.float32)
    else:
        raise DataSourceError(f"Datum of shape {shape} holds no data and no float_data")
    return arr.reshape(shape), int(datum.label)


# --- database cursors ---
# lmdb and plyvel refuse to open one database twice in a process, yet a TRAIN and a TEST net (or a
# net built again in a notebook) may read the same one: readers of a path share one open handle.
# Each reader ends its own cursor first and the last one closes the database; closing it under a
# live cursor crashes plyvel, so handles have no finalizer of their own. A reader is garbage
# collected in whichever thread the collection runs (a prefetch thread too), hence the lock; it is
# re-entrant because a collection can run while this thread holds it.
_OPEN: dict[tuple[str, str], _Handle] = {}
_OPEN_LOCK = threading.RLock()


class _Handle:
    """An open database object and the number of readers using it."""

    def __init__(self, key: tuple[str, str], obj):
        self.key = key
        self.obj = obj
        self.users = 0

    def release(self) -> None:
        with _OPEN_LOCK:
            self.users -= 1
            if self.users <= 0:
                _OPEN.pop(self.key, None)
                self.obj.close()


def _acquire(kind: str, path: str, opener) -> _Handle:
    key = (kind, os.path.realpath(path))
    with _OPEN_LOCK:
        handle = _OPEN.get(key)
        if handle is None:
            handle = _OPEN[key] = _Handle(key, opener())
        handle.users += 1
        return handle


Record = tuple[bytes, bytes]


class DatabaseReader:
    """A read cursor over (key, value) records in key order that wraps around at the end.

    Subclasses provide ``_first``, ``_after`` (the record after the current one) and
    ``_seek`` (the first record with a key >= the one given); each returns a record or
    None. A reader is used by one thread at a time: a ``Data`` layer's prefetch thread
    while it reads ahead, the layer's own thread at set-up and once the prefetcher is idle
    (LMDB read transactions may move between threads: py-lmdb opens with ``MDB_NOTLS``).
    """

    kind = ""

    def __init__(self, path: str, error: ErrorFactory = plain_error):
        self.path = path
        self.error = error
        self.epoch = 0
        self.current: Record | None = None

    def _start(self) -> None:
        self.current = self._first()
        if self.current is None:
            raise self.error(f"{self.kind} database {self.path} is empty (no records)", DataSourceError)

    def _first(self) -> Record | None:
        raise NotImplementedError

    def _after(self) -> Record | None:
        raise NotImplementedError

    def _seek(self, key: bytes) -> Record | None:
        raise NotImplementedError

    def key(self) -> bytes:
        """Key of the record under the cursor."""
        return self.current[0]

    def value(self) -> bytes:
        """Value (a serialised Datum) of the record under the cursor."""
        return self.current[1]

    def next(self) -> None:
        """Move to the next record; after the last one, back to the first (Caffe's wrap-around)."""
        record = self._after()
        if record is None:
            record = self._first()
            self.epoch += 1
            log.debug("%s: restarting from the first record", self.path)
        self.current = record

    def skip(self, count: int) -> None:
        """Move ``count`` records on (wrapping around)."""
        for _ in range(int(count)):
            self.next()

    def read(self, count: int) -> list[Record]:
        """The next ``count`` records, from the cursor on, and move past them."""
        records = []
        for _ in range(int(count)):
            records.append(self.current)
            self.next()
        return records

    def get_state(self) -> dict:
        """The cursor position (the current key, hex) for an exact resume."""
        return {"key": self.key().hex(), "epoch": int(self.epoch)}

    def set_state(self, state: dict) -> None:
        """Put the cursor back on the key saved by :meth:`get_state`."""
        key = bytes.fromhex(state["key"])
        record = self._seek(key)
        if record is None:
            record = self._first()
        if record[0] != key:
            log.warning("%s: record %r of the saved read position is gone; continuing at %r", self.path, key, record[0])
        self.current = record
        self.epoch = int(state.get("epoch", 0))

    def _end_cursor(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """End this reader's cursor; the last reader of a database closes it."""
        handle, self.handle = getattr(self, "handle", None), None
        if handle is not None:
            self._end_cursor()
            handle.release()

    def __del__(self):
        try:
            self.close()
        except Exception:  # during interpreter shutdown the database modules may be gone already
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"


class LMDBReader(DatabaseReader):
    """Records of an LMDB database (a folder holding ``data.mdb``, or the ``.mdb`` file itself)."""

    kind = "LMDB"

    def __init__(self, path: str, error: ErrorFactory = plain_error):
        super().__init__(path, error)
        if not os.path.exists(path):
            raise error(f"LMDB database not found: {path} (looked in {os.getcwd()})", DataSourceError)
        try:
            import lmdb  # optional (the db extra), imported when an LMDB database is opened
        except ImportError:
            raise error(
                f"reading the LMDB database {path} needs the lmdb package, which is not installed: run "
                + install_hint("db", "lmdb"),
                DataSourceError,
            ) from None
        try:
            handle = _acquire(
                "lmdb",
                path,
                lambda: lmdb.open(
                    path, readonly=True, lock=False, readahead=False, subdir=os.path.isdir(path), max_readers=126
                ),
            )
        except lmdb.Error as err:
            raise error(f"cannot open the LMDB database {path}: {err}", DataSourceError) from None
        self.env = handle.obj
        try:
            self.txn = self.env.begin(buffers=False)
        except lmdb.Error as err:
            handle.release()
            raise error(f"cannot read the LMDB database {path}: {err}", DataSourceError) from None
        self.cursor = self.txn.cursor()
        self.handle = handle
        self._start()

    def _item(self, found: bool) -> Record | None:
        return (bytes(self.cursor.key()), bytes(self.cursor.value())) if found else None

    def _first(self) -> Record | None:
        return self._item(self.cursor.first())

    def _after(self) -> Record | None:
        return self._item(self.cursor.next())

    def _seek(self, key: bytes) -> Record | None:
        return self._item(self.cursor.set_range(key))

    def __len__(self) -> int:
        return int(self.txn.stat()["entries"])

    def _end_cursor(self) -> None:
        self.txn.abort()


class LevelDBReader(DatabaseReader):
    """Records of a LevelDB database (a folder), read with the ``plyvel`` package."""

    kind = "LevelDB"

    def __init__(self, path: str, error: ErrorFactory = plain_error):
        super().__init__(path, error)
        # a missing database is the problem to name first, whether or not plyvel is installed
        if not os.path.exists(path):
            raise error(f"LevelDB database not found: {path} (looked in {os.getcwd()})", DataSourceError)
        try:
            import plyvel  # optional, imported when a LevelDB database is opened
        except ImportError:
            raise error(
                f"reading the LevelDB database {path} needs the plyvel package, which is not installed: run "
                "`pip install plyvel`, or convert the database to LMDB (e.g. Caffe's convert_imageset "
                "-backend lmdb) and set data_param { backend: LMDB }",
                DataSourceError,
            ) from None
        try:
            handle = _acquire("leveldb", path, lambda: plyvel.DB(path, create_if_missing=False))
        except Exception as err:  # plyvel raises its own Error classes and IOError
            raise error(f"cannot open the LevelDB database {path}: {err}", DataSourceError) from None
        self.db = handle.obj
        self.it = self.db.iterator()
        self.handle = handle
        self._start()

    def _first(self) -> Record | None:
        self.it.seek_to_start()
        return next(self.it, None)

    def _after(self) -> Record | None:
        return next(self.it, None)

    def _seek(self, key: bytes) -> Record | None:
        self.it.seek(key)
        return next(self.it, None)

    def _end_cursor(self) -> None:
        self.it.close()


def _looks_like_lmdb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb")) or (os.path.isfile(path) and path.endswith(".mdb"))


def open_database(path: str, backend: int = LEVELDB, error: ErrorFactory = plain_error) -> DatabaseReader:
    """A reader for the database at ``path``; ``backend`` is ``DataParameter.LEVELDB`` (Caffe's default) or ``LMDB``."""
    if backend == LMDB:
        return LMDBReader(path, error)
    if backend == LEVELDB:
        if _looks_like_lmdb(path):
            raise error(
                f"{path} is an LMDB database but data_param.backend is LEVELDB (Caffe's default). "
                "Valid: set data_param { backend: LMDB }",
                DataSourceError,
            )
        return LevelDBReader(path, error)
    raise error(f"data_param.backend must be LEVELDB or LMDB. Received: {backend}", InvalidParameterError)


__all__ = [
    "LEVELDB",
    "LMDB",
    "DatabaseReader",
    "LMDBReader",
    "LevelDBReader",
    "decode_datum",
    "decode_image_bytes",
    "open_database",
]
