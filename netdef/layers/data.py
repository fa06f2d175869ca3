"""Data layers that read databases, image lists and R-CNN window files: Data, ImageData, WindowData."""

from __future__ import annotations

import functools
import logging
import os

import numpy

from .. import backend
from ..data.prefetch import Batch, PrefetchingReader, build_batch
from ..data.sources import decode_datum, open_database
from ..data.transform import DataTransformer
from ..errors import DataSourceError, NetdefError, ShapeMismatchError, WeightsFileError
from ..io.paths import resolve_path
from ..io.preprocessing import load_image, resize_image
from .base import Layer, register_layer

log = logging.getLogger("netdef")

_LEGACY_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _warn_ignored_fields(layer: Layer, message, field: str, used: tuple[str, ...] = ()) -> None:
    """Caffe's layers read only transform_param; say so when the pre-transform_param fields are set."""
    names = [n for n in _LEGACY_TRANSFORM_FIELDS if n not in used and message.HasField(n)]
    if names:
        log.warning(
            "%s: %s.{%s} are ignored, as in Caffe; set them in transform_param",
            layer.describe(),
            field,
            ", ".join(names),
        )


def source_and_batch_size(layer: Layer, field: str, source_is: str):
    """``layer.param.<field>`` once its ``source`` is given and its ``batch_size`` is positive."""
    p = getattr(layer.param, field)
    if not p.source:
        raise layer.error(f"{field}.source is required ({source_is})")
    if p.batch_size <= 0:
        raise layer.error(f"{field}.batch_size must be positive. Received: {p.batch_size}")
    return p


def image_list_param(layer: Layer, source_is: str):
    """``layer.param.image_data_param`` once ``source_and_batch_size`` accepts it and its
    ``new_height`` / ``new_width`` are both set or both 0 (``ImageData``, ``ImageSegData``)."""
    p = source_and_batch_size(layer, "image_data_param", source_is)
    if bool(p.new_height) != bool(p.new_width):
        raise layer.error(
            "image_data_param needs new_height and new_width both set or both 0. Received: "
            f"new_height {p.new_height}, new_width {p.new_width}"
        )
    return p


def open_image_list(layer: Layer, p) -> None:
    """Reads the list file ``p.source`` with ``layer._read_list(p.root_folder)`` and sets
    ``layer.source``, ``lines``, ``order`` (shuffled when ``layer.shuffle``) and ``pos``
    (after a ``rand_skip`` draw), as ``ImageData`` and ``ImageSegData`` start."""
    layer.source = resolve_path(p.source)
    if not os.path.isfile(layer.source):
        raise layer.error(f"image list file not found: {p.source} (looked in {os.getcwd()})", DataSourceError)
    layer.lines = layer._read_list(p.root_folder)
    if not layer.lines:
        raise layer.error(f"image list {layer.source} names no images", DataSourceError)
    layer.order = numpy.arange(len(layer.lines))
    if layer.shuffle:
        layer.rng.numpy.shuffle(layer.order)
    layer.pos = 0
    if p.rand_skip:
        skip = int(layer.rng.numpy.integers(0, p.rand_skip))
        if skip >= len(layer.lines):
            raise layer.error(
                f"rand_skip drew {skip} but {layer.source} lists only {len(layer.lines)} images. "
                f"Valid: rand_skip <= {len(layer.lines)}"
            )
        layer.pos = skip


def saved_image_order(layer: Layer, state: dict) -> numpy.ndarray:
    """The image order of a saved read state (``get_state``), once it fits the list ``layer`` read."""
    order = numpy.asarray(state["order"], dtype=numpy.int64)
    if order.shape != layer.order.shape:
        raise layer.error(
            f"saved read state is for {order.size} images but {layer.source} lists {layer.order.size}",
            DataSourceError,
        )
    return order


