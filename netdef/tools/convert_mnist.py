"""``netdef convert_mnist``: MNIST idx files to an LMDB / LevelDB of Datum records, or to HDF5 (Caffe's example tool).

As one Python call::

    from netdef.tools.convert_mnist import convert_mnist
    convert_mnist("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "data/mnist/mnist_train_lmdb")

A database holds one Datum per image (1 x 28 x 28 bytes, the label) under the key
``%08d`` (the image's index), as Caffe's ``convert_mnist_data`` writes it; train on it
with a Data layer and ``transform_param { scale: 0.00390625 }``. ``--backend hdf5``
writes ``data`` (N x 1 x 28 x 28 float32, pixel values times ``--scale``, by default
1/256 as Caffe's example scales them) and ``label`` (float32), plus the ``<name>_h5.txt``
list that ``models/lenet`` and the MLPs name as their HDF5Data source.
"""

from __future__ import annotations

import argparse
import logging

import numpy

from ..datasets.datum import datum_bytes, format_key
from ..datasets.mnist import read_mnist
from ..datasets.writers import HDF5Writer, hdf5_list_path, open_db_writer, write_list_file
from ..errors import DatasetError
from ..progress import Progress

log = logging.getLogger("netdef")

BACKENDS = ("lmdb", "leveldb", "hdf5")
#: Caffe's MNIST example multiplies the pixels by 1/256
MNIST_SCALE = 0.00390625


def convert_mnist(images: str, labels: str, output: str, *, backend: str = "lmdb", scale: float | None = None) -> int:
    """Convert an MNIST image file and its label file (idx, gzipped or not) into ``output``; returns the count.

    Args:
        images, labels: the idx files (``*-images-idx3-ubyte[.gz]``, ``*-labels-idx1-ubyte[.gz]``).
        output: the database folder to create, or the ``.h5`` file for ``hdf5``.
        backend: ``lmdb``, ``leveldb`` (needs plyvel) or ``hdf5``.
        scale: multiplies the pixels in HDF5 output (default 1/256); databases store raw bytes.
    """
    backend = backend.lower()
    if backend not in BACKENDS:
        raise DatasetError(f"unknown --backend {backend!r}. Valid: {', '.join(BACKENDS)}")
    if scale is not None and backend != "hdf5":
        raise DatasetError("--scale applies to HDF5 output; databases store the raw bytes (scale in transform_param)")
    x, y = read_mnist(images, labels)
    log.info("A total of %d items. Rows: %d Cols: %d", len(x), x.shape[2], x.shape[3])
    if backend == "hdf5":
        factor = numpy.float32(MNIST_SCALE if scale is None else scale)
        with HDF5Writer(output, {"data": x.shape[1:], "label": ()}) as h5:
            for start in range(0, len(x), 4096):
                h5.append(
                    data=x[start : start + 4096].astype(numpy.float32) * factor,
                    label=y[start : start + 4096].astype(numpy.float32),
                )
        write_list_file(hdf5_list_path(output), [output])
        return len(x)
    with open_db_writer(output, backend) as db, Progress(len(x), f"Converting {images}") as bar:
        for index in range(len(x)):
            db.put(format_key(index, 8), datum_bytes(x[index], int(y[index])))
            bar.update()
    return len(x)


def cmd_convert_mnist(args: argparse.Namespace) -> int:
    """Run ``netdef convert_mnist`` from parsed arguments."""
    count = convert_mnist(args.images, args.labels, args.output, backend=args.backend, scale=args.scale)
    log.info("Processed %d files.", count)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef convert_mnist`` (also ``convert_mnist_data``, Caffe's name, and ``convert-mnist``)."""
    p = subparsers.add_parser(
        "convert_mnist",
        aliases=["convert_mnist_data", "convert-mnist"],
        help="convert MNIST idx files to an LMDB/LevelDB of Datum records or an HDF5 file",
        description=(
            "Convert an MNIST image file and its label file (idx format, gzipped or not) as Caffe's "
            "convert_mnist_data does: netdef convert_mnist IMAGES LABELS OUTPUT [--backend lmdb|leveldb|hdf5]. "
            "Run it once for the training files and once for the t10k files."
        ),
    )
    p.add_argument("images", metavar="IMAGES", help="e.g. train-images-idx3-ubyte.gz")
    p.add_argument("labels", metavar="LABELS", help="e.g. train-labels-idx1-ubyte.gz")
    p.add_argument("output", metavar="OUTPUT", help="database folder to create (or .h5 file with --backend hdf5)")
    p.add_argument(
        "--backend", "-backend", default="lmdb", choices=BACKENDS, type=str.lower, help="output format (default lmdb)"
    )
    p.add_argument("--scale", type=float, help="multiply pixels by this in HDF5 output (default 0.00390625 = 1/256)")
    p.set_defaults(func=cmd_convert_mnist)
    return p


__all__ = ["BACKENDS", "MNIST_SCALE", "add_parser", "cmd_convert_mnist", "convert_mnist"]
