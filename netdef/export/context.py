"""What a layer converter sees: its layer, the ONNX names of its bottoms, the shapes, and where to write.

A converter reads ``ctx.x(i)`` (the ONNX value of bottom ``i``), adds nodes to ``ctx.g`` and
names each top with ``ctx.out(j)`` (or hands an existing value on with ``ctx.alias``). Shapes
are those of the built net; with a dynamic batch, ``ctx.in_varying``/``ctx.out_varying`` say which
dimensions follow the batch size, and :meth:`LayerExport.target` writes a Reshape target that keeps them open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy

from ..backend import to_numpy
from ..errors import layer_prefix
from .errors import ExportError, UnsupportedLayerError
from .graph import Graph


@dataclass
class NetView:
    """The facts about the whole net that converters may need."""

    graph: Graph
    #: blob name -> its ONNX value at the current point of the walk
    current: dict[str, str]
    #: blob name -> shape in the built net
    shapes: dict[str, tuple[int, ...]]
    #: blob name -> per dimension, whether it changes with the batch size (all False for a fixed batch;
    #: the batch size itself is marked with the batch dimension's name, which is true too)
    varying: dict[str, tuple[bool | str, ...]]
    #: (layer index, top index) -> the consumers (layer index, bottom index) of that value
    consumers: dict[tuple[int, int], list[tuple[int, int]]]
    #: (layer index, top index) of the values that are net outputs
    output_values: set[tuple[int, int]]
    #: layer index -> the value its top stands for, when an earlier converter folded the layer into its node
    absorbed: dict[int, str] = field(default_factory=dict)
    #: the net's layer records, in order (for converters that look at their consumer)
    records: list = field(default_factory=list)
    dynamic_batch: bool = False


class LayerExport:
    """One layer being written as ONNX nodes (the argument of every converter)."""

    def __init__(self, view: NetView, index: int, rec, naming):
        self.view = view
        self.g: Graph = view.graph
        self.index = index
        self.rec = rec
        self.layer = rec.layer
        self.name = rec.layer.name
        self.type_name = rec.layer.type_name
        self._naming = naming
        self.written: dict[int, str] = {}

    # --- errors ----------------------------------------------------------------------------------
    def refuse(self, reason: str) -> UnsupportedLayerError:
        """The error for a layer that cannot be exported exactly: name, type and why."""
        return UnsupportedLayerError(f"{layer_prefix(self.name, self.type_name)} cannot be exported to ONNX: {reason}")

    # --- inputs ----------------------------------------------------------------------------------
    @property
    def num_bottoms(self) -> int:
        return len(self.rec.bottom_names)

    @property
    def num_tops(self) -> int:
        return len(self.rec.top_names)

    def x(self, i: int = 0) -> str:
        """The ONNX value of bottom ``i``."""
        return self.view.current[self.rec.bottom_names[i]]

    def in_shape(self, i: int = 0) -> tuple[int, ...]:
        return tuple(self.rec.bottom[i].shape)

    def out_shape(self, j: int = 0) -> tuple[int, ...]:
        return tuple(self.rec.top[j].shape)

    def in_varying(self, i: int = 0) -> tuple[bool | str, ...]:
        return self.view.varying.get(self.rec.bottom_names[i], (False,) * len(self.in_shape(i)))

    def out_varying(self, j: int = 0) -> tuple[bool | str, ...]:
        return self.view.varying.get(self.rec.top_names[j], (False,) * len(self.out_shape(j)))

    def blob(self, k: int) -> numpy.ndarray:
        """Parameter blob ``k`` of the layer as a float32 NumPy array."""
        return numpy.asarray(to_numpy(self.layer.blobs[k].data), dtype=numpy.float32)

    # --- outputs ---------------------------------------------------------------------------------
    def out(self, j: int = 0) -> str:
        """The name to give the value of top ``j`` (the blob's own name when it is the blob's last writer)."""
        if j in self.written:
            raise ExportError(f"internal error: {layer_prefix(self.name, self.type_name)} wrote top {j} twice")
        name = self._naming(self.index, j)
        self.written[j] = name
        return name

    def alias(self, j: int, value: str) -> None:
        """Top ``j`` is ``value`` unchanged (no node)."""
        self.written[j] = value

    def consumers(self, j: int = 0) -> list[tuple[int, int]]:
        return self.view.consumers.get((self.index, j), [])

    def is_output(self, j: int = 0) -> bool:
        return (self.index, j) in self.view.output_values

    # --- shapes for Reshape --------------------------------------------------------------------
    def target(self, shape: Sequence[int], varying: Sequence[bool | str]) -> list[int]:
        """A Reshape target for ``shape``: static, except the one dimension that follows the batch (-1).

        With a fixed batch the shape is written as it is. With a dynamic batch, at most one
        dimension may vary; more than one cannot be written as one Reshape.
        """
        shape = [int(d) for d in shape]
        moving = [k for k, v in enumerate(varying) if v]
        if not moving:
            return shape
        if len(moving) > 1:
            raise self.refuse(
                f"with a dynamic batch its output {tuple(shape)} would have {len(moving)} dimensions that follow "
                "the batch size, which one Reshape cannot express. Export with a fixed batch size"
            )
        shape[moving[0]] = -1
        return shape

    def reshape_out(self, value: str, j: int = 0) -> str:
        """Reshape ``value`` to the shape of top ``j`` and write it as that top."""
        return self.g.reshape(value, self.target(self.out_shape(j), self.out_varying(j)), self.out(j))


__all__ = ["LayerExport", "NetView"]
