"""``netdef classify``: run a trained deploy net on image files and print the top-k classes.

The shape of Caffe's ``classification`` example and pycaffe's ``classify.py``:
each image is resized to the net input's height and width, laid out as
C x H x W, channel-swapped (RGB -> BGR by default, for 3-channel inputs),
scaled to [0, 255] (``--raw-scale``), has the mean subtracted (``--mean``) and is
multiplied by ``--input-scale``; see :class:`netdef.io.preprocessing.Transformer`.
For each image it prints::

    ---------- Prediction for cat.png ----------
    0.8123 - "n02123045 tabby, tabby cat"

The preprocessing a model needs is read from ``preprocess.yaml`` beside its deploy
net when there is one (``models/digits``, ``models/lenet`` and the CIFAR models ship
one), with keys ``raw_scale``, ``channel_swap`` (``none`` or an order such as
``[2, 1, 0]``), ``mean`` (``none``, a ``.binaryproto``/``.npy`` path, relative to the
working directory first and then to the model folder, or per-channel values) and
``input_scale``. Options given on the command line (or to :func:`classify_files`)
override it; without either, the defaults are pycaffe's ImageNet ones (RGB -> BGR for
3 channels, raw scale 255, no mean).
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy
import yaml

from .. import backend
from ..errors import MeanFileError, NetdefError, ShapeMismatchError, WeightsFileError
from ..io.blobproto import read_binaryproto
from ..io.paths import resolve_path
from ..io.preprocessing import Transformer, load_image
from ..net import TEST, Net
from .common import add_gpu_argument, select_device

log = logging.getLogger("netdef")


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise NetdefError(f"{what} takes comma-separated integers such as 2,1,0. Received: {text!r}") from None


def load_mean(spec: str) -> numpy.ndarray:
    """A mean from ``spec``: a .binaryproto or .npy file, or comma-separated per-channel values.

    A file that is missing or unreadable is a :class:`~netdef.errors.MeanFileError`.
    """
    if os.path.exists(spec):
        try:
            if spec.lower().endswith(".npy"):
                return numpy.load(spec, allow_pickle=False).astype(numpy.float32)
            return read_binaryproto(spec).astype(numpy.float32)
        except (WeightsFileError, ValueError, OSError) as err:
            raise MeanFileError(f"cannot read the mean file {spec}: {err}") from None
    try:
        return numpy.array([float(v) for v in spec.split(",")], dtype=numpy.float32)
    except ValueError:
        pass
    if spec.lower().endswith((".npy", ".binaryproto")) or os.sep in spec or "/" in spec:
        raise MeanFileError(
            f"mean file not found: {spec} (looked in {os.getcwd()}). Make one with `netdef compute_image_mean` "
            "(or `netdef convert_cifar --backend hdf5` for the CIFAR models); --mean takes a .binaryproto or "
            ".npy mean file, per-channel values such as 104,117,123, or none"
        )
    raise NetdefError(
        "--mean takes a .binaryproto or .npy mean file, or per-channel values such as 104,117,123. "
        f"Received: {spec!r} (no such file)"
    )


#: the file beside a deploy net that says how to preprocess images for it
PREPROCESS_FILE = "preprocess.yaml"
PREPROCESS_KEYS = ("raw_scale", "channel_swap", "mean", "input_scale")


def _none_word(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "none")


def model_preprocessing(model: str) -> dict:
    """The preprocessing options ``preprocess.yaml`` beside ``model`` gives, in :func:`make_transformer`'s terms.

    Returns ``{}`` when there is no such file. ``channel_swap`` and ``mean`` come back as
    the strings the command-line options take (``"none"``, ``"2,1,0"``, a resolved path).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(model)), PREPROCESS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            meta = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise NetdefError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(meta, dict):
        raise NetdefError(f"{path} must be a mapping of {', '.join(PREPROCESS_KEYS)}. Received: {type(meta).__name__}")
    unknown = sorted(set(meta) - set(PREPROCESS_KEYS))
    if unknown:
        raise NetdefError(f"{path}: unknown key(s) {', '.join(unknown)}. Valid: {', '.join(PREPROCESS_KEYS)}")
    out: dict = {}
    for key in ("raw_scale", "input_scale"):
        if key in meta and not _none_word(meta[key]):
            try:
                out[key] = float(meta[key])
            except (TypeError, ValueError):
                raise NetdefError(f"{path}: {key} must be a number. Received: {meta[key]!r}") from None
    if "channel_swap" in meta:
        swap = meta["channel_swap"]
        out["channel_swap"] = "none" if _none_word(swap) else ",".join(str(v) for v in _as_list(swap))
    if "mean" in meta:
        mean = meta["mean"]
        if _none_word(mean):
            out["mean"] = "none"
        elif isinstance(mean, (list, tuple, int, float)):
            out["mean"] = ",".join(str(float(v)) for v in _as_list(mean))
        else:
            out["mean"] = resolve_path(str(mean), path)
    out["source"] = path
    return out