class ShardedReader:
    """What a data layer needs to read its own share in data-parallel training (``shard``).

    In a run over ``size`` ranks every rank walks the same sample order, and of every
    ``size * batch_size`` samples rank ``rank`` reads block ``rank`` of ``batch_size``: the
    shares are disjoint, and together they are what one process with batch ``size *
    batch_size`` would read. Shuffles then draw from ``order_rng``, a generator that is
    the same on every rank, so the ranks keep agreeing on the order; its state is part of
    the layer's read state (``get_state``). Without ``shard`` a layer reads everything.
    """

    shard_rank = 0
    shard_size = 1
    order_rng: numpy.random.Generator | None = None

    def shard(self, rank: int, size: int, order_rng: numpy.random.Generator | None = None) -> None:
        """Read share ``rank`` of ``size`` from now on; shuffle with ``order_rng`` (the same on every rank)."""
        if isinstance(rank, bool) or isinstance(size, bool) or not 0 <= int(rank) < int(size):
            raise self.error(f"shard needs 0 <= rank < size. Received: rank {rank}, size {size}")
        self.shard_rank, self.shard_size = int(rank), int(size)
        self.order_rng = order_rng

    def shuffler(self) -> numpy.random.Generator:
        """The generator shuffles draw from: the shared order stream when sharded, else the layer's own."""
        return self.order_rng if self.order_rng is not None else self.rng.numpy

    def order_state(self) -> dict:
        """``{"order_rng": state}`` when sharded with an order stream, else nothing (for ``get_state``)."""
        return {"order_rng": self.order_rng.bit_generator.state} if self.order_rng is not None else {}

    def set_order_state(self, state: dict) -> None:
        """Continue the order stream from a state ``order_state`` saved (ignored when not sharded)."""
        saved = state.get("order_rng")
        if saved is None or self.order_rng is None:
            return
        try:
            self.order_rng.bit_generator.state = saved
        except (TypeError, ValueError, KeyError, OverflowError) as err:
            raise self.error(f"saved data-order stream does not fit: {err}", WeightsFileError) from None


def _image_as_pixels(
    layer: Layer, path: str, color: bool, where: str, new_size: tuple[int, int] | None = None
) -> numpy.ndarray:
    """An image file as a K x H x W array of 0..255 pixel values in OpenCV's BGR order (Caffe's view of it).

    A ``.npy`` array (H x W x K) is taken as stored: no rescaling, no channel swap.
    ``new_size`` = (height, width) resizes bilinearly, rounding to whole pixel values as
    OpenCV does for 8-bit images.
    """
    try:
        img = load_image(path, color=color)
    except NetdefError as err:
        raise layer.error(f"cannot load image {path} ({where}): {err}", DataSourceError) from None
    raw = path.lower().endswith(".npy")
    if not raw:
        img = numpy.rint(img * 255)
        if img.shape[2] == 3:
            img = img[:, :, ::-1]
    if new_size is not None and img.shape[:2] != new_size:
        img = resize_image(img, new_size)
        if not raw:
            img = numpy.clip(numpy.rint(img), 0, 255)
    dtype = numpy.float32 if raw else numpy.uint8
    return numpy.ascontiguousarray(img.transpose(2, 0, 1), dtype=dtype)


