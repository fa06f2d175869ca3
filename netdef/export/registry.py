"""Which function writes each layer type as ONNX, and why the types without one are refused."""

from __future__ import annotations

from collections.abc import Callable

#: layer type -> the function that adds its ONNX nodes (it receives a LayerExport)
CONVERTERS: dict[str, Callable] = {}

#: layer type -> why it has no exact ONNX form (said in the error that refuses it)
REFUSALS: dict[str, str] = {}


def converts(*type_names: str):
    """Decorator: the function writes layers of ``type_names`` as ONNX nodes."""

    def wrap(fn):
        for name in type_names:
            if name in CONVERTERS:
                raise ValueError(f'layer type "{name}" already has an ONNX converter ({CONVERTERS[name].__name__})')
            CONVERTERS[name] = fn
        return fn

    return wrap


def refuse(reason: str, *type_names: str) -> None:
    """Record that ``type_names`` cannot be exported, and why."""
    for name in type_names:
        REFUSALS[name] = reason


__all__ = ["CONVERTERS", "REFUSALS", "converts", "refuse"]
