"""``netdef visualize``: first-layer filters as an image grid, and activation maps of chosen blobs.

Pictures are PNG files written by a small PNG encoder of netdef's own (zlib from the
standard library), so this command needs no extra package; reading a PNG/JPEG input
image needs Pillow (the ``image`` extra), a ``.npy`` input needs nothing.

- **Filters**: the weights of a convolution layer (default: the first layer with weights),
  one tile per filter (an InnerProduct layer reading images gives one picture per unit);
  3-channel filters are drawn in colour (channels taken as BGR, as Caffe's image nets are
  trained), others one tile per filter and channel. All tiles share one
  grey scale (the weights' minimum is black, their maximum white), so their strength can
  be compared; small kernels are enlarged without smoothing.
- **Activations**: the maps of each chosen blob for one input, one tile per channel, on
  one grey scale per blob. The input is an image file (``--image``) fed to the net's
  input blob, or sample K of the net's own TEST data (``--sample K``).

As Python calls::

    from netdef.tools.visualize import filter_grid, activation_grid, write_png
    write_png("conv1.png", filter_grid(net.params["conv1"][0].data))
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import struct
import zlib
from collections.abc import Sequence

import numpy

from .. import backend
from ..errors import NetdefError
from ..net import TEST, TRAIN, Net
from .common import open_net, split_stages

log = logging.getLogger("netdef")


# --- PNG -----------------------------------------------------------------------------
def encode_png(image: numpy.ndarray) -> bytes:
    """PNG bytes of an 8-bit image: (H, W) grey or (H, W, 3) RGB."""
    image = numpy.ascontiguousarray(image, dtype=numpy.uint8)
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise NetdefError(f"a PNG image is (H, W) or (H, W, 3). Received: {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise NetdefError(f"cannot write an empty image. Received: {image.shape}")
    rows = image.reshape(height, width * channels)
    # each scanline starts with its filter type, 0 (none)
    raw = numpy.concatenate([numpy.zeros((height, 1), numpy.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write_png(path: str, image: numpy.ndarray) -> None:
    """Write an 8-bit (H, W) or (H, W, 3) image as PNG."""
    with open(path, "wb") as f:
        f.write(encode_png(image))


# --- grids ---------------------------------------------------------------------------
def _to_uint8(values: numpy.ndarray) -> numpy.ndarray:
    """Scale to 0..255 over the whole array (a constant array becomes mid-grey)."""
    values = numpy.asarray(values, dtype=numpy.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return numpy.full(values.shape, 128, numpy.uint8)
    return numpy.round((values - lo) / (hi - lo) * 255).astype(numpy.uint8)


def tile(images: numpy.ndarray, padding: int = 1, min_tile: int = 32, columns: int | None = None) -> numpy.ndarray:
    """Lay out (N, h, w) or (N, h, w, 3) uint8 tiles in a near-square grid with white gaps.

    Tiles smaller than ``min_tile`` pixels are enlarged by a whole factor (nearest neighbour).
    """
    n, h, w = images.shape[:3]
    factor = max(1, min_tile // max(h, w, 1))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
        h, w = h * factor, w * factor
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    shape = (rows * (h + padding) + padding, cols * (w + padding) + padding) + images.shape[3:]
    grid = numpy.full(shape, 255, numpy.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y : y + h, x : x + w] = images[k]
    return grid


def filter_grid(weights, min_tile: int = 32) -> numpy.ndarray:
    """A grid picture of convolution weights (N, C, kh, kw): colour tiles for C = 3, else one per channel."""
    w = backend.to_numpy(weights)
    if w.ndim != 4:
        raise NetdefError(f"filters are 4-D weights (N, C, kh, kw). Received: shape {w.shape}")
    scaled = _to_uint8(w)
    if w.shape[1] == 3:
        tiles = scaled[:, ::-1].transpose(0, 2, 3, 1)  # BGR planes -> RGB pixels
    else:
        tiles = scaled.reshape(-1, w.shape[2], w.shape[3])
    return tile(numpy.ascontiguousarray(tiles), min_tile=min_tile)


def activation_grid(maps, min_tile: int = 32) -> numpy.ndarray:
    """A grid picture of one sample's activations: (C, H, W) maps, (C,) values as 1x1 tiles, or (H, W)."""
    a = backend.to_numpy(maps).astype(numpy.float64)
    if a.ndim == 1:
        a = a.reshape(-1, 1, 1)
    elif a.ndim == 2:
        a = a[None]
    elif a.ndim > 3:
        a = a.reshape((-1,) + a.shape[-2:])
    return tile(_to_uint8(a), min_tile=min_tile)


