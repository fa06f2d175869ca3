"""pycaffe's ``caffe.Classifier`` and ``caffe.Detector``: nets that take images and give class scores.

Both are :class:`netdef.Net` subclasses built in the TEST phase from a deploy
definition and its weights, with a :class:`netdef.io.Transformer` for their first
input set up from the constructor's preprocessing arguments (transpose
H x W x K -> K x H x W always; ``mean``, ``input_scale``, ``raw_scale`` and
``channel_swap`` when given). As in pycaffe, ``mean`` is in the net's layout
(K x H x W, or one value per channel), not the image's, and the scores are the
first net output in name order (``net.outputs[0]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy

from .errors import MissingDependencyError, NetdefError, ShapeMismatchError
from .io import preprocessing
from .io.preprocessing import Transformer, load_image, resize_image
from .net import TEST, Net


def _transformer_for(net: Net, mean, input_scale, raw_scale, channel_swap) -> Transformer:
    if not net.inputs:
        raise NetdefError(
            f'Net "{net.name}" has no input blobs (Input layer or input: fields); a Classifier or Detector needs '
            "a deploy definition whose first input takes the images"
        )
    name = net.inputs[0]
    transformer = Transformer({name: net.blobs[name].data.shape})
    transformer.set_transpose(name, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(name, mean)
    if input_scale is not None:
        transformer.set_input_scale(name, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(name, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(name, channel_swap)
    return transformer


def _as_image(image) -> numpy.ndarray:
    image = numpy.asarray(image, dtype=numpy.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ShapeMismatchError(f"images must be H x W x K arrays. Received: shape {image.shape}")
    return image


class Classifier(Net):
    """A net that classifies images, scaling them and taking the centre or ten crops (pycaffe's ``caffe.Classifier``).

    Args:
        model_file: deploy definition; its first input takes the images.
        pretrained_file: weights file (``None`` keeps the initial values, as pycaffe allows).
        image_dims: (height, width) every image is resized to before cropping; the
            input's own height and width by default (then crops are whole images).
        mean, input_scale, raw_scale, channel_swap: the input Transformer's settings.
    """

    def __init__(
        self,
        model_file,
        pretrained_file=None,
        image_dims: Sequence[int] | None = None,
        mean=None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
    ):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = _transformer_for(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = numpy.array(self.blobs[self.inputs[0]].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs: Sequence, oversample: bool = True) -> numpy.ndarray:
        """Class scores of each image: N x classes.

        Every image is resized to ``image_dims``; with ``oversample`` (the default) the
        scores are the mean over ten crops of the input's size (corners, centre and
        their mirror images, :func:`netdef.io.oversample`), otherwise the centre
        crop alone is classified. Without oversampling the result keeps the output
        blob's shape (N x classes x ... for a spatial output); with it, every axis
        after the first is flattened, as in pycaffe.
        """
        images = [_as_image(im) for im in inputs]
        if not images:
            raise ShapeMismatchError("predict needs at least one image. Received: none")
        height, width = (int(d) for d in self.image_dims)
        batch = numpy.zeros((len(images), height, width, images[0].shape[2]), dtype=numpy.float32)
        for i, image in enumerate(images):
            batch[i] = resize_image(image, (height, width))
        if oversample:
            batch = preprocessing.oversample(batch, self.crop_dims)
        else:
            centre = numpy.array([height, width]) / 2.0
            box = numpy.concatenate([centre - self.crop_dims / 2.0, centre + self.crop_dims / 2.0]).astype(int)
            batch = batch[:, box[0] : box[2], box[1] : box[3], :]
        name = self.inputs[0]
        net_in = numpy.zeros((batch.shape[0], batch.shape[3], batch.shape[1], batch.shape[2]), dtype=numpy.float32)
        for i, crop in enumerate(batch):
            net_in[i] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: net_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions


class Detector(Net):
    """A net that classifies windows of images, R-CNN style (pycaffe's ``caffe.Detector``).

    Args:
        model_file: deploy definition; its first input takes the windows.
        pretrained_file: weights file (``None`` keeps the initial values).
        mean, input_scale, raw_scale, channel_swap: the input Transformer's settings.
        context_pad: pixels of the net's input border to fill with the window's
            surroundings (R-CNN's context padding); none by default.
    """

    def __init__(
        self,
        model_file,
        pretrained_file=None,
        mean=None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
        context_pad: int | None = None,
    ):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = _transformer_for(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Iterable) -> list[dict]:
        """Classify windows of image files.

        Args:
            images_windows: ``(image file, windows)`` pairs; a window is
                (ymin, xmin, ymax, xmax) in pixels.

        Returns:
            one ``{"window", "prediction", "filename"}`` dict per window, in order.
            Each window is cropped (:meth:`crop`), warped to the input size and
            preprocessed. pycaffe walks ``images_windows`` twice, so a one-shot
            iterator gave no detections there; here any iterable works.
        """
        pairs = [(filename, list(windows)) for filename, windows in images_windows]
        crops = []
        for filename, windows in pairs:
            image = load_image(os.fspath(filename)).astype(numpy.float32)
            for window in windows:
                crops.append(self.crop(image, window))
        if not crops:
            return []
        name = self.inputs[0]
        net_in = numpy.zeros((len(crops), crops[0].shape[2]) + self.blobs[name].data.shape[2:], dtype=numpy.float32)
        for i, crop in enumerate(crops):
            net_in[i] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: net_in})[self.outputs[0]]
        detections = []
        index = 0
        for filename, windows in pairs:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[index], "filename": filename})
                index += 1
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict]:
        """Classify Selective Search proposals of image files (needs the external selective search tool).

        As in pycaffe this calls ``selective_search_ijcv_with_python.get_windows``
        (https://github.com/sergeyk/selective_search_ijcv_with_python, which runs
        MATLAB); when that module cannot be imported this raises
        :class:`netdef.errors.MissingDependencyError`. Any other proposal source
        works through :meth:`detect_windows`.
        """
        try:
            import selective_search_ijcv_with_python as selective_search  # external, never bundled
        except ImportError:
            raise MissingDependencyError(
                "detect_selective_search needs the selective_search_ijcv_with_python module (and MATLAB), which "
                "is not importable: install it from github.com/sergeyk/selective_search_ijcv_with_python and put "
                "it on PYTHONPATH, or compute windows another way and call detect_windows([(image, windows), ...])"
            ) from None
        image_fnames = [os.path.abspath(os.fspath(f)) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(list(zip(image_fnames, windows_list)))

    def crop(self, im: numpy.ndarray, window) -> numpy.ndarray:
        """The part of H x W x K image ``im`` that window (ymin, xmin, ymax, xmax) covers.

        Without context padding this is ``im[ymin:ymax, xmin:xmax]`` (end excluded).
        With ``context_pad`` the window is treated as inclusive, grown so that after
        warping to the (square) input a border of ``context_pad`` pixels shows its
        surroundings, clipped to the image, and placed into an input-sized crop
        whose out-of-image part holds the mean (in image space). These are
        pycaffe's formulas, with its rounding (half to even) and its slicing of the
        clipped box (end excluded).
        """
        window = numpy.asarray(window)
        y0, x0, y1, x1 = (int(v) for v in window[:4])
        crop = im[y0:y1, x0:x1]
        if not self.context_pad:
            return crop
        box = window[:4].astype(numpy.float64)
        crop_size = self.blobs[self.inputs[0]].width  # pycaffe assumes a square input
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        centre = (box[0] + half_h, box[1] + half_w)
        box = numpy.round(numpy.tile(centre, 2) + scale * numpy.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0.0, -box[0]) * scale_h))  # rows of the crop that lie above the image
        pad_x = int(round(max(0.0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = numpy.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ShapeMismatchError(
                f"window {tuple(window.tolist())} lies outside the {im_h} x {im_w} image. Received: {window.tolist()}"
            )
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        context = im[int(box[0]) : int(box[2]), int(box[1]) : int(box[3])]
        padded = numpy.ones(self.crop_dims, dtype=numpy.float32) * self.crop_mean
        padded[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w] = resize_image(context, (crop_h, crop_w))
        return padded

    def configure_crop(self, context_pad: int | None) -> None:
        """Set the crop size (the input's, in image layout H x W x K) and the context padding.

        With context padding, the mean the Transformer subtracts is taken back to
        image space (transpose, channel order and raw scale undone; the input scale
        is not, as in pycaffe) to fill the parts of a crop outside the image.
        """
        name = self.inputs[0]
        order = self.transformer.transpose[name]
        back = numpy.argsort(order)
        self.crop_dims = numpy.array(self.blobs[name].data.shape[1:])[back]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(name)
        if mean is None:
            self.crop_mean = numpy.zeros(self.crop_dims, dtype=numpy.float32)
            return
        crop_mean = numpy.array(mean, dtype=numpy.float32).transpose(back)
        swap = self.transformer.channel_swap.get(name)
        if swap is not None:
            crop_mean = crop_mean[:, :, numpy.argsort(swap)]
        raw_scale = self.transformer.raw_scale.get(name)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean


__all__ = ["Classifier", "Detector"]
