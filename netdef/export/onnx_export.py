"""Export a net to ONNX: build it in the TEST phase, walk its layers in order, write each as ONNX nodes.

Blob names become ONNX value names. Caffe's in-place layers rewrite a blob under the same name,
which ONNX's single-assignment graph cannot do, so every write but the last of a blob gets a
fresh name and the last keeps the blob's name; net inputs and outputs therefore carry the
names they have in the prototxt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy

from ..errors import NetdefError, layer_prefix
from ..io.atomic import atomic_target
from ..net import TEST, Net, filter_net
from ..proto import netdef_pb2 as pb
from ..proto import read_message
from ..proto.upgrade import upgrade_net
from . import elementwise, forks, structure, vision  # noqa: F401  (each registers its converters)
from .context import LayerExport, NetView
from .errors import ExportError, UnsupportedLayerError
from .graph import DEFAULT_OPSET, Graph, check_opset, require_onnx
from .registry import CONVERTERS, REFUSALS, refuse

if TYPE_CHECKING:  # the optional dependency, for annotations only
    import onnx

log = logging.getLogger("netdef")

#: the symbolic name of the batch dimension in a model exported with a dynamic batch
BATCH_DIM = "batch"

refuse(
    "a data layer reads files or arrays outside the graph; make its tops inputs of the exported model instead "
    "(netdef export --input NAME=DIMS, or input_shapes={NAME: DIMS} in Python)",
    "Data",
    "ImageData",
    "WindowData",
    "HDF5Data",
    "MemoryData",
    "ImageSegData",
)
refuse(
    "loss and accuracy layers only train or score a net (they need labels); export the deploy net",
    "SoftmaxWithLoss",
    "SigmoidCrossEntropyLoss",
    "EuclideanLoss",
    "HingeLoss",
    "MultinomialLogisticLoss",
    "InfogainLoss",
    "ContrastiveLoss",
    "Accuracy",
)
refuse("it writes files while the net runs, which an ONNX model cannot do", "HDF5Output")
refuse("it runs arbitrary Python code, which has no ONNX form", "Python")
refuse(
    "ONNX's RNN and LSTM operators cannot restart the hidden state in the middle of a sequence where Caffe's "
    "sequence-continuation input is 0",
    "RNN",
    "LSTM",
)


# --- preparing the net ----------------------------------------------------------------------------
def _shape_list(name: str, dims) -> list[int]:
    try:
        shape = [int(d) for d in dims]
    except (TypeError, ValueError):
        raise ExportError(f'the shape of input "{name}" must be a list of integers. Received: {dims!r}') from None
    if not shape or any(d <= 0 for d in shape):
        raise ExportError(f'the shape of input "{name}" needs one or more positive dimensions. Received: {shape}')
    return shape


def _input_layer(name: str, tops: Sequence[str], shapes: Mapping[str, list[int]]):
    layer = pb.LayerParameter(name=name, type="Input")
    layer.top.extend(tops)
    for top in tops:
        if top not in shapes:
            raise ExportError(f'{layer_prefix(name, "Input")} gives no shape for its top "{top}"; give it with --input')
        layer.input_param.shape.add().dim.extend(shapes[top])
    return layer


def with_inputs(param, shapes: Mapping[str, Sequence[int]]):
    """A copy of TEST-phase ``param`` in which every blob named in ``shapes`` is a net input of that shape.

    An Input layer producing the blob gets the shape; a layer without bottoms producing it (a data
    layer, including fork types netdef cannot build) becomes an Input layer with the given tops; a
    blob that some layer reads but none produces (a legacy ``input:`` without dimensions) gets an
    Input layer at the front.
    """
    shapes = {name: _shape_list(name, dims) for name, dims in shapes.items()}
    out = filter_net(param, pb.NetState(phase=TEST))
    layers = list(out.layer)
    produced: set[str] = set()
    for k, layer in enumerate(layers):
        given = [t for t in layer.top if t in shapes]
        if layer.bottom or not given:
            produced.update(layer.top)
            continue
        if layer.type == "Input":
            # an Input layer keeps all its tops; the ones not named keep their shapes
            old = list(layer.input_param.shape)
            old = old * len(layer.top) if len(old) == 1 else old
            kept = {t: list(old[i].dim) for i, t in enumerate(layer.top) if i < len(old)}
            layers[k] = _input_layer(layer.name, list(layer.top), {**kept, **shapes})
            produced.update(layer.top)
            continue
        layers[k] = _input_layer(layer.name, given, shapes)
        produced.update(given)
    read = {b for layer in layers for b in layer.bottom}
    front = [n for n in shapes if n not in produced and n in read]
    unknown = sorted(n for n in shapes if n not in produced and n not in read)
    if unknown:
        raise ExportError(
            f"input shapes were given for {', '.join(unknown)}, which no layer of the net reads or produces. "
            f"Blobs the net reads without producing them: {', '.join(sorted(read - produced)) or '(none)'}"
        )
    if front:
        layers.insert(0, _input_layer("input", front, shapes))
    del out.layer[:]
    out.layer.extend(layers)
    return out


def build_net(model, weights: str | None, input_shapes: Mapping[str, Sequence[int]] | None) -> Net:
    """The TEST-phase net to export, on the CPU, with the weights and input shapes applied."""
    if isinstance(model, Net):
        net = model
        if input_shapes:
            _reshape_inputs(net, input_shapes)
        if weights:
            net.copy_from(weights)
        return net
    source = model if isinstance(model, str) else None
    if input_shapes:
        param = model if isinstance(model, pb.NetParameter) else _load_with_inputs(model, input_shapes)
        model = with_inputs(param, input_shapes)
    net = Net(model, TEST, weights=weights, xp=numpy)
    # the file the net came from, also when the inputs were rewritten (for the model's note of its origin)
    net.source = source
    return net


def _load_with_inputs(path: str, shapes: Mapping[str, Sequence[int]]):
    """Load a definition whose legacy ``input:`` fields may lack dimensions, taking them from ``shapes``."""
    param = read_message(path, pb.NetParameter())
    if param.input and not param.input_shape and not param.input_dim:
        missing = [name for name in param.input if name not in shapes]
        if missing:
            raise ExportError(
                f"{path} declares inputs without dimensions; give the shape of {', '.join(missing)} as well "
                "(--input NAME=DIMS, or input_shapes={NAME: DIMS} in Python)"
            )
        for name in param.input:
            param.input_shape.add().dim.extend(_shape_list(name, shapes[name]))
    return upgrade_net(param, path)


def _reshape_inputs(net: Net, shapes: Mapping[str, Sequence[int]]) -> None:
    for name, dims in shapes.items():
        if name not in net.inputs:
            raise ExportError(f'"{name}" is not an input of the net. Inputs: {", ".join(net.inputs) or "(none)"}')
        net.blobs[name].reshape(tuple(_shape_list(name, dims)))
    net.reshape()


def batch_varying(net: Net) -> dict[str, tuple[bool | str, ...]]:
    """Per blob and dimension, whether it changes when the batch size (axis 0 of every input) does.

    Found by reshaping the net to one more sample and back, so each layer's own shape rules decide.
    A dimension that is the batch size itself (at both sizes) is marked :data:`BATCH_DIM` instead of True.
    """
    before = {name: tuple(b.shape) for name, b in net.blobs.items()}
    batched = [name for name in net.inputs if len(before[name]) >= 1]
    if not batched:
        raise ExportError("a dynamic batch needs an input with a batch axis; the net has none")
    try:
        for name in batched:
            net.blobs[name].reshape((before[name][0] + 1, *before[name][1:]))
        net.reshape()
        after = {name: tuple(b.shape) for name, b in net.blobs.items()}
    except NetdefError as err:
        raise ExportError(
            f"the net does not accept another batch size, so it cannot be exported with a dynamic batch: {err}"
        ) from None
    finally:
        for name in batched:
            net.blobs[name].reshape(before[name])
        net.reshape()
    sizes = (before[batched[0]][0], after[batched[0]][0])
    varying = {}
    for name, shape in before.items():
        if len(after[name]) != len(shape):
            raise ExportError(
                f'blob "{name}" changes its number of axes with the batch size ({shape} -> {after[name]}); '
                "export with a fixed batch"
            )
        varying[name] = tuple(
            (BATCH_DIM if (a, b) == sizes else True) if a != b else False
            for a, b in zip(shape, after[name], strict=True)
        )
    return varying


# --- the walk -------------------------------------------------------------------------------------
class Exporter:
    """Writes one built net as an ONNX graph (see :func:`export_onnx`)."""

    def __init__(self, net: Net, opset: int, dynamic_batch: bool, outputs: Sequence[str] | None = None):
        self.net = net
        self.records = net.records
        blob_names = set(net.blobs) | {n for rec in self.records for n in rec.top_names}
        self.graph = Graph(opset, reserved=blob_names)
        self.last_writer: dict[str, tuple[int, int]] = {}
        self.producer: dict[tuple[int, int], tuple[int, int]] = {}
        consumers: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i, rec in enumerate(self.records):
            for b, name in enumerate(rec.bottom_names):
                self.producer[(i, b)] = self.last_writer[name]
                consumers.setdefault(self.last_writer[name], []).append((i, b))
            for j, name in enumerate(rec.top_names):
                self.last_writer[name] = (i, j)
        self.input_names = list(net.inputs)
        self.output_names = self._outputs(outputs)
        self.needed = self._needed_layers()
        self.view = NetView(
            graph=self.graph,
            current={},
            shapes={name: tuple(b.shape) for name, b in net.blobs.items()},
            varying=batch_varying(net) if dynamic_batch else {},
            consumers={k: [c for c in v if c[0] in self.needed] for k, v in consumers.items()},
            output_values={self.last_writer[name] for name in self.output_names},
            records=self.records,
            dynamic_batch=dynamic_batch,
        )

    def _outputs(self, outputs: Sequence[str] | None) -> list[str]:
        if outputs is None:
            if not self.net.outputs:
                raise ExportError("the net has no outputs (every blob is consumed); name some with --output-blob")
            return list(self.net.outputs)
        names = list(dict.fromkeys(outputs))
        unknown = [n for n in names if n not in self.last_writer and n not in self.input_names]
        if unknown or not names:
            raise ExportError(
                f"the model outputs must be blobs of the net. Received: {', '.join(unknown) or '(none)'}. "
                f"Blobs: {', '.join(b for b in self.net.blobs if b != '(automatic)')}"
            )
        return names

    def _needed_layers(self) -> set[int]:
        """The layers the requested outputs depend on (the others are left out of the model)."""
        wanted = {self.last_writer[n] for n in self.output_names if n in self.last_writer}
        needed: set[int] = set()
        for i in range(len(self.records) - 1, -1, -1):
            rec = self.records[i]
            if any((i, j) in wanted for j in range(len(rec.top_names))):
                needed.add(i)
                wanted.update(self.producer[(i, b)] for b in range(len(rec.bottom_names)))
        return needed

    def _name(self, index: int, j: int) -> str:
        blob = self.records[index].top_names[j]
        if self.last_writer.get(blob) == (index, j) and blob not in self.input_names and blob not in self.graph.used:
            return self.graph.claim(blob)
        return self.graph.fresh(blob)

    def _dims(self, name: str) -> list[int | str]:
        shape = self.view.shapes[name]
        varying = self.view.varying.get(name, (False,) * len(shape))
        return [
            v if isinstance(v, str) else (f"{name}_dim{k}" if v else d) for k, (d, v) in enumerate(zip(shape, varying))
        ]

    def _convert(self, index: int, rec) -> None:
        type_name = rec.layer.type_name
        if index in self.view.absorbed:
            for name in rec.top_names:
                self.view.current[name] = self.view.absorbed[index]
            return
        convert = CONVERTERS.get(type_name)
        ctx = LayerExport(self.view, index, rec, self._name)
        if convert is None:
            reason = REFUSALS.get(type_name, "the exporter has no ONNX form for this layer type")
            raise ctx.refuse(reason + _cut_hint(rec))
        try:
            convert(ctx)
        except UnsupportedLayerError as err:
            raise UnsupportedLayerError(f"{err}{_cut_hint(rec)}") from None
        missing = [rec.top_names[j] for j in range(len(rec.top_names)) if j not in ctx.written]
        if missing:
            raise ExportError(f"internal error: {layer_prefix(rec.layer.name, type_name)} left {missing} unwritten")
        for j, name in enumerate(rec.top_names):
            self.view.current[name] = ctx.written[j]

    def run(self) -> tuple[list, list]:
        """Add every layer's nodes; returns the graph's input and output value infos."""
        graph = self.graph
        inputs = []
        read = {n for i in self.needed for n in self.records[i].bottom_names} | set(self.output_names)
        for name in self.input_names:
            if name not in read:
                continue  # an input no requested output depends on
            graph.claim(name)
            self.view.current[name] = name
            inputs.append(graph.value_info(name, self._dims(name)))
        for index, rec in enumerate(self.records):
            if rec.layer.type_name != "Input" and index in self.needed:
                self._convert(index, rec)
        outputs = []
        for name in self.output_names:
            value = self.view.current[name]
            label = name
            if value != name:
                if name in graph.used:
                    # an in-place layer rewrote an input blob: ONNX cannot name the input and the output alike
                    label = graph.fresh(f"{name}_output")
                    log.warning('Output blob "%s" is also an input of the net; the ONNX output is "%s"', name, label)
                else:
                    label = graph.claim(name)
                graph.node("Identity", [value], label)
            outputs.append(graph.value_info(label, self._dims(name), name))
        return inputs, outputs


def _cut_hint(rec) -> str:
    """How to export the part of the net before a refused layer."""
    if not rec.bottom_names:
        return ""
    blobs = ",".join(dict.fromkeys(rec.bottom_names))
    return (
        f". To export the net up to this layer, make its inputs the model's outputs: --output-blob {blobs} "
        f"(outputs=[...] in Python)"
    )


def _netdef_version() -> str:
    # read from the installed distribution: the package front door sits above this module
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("netdef")
    except PackageNotFoundError:
        return "unknown"


def _origin(net: Net, source: str | None, weights: str | None) -> dict[str, str]:
    props = {"netdef_version": _netdef_version()}
    if isinstance(source, str):
        props["source_net"] = os.path.basename(source)
    if weights:
        props["source_weights"] = os.path.basename(weights)
    return props


def export_onnx(
    model,
    weights: str | None = None,
    output: str | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    outputs: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Write a Caffe/netdef net as an ONNX model that computes what netdef's TEST-phase forward computes.

    Args:
        model: a net definition file (prototxt, YAML, JSON, binary), a NetParameter, or a built
            :class:`netdef.Net` (exported as it is, weights included).
        weights: a ``.caffemodel``/``.h5`` file to load first (without it, the fillers' values).
        output: where to save the ``.onnx`` file; None only returns the model.
        opset: the ONNX opset to write (13 up to the newest the installed ``onnx`` knows).
        dynamic_batch: leave the batch dimension (axis 0 of the inputs, and every dimension that
            follows it) open instead of fixing it to the net's batch size.
        input_shapes: ``{blob: dims}`` for inputs the definition leaves open or that should have
            another shape; a data layer producing such a blob becomes an input.
        outputs: the blobs to make model outputs (default: the net's outputs). Layers none of
            them depends on are left out, so a net can be cut before a layer ONNX cannot express.

    Returns:
        The ``onnx.ModelProto``; it has passed ``onnx.checker``.

    Raises:
        UnsupportedLayerError: a layer has no exact ONNX form (the message names it and says why).
        ExportError: the options do not fit the net, or the ``onnx`` package is missing.
    """
    opset = check_opset(opset)
    net = build_net(model, weights, input_shapes)
    return export_net(net, output, opset=opset, dynamic_batch=dynamic_batch, outputs=outputs, weights=weights)