# --- running the net -----------------------------------------------------------------
def first_conv_layer(net: Net) -> str:
    """The name of the first layer with weights (the filters to show by default)."""
    for name, blobs in net.params.items():
        if blobs and len(blobs[0].shape) in (2, 4):
            return name
    raise NetdefError("the net has no convolution or inner-product weights to draw; name a layer with --layer")


def layer_filters(net: Net, name: str) -> numpy.ndarray:
    """Layer ``name``'s weights as (N, C, kh, kw) filters.

    An InnerProduct layer reading an image-shaped bottom (C, H, W) gives one C x H x W
    picture per output unit (the "filters" of an MLP's first layer).
    """
    if name not in net.params:
        raise NetdefError(f'the net has no layer "{name}" with weights. Layers with weights: {", ".join(net.params)}')
    w = backend.to_numpy(net.params[name][0].data)
    if w.ndim == 4:
        return w
    rec = net.records[net.layer_names.index(name)]
    bottom = rec.bottom[0].shape[1:] if rec.bottom else ()
    if w.ndim == 2 and len(bottom) == 3 and int(numpy.prod(bottom)) == w.shape[1]:
        return w.reshape((w.shape[0],) + tuple(bottom))
    raise NetdefError(
        f'layer "{name}" has weights of shape {w.shape}, which are not image filters: draw a convolution, or an '
        f"InnerProduct that reads an image (its bottom is {rec.bottom[0].shape if rec.bottom else 'missing'})"
    )


def load_input(path: str, shape: Sequence[int], scale: float = 1.0) -> numpy.ndarray:
    """An image (PNG/JPEG via Pillow, or .npy) as one (1, C, H, W) input of ``shape``.

    Image files are read with values in [0, 1] (RGB turned to Caffe's BGR), resized to the
    input's height and width, and multiplied by ``scale``. A ``.npy`` array is used as
    stored: (C, H, W), (H, W) or (1, C, H, W) of the input's size.
    """
    c, h, w = (tuple(shape[1:]) + (1, 1, 1))[:3]
    if path.endswith(".npy"):
        x = numpy.load(path).astype(numpy.float32)
        if x.size != c * h * w:
            raise NetdefError(f"{path} holds {x.shape}, which does not fit the input's {tuple(shape[1:])}")
        return x.reshape((1,) + tuple(shape[1:])) * scale
    from ..io.preprocessing import load_image, resize_image

    image = load_image(path, color=c == 3)
    if image.shape[:2] != (h, w):
        image = resize_image(image, (h, w))
    x = image.transpose(2, 0, 1)
    if c == 3:
        x = x[::-1]
    return x[None].astype(numpy.float32) * scale