@register_layer("Data")
class DataLayer(PrefetchingReader, ShardedReader, Layer):
    """Caffe type ``Data``: batches of ``Datum`` records from an LMDB or LevelDB database.

    ``data_param``: ``source`` (the database folder, relative to the working directory),
    ``backend`` (LEVELDB, Caffe's default, or LMDB), ``batch_size``, ``rand_skip`` (start
    after a random number of records in [0, rand_skip)), ``prefetch`` (batches read ahead in a
    background thread, Caffe's default 4; 0: read in forward; see :class:`~netdef.data.prefetch.PrefetchingReader`).
    ``transform_param`` crops, mirrors, subtracts a mean and scales
    (:class:`netdef.data.DataTransformer`); ``force_color`` / ``force_gray`` apply to encoded
    (JPEG/PNG) datums.

    Records are read in key order and wrap around after the last one. The data shape
    comes from the first datum of each batch (as in Caffe, all datums of a batch must agree).
    Sharded (data-parallel training), rank ``r`` of ``N`` skips the other ranks' blocks of
    ``batch_size`` records without decoding them.

    Tops: data (N, C, H, W) with H = W = crop_size when cropping; optional label (N,).
    """

    exact_num_bottom = 0
    min_num_top = 1
    max_num_top = 2

    def setup(self, bottom, top):
        p = source_and_batch_size(self, "data_param", "an LMDB or LevelDB database folder")
        _warn_ignored_fields(self, p, "data_param")
        self.batch_size = int(p.batch_size)
        self.transformer = DataTransformer(self.param.transform_param, self.phase, self.error, rng=self.rng.numpy)
        self.source = resolve_path(p.source)
        self.reader = open_database(self.source, p.backend, self.error)
        if p.rand_skip:
            skip = int(self.rng.numpy.integers(0, p.rand_skip))
            log.info("%s: skipping the first %d records", self.describe(), skip)
            self.reader.skip(skip)
        sample, _ = self._decode(self.reader.key(), self.reader.value())
        self.shape = self.transformer.output_shape((self.batch_size,) + sample.shape)
        #: the read position after the last batch forward took (the prefetcher reads on from it)
        self.position = self.reader.get_state()
        self._start_prefetch()

    def _decode(self, key: bytes, value: bytes) -> tuple[numpy.ndarray, int]:
        t = self.transformer
        try:
            return decode_datum(value, t.force_color, t.force_gray)
        except DataSourceError as err:
            raise self.error(f"{self.source}, record {key!r}: {err}", DataSourceError) from None

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    def _plan(self, first: bool):
        return self._read_batch  # no random draw decides a batch: all can be planned ahead

    def _read_batch(self) -> Batch:
        """The next batch from the cursor (in the prefetch thread), and the position after it."""
        self.reader.skip(self.shard_rank * self.batch_size)
        records = self.reader.read(self.batch_size)
        self.reader.skip((self.shard_size - 1 - self.shard_rank) * self.batch_size)
        return build_batch(self.reader.get_state(), self._build, records)

    def _build(self, records: list) -> tuple[numpy.ndarray, numpy.ndarray]:
        decoded = [self._decode(k, v) for k, v in records]
        x = self.transformer.stack([d[0] for d in decoded], [f"{self.source} record {k!r}" for k, _ in records])
        return self.transformer.prepare(x, self.dtype), numpy.array([d[1] for d in decoded], dtype=self.dtype)

    def _taken(self, position) -> None:
        self.position = position

    def _rewind(self) -> None:
        super()._rewind()
        if self.reader.get_state() != self.position:
            self.reader.set_state(self.position)

    def get_state(self) -> dict:
        """The database read position after the batches forward took: a resumed run continues with the same records."""
        return dict(self.position)

    def set_state(self, state: dict) -> None:
        self.prefetcher.discard()
        self.reader.set_state(state)
        self.position = self.reader.get_state()


