"""Check an exported model against netdef: run both on the same inputs and compare every output.

ONNX Runtime is not a dependency of netdef (it comes with the test extra); the check imports it
where it runs and says how to install it when it is missing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy

from ..backend import to_numpy
from ..errors import install_hint
from .errors import ExportError

#: the largest error :func:`compare_with_onnxruntime` callers accept, relative to max(1, |netdef value|)
TOLERANCE = 1e-4


def random_inputs(net, seed: int = 0) -> dict[str, numpy.ndarray]:
    """Standard normal float32 values for every input of ``net``, in its current shapes."""
    rng = numpy.random.default_rng(seed)
    return {name: rng.standard_normal(net.blobs[name].shape).astype(numpy.float32) for name in net.inputs}


def _fan_in(layer, shape: tuple[int, ...]) -> int:
    """How many inputs each output of a weighted layer sums (for a variance-preserving random scale)."""
    if layer.type_name == "InnerProduct" and getattr(layer, "transpose", False):
        return max(1, shape[0])
    if layer.type_name == "Deconvolution":
        overlap = max(1, int(numpy.prod(layer.kernel)) // max(1, int(numpy.prod(layer.stride))))
        return max(1, shape[0] // layer.group * overlap)
    return max(1, int(numpy.prod(shape[1:])))


def random_weights(net, seed: int = 0) -> None:
    """Fill every parameter blob of ``net`` with random values of a reasonable size, in place.

    Weighted layers get ``N(0, 1/fan_in)`` weights and ``N(0, 0.1)`` biases, so activations keep
    their scale through deep nets; BatchNorm gets a mean ``N(0, 0.1)``, a positive variance in
    ``[0.5, 1.5]`` and scale factor 1; scales and slopes (Scale, BN, Normalize) lie in ``[0.5, 1.5]``,
    PReLU slopes in ``[0.05, 0.3]``.
    """
    rng = numpy.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if not blobs:
            continue
        kind = layer.type_name
        values = [None] * len(blobs)
        if kind == "BatchNorm":
            c = blobs[0].shape
            values = [rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c), numpy.ones(blobs[2].shape)]
        elif kind == "BN" and len(blobs) == 4:
            s = blobs[0].shape
            values = [rng.uniform(0.5, 1.5, s), rng.normal(0, 0.1, s), rng.normal(0, 0.1, s), rng.uniform(0.5, 1.5, s)]
        elif kind in ("Scale", "BN", "Normalize"):
            values = [rng.uniform(0.5, 1.5, blobs[0].shape)] + [rng.normal(0, 0.1, b.shape) for b in blobs[1:]]
        elif kind == "PReLU":
            values = [rng.uniform(0.05, 0.3, blobs[0].shape)]
        elif kind in ("Embed", "Parameter") or blobs[0].num_axes < 2:
            values = [rng.normal(0, 1, b.shape) for b in blobs]
        else:
            scale = (1.0 / _fan_in(layer, blobs[0].shape)) ** 0.5
            values = [rng.normal(0, scale, blobs[0].shape)] + [rng.normal(0, 0.1, b.shape) for b in blobs[1:]]
        for blob, value in zip(blobs, values, strict=True):
            blob.data[...] = numpy.asarray(value, dtype=blob.data.dtype).reshape(blob.shape)


def relative_error(expected, actual) -> float:
    """``max |expected - actual| / max(1, |expected|)`` (0 for empty arrays; inf when the shapes differ)."""
    expected = numpy.asarray(expected, dtype=numpy.float64)
    actual = numpy.asarray(actual, dtype=numpy.float64)
    if expected.shape != actual.shape:
        return float("inf")
    if not expected.size:
        return 0.0
    return float(numpy.max(numpy.abs(expected - actual) / numpy.maximum(1.0, numpy.abs(expected))))


def onnxruntime_session(model):
    """A CPU InferenceSession of ``model`` (a ModelProto or a file name)."""
    try:
        import onnxruntime  # optional dependency: comes with the "test" extra
    except ImportError:
        raise ExportError(
            f"checking the exported model needs onnxruntime: {install_hint('test', 'onnxruntime')}"
        ) from None
    data = model if isinstance(model, str) else model.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def compare_with_onnxruntime(
    net, model, inputs: Mapping[str, numpy.ndarray] | None = None, seed: int = 0
) -> dict[str, float]:
    """Run ``net`` (netdef, TEST phase) and ``model`` (ONNX Runtime, CPU) on the same inputs.

    Args:
        net: the netdef net the model was exported from.
        model: the exported ``onnx.ModelProto`` or its file name.
        inputs: ``{input name: array}``; by default :func:`random_inputs` with ``seed``.

    Returns:
        ``{output name: max relative error}`` for every output of the model, the error relative to
        ``max(1, |netdef value|)``.
    """
    feeds = dict(inputs) if inputs is not None else random_inputs(net, seed)
    results = run_onnxruntime(model, feeds)
    for name, value in feeds.items():
        if tuple(net.blobs[name].shape) != tuple(numpy.shape(value)):
            net.blobs[name].reshape(tuple(numpy.shape(value)))
            net.reshape()
    net.forward(**feeds)
    return {name: relative_error(to_numpy(net.blobs[blob].data), got) for (name, blob), got in results.items()}


def run_onnxruntime(model, inputs: Mapping[str, numpy.ndarray]) -> dict[tuple[str, str], numpy.ndarray]:
    """Run ``model`` in ONNX Runtime (CPU) on float32 ``inputs``: ``{(output name, net blob): array}``."""
    session = onnxruntime_session(model)
    names = [o.name for o in session.get_outputs()]
    blobs = output_blobs(model)
    results = session.run(names, {k: numpy.asarray(v, dtype=numpy.float32) for k, v in inputs.items()})
    return {(name, blobs.get(name, name)): value for name, value in zip(names, results)}


def output_blobs(model) -> dict[str, str]:
    """``{ONNX output name: net blob}`` of an exported model (they differ only where an input blob was rewritten)."""
    from .graph import BLOB_DOC_PREFIX, require_onnx

    if isinstance(model, str):
        model = require_onnx().load(model, load_external_data=False)
    return {
        o.name: o.doc_string[len(BLOB_DOC_PREFIX) :]
        for o in model.graph.output
        if o.doc_string.startswith(BLOB_DOC_PREFIX)
    }


__all__ = [
    "TOLERANCE",
    "compare_with_onnxruntime",
    "onnxruntime_session",
    "output_blobs",
    "random_inputs",
    "random_weights",
    "relative_error",
    "run_onnxruntime",
]
