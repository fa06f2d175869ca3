"""HDF5 data layers: HDF5Data reads batches from HDF5 files, HDF5Output writes its bottoms to one."""

from __future__ import annotations

import os

import h5py
import numpy

from .. import backend, limits
from ..errors import DataSourceError, WeightsFileError
from ..io import h5
from ..io.paths import resolve_path
from .base import Layer, register_layer
from .data import ShardedReader, source_and_batch_size

HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".hdf")
#: The attribute HDF5Output puts on the files it writes; it only ever replaces files that carry it.
WRITER_ATTRIBUTE = "netdef_writer"
WRITER_VALUE = "HDF5Output"


def read_source_list(source: str, shown: str, error) -> list[str]:
    """The file names listed in ``source`` (one per line, ``#`` comments), resolved; lines are never echoed."""
    if h5.is_hdf5_file(source):
        raise error(
            f"source {shown} is an HDF5 file itself. Valid: a text file listing .h5 files, one per line",
            DataSourceError,
        )
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise error(f"cannot read the source list {shown}: {err.strerror or err}", DataSourceError) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise error(
            f"source list {shown}, line {line}: not UTF-8 text. Valid: a text file listing .h5 files, one per line",
            DataSourceError,
        ) from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    return [(n, resolve_path(name, source)) for n, name in lines if name and not name.startswith("#")]


def _missing_file(path: str, line: int, shown: str) -> str:
    """The message for a listed file that does not exist; a line that is no .h5 name is not shown."""
    if path.lower().endswith(HDF5_SUFFIXES):
        return f"HDF5 file not found: {path} (line {line} of {shown})"
    return (
        f"line {line} of the source list {shown} names no existing file (the line is not shown: it does not end "
        f"in {', '.join(HDF5_SUFFIXES)}). Valid: a text file listing .h5 files, one per line"
    )


@register_layer("HDF5Data")
class HDF5DataLayer(ShardedReader, Layer):
    """Caffe type ``HDF5Data``: batches read from HDF5 files.

    ``hdf5_data_param.source`` is a text file listing ``.h5`` files, one per line.
    Each top reads the dataset of the same name; the first axis indexes samples.
    Paths are taken relative to the working directory (Caffe's rule) and, when not
    found there, relative to the folder of the file that names them. With
    ``shuffle`` the file order and the rows within each file are permuted.
    Sharded (data-parallel training), every rank walks the same file and row order and
    takes its own block of every ``N * batch_size`` rows; as in Caffe, each rank loads
    whole files and keeps only its rows.
    """

    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        p = source_and_batch_size(self, "hdf5_data_param", "a text file listing .h5 files")
        source = resolve_path(p.source)
        if not os.path.isfile(source):
            raise self.error(f"source list file not found: {p.source} (looked in {os.getcwd()})", DataSourceError)
        listed = read_source_list(source, p.source, self.error)
        self.files = [path for _, path in listed]
        self.lines = [n for n, _ in listed]
        if not self.files:
            raise self.error(f"source list {p.source} names no files", DataSourceError)
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.top_names = list(self.param.top)
        self.file_order = numpy.arange(len(self.files))
        self.file_pos = 0
        if self.shuffle:
            self.rng.numpy.shuffle(self.file_order)
        self._load(self.file_order[0])
        for t, arr in zip(top, self.arrays):
            t.reshape((self.batch_size,) + arr.shape[1:])

    def _load(self, file_index: int) -> None:
        path = self.files[file_index]
        if not os.path.isfile(path):
            shown = self.param.hdf5_data_param.source
            raise self.error(_missing_file(path, self.lines[file_index], shown), DataSourceError)
        try:
            with h5.open_file(path, DataSourceError) as f:
                arrays = [
                    h5.read_array(f, name, path, DataSourceError, self.dtype, min_ndim=1) for name in self.top_names
                ]
        except DataSourceError as err:
            raise self.error(str(err), DataSourceError) from None
        if limits.check_finite_inputs():
            for name, arr in zip(self.top_names, arrays):
                self._check_finite(arr, path, name)
        rows = {a.shape[0] for a in arrays}
        if len(rows) != 1 or 0 in rows:
            raise self.error(
                f"datasets in {path} must have the same, non-zero number of rows. Received: "
                + ", ".join(f"{n}{a.shape}" for n, a in zip(self.top_names, arrays)),
                DataSourceError,
            )
        self.arrays = arrays
        self.rows = arrays[0].shape[0]
        self.row = 0
        self.perm = numpy.arange(self.rows)
        if self.shuffle:
            self.shuffler().shuffle(self.perm)
        self.loaded = file_index

    def _check_finite(self, arr: numpy.ndarray, path: str, name: str) -> None:
        finite = numpy.isfinite(arr)
        if finite.all():
            return
        bad = numpy.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise self.error(
            f'{path} dataset "{name}" holds {len(bad)} non-finite value(s) (NaN or inf, after conversion to '
            f"{self.dtype}); the first at index {first}: {arr[first]}. Valid: finite numbers. To skip this "
            f"check: netdef.limits.set_check_finite_inputs(False) or {limits.ENV_CHECK_FINITE}=0",
            DataSourceError,
        )

    def _next_file(self) -> None:
        self.file_pos += 1
        if self.file_pos == len(self.files):
            self.file_pos = 0
            if self.shuffle:
                self.shuffler().shuffle(self.file_order)
        if len(self.files) > 1:
            self._load(self.file_order[self.file_pos])
            return
        self.row = 0  # one file: it stays in memory, only its row order changes
        if self.shuffle:
            self.shuffler().shuffle(self.perm)

    def reshape(self, bottom, top):
        for t, arr in zip(top, self.arrays):
            t.reshape((self.batch_size,) + arr.shape[1:])

    def forward(self, bottom, top):
        pieces: list[list[numpy.ndarray]] = [[] for _ in top]
        # walk the next shard_size * batch_size rows; keep this rank's block of batch_size
        mine = self.shard_rank * self.batch_size
        walk, walked = self.shard_size * self.batch_size, 0
        while walked < walk:
            if self.row >= self.rows:
                self._next_file()
            take = min(walk - walked, self.rows - self.row)
            lo, hi = max(mine, walked), min(mine + self.batch_size, walked + take)
            if lo < hi:
                idx = self.perm[self.row + lo - walked : self.row + hi - walked]
                for k, arr in enumerate(self.arrays):
                    pieces[k].append(arr[idx])
            self.row += take
            walked += take
        for t, parts in zip(top, pieces):
            batch = parts[0] if len(parts) == 1 else numpy.concatenate(parts)
            t.data = backend.asarray(batch, t.xp, t.dtype)

    def get_state(self) -> dict:
        """Read position (and permutations), so a resumed run continues exactly."""
        return {
            "file_order": self.file_order.tolist(),
            "file_pos": int(self.file_pos),
            "loaded": int(self.loaded),
            "row": int(self.row),
            "perm": self.perm.tolist(),
            **self.order_state(),
        }

    def set_state(self, state: dict) -> None:
        """Restore a read position saved by :meth:`get_state`; values that do not fit this layer's data are refused."""
        try:
            file_order = _permutation(state["file_order"], len(self.files), "file_order")
            file_pos = _index(state["file_pos"], len(self.files), "file_pos")
            loaded = _index(state["loaded"], len(self.files), "loaded")
        except (KeyError, TypeError, ValueError) as err:
            raise self.error(f"saved read position does not fit this layer: {_reason(err)}", WeightsFileError) from None
        if loaded != self.loaded:
            self._load(loaded)
        self.set_order_state(state)  # after the load, which draws a row order that the saved one replaces
        try:
            perm = _permutation(state["perm"], self.rows, "perm")
            row = _index(state["row"], self.rows + 1, "row")
        except (KeyError, TypeError, ValueError) as err:
            raise self.error(f"saved read position does not fit this layer: {_reason(err)}", WeightsFileError) from None
        self.file_order, self.file_pos, self.perm, self.row = file_order, file_pos, perm, row


