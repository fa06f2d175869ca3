"""A small ONNX graph builder: unique value names, constants, nodes, and the few operators whose
signature changed between the opsets the exporter supports (13 and later).

Everything that touches the ``onnx`` package goes through :func:`require_onnx`, so a missing
package is one clear error naming the extra that installs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy

from .errors import ONNX_EXTRA_HINT, ExportError

if TYPE_CHECKING:  # the optional dependency, for annotations only
    import onnx

#: the oldest opset the exporter writes (Softmax on one axis, Split/Squeeze/ReduceSum axes as inputs)
MIN_OPSET = 13
#: the opset written unless another is asked for: read by every maintained runtime
DEFAULT_OPSET = 17
#: from this opset on, ReduceMean/ReduceMax/ReduceSumSquare/... take their axes as an input too
REDUCE_AXES_INPUT_OPSET = 18
#: how the doc string of a graph input or output names the net blob it holds
BLOB_DOC_PREFIX = "netdef blob: "


def require_onnx():
    """The ``onnx`` module, or an ExportError saying how to install it."""
    try:
        import onnx  # optional dependency: the "onnx" extra
    except ImportError:
        raise ExportError(
            f"exporting to ONNX needs the onnx package, which is not installed: {ONNX_EXTRA_HINT}"
        ) from None
    return onnx


def newest_opset() -> int:
    """The newest opset the installed ``onnx`` package knows."""
    return int(require_onnx().defs.onnx_opset_version())


def check_opset(opset: int) -> int:
    """``opset`` as an int when the exporter can write it; an ExportError saying the valid range otherwise."""
    newest = newest_opset()
    if isinstance(opset, bool) or not isinstance(opset, (int, numpy.integer)) or not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"the ONNX opset must be an integer from {MIN_OPSET} to {newest} (the newest the installed onnx "
            f"package knows). Received: {opset!r}"
        )
    return int(opset)


class Graph:
    """Nodes, constants and value names of one ONNX graph under construction.

    Args:
        opset: the default-domain opset the graph is written for.
        reserved: names that only their owner may use (blob names of the net); fresh names avoid them.
    """

    def __init__(self, opset: int, reserved: Iterable[str] = ()):
        self.onnx = require_onnx()
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self.used: set[str] = set()
        self.reserved: set[str] = set(reserved)
        self._consts: dict[tuple, str] = {}

    # --- names ----------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A value name never used before, built from ``hint``."""
        base = hint or "v"
        name, k = base, 1
        while name in self.used or name in self.reserved:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    def claim(self, name: str) -> str:
        """Use ``name`` exactly (a blob name of the net); it must not be taken yet."""
        if name in self.used:
            raise ExportError(f'internal naming conflict: the ONNX value "{name}" would be written twice')
        self.used.add(name)
        return name

    # --- constants ---------------------------------------------------------------------------------
    def const(self, value, hint: str = "const", dtype=numpy.float32) -> str:
        """An initializer holding ``value`` (as ``dtype``); equal small constants are shared."""
        array = numpy.ascontiguousarray(numpy.asarray(value, dtype=dtype))
        key = None
        if array.size <= 16:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        """An int64 initializer (shapes, axes, sizes)."""
        return self.const(list(values), hint, numpy.int64)

    # --- nodes ----------------------------------------------------------------------------------------
    def node(self, op: str, inputs: Sequence[str], out: str | None = None, hint: str = "", **attrs) -> str:
        """Add one node with a single output; returns the output name (fresh unless ``out`` is given)."""
        return self.multi(op, inputs, [out or self.fresh(hint or op.lower())], **attrs)[0]

    def multi(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs) -> list[str]:
        """Add one node with several outputs (given names); returns them."""
        name = self.fresh(f"{op}_node")
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return list(outputs)

    # --- operators whose form depends on the opset ------------------------------------------------
    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: bool, out: str | None = None) -> str:
        """``Reduce*`` over ``axes``: axes as an input where the opset wants it, else as an attribute."""
        as_input = op == "ReduceSum" or self.opset >= REDUCE_AXES_INPUT_OPSET
        if as_input:
            return self.node(op, [x, self.ints(axes, "axes")], out, keepdims=int(keepdims))
        return self.node(op, [x], out, axes=list(axes), keepdims=int(keepdims))

    def reshape(self, x: str, shape: Sequence[int], out: str | None = None) -> str:
        return self.node("Reshape", [x, self.ints(shape)], out)

    def unsqueeze(self, x: str, axes: Sequence[int], out: str | None = None) -> str:
        return self.node("Unsqueeze", [x, self.ints(axes, "axes")], out)

    def slice(
        self,
        x: str,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        steps: Sequence[int] | None = None,
        out: str | None = None,
    ) -> str:
        inputs = [x, self.ints(starts, "starts"), self.ints(ends, "ends"), self.ints(axes, "axes")]
        if steps is not None:
            inputs.append(self.ints(steps, "steps"))
        return self.node("Slice", inputs, out)

    def split(self, x: str, sizes: Sequence[int], axis: int, outputs: Sequence[str]) -> list[str]:
        return self.multi("Split", [x, self.ints(sizes, "split")], outputs, axis=axis)

    def clip(self, x: str, lo: float | None, hi: float | None, out: str | None = None) -> str:
        inputs = [x, self.const(lo, "min") if lo is not None else "", self.const(hi, "max") if hi is not None else ""]
        while inputs[-1] == "":
            inputs.pop()
        return self.node("Clip", inputs, out)

    def scaled(self, x: str, factor: float, hint: str = "scaled") -> str:
        """``x * factor`` (``x`` itself when the factor is 1)."""
        if factor == 1:
            return x
        return self.node("Mul", [x, self.const(factor, "factor")], hint=hint)

    # --- the model ----------------------------------------------------------------------------------
    def value_info(self, name: str, shape: Sequence[int | str], blob: str | None = None) -> onnx.ValueInfoProto:
        """A float tensor type for a graph input or output (a str dimension is symbolic), naming its blob."""
        onnx = self.onnx
        dims = [d if isinstance(d, str) else int(d) for d in shape]
        return onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, dims, doc_string=f"{BLOB_DOC_PREFIX}{blob or name}"
        )

    def model(
        self, name: str, inputs: list, outputs: list, doc: str, metadata: dict[str, str], producer_version: str
    ) -> onnx.ModelProto:
        """The ModelProto of everything added so far, with the graph's inputs and outputs and its note of origin."""
        onnx = self.onnx
        graph = onnx.helper.make_graph(self.nodes, name or "net", inputs, outputs, self.initializers, doc_string=doc)
        model = onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid("", self.opset)],
            producer_name="netdef",
            producer_version=producer_version,
            doc_string=doc,
        )
        # The IR version the opset came with, so that runtimes contemporary with the opset read the file.
        model.ir_version = _ir_version_for(onnx, self.opset)
        onnx.helper.set_model_props(model, metadata)
        return model


def _ir_version_for(onnx, opset: int) -> int:
    """The IR version released with ``opset`` (the installed package's current one when unknown)."""
    table = getattr(onnx.helper, "VERSION_TABLE", [])
    versions = [int(row[1]) for row in table if len(row) > 2 and int(row[2]) == opset]
    return min(versions) if versions else int(onnx.IR_VERSION)


__all__ = [
    "BLOB_DOC_PREFIX",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "Graph",
    "check_opset",
    "newest_opset",
    "require_onnx",
]
