"""Errors of the ONNX exporter; all are NetdefError subclasses, so the CLI prints them in one line."""

from __future__ import annotations

from ..errors import NetdefError, install_hint


class ExportError(NetdefError):
    """A net cannot be written as ONNX the way it was asked (options, inputs, missing package)."""


class UnsupportedLayerError(ExportError):
    """A layer has no ONNX form that computes exactly what netdef computes."""


#: how to install the optional package the exporter needs
ONNX_EXTRA_HINT = install_hint("onnx", "onnx")

__all__ = ["ONNX_EXTRA_HINT", "ExportError", "UnsupportedLayerError"]
