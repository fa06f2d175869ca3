"""Layer types that Caffe's forks added (SSD, SegNet, PSPNet/DeepLab, MobileNet/ShuffleNet ports,
Faster R-CNN / R-FCN). They live apart from BVLC's types: ``layer_type_list()`` lists BVLC's,
``fork_layer_types()`` these, each with the fork(s) that defined it."""
from __future__ import annotations

import importlib

from ..base import register_layer

#: type name -> the forks that define it (as users know them, e.g. ("SSD",))
FORK_ORIGIN: dict[str, tuple[str, ...]] = {}


def register_fork_layer(type_name: str, *forks: str):
    """Class decorator: register ``type_name`` as a layer type defined by ``forks``."""
    if not forks:
        raise ValueError(f'register_fork_layer("{type_name}") needs the fork(s) that define the type')

    def wrap(cls):
        cls = register_layer(type_name)(cls)
        FORK_ORIGIN[type_name] = tuple(forks)
        return cls

    return wrap


def fork_layer_types() -> dict[str, tuple[str, ...]]:
    """Every registered fork layer type, sorted, with the forks that define it."""
    return dict(sorted(FORK_ORIGIN.items()))


# Modules still being written are skipped until they exist; every module named here registers on import.
for _name in ("ssd", "detection", "bn", "segnet", "pspnet", "mobile", "rcnn", "smooth_l1"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{_name}":
            raise
