"""``netdef convert_cifar``: CIFAR-10/100 batches to LMDB / LevelDB databases or HDF5 files (Caffe's example tool).

As one Python call::

    from netdef.tools.convert_cifar import convert_cifar
    convert_cifar("cifar-10-batches-bin", "data/cifar10", backend="lmdb")

Reads the binary or the Python version of either data set (see
:mod:`netdef.datasets.cifar`) and writes, in ``OUTPUT_FOLDER``:

- ``lmdb`` / ``leveldb``: ``<name>_train_<backend>`` and ``<name>_test_<backend>``
  (``name`` is cifar10 or cifar100), one Datum per image (3 x 32 x 32 bytes in the
  files' R, G, B order, as Caffe's ``convert_cifar_data`` keeps them) under the keys
  Caffe gives them (``%05d`` of batch * 10000 + row); make the mean with
  ``netdef compute_image_mean``;
- ``hdf5``: ``<name>_{train,test}.h5`` with ``data`` (float32, 0..255 minus the training
  mean image, as ``models/cifar10_*`` expect) and ``label``, the ``<name>_{train,test}_h5.txt``
  lists those models name, and the mean as ``mean.npy`` and ``mean.binaryproto``.
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy

from ..datasets.cifar import find_layout, read_batches
from ..datasets.datum import datum_bytes, format_key
from ..datasets.mean import write_mean
from ..datasets.writers import HDF5Writer, hdf5_list_path, open_db_writer, write_list_file
from ..errors import DatasetError
from ..progress import Progress

log = logging.getLogger("netdef")

BACKENDS = ("lmdb", "leveldb", "hdf5")


def convert_cifar(
    input_folder: str, output_folder: str, *, backend: str = "lmdb", labels: str = "fine", subtract_mean: bool = True
) -> dict[str, str]:
    """Convert the CIFAR batches in ``input_folder``; returns ``{split: path written}`` (and ``mean`` for hdf5).

    Args:
        input_folder: a folder with the batches, or the folder their archive unpacks into.
        output_folder: where the outputs go (created when missing).
        backend: ``lmdb``, ``leveldb`` (needs plyvel) or ``hdf5``.
        labels: CIFAR-100's ``fine`` (100 classes) or ``coarse`` (20) labels.
        subtract_mean: ``hdf5`` only: store values minus the training mean (what the bundled
            CIFAR models expect); False stores 0..255.
    """
    backend = backend.lower()
    if backend not in BACKENDS:
        raise DatasetError(f"unknown --backend {backend!r}. Valid: {', '.join(BACKENDS)}")
    if labels not in ("fine", "coarse"):
        raise DatasetError(f"--labels must be fine or coarse. Received: {labels!r}")
    layout = find_layout(input_folder)
    log.info("Found %s (%s batches) in %s", layout.name, layout.kind, layout.folder)
    os.makedirs(output_folder, exist_ok=True)
    fine = labels == "fine"
    splits = {split: read_batches(layout, split, fine) for split in ("train", "test") if layout.splits[split]}
    if not splits:
        raise DatasetError(f"{layout.folder} has neither training nor test batches")
    written = {}
    if backend == "hdf5":
        return _write_hdf5(layout.name, splits, output_folder, subtract_mean)
    for split, batches in splits.items():
        path = os.path.join(output_folder, f"{layout.name}_{split}_{backend}")
        total = sum(len(b.labels) for b in batches)
        log.info("Writing %s data (%d images) to %s", split, total, path)
        with open_db_writer(path, backend) as db, Progress(total, f"Converting {split}") as bar:
            for batch in batches:
                for row, (pixels, label) in enumerate(zip(batch.images, batch.labels)):
                    key = batch.first_key + row if split == "train" else row + _test_offset(batches, batch)
                    db.put(format_key(key, 5), datum_bytes(pixels, int(label)))
                    bar.update()
        written[split] = path
    return written


def _test_offset(batches, batch) -> int:
    # Caffe numbers the one test batch from 0; more than one (not in the real data) continue the count
    offset = 0
    for b in batches:
        if b is batch:
            return offset
        offset += len(b.labels)
    return offset


def _write_hdf5(name: str, splits, output_folder: str, subtract_mean: bool) -> dict[str, str]:
    written = {}
    mean = None
    if subtract_mean:
        if "train" not in splits:
            raise DatasetError("subtracting the training mean needs the training batches; give --no-subtract-mean")
        total = sum(b.images.sum(axis=0, dtype=numpy.float64) for b in splits["train"])
        mean = (total / sum(len(b.labels) for b in splits["train"])).astype(numpy.float32)
    for split, batches in splits.items():
        path = os.path.join(output_folder, f"{name}_{split}.h5")
        with HDF5Writer(path, {"data": (3, 32, 32), "label": ()}) as h5:
            for batch in batches:
                data = batch.images.astype(numpy.float32)
                if mean is not None:
                    data -= mean
                h5.append(data=data, label=batch.labels.astype(numpy.float32))
        write_list_file(hdf5_list_path(path), [path])
        written[split] = path
    if mean is not None:
        write_mean(mean, os.path.join(output_folder, "mean.binaryproto"), os.path.join(output_folder, "mean.npy"))
        written["mean"] = os.path.join(output_folder, "mean.npy")
    return written


def cmd_convert_cifar(args: argparse.Namespace) -> int:
    """Run ``netdef convert_cifar`` from parsed arguments."""
    written = convert_cifar(
        args.input, args.output, backend=args.backend, labels=args.labels, subtract_mean=args.subtract_mean
    )
    for what, path in written.items():
        log.info("%s: %s", what, path)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef convert_cifar`` (also ``convert_cifar_data``, Caffe's name, and ``convert-cifar``)."""
    p = subparsers.add_parser(
        "convert_cifar",
        aliases=["convert_cifar_data", "convert-cifar"],
        help="convert CIFAR-10/100 batches (binary or Python) to LMDB/LevelDB databases or HDF5 files",
        description=(
            "Convert the CIFAR-10 or CIFAR-100 batches in INPUT_FOLDER as Caffe's convert_cifar_data does: "
            "netdef convert_cifar INPUT_FOLDER OUTPUT_FOLDER [--backend lmdb|leveldb|hdf5]. Writes "
            "<name>_train_<backend> and <name>_test_<backend> (databases), or <name>_{train,test}.h5 with their "
            "_h5.txt lists and mean.npy / mean.binaryproto (hdf5)."
        ),
    )
    p.add_argument("input", metavar="INPUT_FOLDER", help="folder with the batches (binary or Python version)")
    p.add_argument("output", metavar="OUTPUT_FOLDER", help="folder to write into")
    p.add_argument("backend_pos", metavar="DB_TYPE", nargs="?", help="lmdb, leveldb or hdf5 (Caffe's third argument)")
    p.add_argument("--backend", "-backend", type=str.lower, choices=BACKENDS, help="output format (default lmdb)")
    p.add_argument(
        "--labels", default="fine", choices=("fine", "coarse"), help="CIFAR-100 labels: fine (100) or coarse (20)"
    )
    p.add_argument(
        "--no-subtract-mean",
        dest="subtract_mean",
        action="store_false",
        help="hdf5: store 0..255 values instead of values minus the training mean",
    )
    p.set_defaults(func=_cmd_with_positional_backend)
    return p


def _cmd_with_positional_backend(args: argparse.Namespace) -> int:
    if args.backend_pos and args.backend and args.backend_pos.lower() != args.backend:
        raise DatasetError(f"DB_TYPE {args.backend_pos!r} and --backend {args.backend!r} disagree")
    args.backend = (args.backend_pos or args.backend or "lmdb").lower()
    return cmd_convert_cifar(args)


__all__ = ["BACKENDS", "add_parser", "cmd_convert_cifar", "convert_cifar"]
