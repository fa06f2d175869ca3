"""Running one layer alone, as the tests do: build it, feed it arrays, run forward and backward."""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from .. import backend
from ..blob import Blob
from ..layers import Layer, layer_class
from ..net import TRAIN, Net
from ..proto import net_from_text, parse_text
from ..proto import netdef_pb2 as pb


def rand(*shape: int, seed: int = 0) -> numpy.ndarray:
    """Standard-normal float64 values of ``shape``, from a generator of their own seeded with ``seed``."""
    return numpy.random.default_rng(seed).standard_normal(shape)


def make_layer(definition, phase: int = pb.TRAIN, dtype=numpy.float64, xp=None):
    """A layer from a LayerParameter or its prototxt text (``type: "ReLU" ...``)."""
    if isinstance(definition, str):
        definition = parse_text(definition, pb.LayerParameter(), "<layer>")
    if not definition.name:
        definition.name = "L"
    return layer_class(definition.type)(definition, phase=phase, dtype=dtype, xp=xp or numpy)


def make_net(text: str, phase: int = TRAIN) -> Net:
    """A net from the prototxt text of a NetParameter (``layer { ... } layer { ... }``)."""
    return Net(net_from_text(text), phase)


def make_blobs(arrays: Sequence, dtype, xp, prefix: str = "b") -> list[Blob]:
    """One blob per array holding a copy of it as ``dtype`` on ``xp``, named ``b0``, ``b1``, ..."""
    blobs = []
    for i, arr in enumerate(arrays):
        b = Blob(numpy.shape(arr), dtype=dtype, xp=xp, name=f"{prefix}{i}")
        b.data = backend.asarray(arr, xp, dtype).copy()
        blobs.append(b)
    return blobs


def run_layer(layer, bottoms: Sequence, num_top: int | None = None, xp=None, params: Sequence | None = None):
    """Set up ``layer`` on copies of ``bottoms`` and run one forward step; return (bottom blobs, top blobs).

    ``params``, when given, are values for the layer's parameter blobs (in order, as many as
    given), written after set-up and before the forward step.
    """
    xp = xp or layer.xp
    bottom = make_blobs(bottoms, layer.dtype, xp)
    n = num_top if num_top is not None else max(len(layer.param.top), 1)
    top = [Blob((), dtype=layer.dtype, xp=xp, name=f"t{k}") for k in range(n)]
    layer.layer_setup(bottom, top)
    for blob, value in zip(layer.blobs, params or ()):
        blob.data[...] = backend.asarray(value, xp, layer.dtype)
    layer.forward_step(bottom, top)
    return bottom, top


def forward_layer(
    definition,
    bottoms: Sequence,
    params: Sequence | None = None,
    num_top: int | None = None,
    *,
    phase: int = pb.TRAIN,
    dtype=numpy.float64,
    xp=None,
):
    """:func:`make_layer` from ``definition``, then :func:`run_layer`; returns (layer, bottom blobs, top blobs)."""
    layer = make_layer(definition, phase=phase, dtype=dtype, xp=xp)
    bottom, top = run_layer(layer, bottoms, num_top, params=params)
    return layer, bottom, top


def enable_param_gradients(layer) -> None:
    """Ask ``layer`` for the gradient of every parameter blob (a net decides this from ``lr_mult``)."""
    layer.param_propagate_down = [True] * len(layer.blobs)


def run_backward(
    layer,
    bottom: Sequence[Blob],
    top: Sequence[Blob],
    top_diffs: Sequence | None = None,
    propagate_down: Sequence[bool] | None = None,
) -> list:
    """One backward pass of a layer that has run forward; returns the bottom diffs.

    Args:
        top_diffs: one array per top, reshaped to the top and put into its diff; a None entry
            (or no list at all) keeps the diff the top holds (e.g. a loss layer's seeded weight).
        propagate_down: one flag per bottom (default: every bottom).

    Every parameter gradient is asked for; parameter diffs accumulate, as in a net.
    """
    for t, d in zip(top, top_diffs or [None] * len(top), strict=True):
        if d is not None:
            t.diff = backend.asarray(d, t.xp, t.dtype).reshape(t.shape)
    enable_param_gradients(layer)
    layer.backward(top, list(propagate_down) if propagate_down is not None else [True] * len(bottom), bottom)
    return [b.diff for b in bottom]


def check_empty_batch(definition, shape: Sequence[int]) -> None:
    """A batch of zero samples (e.g. after a Filter layer) runs forward and backward with the right shapes."""
    layer, bottom, top = forward_layer(definition, [numpy.zeros(shape)])
    run_backward(layer, bottom, top, [numpy.zeros(top[0].shape)])
    if top[0].shape[:1] != (0,) or bottom[0].diff.shape != tuple(shape):
        raise AssertionError(
            f"{layer.type_name}: an empty batch gave top {top[0].shape} and bottom diff "
            f"{bottom[0].diff.shape}; expected a top of 0 samples and a diff of {tuple(shape)}"
        )


def check_layer_error(
    definition, bottoms: Sequence, error: type[Exception], needle: str, num_top: int | None = None
) -> Exception:
    """Setting up and running ``definition`` (text, a LayerParameter or a Layer) on ``bottoms`` raises
    ``error`` with a message that names the layer and contains ``needle``; returns the error."""
    layer = definition if isinstance(definition, Layer) else make_layer(definition)
    try:
        run_layer(layer, bottoms, num_top)
    except error as err:
        message = str(err)
        if needle not in message or layer.describe() not in message:
            raise AssertionError(
                f"{error.__name__} {message!r} does not name {layer.describe()!r} and contain {needle!r}"
            ) from err
        return err
    raise AssertionError(f"{layer.describe()}: no {error.__name__} was raised")