def _reason(err: Exception) -> str:
    return f"missing entry {err}" if isinstance(err, KeyError) else str(err)


def _index(value, size: int, name: str) -> int:
    if not _is_int(value) or not 0 <= value < size:
        raise ValueError(f"{name} must be an integer in 0 .. {size - 1}. Received: {value!r}"[:300])
    return int(value)


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


def _permutation(values, size: int, name: str) -> numpy.ndarray:
    """``values`` as an index array, refused unless it is a permutation of ``range(size)``."""
    if not isinstance(values, list) or not all(_is_int(v) for v in values):
        raise ValueError(f"{name} must be a list of integers. Received: a {type(values).__name__}")
    arr = numpy.asarray(values, dtype=numpy.int64) if values else numpy.zeros(0, numpy.int64)
    if len(arr) != size or not numpy.array_equal(numpy.sort(arr), numpy.arange(size)):
        raise ValueError(
            f"{name} must be a permutation of 0 .. {size - 1} ({size} values). Received: {len(arr)} values"
        )
    return arr


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """Caffe type ``HDF5Output``: writes its two bottoms to ``hdf5_output_param.file_name``.

    Datasets ``data`` and ``label``; every forward appends its batch (Caffe writes a
    single batch; appending keeps all of them). No tops, no gradient.

    Unlike Caffe, which overwrites whatever the path names, the layer only replaces a file
    that an HDF5Output layer wrote before (it marks its files with the HDF5 attribute
    ``netdef_writer``); any other existing file is an error when the net is built, so a
    net definition cannot destroy files it was not meant to write.
    """

    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom, top):
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is required")
        self.started = False
        self._check_replaceable()

    def _check_replaceable(self) -> None:
        path = self.file_name
        if not os.path.lexists(path) or _written_by_hdf5_output(path):
            return
        what = "a folder" if os.path.isdir(path) else "a file that HDF5Output did not write"
        raise self.error(
            f"refusing to replace {path}: it exists and is {what}. HDF5Output only replaces files it wrote "
            "itself (marked with the HDF5 attribute netdef_writer). Valid: remove the file, or set "
            "hdf5_output_param.file_name to a new path"
        )

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(
                f"data and label need the same number of rows. Received: {bottom[0].shape} and {bottom[1].shape}"
            )

    def forward(self, bottom, top):
        if not self.started:
            self._check_replaceable()
        mode = "a" if self.started else "w"
        with h5py.File(self.file_name, mode) as f:
            if mode == "w":
                f.attrs[WRITER_ATTRIBUTE] = WRITER_VALUE
            for name, blob in (("data", bottom[0]), ("label", bottom[1])):
                arr = backend.to_numpy(blob.data)
                if name not in f:
                    f.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True)
                else:
                    ds = f[name]
                    ds.resize(ds.shape[0] + arr.shape[0], axis=0)
                    ds[-arr.shape[0] :] = arr
        self.started = True


def _written_by_hdf5_output(path: str) -> bool:
    """Whether ``path`` is an HDF5 file carrying HDF5Output's mark (a damaged or foreign file is not)."""
    if not os.path.isfile(path) or not h5.is_hdf5_file(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            mark = f.attrs.get(WRITER_ATTRIBUTE)
    except h5.H5PY_ERRORS:
        return False
    mark = mark.decode("utf-8", "replace") if isinstance(mark, bytes) else mark
    return mark == WRITER_VALUE
