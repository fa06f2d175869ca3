"""Whole-net GPU runs against the CPU (skipped without CuPy and a CUDA device)."""

from pathlib import Path

import numpy
import pytest

import netdef
from netdef import backend

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.gpu


def _losses(mode, monkeypatch, steps=5):
    monkeypatch.chdir(REPO)
    netdef.set_mode_gpu() if mode == "GPU" else netdef.set_mode_cpu()
    netdef.set_random_seed(3)
    solver = netdef.get_solver("models/digits/solver.prototxt")
    solver.param.snapshot_after_train = False
    losses = []
    for _ in range(steps):
        solver.step(1)
        losses.append(float(backend.to_numpy(solver.net.blobs["loss"].data)))
    return losses, backend.to_numpy(solver.net.params["conv1"][0].data)


def test_digits_training_matches_cpu(monkeypatch):
    if not backend.gpu_available():
        pytest.skip("CuPy or a CUDA device is not available")
    cpu_losses, cpu_w = _losses("CPU", monkeypatch)
    gpu_losses, gpu_w = _losses("GPU", monkeypatch)
    netdef.set_mode_cpu()
    # Same seed and data order; the fillers draw on the CPU stream in both modes.
    numpy.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-3)
    numpy.testing.assert_allclose(gpu_w, cpu_w, rtol=1e-3, atol=1e-5)


def test_forward_blobs_live_on_the_gpu():
    if not backend.gpu_available():
        pytest.skip("CuPy or a CUDA device is not available")
    import cupy

    netdef.set_mode_gpu()
    try:
        net = netdef.Net(str(REPO / "models" / "digits" / "deploy.prototxt"), netdef.TEST)
        net.blobs["data"].data[...] = cupy.ones((1, 1, 8, 8), dtype=cupy.float32)
        out = net.forward()
        assert isinstance(out["prob"], cupy.ndarray)
        assert abs(float(out["prob"].sum()) - 1.0) < 1e-5
    finally:
        netdef.set_mode_cpu()
