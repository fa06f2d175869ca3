"""Reading and writing Caffe's binary files (weights, mean files, solver states) and input preprocessing."""

from .preprocessing import Transformer, load_image, resize_image  # noqa: F401
