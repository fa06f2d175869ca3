"""Layer types of DeepLab v1 (``deeplab-public`` by Liang-Chieh Chen et al.; its V1-format nets,
e.g. in ``TheLegendAli/DeepLab-Context``): ImageSegData, Padding and MatWrite.

* ``ImageSegData`` (V1 ``IMAGE_SEG_DATA``) reads a list of image / segmentation-label pairs
  and crops, pads and mirrors both with the same draws.
* ``Padding`` (V1 ``PADDING``) pads both spatial axes with zeros, or crops them.
* ``MatWrite`` (V1 ``MAT_WRITE``) writes each bottom to a MATLAB (level 5) ``.mat`` file.

DeepLab's ``Interp`` is in :mod:`.pspnet`; its ``SegAccuracy`` (a TRAIN-phase metric) is not
implemented.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy

from ... import backend
from ...blob import Blob
from ...errors import DataSourceError, InvalidParameterError, ShapeMismatchError
from ...io.paths import resolve_path
from ...proto import netdef_pb2 as pb
from ..base import Layer
from ..data import _image_as_pixels, image_list_param, open_image_list, saved_image_order
from ..pooling import check_4d
from .registry import register_fork_layer

_LABEL_NONE, _LABEL_IMAGE, _LABEL_PIXEL = (
    pb.ImageDataParameter.NONE,
    pb.ImageDataParameter.IMAGE,
    pb.ImageDataParameter.PIXEL,
)


@register_fork_layer("ImageSegData", "DeepLab v1")
class ImageSegDataLayer(Layer):
    """Caffe type ``ImageSegData`` (DeepLab v1): images with per-pixel labels, from a list file.

    ``image_data_param``: ``source``, a text file of ``<image path> <label>`` lines (paths are
    whitespace-free and prefixed with ``root_folder`` as a plain string; blank lines are skipped);
    ``label_type`` says what ``<label>`` is: ``PIXEL``, a label image (read as one grey channel,
    so its grey values are the class ids, as in DeepLab's ``SegmentationClassAug``; a palette PNG
    becomes its luminance, as OpenCV reads it); ``IMAGE`` (the default), an integer that fills
    the whole label plane (a missing one counts as 0, as the fork's ``atoi("")`` gives);
    ``NONE``, no label (the plane holds ``ignore_label``). ``batch_size``, ``shuffle``,
    ``rand_skip``, ``is_color`` and ``new_height`` / ``new_width`` (bilinear, for the label too,
    as the fork resizes it) as for ``ImageData``; ``has_label`` is not read (as in the fork).

    ``transform_param`` (``mean_file`` is refused, as in the fork): an image smaller than
    ``crop_size`` is first padded at the bottom and right, the image with the mean pixel
    (``mean_value``; 0 without one) and the label with ``ignore_label`` (default 255); then a
    ``crop_size`` square is cut (at random in TRAIN, centred in TEST) and, with ``mirror``,
    flipped left-right with probability 1/2 in every phase, image and label alike; then
    ``data = (pixel - mean_value) * scale``. Without ``crop_size`` every image must have the first
    one's size.

    Tops (1 to 3; the fork always makes 3, adding unnamed ones): data ``(N, C, H, W)`` (BGR),
    label ``(N, 1, H, W)``, data_dim ``(N, 1, 1, 2)``: each image's height and width before
    padding, each at most the top's. Forward only.
    """

    exact_num_bottom = 0
    min_num_top = 1
    max_num_top = 3

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = image_list_param(self, 'a text file of "<image path> <label path>" lines')
        tp = self.param.transform_param
        if tp.mean_file:
            raise self.error(f'ImageSegData takes mean_value, not mean_file. Received: mean_file "{tp.mean_file}"')
        self.batch_size, self.color, self.shuffle = int(p.batch_size), bool(p.is_color), bool(p.shuffle)
        self.label_type, self.ignore_label = p.label_type, int(p.ignore_label)
        self.new_size = (int(p.new_height), int(p.new_width)) if p.new_height else None
        self.crop_size, self.scale, self.mirror = int(tp.crop_size), float(tp.scale), bool(tp.mirror)
        self.mean = numpy.asarray(tp.mean_value, dtype=numpy.float64)
        open_image_list(self, p)
        image, _ = self._load(int(self.order[self.pos]))
        self.channels = image.shape[0]
        if self.mean.size not in (0, 1, self.channels):
            raise self.error(
                f"transform_param needs 1 mean_value or one per channel ({self.channels}). Received: {self.mean.size}"
            )
        self.out_hw = (self.crop_size,) * 2 if self.crop_size else image.shape[1:]

    def _read_list(self, root_folder: str) -> list[tuple[str, str | int | None, int]]:
        lines = []
        with open(self.source) as f:
            for lineno, raw in enumerate(f, 1):
                parts = raw.split()
                if parts:
                    lines.append(
                        (
                            resolve_path(root_folder + parts[0], self.source),
                            self._label(parts, lineno, root_folder),
                            lineno,
                        )
                    )
        return lines

    def _label(self, parts: list[str], lineno: int, root_folder: str) -> str | int | None:
        """What a list line says about its label: a file path (PIXEL), an integer (IMAGE) or None (NONE)."""
        if self.label_type == _LABEL_NONE:
            return None
        if self.label_type == _LABEL_PIXEL:
            if len(parts) < 2:
                raise self.error(
                    f'{self.source} line {lineno}: label_type PIXEL needs "<image path> <label image path>". '
                    f"Received: {' '.join(parts)!r}",
                    DataSourceError,
                )
            return resolve_path(root_folder + parts[1], self.source)
        try:
            return int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise self.error(
                f'{self.source} line {lineno}: label_type IMAGE needs "<image path> <integer label>". '
                f"Received: {' '.join(parts)!r}",
                DataSourceError,
            ) from None

    def _load(self, index: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Image (C, H, W) and label plane (1, H, W) of list entry ``index``, as uint8 pixels."""
        path, label, lineno = self.lines[index]
        where = f"{self.source} line {lineno}"
        image = _image_as_pixels(self, path, self.color, where, self.new_size)
        if isinstance(label, str):
            seg = _image_as_pixels(self, label, False, where, self.new_size)
            if seg.shape[1:] != image.shape[1:]:
                raise self.error(
                    f"the label image must have its image's size {image.shape[1:]}. Received: {seg.shape[1:]} "
                    f"for {label} ({where})",
                    ShapeMismatchError,
                )
        else:
            # the fork fills an 8-bit plane, so the value saturates to 0..255
            fill = self.ignore_label if label is None else label
            seg = numpy.full((1, *image.shape[1:]), min(max(fill, 0), 255), dtype=numpy.uint8)
        return image, seg

    def _transform(self, image: numpy.ndarray, seg: numpy.ndarray, where: str):
        """Pad, crop, mirror, subtract the mean and scale one image and its label plane."""
        c, h, w = image.shape
        if c != self.channels:
            raise self.error(
                f"every image needs {self.channels} channels (the first one's). Received: {c} for {where}",
                ShapeMismatchError,
            )
        mean = numpy.broadcast_to(self.mean if self.mean.size else numpy.zeros(1), (c,))[:, None, None]
        x = image.astype(numpy.float64)
        if self.crop_size:
            ph, pw = max(self.crop_size - h, 0), max(self.crop_size - w, 0)
            if ph or pw:
                padded = numpy.empty((c, h + ph, w + pw))
                padded[...] = mean
                padded[:, :h, :w] = x
                x = padded
                seg = numpy.pad(seg, ((0, 0), (0, ph), (0, pw)), constant_values=min(max(self.ignore_label, 0), 255))
        elif (h, w) != self.out_hw:
            raise self.error(
                f"without crop_size every image needs the first one's size {self.out_hw}. Received: {(h, w)} for "
                f"{where}",
                ShapeMismatchError,
            )
        flip = bool(self.rng.numpy.integers(0, 2)) if self.mirror else False
        r = q = 0
        if self.crop_size and self.phase == pb.TRAIN:
            r = int(self.rng.numpy.integers(0, x.shape[1] - self.crop_size + 1))
            q = int(self.rng.numpy.integers(0, x.shape[2] - self.crop_size + 1))
        elif self.crop_size:
            r, q = (x.shape[1] - self.crop_size) // 2, (x.shape[2] - self.crop_size) // 2
        ch, cw = self.out_hw
        x, seg = x[:, r : r + ch, q : q + cw], seg[:, r : r + ch, q : q + cw]
        if flip:
            x, seg = x[..., ::-1], seg[..., ::-1]
        return (x - mean) * self.scale, seg, (min(ch, h), min(cw, w))

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        shapes = [
            (self.batch_size, self.channels, *self.out_hw),
            (self.batch_size, 1, *self.out_hw),
            (self.batch_size, 1, 1, 2),
        ]
        for t, shape in zip(top, shapes):
            t.reshape(shape)

    def _next_index(self) -> int:
        index = int(self.order[self.pos])
        self.pos += 1
        if self.pos >= len(self.lines):
            self.pos = 0
            if self.shuffle:
                self.rng.numpy.shuffle(self.order)
        return index

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        data, labels, dims = [], [], []
        for _ in range(self.batch_size):
            index = self._next_index()
            image, seg = self._load(index)
            x, s, dim = self._transform(
                image, seg, f"{self.lines[index][0]} ({self.source} line {self.lines[index][2]})"
            )
            data.append(x)
            labels.append(s)
            dims.append(dim)
        outputs = [numpy.stack(data), numpy.stack(labels), numpy.asarray(dims).reshape(self.batch_size, 1, 1, 2)]
        for t, value in zip(top, outputs):
            t.data = backend.asarray(numpy.ascontiguousarray(value, dtype=t.dtype), t.xp, t.dtype)

    def get_state(self) -> dict:
        """Read position and (shuffled) order, so a resumed run continues with the same images."""
        return {"pos": int(self.pos), "order": self.order.tolist()}

    def set_state(self, state: dict) -> None:
        self.order, self.pos = saved_image_order(self, state), int(state["pos"])


def pad_or_crop(x, beg: int, end: int):
    """``x`` (N, C, H, W) with ``beg`` rows/columns of zeros added before and ``end`` after on both
    spatial axes; negative values (both) cut as many away instead."""
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    if beg >= 0 and end >= 0:
        y = xp.zeros((n, c, h + beg + end, w + beg + end), dtype=x.dtype)
        y[:, :, beg : beg + h, beg : beg + w] = x
        return y
    return xp.ascontiguousarray(x[:, :, -beg : h + end, -beg : w + end])


@register_fork_layer("Padding", "DeepLab v1")
class PaddingLayer(Layer):
    """Caffe type ``Padding`` (DeepLab v1): zero padding or cropping of both spatial axes.

    ``padding_param``: ``pad_beg``, ``pad_end`` (default 0), both >= 0 (pad with zeros) or both
    <= 0 (crop). Top ``(N, C, H + pad_beg + pad_end, W + pad_beg + pad_end)``; with padding
    ``top[..., h + pad_beg, w + pad_beg] = x[..., h, w]``, with cropping
    ``top[..., h, w] = x[..., h - pad_beg, w - pad_beg]``. Backward: the adjoint (the gradient of
    the kept pixels; cut-away pixels get 0).

    DeepLab v1 gives ``padding_param`` only in its V1 ``layers`` format; netdef reads it from
    ``LayerParameter.padding_param`` when the schema has that field.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if "padding_param" not in pb.LayerParameter.DESCRIPTOR.fields_by_name:
            raise self.error(
                "padding_param cannot be read: this netdef schema has no LayerParameter.padding_param field, so the "
                "V1 upgrade drops DeepLab's pad_beg/pad_end (see docs/layers.md, DeepLab section)"
            )
        pp = self.param.padding_param
        self.beg, self.end = int(pp.pad_beg), int(pp.pad_end)
        if not ((self.beg >= 0 and self.end >= 0) or (self.beg <= 0 and self.end <= 0)):
            raise self.error(
                f"pad_beg and pad_end must be both >= 0 (pad) or both <= 0 (crop). Received: pad_beg {self.beg}, "
                f"pad_end {self.end}"
            )

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        check_4d(self, bottom[0])
        n, c, h, w = bottom[0].shape
        grow = self.beg + self.end
        if h + grow <= 0 or w + grow <= 0:
            raise self.error(
                f"cropping leaves no pixels. Received: input {h} x {w}, pad_beg {self.beg}, pad_end {self.end}",
                ShapeMismatchError,
            )
        top[0].reshape((n, c, h + grow, w + grow))

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        top[0].data = pad_or_crop(bottom[0].data, self.beg, self.end)

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if propagate_down[0]:
            # cropping is the adjoint of padding by the same amounts, and the other way round
            bottom[0].diff = pad_or_crop(top[0].diff, -self.beg, -self.end)


#: MATLAB level-5 data types and array classes (the MAT-file format reference)
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_SINGLE, _MI_DOUBLE, _MI_MATRIX = 1, 5, 6, 7, 9, 14
_MX_DOUBLE, _MX_SINGLE = 6, 7


def _mat_element(data_type: int, payload: bytes) -> bytes:
    """One data element: 8-byte tag, payload, zero padding to a multiple of 8 bytes."""
    return struct.pack("<II", data_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_v5_bytes(name: str, array: numpy.ndarray) -> bytes:
    """A MATLAB level-5 ``.mat`` file holding ``array`` (float32 or float64) as variable ``name``.

    The file's dimensions are ``array``'s shape reversed: its row-major memory read column-major,
    which is how the fork writes a blob (``N x C x H x W`` becomes ``W x H x C x N``).
    """
    single = array.dtype == numpy.float32
    header = b"MATLAB 5.0 MAT-file, written by netdef (DeepLab MatWrite layer)".ljust(116, b" ")
    header += b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    body = _mat_element(_MI_UINT32, struct.pack("<II", _MX_SINGLE if single else _MX_DOUBLE, 0))
    body += _mat_element(_MI_INT32, struct.pack(f"<{array.ndim}i", *reversed(array.shape)))
    body += _mat_element(_MI_INT8, name.encode("ascii"))
    values = numpy.ascontiguousarray(array, dtype="<f4" if single else "<f8").tobytes()
    body += _mat_element(_MI_SINGLE if single else _MI_DOUBLE, values)
    return header + _mat_element(_MI_MATRIX, body)


@register_fork_layer("MatWrite", "DeepLab v1")
class MatWriteLayer(Layer):
    """Caffe type ``MatWrite`` (DeepLab v1): writes every bottom to a MATLAB ``.mat`` file.

    ``mat_write_param``: ``prefix`` (required; the folder it names must exist), ``source`` (a
    list whose first word per line names the file of each forward pass), ``strip`` (characters cut
    from the end of each such name), ``period`` (write on every ``period``-th pass, default 1).
    Pass ``i`` writes bottom ``b`` to ``<prefix><name i>_blob_<b>.mat``, where the name is the
    source's line ``i`` or, without a source, ``iter_<i>``. Each file holds one variable ``data``:
    the blob as ``W x H x C x N`` (the fork's matio layout), single precision in float32 nets.
    Passes beyond the source's lines are refused. No tops, no backward.
    """

    min_num_bottom = 1
    exact_num_top = 0

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.param.mat_write_param
        if not p.HasField("prefix"):
            raise self.error("mat_write_param.prefix is required (the start of every written file's path)")
        if p.period <= 0:
            raise self.error(f"mat_write_param.period must be positive. Received: {p.period}")
        if p.strip < 0:
            raise self.error(f"mat_write_param.strip cannot be negative. Received: {p.strip}")
        self.prefix, self.period, self.iter = p.prefix, int(p.period), 0
        self.names: list[str] | None = None
        if p.HasField("source"):
            self.names = self._read_names(resolve_path(p.source), int(p.strip))

    def _read_names(self, path: str, strip: int) -> list[str]:
        try:
            with open(path) as f:
                words = [(lineno, line.split()[0]) for lineno, line in enumerate(f, 1) if line.split()]
        except OSError as err:
            raise self.error(
                f"cannot read mat_write_param.source {path}: {err.strerror or err}", DataSourceError
            ) from None
        for lineno, word in words:
            if len(word) <= strip:
                raise self.error(
                    f"{path} line {lineno}: strip {strip} leaves nothing of {word!r}. Valid: strip < {len(word)}",
                    DataSourceError,
                )
        return [word[: len(word) - strip] for _, word in words]

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        for b in bottom:
            if b.num_axes > 4:
                raise self.error(f"writes blobs of at most 4 axes. Received: shape {b.shape}", ShapeMismatchError)

    def _stem(self) -> str:
        if self.names is None:
            return f"iter_{self.iter}"
        if self.iter >= len(self.names):
            raise self.error(
                f"forward pass {self.iter + 1} has no file name: mat_write_param.source lists {len(self.names)}",
                DataSourceError,
            )
        return self.names[self.iter]

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if self.iter % self.period == 0:
            stem = self._stem()
            for i, b in enumerate(bottom):
                path = f"{self.prefix}{stem}_blob_{i}.mat"
                data = backend.to_numpy(b.data)
                # the fork's legacy num/channels/height/width: missing trailing axes count as 1
                data = data.reshape(*data.shape, *(1,) * (4 - data.ndim))
                if data.dtype not in (numpy.float32, numpy.float64):
                    data = data.astype(numpy.float32)
                try:
                    with open(path, "wb") as f:
                        f.write(mat_v5_bytes("data", data))
                except OSError as err:
                    raise self.error(
                        f"cannot write {path}: {err.strerror or err} (mat_write_param.prefix {self.prefix!r})",
                        InvalidParameterError,
                    ) from None
        self.iter += 1