def _as_list(value) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_labels(path: str, count: int) -> list[str]:
    """One label per line (e.g. Caffe's synset_words.txt); there must be one per output class."""
    if not os.path.exists(path):
        raise NetdefError(f"Labels file not found: {path}")
    with open(path, encoding="utf-8") as f:
        labels = [line.rstrip("\r\n") for line in f]
    while labels and not labels[-1]:
        labels.pop()
    if len(labels) != count:
        raise ShapeMismatchError(
            f"{path} has {len(labels)} labels but the output has {count} classes; give one label per line per class"
        )
    return labels


def _output_blob(net, requested: str | None) -> str:
    if requested:
        if requested not in net.blobs:
            raise NetdefError(f'--output "{requested}" is not a blob of the net. Blobs: {", ".join(net.blobs)}')
        return requested
    if len(net.outputs) == 1:
        return net.outputs[0]
    if "prob" in net.outputs:
        return "prob"
    raise NetdefError(
        f"The net has {len(net.outputs)} outputs ({', '.join(net.outputs) or 'none'}); choose one with --output"
    )


def make_transformer(
    shape,
    name: str,
    *,
    channel_swap: str | None = None,
    raw_scale: float | None = None,
    mean: str | None = None,
    input_scale: float | None = None,
) -> Transformer:
    """The Transformer the command-line options describe, for input ``name`` of ``shape``.

    ``channel_swap`` is a comma-separated order such as ``"2,1,0"``, or ``"none"`` to
    keep RGB (None: BGR for 3-channel inputs); ``mean`` is as :func:`load_mean` reads it.
    """
    t = Transformer({name: shape})
    t.set_transpose(name, (2, 0, 1))
    channels = shape[1]
    if channel_swap is None:
        if channels == 3:
            t.set_channel_swap(name, (2, 1, 0))
    elif channel_swap.lower() != "none":
        t.set_channel_swap(name, _int_list(channel_swap, "--channel-swap"))
    if raw_scale is not None:
        t.set_raw_scale(name, raw_scale)
    if mean and mean.lower() != "none":
        t.set_mean(name, load_mean(mean))
    if input_scale is not None:
        t.set_input_scale(name, input_scale)
    return t


def classify(net, images: list[numpy.ndarray], transformer, input_name: str, output: str) -> numpy.ndarray:
    """Class scores (one row per image) from ``output`` for H x W x C ``images``, in batches of the input's size."""
    shape = net.blobs[input_name].shape
    batch = max(1, shape[0])
    rows = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        data = numpy.stack([transformer.preprocess(input_name, im) for im in chunk])
        if net.blobs[input_name].shape != data.shape:
            net.blobs[input_name].reshape(data.shape)
            net.reshape()
        net.blobs[input_name].data[...] = backend.asarray(data, net.xp, net.dtype)
        net.forward()
        scores = backend.to_numpy(net.blobs[output].data)
        rows.append(numpy.asarray(scores, dtype=numpy.float64).reshape(len(chunk), -1))
    return numpy.concatenate(rows)


def top_k(scores: numpy.ndarray, k: int) -> numpy.ndarray:
    """Indices of the ``k`` largest scores, largest first (the lower index first on ties)."""
    order = numpy.argsort(-scores, kind="stable")
    return order[: min(k, scores.size)]


def _image_input(net: Net, model: str, requested: str | None) -> str:
    """The input blob images go into: ``requested``, else the net's first input; it must be N x C x H x W."""
    if not net.inputs:
        raise NetdefError(
            f"{model} has no Input layer (or input: fields) to feed images into; classify needs a deploy net"
        )
    input_name = requested or net.inputs[0]
    if input_name not in net.inputs:
        raise NetdefError(f'--input "{input_name}" is not an input of the net. Inputs: {", ".join(net.inputs)}')
    shape = net.blobs[input_name].shape
    if len(shape) != 4:
        raise ShapeMismatchError(
            f'classify needs a 4-D image input (N, C, H, W); input "{input_name}" has shape {shape}'
        )
    return input_name


