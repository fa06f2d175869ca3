"""Layer registry. Importing this package registers every built-in layer type."""
from .base import Layer, LossLayer, NeuronLayer, layer_class, layer_type_list, register_layer

# Each module registers its layer types on import.
from . import common, data, loss, neuron, normalization, python_layer, recurrent, vision  # noqa: F401,E402

__all__ = ["Layer", "LossLayer", "NeuronLayer", "layer_class", "layer_type_list", "register_layer"]
