"""Writers of LMDB / LevelDB databases, HDF5 files and list files whose output appears whole or not at all.

Everything is written under a temporary name beside the target and renamed onto it
when the writer closes without an error; a failed or interrupted conversion leaves
no half-written database behind (the temporary one is removed). As Caffe's tools
do, a database is never written over an existing one: remove it first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from typing import TypeVar

import numpy

from ..errors import DatasetError, install_hint
from ..io.atomic import temp_path_for

log = logging.getLogger("netdef")

#: database backends the writers know, as the tools' ``--backend`` spells them
DB_BACKENDS = ("lmdb", "leveldb")
#: records per transaction (Caffe's tools commit every 1000 too)
COMMIT_EVERY = 1000


def _temp_folder_for(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")


def _refuse_existing(path: str) -> None:
    if os.path.exists(path):
        raise DatasetError(f"{path} already exists; remove it or choose another output name (it is never overwritten)")


_W = TypeVar("_W", bound="_AllOrNothing")


class _AllOrNothing:
    """The writers as context managers: a block left normally keeps the output (``close``),
    a block left with an exception drops it (``abort``)."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DatabaseWriter(_AllOrNothing):
    """Write (key, value) records to a new database at ``path``; the database appears when :meth:`close` succeeds.

    Use as a context manager: leaving the block with an exception removes the partial
    database. Records are committed in transactions of :data:`COMMIT_EVERY`.
    """

    kind = ""

    def __init__(self, path: str):
        _refuse_existing(path)
        self.path = os.fspath(path)
        self.temp = _temp_folder_for(self.path)
        self.pending: list[tuple[bytes, bytes]] = []
        self.count = 0
        self.closed = False

    def put(self, key: bytes, value: bytes) -> None:
        """Add one record (committed with the next full transaction or at :meth:`close`)."""
        self.pending.append((bytes(key), bytes(value)))
        self.count += 1
        if len(self.pending) >= COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        """Commit the pending records."""
        if self.pending:
            self._commit(self.pending)
            self.pending = []

    def _commit(self, records: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def _close_db(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Commit what is pending, close the database and move it to its final name."""
        if self.closed:
            return
        self.flush()
        self._close_db()
        self.closed = True
        _refuse_existing(self.path)
        os.replace(self.temp, self.path)
        log.info("Wrote %d records to %s database %s", self.count, self.kind, self.path)

    def abort(self) -> None:
        """Drop everything written; the target is left as it was."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._close_db()
        shutil.rmtree(self.temp, ignore_errors=True)


class LMDBWriter(DatabaseWriter):
    """A new LMDB database (a folder with ``data.mdb``), as Caffe writes them; the map grows as needed."""

    kind = "LMDB"

    def __init__(self, path: str, map_size: int = 1 << 26):
        try:
            import lmdb  # optional (the db extra), imported when an LMDB database is written
        except ImportError:
            raise DatasetError(
                f"writing the LMDB database {path} needs the lmdb package, which is not installed: run "
                + install_hint("db", "lmdb")
            ) from None
        super().__init__(path)
        self.lmdb = lmdb
        self.env = lmdb.open(self.temp, map_size=int(map_size), subdir=True, meminit=False, map_async=True)

    def _commit(self, records: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in records:
                        txn.put(key, value)
                return
            except self.lmdb.MapFullError:
                # the transaction was aborted; grow the map and write the batch again
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def _close_db(self) -> None:
        self.env.sync(True)
        self.env.close()


class LevelDBWriter(DatabaseWriter):
    """A new LevelDB database (a folder), written with the ``plyvel`` package."""

    kind = "LevelDB"

    def __init__(self, path: str):
        try:
            import plyvel  # optional, imported when a LevelDB database is written
        except ImportError:
            raise DatasetError(
                f"writing the LevelDB database {path} needs the plyvel package, which is not installed: run "
                "`pip install plyvel`, or write LMDB (--backend lmdb)"
            ) from None
        super().__init__(path)
        self.db = plyvel.DB(self.temp, create_if_missing=True, error_if_exists=True)

    def _commit(self, records: list[tuple[bytes, bytes]]) -> None:
        with self.db.write_batch() as batch:
            for key, value in records:
                batch.put(key, value)

    def _close_db(self) -> None:
        self.db.close()


def open_db_writer(path: str, backend: str = "lmdb") -> DatabaseWriter:
    """A writer of a new ``backend`` database (``lmdb`` or ``leveldb``) at ``path``."""
    backend = backend.lower()
    if backend == "lmdb":
        return LMDBWriter(path)
    if backend == "leveldb":
        return LevelDBWriter(path)
    raise DatasetError(f"unknown database backend {backend!r}. Valid: {', '.join(DB_BACKENDS)}")


def hdf5_list_path(h5_path: str) -> str:
    """The list file that names ``h5_path`` for an HDF5Data layer: ``x/mnist_train.h5`` -> ``x/mnist_train_h5.txt``."""
    return os.path.splitext(h5_path)[0] + "_h5.txt"


def write_list_file(path: str, lines: Iterable[str]) -> None:
    """Write one entry per line (an HDF5Data ``source`` list), atomically."""
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(f"{line}\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class HDF5Writer(_AllOrNothing):
    """Append rows to float32 datasets of a new HDF5 file, as the HDF5Data layer reads them.

    ``datasets`` maps dataset names to the shape of one row (``{"data": (1, 28, 28),
    "label": ()}``); :meth:`append` adds rows to all of them. The file appears at
    ``path`` when the writer closes without an error. HDF5Data (like Caffe's) reads
    float datasets, so values are stored as float32.
    """

    def __init__(self, path: str, datasets: dict[str, tuple[int, ...]], dtype=numpy.float32):
        import h5py

        if os.path.isdir(path):
            raise DatasetError(f"{path} is a folder; an HDF5 output is a file")
        self.path = os.fspath(path)
        self.temp = temp_path_for(self.path)
        self.file = h5py.File(self.temp, "w")
        self.rows = 0
        self.closed = False
        self.sets = {}
        for name, row_shape in datasets.items():
            row_shape = tuple(int(d) for d in row_shape)
            row_values = int(numpy.prod(row_shape, dtype=numpy.int64)) if row_shape else 1
            chunk_rows = max(1, min(1024, (1 << 20) // max(1, 4 * row_values)))
            self.sets[name] = self.file.create_dataset(
                name,
                shape=(0,) + row_shape,
                maxshape=(None,) + row_shape,
                dtype=dtype,
                chunks=(chunk_rows,) + row_shape,
            )

    def append(self, **arrays) -> None:
        """Add rows: one array per dataset, all with the same number of rows."""
        if set(arrays) != set(self.sets):
            raise DatasetError(f"append needs arrays for {sorted(self.sets)}. Received: {sorted(arrays)}")
        counts = {len(numpy.asarray(a)) for a in arrays.values()}
        if len(counts) != 1:
            raise DatasetError(f"append needs the same number of rows for every dataset. Received: {counts}")
        n = counts.pop()
        for name, a in arrays.items():
            ds = self.sets[name]
            a = numpy.asarray(a, dtype=ds.dtype).reshape((n,) + ds.shape[1:])
            ds.resize(self.rows + n, axis=0)
            ds[self.rows : self.rows + n] = a
        self.rows += n

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        if self.closed:
            return
        self.file.close()
        self.closed = True
        os.replace(self.temp, self.path)
        log.info("Wrote %d rows to HDF5 file %s", self.rows, self.path)

    def abort(self) -> None:
        """Drop the file; the target is left as it was."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.file.close()
        with contextlib.suppress(OSError):
            os.remove(self.temp)


__all__ = [
    "COMMIT_EVERY",
    "DB_BACKENDS",
    "DatabaseWriter",
    "HDF5Writer",
    "LMDBWriter",
    "LevelDBWriter",
    "hdf5_list_path",
    "open_db_writer",
    "write_list_file",
]