@register_layer("ImageData")
class ImageDataLayer(PrefetchingReader, ShardedReader, Layer):
    """Caffe type ``ImageData``: batches of image files listed with their labels in a text file.

    ``image_data_param``: ``source`` (lines ``<path> <integer label>``; the path may hold
    spaces, the label follows the last blank or tab; blank lines and ``#`` lines are skipped),
    ``root_folder`` (prepended to every path as a plain string, as in Caffe), ``batch_size``,
    ``shuffle`` (a new order at set-up and after every pass), ``new_height`` / ``new_width``
    (bilinear resize, both or neither), ``is_color`` (3 channels, else 1), ``rand_skip``.
    ``transform_param`` as for ``Data``. ``data_param.prefetch`` as for ``Data`` (Caffe reads it
    for ImageData too): images are loaded ahead in a background thread, except that with
    ``shuffle`` the batch that ends a pass is loaded by its own forward, after the reshuffle
    it draws (so the net's random draws keep their order).

    Pixels are 0..255 in BGR order, as OpenCV gives them to Caffe. Paths are taken relative
    to the working directory (Caffe's rule), then relative to the folder of the list file.
    A ``.npy`` file (H x W x K) is read as stored, without rescaling or channel swap.
    The resize rounds to whole pixel values like OpenCV's 8-bit resize; OpenCV's fixed-point
    arithmetic can differ from it by one grey level.
    Sharded (data-parallel training), each rank loads only its own block of every
    ``N * batch_size`` images of the (shared) order.

    Tops: data (N, C, H, W) and label (N,).
    """

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = image_list_param(self, 'a text file of "<image path> <label>" lines')
        _warn_ignored_fields(self, p, "image_data_param")
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.color = bool(p.is_color)
        self.new_size = (int(p.new_height), int(p.new_width)) if p.new_height else None
        self.transformer = DataTransformer(self.param.transform_param, self.phase, self.error, rng=self.rng.numpy)
        open_image_list(self, p)
        sample = self._load(int(self.order[self.pos]))
        self.shape = self.transformer.output_shape((self.batch_size,) + sample.shape)
        #: ``pos`` is after the last batch forward took, ``ahead`` after the last one planned
        self.ahead = self.pos
        self._start_prefetch()

    def _read_list(self, root_folder: str) -> list[tuple[str, int, int]]:
        lines = []
        with open(self.source) as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.rsplit(None, 1)
                try:
                    name, value = parts[0], int(parts[1])
                except (IndexError, ValueError):
                    name = value = None
                if name is None:
                    raise self.error(
                        f'{self.source} line {lineno}: expected "<image path> <integer label>". Received: {line!r}',
                        DataSourceError,
                    )
                lines.append((resolve_path(root_folder + name, self.source), value, lineno))
        return lines

    def _load(self, index: int) -> numpy.ndarray:
        path, _, lineno = self.lines[index]
        return _image_as_pixels(self, path, self.color, f"{self.source} line {lineno}", self.new_size)

    def _next_indices(self) -> list[int]:
        """This rank's images of the next ``shard_size * batch_size`` in the order (all of them unsharded)."""
        picked = []
        first = self.shard_rank * self.batch_size
        for k in range(self.shard_size * self.batch_size):
            if first <= k < first + self.batch_size:
                picked.append(int(self.order[self.ahead]))
            self.ahead += 1
            if self.ahead >= len(self.lines):
                self.ahead = 0
                if self.shuffle:
                    self.shuffler().shuffle(self.order)
        return picked

    def _plan(self, first: bool):
        if not first and self.shuffle and self.ahead + self.shard_size * self.batch_size >= len(self.lines):
            return None  # the batch ends a pass: the forward that needs it draws the reshuffle
        picked = self._next_indices()
        return functools.partial(build_batch, self.ahead, self._build, picked)

    def _build(self, picked: list[int]) -> tuple[numpy.ndarray, numpy.ndarray]:
        # reading image files is per sample by nature; the transform runs on the whole batch
        samples = [self._load(i) for i in picked]
        names = [f"{self.lines[i][0]} ({self.source} line {self.lines[i][2]})" for i in picked]
        x = self.transformer.prepare(self.transformer.stack(samples, names), self.dtype)
        return x, numpy.array([self.lines[i][1] for i in picked], dtype=self.dtype)

    def _taken(self, position) -> None:
        self.pos = position

    def _rewind(self) -> None:
        super()._rewind()
        self.ahead = self.pos

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        top[1].reshape((self.batch_size,))

    def get_state(self) -> dict:
        """Position after the batches forward took and the (shuffled) order: a resumed run sees the same images."""
        return {"pos": int(self.pos), "order": self.order.tolist(), **self.order_state()}

    def set_state(self, state: dict) -> None:
        order = saved_image_order(self, state)
        self.prefetcher.discard()
        self.set_order_state(state)
        self.order = order
        self.pos = self.ahead = int(state["pos"])