def activations(
    model: str,
    blobs: Sequence[str],
    *,
    weights: str | None = None,
    image: str | None = None,
    sample: int | None = None,
    scale: float = 1.0,
    phase: str = "TEST",
    level: int = 0,
    stages: Sequence[str] = (),
) -> dict[str, numpy.ndarray]:
    """One sample's values of every blob in ``blobs``: ``{name: array without the batch axis}``.

    The sample is ``image`` fed to the net's first input blob, or number ``sample`` of the
    net's own data (its data layers run until that sample's batch).
    """
    if (image is None) == (sample is None):
        raise NetdefError("activations need one input: an image file (--image) or a data sample (--sample K)")
    net = open_net(model, TEST if phase == "TEST" else TRAIN, weights, level, stages)
    missing = [b for b in blobs if b not in net.blobs]
    if missing:
        raise NetdefError(f"the net has no blob {', '.join(map(repr, missing))}. Blobs: {', '.join(net.blobs)}")
    if image is not None:
        if not net.inputs:
            raise NetdefError(
                "--image needs a net with an Input layer (a deploy.prototxt); for a net reading its own data "
                "use --sample K"
            )
        name = net.inputs[0]
        shape = net.blobs[name].shape
        x = load_input(image, shape, scale)
        net.blobs[name].reshape(x.shape)
        net.reshape()
        net.forward(**{name: x})
        index = 0
    else:
        if sample < 0:
            raise NetdefError(f"--sample must be 0 or more. Received: {sample}")
        net.forward()
        batch = net.blobs[blobs[0]].shape[0] if net.blobs[blobs[0]].shape else 1
        for _ in range(sample // max(batch, 1)):
            net.forward()
        index = sample % max(batch, 1)
    return {b: backend.to_numpy(net.blobs[b].data)[index].copy() for b in blobs}


def visualize(
    model: str,
    output: str,
    *,
    weights: str | None = None,
    layer: str | None = None,
    blobs: Sequence[str] = (),
    image: str | None = None,
    sample: int | None = None,
    scale: float = 1.0,
    phase: str = "TEST",
    level: int = 0,
    stages: Sequence[str] = (),
) -> list[str]:
    """Draw filters (no ``blobs``) or activations of ``blobs`` to PNG files; the paths written.

    Filters go to ``output``. Activations of one blob go to ``output``; of several, to
    ``<output stem>_<blob>.png`` each.
    """
    if not output.lower().endswith(".png"):
        raise NetdefError(f"visualize writes PNG files: give an output name ending in .png. Received: {output!r}")
    if not blobs:
        net = open_net(model, TEST if phase == "TEST" else TRAIN, weights, level, stages)
        name = layer or first_conv_layer(net)
        filters = layer_filters(net, name)
        write_png(output, filter_grid(filters))
        log.info('Filters of layer "%s" %s drawn to %s', name, filters.shape, output)
        return [output]
    values = activations(
        model, blobs, weights=weights, image=image, sample=sample, scale=scale, phase=phase, level=level, stages=stages
    )
    stem = output[: -len(".png")]
    written = []
    for name, value in values.items():
        path = output if len(values) == 1 else f"{stem}_{name.replace(os.sep, '_')}.png"
        write_png(path, activation_grid(value))
        log.info('Activations of blob "%s" %s drawn to %s', name, value.shape, path)
        written.append(path)
    return written


def cmd_visualize(args: argparse.Namespace) -> int:
    """Run ``netdef visualize`` from parsed arguments; prints the files written."""
    blobs = [b for spec in args.blob for b in spec.split(",") if b]
    for path in visualize(
        args.model,
        args.output,
        weights=args.weights,
        layer=args.layer,
        blobs=blobs,
        image=args.image,
        sample=args.sample,
        scale=args.scale,
        phase=args.phase,
        level=args.level,
        stages=split_stages(args.stage),
    ):
        print(path)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef visualize``."""
    p = subparsers.add_parser(
        "visualize",
        help="draw first-layer filters or activation maps as PNG",
        description="Without --blob: draw a convolution layer's filters (default: the first) as an image grid. "
        "With --blob: draw those blobs' activation maps for one input, an image (--image, a deploy net) or "
        "sample K of the net's test data (--sample K).",
        epilog="examples: netdef visualize models/digits/train_val.prototxt --weights digits.caffemodel "
        "-o conv1.png;  netdef visualize models/digits/train_val.prototxt --weights digits.caffemodel "
        "--blob conv1,conv2 --sample 0 -o act.png",
    )
    p.add_argument("model", help="net definition file")
    p.add_argument("--weights", "-weights", help="trained weights (.caffemodel or .h5)")
    p.add_argument("-o", "--output", default="visualize.png", help="PNG file to write (default visualize.png)")
    p.add_argument("--layer", help="layer whose filters to draw (default: the first convolution)")
    p.add_argument("--blob", action="append", default=[], help="blob(s) whose activations to draw (repeatable, a,b)")
    p.add_argument("--image", help="input image (.png/.jpg via Pillow, or .npy) for a net with an Input layer")
    p.add_argument("--sample", type=int, help="use sample K of the net's own TEST data as input")
    p.add_argument("--scale", type=float, default=1.0, help="multiply an input image (values 0..1) by this")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST", help="net phase (default TEST)")
    p.add_argument("--level", type=int, default=0, help="net state level for include/exclude rules")
    p.add_argument("--stage", help="comma-separated net state stages for include/exclude rules")
    p.set_defaults(func=cmd_visualize)
    return p


__all__ = [
    "activation_grid",
    "activations",
    "add_parser",
    "cmd_visualize",
    "encode_png",
    "filter_grid",
    "layer_filters",
    "load_input",
    "tile",
    "visualize",
    "write_png",
]
