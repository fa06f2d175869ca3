"""``netdef extract_features``: blobs of a net over its data, saved to LMDB / LevelDB / HDF5 (Caffe's tool).

As one Python call::

    from netdef.tools.extract_features import extract_features
    extract_features("net.caffemodel", "extract.prototxt", ["fc7"], ["fc7_lmdb"], 10, "lmdb")

The net (in the TEST phase, with its data layer) runs forward ``num_mini_batches``
times; each sample of each named blob becomes one record. In a database that is a
Datum with ``float_data`` and the blob's channels, height and width (1 where the blob
has fewer axes), under the key ``%010d`` of the sample's number, as Caffe writes
them. ``hdf5`` writes one ``.h5`` file per output with a float32 dataset named after
the blob (N x the blob's shape without its batch axis).
"""

from __future__ import annotations

import argparse
import logging

import numpy

from .. import backend
from ..datasets.datum import datum_bytes, format_key
from ..datasets.writers import HDF5Writer, open_db_writer
from ..errors import DatasetError, NetdefError
from ..net import TEST, Net
from ..progress import Progress
from .common import add_gpu_argument, select_device

log = logging.getLogger("netdef")

BACKENDS = ("lmdb", "leveldb", "hdf5")


def _split(text: str | list[str]) -> list[str]:
    return [t for t in (text.split(",") if isinstance(text, str) else text) if t]


def extract_features(
    weights: str,
    model: str,
    blobs: str | list[str],
    outputs: str | list[str],
    num_mini_batches: int,
    db_type: str = "lmdb",
    *,
    gpu: str | None = None,
) -> int:
    """Run ``model`` with ``weights`` for ``num_mini_batches`` batches and save ``blobs`` to ``outputs``.

    Args:
        weights: trained weights (``.caffemodel`` or ``.h5``).
        model: a net definition whose TEST phase has a data layer (it feeds the batches).
        blobs: blob names (a list, or comma-separated as on Caffe's command line).
        outputs: one database folder (or ``.h5`` file) per blob, in the same order.
        num_mini_batches: how many forward passes to run.
        db_type: ``lmdb``, ``leveldb`` (needs plyvel) or ``hdf5``.
        gpu: the ``--gpu`` value (None: the CPU).

    Returns:
        the number of samples written per blob.
    """
    blobs, outputs = _split(blobs), _split(outputs)
    db_type = db_type.lower()
    if db_type not in BACKENDS:
        raise DatasetError(f"unknown db_type {db_type!r}. Valid: {', '.join(BACKENDS)}")
    if not blobs or len(blobs) != len(outputs):
        raise DatasetError(
            f"give one output per blob. Received: {len(blobs)} blob(s) ({', '.join(blobs)}) and "
            f"{len(outputs)} output(s) ({', '.join(outputs)})"
        )
    if num_mini_batches < 1:
        raise DatasetError(f"num_mini_batches must be at least 1. Received: {num_mini_batches}")
    select_device(gpu)
    net = Net(model, TEST, weights=weights)
    for name in blobs:
        if name not in net.blobs:
            raise NetdefError(f'Unknown feature blob name "{name}" in {model}. Blobs: {", ".join(net.blobs)}')
    log.info("Extracting features of %s for %d mini-batches", ", ".join(blobs), num_mini_batches)
    writers = []
    try:
        for name, out in zip(blobs, outputs):
            shape = tuple(net.blobs[name].shape[1:])
            writers.append(HDF5Writer(out, {name: shape}) if db_type == "hdf5" else open_db_writer(out, db_type))
        count = 0
        with Progress(num_mini_batches, "Extracting") as bar:
            for _ in range(num_mini_batches):
                net.forward()
                for name, writer in zip(blobs, writers):
                    _write_features(writer, name, backend.to_numpy(net.blobs[name].data), count)
                count += len(net.blobs[blobs[0]].data)
                bar.update()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.close()
    log.info("Extracted features of %d samples", count)
    return count


def _write_features(writer, name: str, data, first: int) -> None:
    """One batch of blob ``name``: rows to an HDF5 writer, or one Datum per sample keyed from ``first``."""
    features = numpy.asarray(data, dtype=numpy.float32)
    if isinstance(writer, HDF5Writer):
        writer.append(**{name: features})
        return
    rows = features.reshape(len(features), -1) if features.ndim > 4 else features
    for i, row in enumerate(rows):
        writer.put(format_key(first + i, 10), datum_bytes(row))


def cmd_extract_features(args: argparse.Namespace) -> int:
    """Run ``netdef extract_features`` from parsed arguments."""
    gpu = args.gpu
    if gpu is None and args.mode and args.mode.upper() == "GPU":
        gpu = str(args.device_id or 0)
    extract_features(args.weights, args.model, args.blobs, args.outputs, args.num_mini_batches, args.db_type, gpu=gpu)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef extract_features`` (also spelt ``extract-features``)."""
    p = subparsers.add_parser(
        "extract_features",
        aliases=["extract-features"],
        help="save blobs of a net over its data to LMDB/LevelDB/HDF5",
        description=(
            "Caffe's argument order: netdef extract_features WEIGHTS MODEL BLOB1[,BLOB2,...] OUT1[,OUT2,...] "
            "NUM_MINI_BATCHES [lmdb|leveldb|hdf5] [CPU|GPU] [DEVICE_ID]. The model's TEST-phase data layer "
            "feeds the batches; each sample of each blob becomes one record (key %%010d)."
        ),
    )
    p.add_argument("weights", metavar="WEIGHTS", help="trained weights (.caffemodel or .h5)")
    p.add_argument("model", metavar="MODEL", help="net definition with a TEST-phase data layer")
    p.add_argument("blobs", metavar="BLOBS", help="comma-separated blob names")
    p.add_argument("outputs", metavar="OUTPUTS", help="comma-separated outputs, one per blob")
    p.add_argument("num_mini_batches", metavar="NUM_MINI_BATCHES", type=int, help="forward passes to run")
    p.add_argument("db_type", metavar="DB_TYPE", nargs="?", default="lmdb", type=str.lower, choices=BACKENDS)
    p.add_argument("mode", metavar="CPU|GPU", nargs="?", help="Caffe's device argument (or use --gpu)")
    p.add_argument("device_id", metavar="DEVICE_ID", nargs="?", type=int, help="GPU device with GPU mode")
    add_gpu_argument(p)
    p.set_defaults(func=cmd_extract_features)
    return p


__all__ = ["BACKENDS", "add_parser", "cmd_extract_features", "extract_features"]
