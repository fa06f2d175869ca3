"""Carry nets out of netdef: export to ONNX (``netdef export``, :func:`export_onnx`).

Needs the optional ``onnx`` package (``pip install onnx``, the "onnx" extra); importing this package
does not, so the error for a missing package comes from the call that needs it.
"""

from .errors import ExportError, UnsupportedLayerError
from .graph import DEFAULT_OPSET, MIN_OPSET
from .onnx_export import BATCH_DIM, export_onnx, with_inputs
from .registry import CONVERTERS, REFUSALS


def exportable_layer_types() -> list[str]:
    """The layer types the ONNX exporter writes (Input becomes a graph input), sorted."""
    return sorted({*CONVERTERS, "Input"})


__all__ = [
    "BATCH_DIM",
    "CONVERTERS",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "REFUSALS",
    "ExportError",
    "UnsupportedLayerError",
    "export_onnx",
    "exportable_layer_types",
    "with_inputs",
]
