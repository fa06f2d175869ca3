"""Mean images (Caffe's ``compute_image_mean``) over a database, HDF5 files or an image list."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy

from ..data.sources import LEVELDB, LMDB, decode_datum, open_database
from ..errors import DatasetError, NetdefError
from ..io.atomic import atomic_target
from ..progress import Progress
from ..proto import netdef_pb2 as pb
from .images import load_pixels, read_image_list

log = logging.getLogger("netdef")

#: the kinds of input ``compute_image_mean`` reads (``auto`` tells them apart)
SOURCE_KINDS = ("auto", "lmdb", "leveldb", "hdf5", "images")


def detect_kind(path: str) -> str:
    """What ``path`` holds: an LMDB or LevelDB folder, an HDF5 file or list of them, or an image list."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data.mdb")):
            return "lmdb"
        if os.path.isfile(os.path.join(path, "CURRENT")):
            return "leveldb"
        raise DatasetError(f"{path} is a folder but neither an LMDB (data.mdb) nor a LevelDB (CURRENT) database")
    if not os.path.isfile(path):
        raise DatasetError(f"input not found: {path} (looked in {os.getcwd()})")
    if path.lower().endswith((".h5", ".hdf5")):
        return "hdf5"
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line.strip() for line in f if line.strip()), "")
    return "hdf5" if first.lower().endswith((".h5", ".hdf5")) else "images"


def _database_samples(path: str, kind: str) -> Iterator[numpy.ndarray]:
    reader = open_database(path, LMDB if kind == "lmdb" else LEVELDB)
    try:
        while reader.epoch == 0:
            try:
                pixels, _ = decode_datum(reader.value())
            except NetdefError as err:
                raise DatasetError(f"{path}, record {reader.key()!r}: {err}") from None
            yield pixels[None]
            reader.next()
    finally:
        reader.close()


def _hdf5_files(path: str) -> list[str]:
    if path.lower().endswith((".h5", ".hdf5")):
        return [path]
    folder = os.path.dirname(path)
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    return [n if os.path.exists(n) or os.path.isabs(n) else os.path.join(folder, n) for n in names]


def _hdf5_samples(path: str, dataset: str) -> Iterator[numpy.ndarray]:
    import h5py

    for name in _hdf5_files(path):
        if not os.path.isfile(name):
            raise DatasetError(f"HDF5 file not found: {name} (listed in {path})")
        with h5py.File(name, "r") as f:
            if dataset not in f:
                raise DatasetError(f'{name} has no dataset "{dataset}". Datasets: {", ".join(sorted(f.keys()))}')
            ds = f[dataset]
            if ds.ndim != 4:
                raise DatasetError(f'{name}: dataset "{dataset}" must be N x C x H x W. Received: shape {ds.shape}')
            for start in range(0, ds.shape[0], 1024):
                yield numpy.asarray(ds[start : start + 1024])


def _image_samples(path: str, root: str, gray: bool, size) -> Iterator[numpy.ndarray]:
    for name, _ in read_image_list(path):
        yield load_pixels(root + name, gray, size)[None]


def compute_mean(
    source: str,
    *,
    kind: str = "auto",
    dataset: str = "data",
    root: str = "",
    gray: bool = False,
    size: tuple[int, int] | None = None,
    progress: bool = True,
) -> numpy.ndarray:
    """The mean C x H x W image (float32) over every sample of ``source``.

    Args:
        source: an LMDB or LevelDB folder of Datum records, an ``.h5`` file or a text file
            listing them (HDF5Data's ``source``), or an image list (``<path> <label>`` lines).
        kind: one of :data:`SOURCE_KINDS`; ``auto`` looks at ``source``.
        dataset: the HDF5 dataset to average (N x C x H x W).
        root, gray, size: for an image list, as ``convert_imageset`` reads it: the folder
            prefixed to each path, grey images, and a (height, width) to resize to.
        progress: draw a progress bar on a terminal.

    Sums are kept in float64 (Caffe sums in float32, which loses digits on large sets).
    """
    kind = detect_kind(source) if kind == "auto" else kind
    if kind in ("lmdb", "leveldb"):
        samples = _database_samples(source, kind)
    elif kind == "hdf5":
        samples = _hdf5_samples(source, dataset)
    elif kind == "images":
        samples = _image_samples(source, root, gray, size)
    else:
        raise DatasetError(f"unknown input kind {kind!r}. Valid: {', '.join(SOURCE_KINDS)}")
    total = None
    count = 0
    with Progress(None, f"Mean of {source}") as bar:
        for batch in samples:
            if total is None:
                total = numpy.zeros(batch.shape[1:], dtype=numpy.float64)
            elif batch.shape[1:] != total.shape:
                raise DatasetError(
                    f"{source}: sample {count} has shape {batch.shape[1:]} but the first had {total.shape}; "
                    "a mean image needs samples of one size (resize them when converting)"
                )
            total += batch.sum(axis=0, dtype=numpy.float64)
            count += len(batch)
            if progress:
                bar.update(len(batch))
    if not count:
        raise DatasetError(f"{source} holds no samples")
    mean = (total / count).astype(numpy.float32)
    log.info("Processed %d samples of shape %s from %s", count, mean.shape, source)
    for c, value in enumerate(mean.reshape(mean.shape[0], -1).mean(axis=1)):
        log.info("mean_value channel [%d]: %g", c, value)
    return mean


def mean_blobproto(mean: numpy.ndarray) -> bytes:
    """A C x H x W mean as Caffe's ``compute_image_mean`` writes it: a BlobProto with num 1, channels, height, width."""
    mean = numpy.asarray(mean, dtype=numpy.float32)
    if mean.ndim != 3:
        raise DatasetError(f"a mean image is C x H x W. Received: shape {mean.shape}")
    c, h, w = mean.shape
    blob = pb.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    return blob.SerializeToString()


def write_mean(mean: numpy.ndarray, binaryproto: str | None = None, npy: str | None = None) -> None:
    """Write ``mean`` (C x H x W) to a ``.binaryproto`` file and/or a ``.npy`` file, each atomically."""
    if binaryproto:
        payload = mean_blobproto(mean)
        with atomic_target(binaryproto) as tmp, open(tmp, "wb") as f:
            f.write(payload)
    if npy:
        with atomic_target(npy) as tmp, open(tmp, "wb") as f:
            numpy.save(f, numpy.asarray(mean, dtype=numpy.float32))


__all__ = ["SOURCE_KINDS", "compute_mean", "detect_kind", "mean_blobproto", "write_mean"]
