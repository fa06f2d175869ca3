"""Numerical gradient checking for layers (the role of Caffe's GradientChecker).

The checked objective is a fixed random projection of every top,
``L = sum_k <R_k, top_k>``: the analytic gradient is one backward with
``top_k.diff = R_k``; the numeric one uses central differences in float64.
An element passes when ``|analytic - numeric| <= tol * max(|analytic|, |numeric|, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from .. import backend
from ..proto import netdef_pb2 as pb
from .runners import make_layer, run_backward, run_layer


class GradientCheckError(AssertionError):
    """Analytic and numeric gradients disagree."""


def check_gradient(
    layer,
    bottoms: Sequence,
    *,
    check_bottoms: Sequence[int] | None = None,
    check_params: bool = True,
    num_top: int | None = None,
    step: float = 1e-5,
    tol: float = 1e-4,
    kink: float | None = None,
    kink_range: float = 1e-3,
    seed: int = 1701,
    top_index: int | None = None,
) -> dict:
    """Compare analytic and numeric gradients of ``layer`` (built with float64) on ``bottoms``.

    The layer's random streams are checkpointed once and restored before every
    forward, so stochastic layers (Dropout) see the same mask each time.

    Args:
        layer: a Layer instance (see ``make_layer``), not yet set up.
        bottoms: input arrays; each becomes a bottom blob.
        check_bottoms: indices of bottoms to check (default: all).
        check_params: also check every parameter blob.
        step: central-difference step.
        tol: relative tolerance (scaled by max(|a|, |n|, 1)).
        kink: for ReLU-like layers, skip inputs within ``kink_range`` of this value.
        seed: seed of the random projection.
        top_index: check the gradient of this top alone (the others get no projection), as
            Caffe's ``CheckGradientSingle`` does for one ``top_id``; default: all tops.

    Returns:
        ``{"checked": n, "max_error": e}``; raises GradientCheckError on a mismatch.
    """
    draws = layer.rng.checkpoint()
    bottom, top = run_layer(layer, bottoms, num_top)
    xp = layer.xp
    if top_index is not None and not 0 <= top_index < len(top):
        raise ValueError(f"top_index must name one of the {len(top)} tops. Received: {top_index}")
    proj_rng = numpy.random.default_rng(seed)
    projections = [proj_rng.standard_normal(t.shape) for t in top]
    if top_index is not None:
        projections = [r if k == top_index else numpy.zeros_like(r) for k, r in enumerate(projections)]

    def objective() -> float:
        layer.rng.restore(draws)
        layer.forward_step(bottom, top)
        return float(sum(numpy.sum(backend.to_numpy(t.data) * r) for t, r in zip(top, projections)))

    check_bottoms = list(range(len(bottom))) if check_bottoms is None else list(check_bottoms)
    objective()
    for b in bottom:
        b.diff = xp.zeros(b.shape, dtype=layer.dtype)
    for p in layer.blobs:
        p.diff = xp.zeros(p.shape, dtype=layer.dtype)
    run_backward(layer, bottom, top, projections, [i in check_bottoms for i in range(len(bottom))])
    targets = [(f"bottom {i}", bottom[i], True) for i in check_bottoms]
    if check_params:
        targets += [(f"param {j}", p, False) for j, p in enumerate(layer.blobs)]
    analytic = {name: backend.to_numpy(blob.diff).copy() for name, blob, _ in targets}
    checked, worst = 0, 0.0
    for name, blob, is_bottom in targets:
        flat = blob.data.reshape(-1)
        grads = analytic[name].reshape(-1)
        for idx in range(flat.size):
            x0 = float(flat[idx])
            if kink is not None and is_bottom and abs(x0 - kink) < kink_range:
                continue
            flat[idx] = x0 + step
            plus = objective()
            flat[idx] = x0 - step
            minus = objective()
            flat[idx] = x0
            numeric = (plus - minus) / (2 * step)
            a = float(grads[idx])
            scale = max(abs(a), abs(numeric), 1.0)
            err = abs(a - numeric) / scale
            worst = max(worst, err)
            checked += 1
            if err > tol:
                raise GradientCheckError(
                    f"{layer.type_name} {name} element {idx}: analytic {a:.8g} vs numeric {numeric:.8g} "
                    f"(relative error {err:.3g} > {tol})"
                )
    objective()
    return {"checked": checked, "max_error": worst}


def check_gpu_matches_cpu(
    definition,
    bottoms: Sequence,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    phase: int = pb.TRAIN,
    other_xp=None,
    num_top: int | None = None,
    propagate_down: Sequence[bool] | None = None,
) -> None:
    """Run one layer forward and backward on NumPy and on CuPy (float64) and compare every result.

    Compared: tops, bottom diffs, parameter values (forward may update them, e.g.
    BatchNorm statistics) and parameter diffs. Skips (pytest) when CuPy or a CUDA
    device is missing. The random stream is reset before each run and the top diffs
    are a fixed cosine pattern, so both runs see the same inputs. ``num_top`` and
    ``propagate_down`` (default: every bottom) are as for :func:`run_layer` and :func:`run_backward`.
    """
    if other_xp is None:  # the normal case; other_xp lets the comparison itself be tested without a GPU
        import pytest  # a test-only dependency: netdef.testing stays importable without it

        if not backend.gpu_available():
            pytest.skip("CuPy or a CUDA device is not available")
        import cupy as other_xp  # optional and heavy: only where a GPU is there to compare with

    results = []
    for xp in (numpy, other_xp):
        backend.set_random_seed(0)
        layer = make_layer(definition, phase=phase, xp=xp)
        bottom, top = run_layer(layer, bottoms, num_top)
        run_backward(layer, bottom, top, [numpy.cos(numpy.arange(t.count)) for t in top], propagate_down)
        arrays = [t.data for t in top] + [b.diff for b in bottom] + [p.data for p in layer.blobs]
        results.append([backend.to_numpy(a) for a in arrays + [p.diff for p in layer.blobs]])
    for cpu, gpu in zip(*results):
        numpy.testing.assert_allclose(gpu, cpu, rtol=rtol, atol=atol)
