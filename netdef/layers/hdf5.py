"""HDF5 data layers: HDF5Data reads batches from HDF5 files, HDF5Output writes its bottoms to one."""

from __future__ import annotations

import os

import h5py
import numpy

from .. import backend
from ..errors import DataSourceError
from ..io.paths import resolve_path
from .base import Layer, register_layer
from .data import source_and_batch_size


@register_layer("HDF5Data")
class HDF5DataLayer(Layer):
    """Caffe type ``HDF5Data``: batches read from HDF5 files.

    ``hdf5_data_param.source`` is a text file listing ``.h5`` files, one per line.
    Each top reads the dataset of the same name; the first axis indexes samples.
    Paths are taken relative to the working directory (Caffe's rule) and, when not
    found there, relative to the folder of the file that names them. With
    ``shuffle`` the file order and the rows within each file are permuted.
    """

    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        p = source_and_batch_size(self, "hdf5_data_param", "a text file listing .h5 files")
        source = resolve_path(p.source)
        if not os.path.exists(source):
            raise self.error(f"source list file not found: {p.source} (looked in {os.getcwd()})", DataSourceError)
        with open(source) as f:
            self.files = [resolve_path(line.strip(), source) for line in f if line.strip() and not line.startswith("#")]
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
        if not os.path.exists(path):
            raise self.error(
                f"HDF5 file not found: {path} (listed in {self.param.hdf5_data_param.source})", DataSourceError
            )
        arrays = []
        try:
            with h5py.File(path, "r") as f:
                for name in self.top_names:
                    if name not in f:
                        raise self.error(
                            f'HDF5 file {path} has no dataset "{name}" for top "{name}". '
                            f"Datasets: {', '.join(sorted(f.keys()))}",
                            DataSourceError,
                        )
                    arrays.append(numpy.asarray(f[name], dtype=self.dtype))
        except OSError as err:
            raise self.error(f"cannot read HDF5 file {path}: {err}", DataSourceError) from None
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
            self.rng.numpy.shuffle(self.perm)
        self.loaded = file_index

    def _next_file(self) -> None:
        self.file_pos += 1
        if self.file_pos == len(self.files):
            self.file_pos = 0
            if self.shuffle:
                self.rng.numpy.shuffle(self.file_order)
        if len(self.files) > 1:
            self._load(self.file_order[self.file_pos])
            return
        self.row = 0  # one file: it stays in memory, only its row order changes
        if self.shuffle:
            self.rng.numpy.shuffle(self.perm)

    def reshape(self, bottom, top):
        for t, arr in zip(top, self.arrays):
            t.reshape((self.batch_size,) + arr.shape[1:])

    def forward(self, bottom, top):
        pieces: list[list[numpy.ndarray]] = [[] for _ in top]
        filled = 0
        while filled < self.batch_size:
            if self.row >= self.rows:
                self._next_file()
            take = min(self.batch_size - filled, self.rows - self.row)
            idx = self.perm[self.row : self.row + take]
            for k, arr in enumerate(self.arrays):
                pieces[k].append(arr[idx])
            self.row += take
            filled += take
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
        }

    def set_state(self, state: dict) -> None:
        self.file_order = numpy.asarray(state["file_order"], dtype=numpy.int64)
        self.file_pos = int(state["file_pos"])
        if int(state["loaded"]) != self.loaded:
            self._load(int(state["loaded"]))
        self.perm = numpy.asarray(state["perm"], dtype=numpy.int64)
        self.row = int(state["row"])


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """Caffe type ``HDF5Output``: writes its two bottoms to ``hdf5_output_param.file_name``.

    Datasets ``data`` and ``label``; every forward appends its batch (Caffe writes a
    single batch; appending keeps all of them). No tops, no gradient.
    """

    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom, top):
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is required")
        self.started = False

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(
                f"data and label need the same number of rows. Received: {bottom[0].shape} and {bottom[1].shape}"
            )

    def forward(self, bottom, top):
        mode = "a" if self.started else "w"
        with h5py.File(self.file_name, mode) as f:
            for name, blob in (("data", bottom[0]), ("label", bottom[1])):
                arr = backend.to_numpy(blob.data)
                if name not in f:
                    f.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True)
                else:
                    ds = f[name]
                    ds.resize(ds.shape[0] + arr.shape[0], axis=0)
                    ds[-arr.shape[0] :] = arr
        self.started = True
