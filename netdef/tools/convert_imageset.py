"""``netdef convert_imageset``: an image list to an LMDB / LevelDB of Datum records, or to HDF5 (Caffe's tool).

As one Python call::

    from netdef.tools.convert_imageset import convert_imageset
    convert_imageset("images/", "train.txt", "train_lmdb", resize=(32, 32), shuffle=True)

Each line of the list is ``<path> <integer label>`` (the label after the last space);
the image is ``root + path``. Records are stored under Caffe's keys,
``%08d_<path>`` (the line's position after shuffling, then the path as listed), so the
Data layer reads them in list order, and a database written here and one written by
Caffe's ``convert_imageset`` read the same. Pixels are stored as OpenCV gives them to
Caffe: C x H x W bytes, colour channels in BGR order. ``--backend hdf5`` writes an
``.h5`` file with float32 ``data`` (N x C x H x W, values 0..255 times ``--scale``) and
``label``, plus the ``<name>_h5.txt`` list an HDF5Data layer takes as its source.
"""

from __future__ import annotations

import argparse
import logging

import numpy

from ..datasets.datum import datum_bytes, format_key
from ..datasets.images import encoded_image, load_pixels, read_image_list
from ..datasets.writers import HDF5Writer, hdf5_list_path, open_db_writer, write_list_file
from ..errors import DatasetError
from ..progress import Progress

log = logging.getLogger("netdef")

BACKENDS = ("lmdb", "leveldb", "hdf5")


def _resize(height: int, width: int) -> tuple[int, int] | None:
    if height < 0 or width < 0:
        raise DatasetError(f"--resize_height and --resize_width must be >= 0. Received: {height}, {width}")
    if bool(height) != bool(width):
        raise DatasetError(
            f"give both --resize_height and --resize_width (or neither). Received: height {height}, width {width}"
        )
    return (height, width) if height else None


def convert_imageset(
    root: str,
    list_file: str,
    output: str,
    *,
    gray: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    backend: str = "lmdb",
    resize: tuple[int, int] | None = None,
    check_size: bool = False,
    encoded: bool = False,
    encode_type: str = "",
    scale: float = 1.0,
) -> int:
    """Convert the images ``list_file`` names into the database (or HDF5 file) ``output``; returns the record count.

    Args:
        root: prefixed to every path of the list (Caffe's ``ROOTFOLDER/``; ``""`` for none).
        list_file: ``<path> <label>`` lines.
        output: the database folder to create (it must not exist), or the ``.h5`` file for ``hdf5``.
        gray: store one grey channel instead of three (BGR).
        shuffle: shuffle the lines first (with ``seed``), as ``--shuffle`` does.
        backend: ``lmdb``, ``leveldb`` (needs plyvel) or ``hdf5``.
        resize: (height, width) to resize every image to, or None to keep sizes.
        check_size: require every image to have the first one's size.
        encoded: store the image files' bytes (``encoded: true`` Datums), re-encoded only
            when resized or when ``encode_type`` differs from the file's type.
        encode_type: the image type for ``encoded`` (png, jpg, ...; default: each file's own).
        scale: multiplies the stored values (``hdf5`` only; e.g. 0.00390625 for [0, 1)).
    """
    backend = backend.lower()
    if backend not in BACKENDS:
        raise DatasetError(f"unknown --backend {backend!r}. Valid: {', '.join(BACKENDS)}")
    if encoded and backend == "hdf5":
        raise DatasetError("--encoded stores image files in Datum records; HDF5 holds pixels. Use lmdb or leveldb")
    if scale != 1.0 and backend != "hdf5":
        raise DatasetError(
            "--scale applies to HDF5 output; for a database set transform_param { scale } in the Data layer"
        )
    entries = read_image_list(list_file)
    if shuffle:
        order = numpy.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
        log.info("Shuffled %d lines of %s (seed %d)", len(entries), list_file, seed)
    log.info("A total of %d images.", len(entries))
    if backend == "hdf5":
        return _write_hdf5(root, entries, output, gray, resize, scale)
    first_shape = None
    with open_db_writer(output, backend) as db, Progress(len(entries), f"Converting {list_file}") as bar:
        for index, (name, label) in enumerate(entries):
            path = root + name
            if encoded or encode_type:
                value = datum_bytes(label=label, encoded=encoded_image(path, gray, resize, encode_type))
            else:
                pixels = load_pixels(path, gray, resize)
                if check_size:
                    first_shape = first_shape or pixels.shape
                    if pixels.shape != first_shape:
                        raise DatasetError(f"{path} has size {pixels.shape}, not {first_shape} as the first image")
                value = datum_bytes(pixels, label)
            db.put(format_key(index, 8, name), value)
            bar.update()
    return len(entries)


