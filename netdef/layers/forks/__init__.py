"""Layer types that Caffe's forks added (SSD, SegNet, PSPNet/DeepLab, MobileNet/ShuffleNet ports,
Faster R-CNN / R-FCN). They live apart from BVLC's types: ``layer_type_list()`` lists BVLC's,
``fork_layer_types()`` these, each with the fork(s) that defined it."""

# Each module registers its types on import.
from . import bn, deeplab, detection, mobile, multibox, pspnet, rcnn, segnet, smooth_l1, ssd  # noqa: F401
from .registry import FORK_ORIGIN, KNOWN_ELSEWHERE, fork_hint, fork_layer_types, register_fork_layer

__all__ = ["FORK_ORIGIN", "KNOWN_ELSEWHERE", "fork_hint", "fork_layer_types", "register_fork_layer"]