def classify_files(
    model: str,
    weights: str,
    images: list[str],
    *,
    labels: str | None = None,
    top: int = 5,
    mean: str | None = None,
    channel_swap: str | None = None,
    raw_scale: float | None = None,
    input_scale: float | None = None,
    input_name: str | None = None,
    output: str | None = None,
    gpu: str | None = None,
) -> list[list[tuple[float, str]]]:
    """The ``top`` most likely classes of each image file, as (score, label) pairs, most likely first.

    Args:
        model: a deploy net definition (with an Input layer).
        weights: its trained weights.
        images: image files (PNG/JPEG via Pillow, or H x W x C ``.npy`` arrays in [0, 1]).
        labels: a file with one class name per line (default: the class numbers).
        top: how many classes per image.
        mean, channel_swap, raw_scale, input_scale: preprocessing, see :func:`make_transformer`;
            each one left None comes from the model folder's ``preprocess.yaml`` (see
            :func:`model_preprocessing`), else from pycaffe's defaults (raw scale 255,
            RGB -> BGR for 3-channel inputs, no mean). ``mean="none"`` subtracts nothing.
        input_name: the input blob (default: the net's first input).
        output: the blob with the class scores (default: the only output, or ``prob``).
        gpu: the ``--gpu`` value (None: the CPU).
    """
    if top < 1:
        raise NetdefError(f"--top-k must be at least 1. Received: {top}")
    select_device(gpu)
    net = Net(model, TEST, weights=weights)
    input_name = _image_input(net, model, input_name)
    shape = net.blobs[input_name].shape
    meta = model_preprocessing(model)
    if meta:
        log.info("Preprocessing from %s (options given explicitly override it)", meta["source"])
    channel_swap = channel_swap if channel_swap is not None else meta.get("channel_swap")
    raw_scale = raw_scale if raw_scale is not None else meta.get("raw_scale", 255.0)
    mean = mean if mean is not None else meta.get("mean")
    input_scale = input_scale if input_scale is not None else meta.get("input_scale")
    transformer = make_transformer(
        shape, input_name, channel_swap=channel_swap, raw_scale=raw_scale, mean=mean, input_scale=input_scale
    )
    output = _output_blob(net, output)
    log.info("Classifying %d image(s) with input %s %s and output %s", len(images), input_name, shape, output)
    log.info(
        "Preprocessing: resize to %dx%d, channel swap %s, raw scale %s, mean %s, input scale %s",
        shape[2],
        shape[3],
        transformer.channel_swap.get(input_name, "none"),
        transformer.raw_scale.get(input_name, 1),
        mean or "none",
        transformer.input_scale.get(input_name, 1),
    )
    arrays = [load_image(path, color=shape[1] != 1) for path in images]
    scores = classify(net, arrays, transformer, input_name, output)
    names = load_labels(labels, scores.shape[1]) if labels else [str(i) for i in range(scores.shape[1])]
    return [[(float(row[i]), names[i]) for i in top_k(row, top)] for row in scores]


def cmd_classify(args: argparse.Namespace) -> int:
    """Run ``netdef classify`` from parsed arguments; prints each image's top classes."""
    predictions = classify_files(
        args.model,
        args.weights,
        args.images,
        labels=args.labels,
        top=args.top_k,
        mean=args.mean,
        channel_swap=args.channel_swap,
        raw_scale=args.raw_scale,
        input_scale=args.input_scale,
        input_name=args.input,
        output=args.output,
        gpu=args.gpu,
    )
    for path, classes in zip(args.images, predictions, strict=True):
        print(f"---------- Prediction for {path} ----------")
        for score, label in classes:
            print(f'{score:.4f} - "{label}"')
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef classify``."""
    p = subparsers.add_parser(
        "classify",
        help="print the top-k classes a trained net gives image files",
        description=(
            "Run a deploy net on images (PNG/JPEG via Pillow, or H x W x C .npy arrays in [0, 1]) and print the "
            "k most likely classes of each. Preprocessing as pycaffe's classify.py: resize to the input's "
            "height and width, RGB -> BGR for 3-channel inputs, scale [0, 1] -> [0, 255], subtract the mean, "
            "multiply by --input-scale; a preprocess.yaml beside the model (models/digits, models/lenet and the "
            "CIFAR models have one) replaces these defaults, and the options override both."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (.png, .jpg, ... or .npy)")
    p.add_argument(
        "--model",
        "-model",
        "--model_def",
        dest="model",
        required=True,
        help="deploy net definition (with an Input layer)",
    )
    p.add_argument(
        "--weights",
        "-weights",
        "--pretrained_model",
        dest="weights",
        required=True,
        help="trained weights (.caffemodel or .h5)",
    )
    p.add_argument(
        "--mean",
        "-mean",
        "--mean_file",
        dest="mean",
        help="mean to subtract: .binaryproto or .npy file, per-channel values such as 104,117,123, or 'none' "
        "(default: preprocess.yaml beside the model, else none)",
    )
    p.add_argument("--labels", "-labels", help="class names, one per line (e.g. synset_words.txt)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=5, help="classes to print (default 5)")
    p.add_argument(
        "--channel-swap",
        "--channel_swap",
        dest="channel_swap",
        help="channel order after loading as RGB (default: preprocess.yaml, else 2,1,0 for 3-channel inputs; "
        "'none' keeps RGB)",
    )
    p.add_argument(
        "--raw-scale",
        "--raw_scale",
        dest="raw_scale",
        type=float,
        help="multiply the [0, 1] image by this before subtracting the mean (default: the model folder's "
        "preprocess.yaml, else 255)",
    )
    p.add_argument(
        "--input-scale",
        "--input_scale",
        dest="input_scale",
        type=float,
        help="multiply by this after subtracting the mean",
    )
    p.add_argument("--input", help="input blob to feed (default: the net's first input)")
    p.add_argument("--output", help="blob holding the class scores (default: the net's only output, or 'prob')")
    add_gpu_argument(p)
    p.set_defaults(func=cmd_classify)
    return p


__all__ = [
    "add_parser",
    "classify",
    "classify_files",
    "cmd_classify",
    "load_labels",
    "load_mean",
    "make_transformer",
    "model_preprocessing",
    "top_k",
]