def _write_hdf5(root, entries, output, gray, resize, scale) -> int:
    first = load_pixels(root + entries[0][0], gray, resize)
    with HDF5Writer(output, {"data": first.shape, "label": ()}) as h5, Progress(len(entries), "Converting") as bar:
        for start in range(0, len(entries), 256):
            chunk = entries[start : start + 256]
            pixels = []
            for name, _ in chunk:
                p = load_pixels(root + name, gray, resize)
                if p.shape != first.shape:
                    raise DatasetError(
                        f"{root + name} has size {p.shape}, not {first.shape} as the first image; HDF5 needs one "
                        "size: give --resize_height and --resize_width"
                    )
                pixels.append(p)
            data = numpy.stack(pixels).astype(numpy.float32) * numpy.float32(scale)
            h5.append(data=data, label=numpy.array([label for _, label in chunk], dtype=numpy.float32))
            bar.update(len(chunk))
    list_path = hdf5_list_path(output)
    write_list_file(list_path, [output])
    log.info("Wrote the HDF5Data source list %s", list_path)
    return len(entries)


def cmd_convert_imageset(args: argparse.Namespace) -> int:
    """Run ``netdef convert_imageset`` from parsed arguments."""
    count = convert_imageset(
        args.root,
        args.listfile,
        args.output,
        gray=args.gray,
        shuffle=args.shuffle,
        seed=args.seed,
        backend=args.backend,
        resize=_resize(args.resize_height, args.resize_width),
        check_size=args.check_size,
        encoded=args.encoded,
        encode_type=args.encode_type,
        scale=args.scale,
    )
    log.info("Processed %d files.", count)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef convert_imageset`` (also spelt ``convert-imageset``)."""
    p = subparsers.add_parser(
        "convert_imageset",
        aliases=["convert-imageset"],
        help="convert an image list (path label) to an LMDB/LevelDB of Datum records or an HDF5 file",
        description=(
            "Convert images listed as '<path> <label>' lines into a database of Caffe Datum records, keyed "
            "%%08d_<path> in list order as Caffe's convert_imageset writes them, or into an HDF5 file plus its "
            "HDF5Data list file. Usage as Caffe's: netdef convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME "
            "(use '' or ./ as ROOTFOLDER/ when the list holds full paths). The output must not exist; it "
            "appears only when the conversion completes."
        ),
    )
    p.add_argument("root", metavar="ROOTFOLDER/", help="prefixed to every path in the list (as text: keep the /)")
    p.add_argument("listfile", metavar="LISTFILE", help="lines of '<image path> <integer label>'")
    p.add_argument("output", metavar="DB_NAME", help="database folder to create (or .h5 file with --backend hdf5)")
    p.add_argument("--gray", "-gray", action="store_true", help="store images as one grey channel")
    p.add_argument("--shuffle", "-shuffle", action="store_true", help="shuffle the order of the images")
    p.add_argument("--seed", type=int, default=0, help="random seed of --shuffle (default 0)")
    p.add_argument(
        "--backend", "-backend", default="lmdb", choices=BACKENDS, type=str.lower, help="output format (default lmdb)"
    )
    p.add_argument(
        "--resize_height", "-resize_height", "--resize-height", type=int, default=0, help="height to resize to"
    )
    p.add_argument("--resize_width", "-resize_width", "--resize-width", type=int, default=0, help="width to resize to")
    p.add_argument(
        "--check_size", "-check_size", "--check-size", action="store_true", help="require all images to be one size"
    )
    p.add_argument("--encoded", "-encoded", action="store_true", help="store the encoded image files in the Datums")
    p.add_argument(
        "--encode_type",
        "-encode_type",
        "--encode-type",
        default="",
        help="image type of --encoded Datums (png, jpg, ...; default: each file's own)",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply stored values by this (--backend hdf5 only; default 1)"
    )
    p.set_defaults(func=cmd_convert_imageset)
    return p


__all__ = ["BACKENDS", "add_parser", "cmd_convert_imageset", "convert_imageset"]