def _c_round(v) -> int:
    """C's round(): halves go away from zero (Python's round() goes to even)."""
    return int(numpy.sign(v) * numpy.floor(numpy.abs(v) + 0.5))


class _Tokens:
    """The whitespace-separated tokens of a text file, taken one at a time with their line numbers."""

    def __init__(self, path: str, error):
        self.path, self.error = path, error
        self.tokens: list[tuple[str, int]] = []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                self.tokens.extend((tok, lineno) for tok in line.split())
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def take(self, what: str, kind=str):
        """The next token converted by ``kind`` and its line; an error naming ``what`` was expected."""
        if self.pos >= len(self.tokens):
            raise self.error(f"{self.path} ends early: expected {what}", DataSourceError)
        tok, lineno = self.tokens[self.pos]
        self.pos += 1
        try:
            return kind(tok), lineno
        except ValueError:
            raise self.error(
                f"{self.path} line {lineno}: expected {what}. Received: {tok!r}", DataSourceError
            ) from None


@register_layer("WindowData")
class WindowDataLayer(Layer):
    """Caffe type ``WindowData``: R-CNN training batches of image windows warped to crop_size.

    ``window_data_param.source`` is a window file of records, separated by whitespace::

        # <image index>
        <image path>
        <channels> <height> <width>
        <number of windows>
        <class label> <overlap> <x1> <y1> <x2> <y2>     (one line per window, inclusive 0-based pixels)

    A window with ``overlap >= fg_threshold`` is foreground (its label must be > 0); one with
    ``overlap < bg_threshold`` is background (label 0); others are dropped. Every batch takes
    ``int(batch_size * fg_fraction)`` foreground windows and the rest background windows,
    drawn at random with replacement (background ones first in the batch). Each window is cut
    from its image (read in colour, BGR, 0..255), warped bilinearly to crop_size x crop_size
    (``crop_mode: "warp"``) or first grown to a square (``"square"``); ``context_pad`` grows
    the region so that that many pixels of context surround the window after warping. Where
    the grown region leaves the image, the output stays 0. With ``transform_param.mirror``
    windows are flipped left-right with probability 1/2. Then ``(pixel - mean) * scale`` with
    ``transform_param.mean_value`` or the centre crop_size region of ``mean_file`` (Caffe's
    offsets: both taken from the mean's width; the mean is not flipped).

    Caffe reads ``crop_size``, ``mirror`` and the mean from ``transform_param`` but ``scale``
    from ``window_data_param``; netdef does too, and uses ``transform_param.scale`` when
    ``window_data_param.scale`` is not set (Caffe's V1 upgrade moves the scale there, after which
    Caffe itself ignores it). Image paths: ``root_folder`` + path, relative to the working
    directory, then to the window file's folder.

    Simplifications: sampling draws through netdef's generator (arrays per batch), so batches
    are Caffe-shaped and Caffe-distributed but not Caffe's exact windows; images declared with 1
    channel are read in grey (Caffe reads colour whatever the file says); ``cache_images``
    keeps decoded images in memory; OpenCV's fixed-point 8-bit resize may differ by one grey
    level; a window that does not fit the image (without context padding) is an error rather
    than OpenCV's crash. Windows are warped one at a time (each has its own size). No
    prefetching: every batch is drawn from the net's random stream by the forward that needs it.

    Tops: data (N, C, crop_size, crop_size), C from the window file (its last image), and
    label (N,).
    """

    exact_num_bottom = 0
    exact_num_top = 2

    # columns of self.fg / self.bg
    IMAGE, LABEL, OVERLAP, X1, Y1, X2, Y2 = range(7)

    def setup(self, bottom, top):
        p = source_and_batch_size(self, "window_data_param", "an R-CNN window file")
        tp = self.param.transform_param
        self.crop_size = int(tp.crop_size)
        if self.crop_size <= 0:
            raise self.error(
                f"WindowData needs transform_param.crop_size > 0 (the warped window size). Received: {self.crop_size}"
            )
        if p.crop_mode not in ("warp", "square"):
            raise self.error(f'window_data_param.crop_mode must be "warp" or "square". Received: "{p.crop_mode}"')
        self.context_pad = int(p.context_pad)
        if 2 * self.context_pad >= self.crop_size:
            raise self.error(
                f"window_data_param.context_pad must be less than crop_size / 2 "
                f"({self.crop_size / 2:g}). Received: {self.context_pad}"
            )
        if not 0 <= p.fg_fraction <= 1:
            raise self.error(f"window_data_param.fg_fraction must be in [0, 1]. Received: {p.fg_fraction:g}")
        _warn_ignored_fields(self, p, "window_data_param", used=("scale",))
        self.batch_size = int(p.batch_size)
        self.square = p.crop_mode == "square"
        self.mirror = bool(tp.mirror)
        self.scale = float(p.scale if p.HasField("scale") else tp.scale)
        self.cache = {} if p.cache_images else None
        self.source = resolve_path(p.source)
        if not os.path.isfile(self.source):
            raise self.error(f"window file not found: {p.source} (looked in {os.getcwd()})", DataSourceError)
        self.images, fg, bg, self.channels = self._read_windows(p)
        self.fg = numpy.asarray(fg, dtype=numpy.float64).reshape(-1, 7)
        self.bg = numpy.asarray(bg, dtype=numpy.float64).reshape(-1, 7)
        self.num_fg = int(numpy.float32(self.batch_size) * numpy.float32(p.fg_fraction))
        for kind, windows, wanted in (
            ("foreground", self.fg, self.num_fg),
            ("background", self.bg, self.batch_size - self.num_fg),
        ):
            if wanted and not len(windows):
                raise self.error(
                    f"{self.source} has no {kind} windows (fg_threshold {p.fg_threshold:g}, bg_threshold "
                    f"{p.bg_threshold:g}) but each batch takes {wanted}",
                    DataSourceError,
                )
        log.info(
            "%s: %d images, %d foreground and %d background windows",
            self.describe(),
            len(self.images),
            len(self.fg),
            len(self.bg),
        )
        self._setup_mean(tp)

    def _setup_mean(self, tp) -> None:
        # the transformer checks mean_file/mean_value and loads the mean image; WindowData applies it itself
        t = DataTransformer(tp, self.phase, self.error, rng=self.rng.numpy)
        c, crop = self.channels, self.crop_size
        self.mean_image, self.mean_values, self.mean_off = t.mean_image, t.mean_values, 0
        if t.mean_image is not None:
            mc, mh, mw = t.mean_image.shape
            self.mean_off = (mw - crop) // 2
            if mc != c or mw < crop or mh < self.mean_off + crop:
                raise self.error(
                    f"the mean_file image must have {c} channels and be at least crop_size ({crop}) wide and "
                    f"{max(crop, self.mean_off + crop)} high. Received: mean shape {t.mean_image.shape}",
                    ShapeMismatchError,
                )
        if t.mean_values is not None and t.mean_values.size not in (1, c):
            raise self.error(
                f"transform_param needs 1 mean_value or one per channel ({c}). Received: {t.mean_values.size}"
            )

    def _read_windows(self, p):
        tokens = _Tokens(self.source, self.error)
        if not tokens.more():
            raise self.error(f"window file {self.source} is empty", DataSourceError)
        images, windows, refs = [], {"fg": [], "bg": []}, []
        channels = 0
        while tokens.more():
            channels = self._read_image_record(tokens, p, images, windows, refs)
        # Caffe looks windows' images up by the index written in the file
        for image_index, lineno in refs:
            if not 0 <= image_index < len(images):
                raise self.error(
                    f"{self.source} line {lineno}: the window's image index {image_index} is not one "
                    f"of the {len(images)} images (valid: 0 .. {len(images) - 1})",
                    DataSourceError,
                )
        if channels not in (1, 3):
            raise self.error(f"{self.source}: images must have 1 or 3 channels. Received: {channels}", DataSourceError)
        return images, windows["fg"], windows["bg"], channels

    def _read_image_record(self, tokens: _Tokens, p, images: list, windows: dict, refs: list) -> int:
        """One ``# index path channels height width count`` record and its windows; returns its channels."""
        mark, lineno = tokens.take('"#" (the start of an image record)')
        if mark != "#":
            raise self.error(
                f'{self.source} line {lineno}: expected "#" (the start of an image record). Received: {mark!r}',
                DataSourceError,
            )
        image_index, _ = tokens.take("an image index", int)
        path, path_line = tokens.take("an image path")
        channels, _ = tokens.take("the image's channels", int)
        tokens.take("the image's height", int)
        tokens.take("the image's width", int)
        count, count_line = tokens.take("the number of windows", int)
        if count < 0:
            raise self.error(
                f"{self.source} line {count_line}: the number of windows must be >= 0. Received: {count}",
                DataSourceError,
            )
        images.append((resolve_path(p.root_folder + path, self.source), path_line))
        for _ in range(count):
            kind, row, lineno = self._read_window(tokens, p, image_index)
            if kind is not None:
                windows[kind].append(row)
                refs.append((image_index, lineno))
        return channels

    def _read_window(self, tokens: _Tokens, p, image_index: int) -> tuple[str | None, tuple, int]:
        """One window: ("fg" or "bg", its row of self.fg/self.bg, its line); kind None between the thresholds."""
        label, lineno = tokens.take("a window's class label", int)
        overlap, _ = tokens.take("a window's overlap", float)
        x1, _ = tokens.take("a window's x1", int)
        y1, _ = tokens.take("a window's y1", int)
        x2, _ = tokens.take("a window's x2", int)
        y2, _ = tokens.take("a window's y2", int)
        if x2 < x1 or y2 < y1:
            raise self.error(
                f"{self.source} line {lineno}: a window needs x1 <= x2 and y1 <= y2. Received: {x1} {y1} {x2} {y2}",
                DataSourceError,
            )
        if overlap >= p.fg_threshold:
            if label <= 0:
                raise self.error(
                    f"{self.source} line {lineno}: a foreground window (overlap {overlap:g} "
                    f">= fg_threshold {p.fg_threshold:g}) needs a class label > 0. "
                    f"Received: {label}",
                    DataSourceError,
                )
            return "fg", (image_index, label, overlap, x1, y1, x2, y2), lineno
        if overlap < p.bg_threshold:
            return "bg", (image_index, 0, 0, x1, y1, x2, y2), lineno
        return None, (), lineno

    def _image(self, index: int) -> numpy.ndarray:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        path, lineno = self.images[index]
        img = _image_as_pixels(self, path, self.channels == 3, f"{self.source} line {lineno}")
        if self.cache is not None:
            self.cache[index] = img
        return img

    def _region(self, window, width: int, height: int, flip: bool):
        """Caffe's window geometry: the image region to cut, the size to warp it to and the padding."""
        x1, y1, x2, y2 = (int(window[k]) for k in (self.X1, self.Y1, self.X2, self.Y2))
        crop = self.crop_size
        size_h = size_w = crop
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.square:
            # Caffe does this geometry in the net's float type; so does netdef
            f = self.dtype.type
            context_scale = f(crop) / f(crop - 2 * self.context_pad)
            half_h = f(y2 - y1 + 1) / f(2)
            half_w = f(x2 - x1 + 1) / f(2)
            cx, cy = f(x1) + half_w, f(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _c_round(cx - half_w * context_scale), _c_round(cx + half_w * context_scale)
            y1, y2 = _c_round(cy - half_h * context_scale), _c_round(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - width + 1), max(0, y2 - height + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            if x1 > x2 or y1 > y2:
                return None
            scale_x, scale_y = f(crop) / f(unclipped_w), f(crop) / f(unclipped_h)
            size_w = _c_round(f(x2 - x1 + 1) * scale_x)
            size_h = _c_round(f(y2 - y1 + 1) * scale_y)
            pad_h = _c_round(f(pad_y1) * scale_y)
            # the padding is mirrored with the window
            pad_w = _c_round(f(pad_x2 if flip else pad_x1) * scale_x)
            size_h = min(size_h, crop - pad_h)
            size_w = min(size_w, crop - pad_w)
        elif x1 < 0 or y1 < 0 or x2 >= width or y2 >= height:
            return None
        return (y1, y2, x1, x2), (size_h, size_w), (pad_h, pad_w)

    def reshape(self, bottom, top):
        top[0].reshape((self.batch_size, self.channels, self.crop_size, self.crop_size))
        top[1].reshape((self.batch_size,))

    def forward(self, bottom, top):
        rng = self.rng.numpy
        n_bg = self.batch_size - self.num_fg
        picks = [
            self.bg[rng.integers(0, len(self.bg), size=n_bg)] if n_bg else self.bg[:0],
            self.fg[rng.integers(0, len(self.fg), size=self.num_fg)] if self.num_fg else self.fg[:0],
        ]
        windows = numpy.concatenate(picks)
        flips = rng.integers(0, 2, size=self.batch_size).astype(bool) if self.mirror else [False] * self.batch_size
        dtype = top[0].dtype
        scale = dtype.type(numpy.float32(self.scale))
        out = numpy.zeros((self.batch_size, self.channels, self.crop_size, self.crop_size), dtype=dtype)
        # each window has its own image and warp size, so windows are cut and warped one at a time
        for i, (window, flip) in enumerate(zip(windows, flips)):
            img = self._image(int(window[self.IMAGE]))
            region = self._region(window, img.shape[2], img.shape[1], flip)
            if region is None:
                path, _ = self.images[int(window[self.IMAGE])]
                raise self.error(
                    f"window ({', '.join(str(int(v)) for v in window[self.X1 :])}) of image {path} does not fit "
                    f"the image ({img.shape[2]} x {img.shape[1]}); without context_pad or square mode a window "
                    "must lie inside its image",
                    DataSourceError,
                )
            (y1, y2, x1, x2), (size_h, size_w), (pad_h, pad_w) = region
            if size_h < 1 or size_w < 1:
                continue  # rounding left no room for the window itself: only padding
            roi = img[:, y1 : y2 + 1, x1 : x2 + 1].transpose(1, 2, 0)
            patch = numpy.clip(numpy.rint(resize_image(roi, (size_h, size_w))), 0, 255).transpose(2, 0, 1)
            if flip:
                patch = patch[:, :, ::-1]
            patch = patch.astype(dtype)
            if self.mean_image is not None:
                r0, c0 = self.mean_off + pad_h, self.mean_off + pad_w
                patch -= self.mean_image[:, r0 : r0 + size_h, c0 : c0 + size_w].astype(dtype)
            elif self.mean_values is not None:
                patch -= numpy.broadcast_to(self.mean_values.astype(dtype), (self.channels,))[:, None, None]
            out[i, :, pad_h : pad_h + size_h, pad_w : pad_w + size_w] = patch * scale
        top[0].data = backend.asarray(out, top[0].xp, dtype)
        labels = windows[:, self.LABEL].astype(top[1].dtype)
        top[1].data = backend.asarray(labels, top[1].xp, top[1].dtype)

    def get_state(self) -> dict:
        """WindowData keeps no read position: its samples come from netdef's random generator, which
        the solver saves and restores. The window counts let a resume notice a changed window file."""
        return {"fg_windows": len(self.fg), "bg_windows": len(self.bg)}

    def set_state(self, state: dict) -> None:
        if (state.get("fg_windows"), state.get("bg_windows")) != (len(self.fg), len(self.bg)):
            log.warning(
                "%s: the window file %s changed since the snapshot (windows fg/bg %s/%s, now %d/%d)",
                self.describe(),
                self.source,
                state.get("fg_windows"),
                state.get("bg_windows"),
                len(self.fg),
                len(self.bg),
            )
