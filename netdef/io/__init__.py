"""Reading and writing Caffe's binary files (weights, mean files, solver states) and input preprocessing."""
from .transformer import Transformer, load_image, resize_image  # noqa: F401
