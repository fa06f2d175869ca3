"""``netdef compute_image_mean``: the mean image of a data set as ``mean.binaryproto`` and/or ``.npy`` (Caffe's tool).

As one Python call::

    from netdef.tools.compute_image_mean import compute_image_mean
    mean = compute_image_mean("train_lmdb", "mean.binaryproto", npy="mean.npy")

The input is an LMDB or LevelDB of Datum records (as ``convert_imageset`` writes them),
an ``.h5`` file or a list of them (its ``data`` dataset), or an image list. The
``.binaryproto`` is a 1 x C x H x W BlobProto, what ``transform_param { mean_file }``
reads; the ``.npy`` is the C x H x W array, what ``netdef classify --mean`` and pycaffe's
``Transformer.set_mean`` take. The per-channel means are logged too (for ``mean_value``).
"""

from __future__ import annotations

import argparse
import logging

import numpy

from ..datasets.mean import SOURCE_KINDS, compute_mean, write_mean
from ..errors import DatasetError

log = logging.getLogger("netdef")


def compute_image_mean(
    source: str,
    output: str | None = None,
    *,
    npy: str | None = None,
    kind: str = "auto",
    dataset: str = "data",
    root: str = "",
    gray: bool = False,
    resize: tuple[int, int] | None = None,
) -> numpy.ndarray:
    """Compute the C x H x W mean of ``source``; write it to ``output`` (.binaryproto, or .npy by name) and ``npy``.

    See :func:`netdef.datasets.mean.compute_mean` for the inputs; ``root``, ``gray`` and
    ``resize`` apply to image lists. Returns the mean.
    """
    if output and output.lower().endswith(".npy"):
        output, npy = None, npy or output
    mean = compute_mean(source, kind=kind, dataset=dataset, root=root, gray=gray, size=resize)
    write_mean(mean, output, npy)
    for path in (output, npy):
        if path:
            log.info("Write to %s", path)
    return mean


def cmd_compute_image_mean(args: argparse.Namespace) -> int:
    """Run ``netdef compute_image_mean`` from parsed arguments."""
    if bool(args.resize_height) != bool(args.resize_width):
        raise DatasetError("give both --resize_height and --resize_width (or neither)")
    resize = (args.resize_height, args.resize_width) if args.resize_height else None
    output = args.output
    if not output and not args.npy:
        log.info("No output file given: printing the per-channel means only")
    compute_image_mean(
        args.input,
        output,
        npy=args.npy,
        kind=args.backend,
        dataset=args.dataset,
        root=args.root,
        gray=args.gray,
        resize=resize,
    )
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef compute_image_mean`` (also spelt ``compute-image-mean``)."""
    p = subparsers.add_parser(
        "compute_image_mean",
        aliases=["compute-image-mean"],
        help="mean image of an LMDB/LevelDB/HDF5 data set or an image list, as .binaryproto and/or .npy",
        description=(
            "Average every image of a data set. Usage as Caffe's: netdef compute_image_mean [FLAGS] INPUT_DB "
            "[OUTPUT_FILE]. INPUT is an LMDB or LevelDB folder, an .h5 file or a text file listing .h5 files, or an "
            "image list ('<path> <label>' lines); OUTPUT_FILE ending in .npy is written as a C x H x W NumPy array, "
            "anything else as a BlobProto (.binaryproto) for transform_param { mean_file }."
        ),
    )
    p.add_argument("input", metavar="INPUT_DB", help="database folder, .h5 file or list, or image list")
    p.add_argument("output", metavar="OUTPUT_FILE", nargs="?", help="mean.binaryproto (or .npy) to write")
    p.add_argument("--npy", help="also write the mean as a C x H x W .npy array here")
    p.add_argument(
        "--backend",
        "-backend",
        default="auto",
        choices=SOURCE_KINDS,
        type=str.lower,
        help="what INPUT is (default: recognised from the path)",
    )
    p.add_argument("--dataset", default="data", help="HDF5 dataset to average (default data)")
    p.add_argument("--root", default="", help="image lists: folder prefixed to every path (as text: keep the /)")
    p.add_argument("--gray", action="store_true", help="image lists: read images as grey")
    p.add_argument("--resize_height", "--resize-height", type=int, default=0, help="image lists: height to resize to")
    p.add_argument("--resize_width", "--resize-width", type=int, default=0, help="image lists: width to resize to")
    p.set_defaults(func=cmd_compute_image_mean)
    return p


__all__ = ["add_parser", "cmd_compute_image_mean", "compute_image_mean"]
