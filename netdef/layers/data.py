"""Input and data layers built into the core: Input, DummyData, HDF5Data."""
from __future__ import annotations

import os

import numpy

from .. import backend, fillers
from ..errors import DataSourceError
from ..proto import netdef_pb2 as pb
from .base import Layer, register_layer


def _per_top(layer, values, n_top: int, what: str) -> list:
    """Caffe's rule: give one value for all tops, or one per top."""
    values = list(values)
    if len(values) == 1:
        return values * n_top
    if len(values) != n_top:
        raise layer.error(f"needs 1 or {n_top} (one per top) {what}. Received: {len(values)}")
    return values


@register_layer("Input")
class InputLayer(Layer):
    """Caffe type ``Input``: tops whose values the user sets (``net.blobs[name].data[...] = x``).

    Shapes come from ``input_param.shape`` (one for all tops or one per top). No bottoms.
    """

    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if not shapes:
            raise self.error("input_param needs at least one shape { dim: ... }")
        for t, shape in zip(top, _per_top(self, shapes, len(top), "input_param shapes")):
            t.reshape(tuple(shape.dim))

    def reshape(self, bottom, top):
        """Input shapes are whatever the user last set; nothing to do."""

    def forward(self, bottom, top):
        """Values were written by the user."""


@register_layer("DummyData")
class DummyDataLayer(Layer):
    """Caffe type ``DummyData``: tops filled by ``dummy_data_param.data_filler``.

    Constant fillers fill once; other fillers refill at every forward, as Caffe does.
    """

    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        if p.shape:
            shapes = [tuple(s.dim) for s in _per_top(self, p.shape, n, "shapes")]
        elif p.num:
            legacy = [_per_top(self, getattr(p, f), n, f) for f in ("num", "channels", "height", "width")]
            shapes = [tuple(dims) for dims in zip(*legacy)]
        else:
            raise self.error("dummy_data_param needs shape { dim: ... } (or the legacy num/channels/height/width)")
        default = pb.FillerParameter(type="constant", value=0)
        self.fillers = _per_top(self, p.data_filler or [default], n, "data_filler entries")
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, shape, f in zip(top, shapes, self.fillers):
            t.reshape(shape)
            fillers.fill(t, f, self.rng.numpy)

    def reshape(self, bottom, top):
        """Shapes are fixed at set-up."""

    def forward(self, bottom, top):
        for t, f, again in zip(top, self.fillers, self.refill):
            if again:
                fillers.fill(t, f, self.rng.numpy)


def _resolve(path: str, base_dir: str) -> str:
    """Caffe resolves against the working directory; fall back to the listing file's folder."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    alt = os.path.join(base_dir, path)
    return alt if os.path.exists(alt) else path


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
        p = self.param.hdf5_data_param
        if not p.source:
            raise self.error("hdf5_data_param.source is required (a text file listing .h5 files)")
        if p.batch_size <= 0:
            raise self.error(f"hdf5_data_param.batch_size must be positive. Received: {p.batch_size}")
        source = _resolve(p.source, os.getcwd())
        if not os.path.exists(source):
            raise self.error(f"source list file not found: {p.source} (looked in {os.getcwd()})", DataSourceError)
        base = os.path.dirname(os.path.abspath(source))
        with open(source) as f:
            self.files = [_resolve(line.strip(), base) for line in f if line.strip() and not line.startswith("#")]
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
        import h5py

        path = self.files[file_index]
        if not os.path.exists(path):
            raise self.error(f"HDF5 file not found: {path} (listed in {self.param.hdf5_data_param.source})",
                             DataSourceError)
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
            idx = self.perm[self.row: self.row + take]
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
            "file_order": self.file_order.tolist(), "file_pos": int(self.file_pos), "loaded": int(self.loaded),
            "row": int(self.row), "perm": self.perm.tolist(),
        }

    def set_state(self, state: dict) -> None:
        self.file_order = numpy.asarray(state["file_order"], dtype=numpy.int64)
        self.file_pos = int(state["file_pos"])
        if int(state["loaded"]) != self.loaded:
            self._load(int(state["loaded"]))
        self.perm = numpy.asarray(state["perm"], dtype=numpy.int64)
        self.row = int(state["row"])


@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    """Caffe type ``MemoryData``: batches served from arrays given with ``net.set_input_arrays``.

    Tops: data (batch_size, channels, height, width) and label (batch_size, 1, 1, 1).
    Consecutive forwards walk through the arrays and wrap around at the end.
    """

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.param.memory_data_param
        dims = (p.batch_size, p.channels, p.height, p.width)
        if min(dims) <= 0:
            raise self.error(
                "memory_data_param needs positive batch_size, channels, height and width. "
                f"Received: {dims}"
            )
        self.shape = dims
        self.data = None
        self.labels = None
        self.pos = 0
        top[0].reshape(dims)
        top[1].reshape((p.batch_size, 1, 1, 1))

    def set_input_arrays(self, data, labels) -> None:
        """Use ``data`` (N, C, H, W) and ``labels`` (N,) from now on; N must be a multiple of batch_size."""
        data = numpy.asarray(backend.to_numpy(data), dtype=self.dtype)
        labels = numpy.asarray(backend.to_numpy(labels), dtype=self.dtype).reshape(-1)
        n = self.shape[0]
        if data.shape[1:] != self.shape[1:]:
            raise self.error(f"data arrays must have shape (N, {', '.join(map(str, self.shape[1:]))}). "
                             f"Received: {data.shape}")
        if data.shape[0] != labels.shape[0]:
            raise self.error(f"data has {data.shape[0]} rows but labels has {labels.shape[0]}")
        if data.shape[0] == 0 or data.shape[0] % n:
            raise self.error(f"the number of rows must be a positive multiple of batch_size {n}. "
                             f"Received: {data.shape[0]}")
        self.data, self.labels, self.pos = data, labels, 0

    def reshape(self, bottom, top):
        """Shapes are fixed by memory_data_param."""

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("no input arrays: call net.set_input_arrays(data, labels) before forward")
        n = self.shape[0]
        top[0].data = backend.asarray(self.data[self.pos: self.pos + n], top[0].xp, top[0].dtype)
        top[1].data = backend.asarray(self.labels[self.pos: self.pos + n].reshape(n, 1, 1, 1), top[1].xp,
                                      top[1].dtype)
        self.pos = (self.pos + n) % self.data.shape[0]


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
            raise self.error(f"data and label need the same number of rows. Received: {bottom[0].shape} and "
                             f"{bottom[1].shape}")

    def forward(self, bottom, top):
        import h5py

        mode = "a" if self.started else "w"
        with h5py.File(self.file_name, mode) as f:
            for name, blob in (("data", bottom[0]), ("label", bottom[1])):
                arr = backend.to_numpy(blob.data)
                if name not in f:
                    f.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True)
                else:
                    ds = f[name]
                    ds.resize(ds.shape[0] + arr.shape[0], axis=0)
                    ds[-arr.shape[0]:] = arr
        self.started = True
