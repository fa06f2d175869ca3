"""Where fork layer types register, with the forks that defined them."""

from __future__ import annotations

from ..base import register_layer

#: type name -> the forks that define it (as users know them, e.g. ("SSD",))
FORK_ORIGIN: dict[str, tuple[str, ...]] = {}


def register_fork_layer(type_name: str, *forks: str):
    """Class decorator: register ``type_name`` as a layer type defined by ``forks``."""
    if not forks:
        raise ValueError(f'register_fork_layer("{type_name}") needs the fork(s) that define the type')

    def wrap(cls):
        cls = register_layer(type_name)(cls)
        cls.forks = tuple(forks)
        FORK_ORIGIN[type_name] = tuple(forks)
        return cls

    return wrap


#: layer types published models use that come from forks netdef does not implement, with where they come from
KNOWN_ELSEWHERE: dict[str, str] = {
    "AnnotatedData": "the SSD fork (weiliu89/caffe), a data layer reading annotated LMDBs",
    "CPMData": "OpenPose's training fork (CMU-Perceptual-Computing-Lab/caffe_train)",
    "DenseImageData": "the SegNet fork (alexgkendall/caffe-segnet), a data layer for image/label pairs",
    "Proposal": "C++ ports of py-faster-rcnn's proposal layer",
    "Region": "YOLO v2 ports of Caffe",
    "Reorg": "YOLO v2 ports of Caffe",
    "SegAccuracy": "DeepLab v1",
    "MarginInnerProduct": "SphereFace (wy1iu/sphereface)",
}


def fork_hint(type_name: str) -> str:
    """A sentence saying which fork ``type_name`` comes from, or an empty string."""
    if type_name in KNOWN_ELSEWHERE:
        return f" {type_name} comes from {KNOWN_ELSEWHERE[type_name]}, which netdef does not implement."
    return ""


def fork_layer_types() -> dict[str, tuple[str, ...]]:
    """Every registered fork layer type, sorted, with the forks that define it."""
    return dict(sorted(FORK_ORIGIN.items()))
