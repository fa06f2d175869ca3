"""Layer registry. Importing this package registers every built-in layer type.

Used as pycaffe's ``caffe.layers`` too: ``from netdef import layers as L`` and
``L.Convolution(bottom, kernel_size=3)`` describe a layer for a
:class:`netdef.NetSpec` (see :mod:`netdef.netspec`).
"""

from ..netspec import layer_factory as _layer_factory

# Each module registers its layer types on import.
from . import (  # noqa: F401
    common,
    conv,
    data,
    forks,
    hdf5,
    input,
    loss,
    neuron,
    normalization,
    pooling,
    python_layer,
    recurrent,
    structure,
)
from .base import Layer, LossLayer, NeuronLayer, layer_class, layer_type_list, register_layer

__all__ = ["Layer", "LossLayer", "NeuronLayer", "layer_class", "layer_type_list", "register_layer"]


def __getattr__(name: str):
    # Any CamelCase name that is not an attribute here is a NetSpec layer factory, as in pycaffe;
    # types netdef cannot run (e.g. a Caffe fork's) may still be written out, and building a Net
    # from the result names unknown types with a did-you-mean.
    if name[:1].isupper() and name.isidentifier():
        return _layer_factory(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