def export_net(
    net: Net,
    output: str | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    outputs: Sequence[str] | None = None,
    weights: str | None = None,
) -> onnx.ModelProto:
    """Export a built net as it is (see :func:`export_onnx`); ``weights`` only names the weights in the model's note."""
    onnx = require_onnx()
    opset = check_opset(opset)
    exporter = Exporter(net, opset, dynamic_batch, outputs)
    inputs, values = exporter.run()
    props = _origin(net, net.source, weights)
    doc = "Exported by netdef from the Caffe net " + (
        f"{props.get('source_net', net.name or 'net')}"
        + (f" with weights {props['source_weights']}" if "source_weights" in props else "")
        + " (TEST phase)."
    )
    onnx_model = exporter.graph.model(net.name or "net", inputs, values, doc, props, props["netdef_version"])
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"the exported model does not pass onnx.checker (please report this): {err}") from None
    if output:
        with atomic_target(output) as temporary:
            onnx.save(onnx_model, temporary)
        log.info("Wrote %s (opset %d, %d nodes)", output, opset, len(onnx_model.graph.node))
    return onnx_model


__all__ = [
    "BATCH_DIM",
    "Exporter",
    "UnsupportedLayerError",
    "batch_varying",
    "build_net",
    "export_net",
    "export_onnx",
    "with_inputs",
]
