"""Noticing a diverged training run: non-finite losses and parameters, and where they first appear.

Caffe keeps training when the loss becomes NaN and happily snapshots NaN weights; a
netdef solver stops instead (``on_divergence="stop"``, the default) with a
TrainingDivergedError built here, or warns once and goes on (``"continue"``).
"""

from __future__ import annotations

import numpy

from .. import backend
from ..errors import SolverError, layer_prefix
from ..logs import format_g

#: what a solver does when training diverges
POLICIES = ("stop", "continue")


def parse_policy(value: str) -> str:
    """``"stop"`` or ``"continue"`` (any case); a SolverError naming the valid values otherwise."""
    policy = str(value).strip().lower()
    if policy not in POLICIES:
        raise SolverError(f"on_divergence must be one of {', '.join(POLICIES)}. Received: {value!r}")
    return policy


def all_finite(array) -> bool:
    """Whether every value of ``array`` is finite (one float64 reduction, no temporary of its size)."""
    if array is None or array.size == 0:
        return True
    xp = backend.array_module(array)
    # A float64 sum of float32 values cannot overflow; any NaN or inf makes it non-finite.
    with numpy.errstate(invalid="ignore", over="ignore"):
        return bool(xp.isfinite(array.sum(dtype=xp.float64)))


def params_finite(net) -> bool:
    """Whether every learnable parameter of ``net`` is finite."""
    return all(all_finite(blob.data) for blob in net.learnable_params)


def first_non_finite(net) -> str | None:
    """Where ``net`` first holds a non-finite value, in forward order; None when nowhere.

    Per layer its parameters (what it was given), then its outputs (what it made);
    when all of those are finite, the parameter gradients, from the last layer back.
    """
    for rec in net.records:
        layer = rec.layer
        for i, blob in enumerate(layer.blobs):
            if not all_finite(blob.data):
                return f"parameter {i} of {layer_prefix(layer.name, layer.type_name)}"
        for name, blob in zip(rec.top_names, rec.top):
            if not all_finite(blob.data):
                return f'output "{name}" of {layer_prefix(layer.name, layer.type_name)}'
    for rec in reversed(net.records):
        layer = rec.layer
        for i, blob in enumerate(layer.blobs):
            if not all_finite(blob.diff):
                return f"the gradient of parameter {i} of {layer_prefix(layer.name, layer.type_name)}"
    return None


def describe(iteration: int, what: str, where: str | None, lr: float, clip_gradients: float) -> str:
    """The message for a run that diverged at ``iteration`` (``what``: e.g. "the loss is nan")."""
    clip = (
        f"a smaller clip_gradients (now {format_g(clip_gradients)})"
        if clip_gradients >= 0
        else "clip_gradients (e.g. clip_gradients: 10 in the solver file)"
    )
    first = f" First non-finite value: {where}." if where else ""
    return (
        f"Training diverged at iteration {iteration}: {what}.{first} Learning rate: {format_g(lr)}. "
        f"Try a lower base_lr, {clip}, and check the input data for NaN or infinite values."
    )


__all__ = ["POLICIES", "all_finite", "describe", "first_non_finite", "params_finite", "parse_policy"]
