"""`netdef device_query`: the GPU(s) CuPy sees, or a clear CPU-only message."""

import pytest

from netdef import backend
from netdef.cli import main
from netdef.layers import ort_kernels
from netdef.tools.device_query import device_query


def test_cpu_only_message(monkeypatch, capsys):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    lines = device_query()
    assert lines[0].startswith("No CUDA device is available to netdef") and "runs on the CPU" in lines[0]
    assert any(line.startswith("Logical cores:") for line in lines)
    assert main(["device_query"]) == 0
    assert "netdef runs on the CPU" in capsys.readouterr().out
    assert main(["device-query", "-q"]) == 0


def test_cpu_message_names_the_kernels_in_use(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    (line,) = [line for line in device_query() if line.startswith("CPU kernels:")]
    if ort_kernels.active():
        assert "ONNX Runtime" in line and "GEMM" in line
    else:
        assert "install the 'fast' extra" in line
    monkeypatch.setattr(ort_kernels, "active", lambda: False)
    (line,) = [line for line in device_query() if line.startswith("CPU kernels:")]
    assert line.endswith("NumPy (install the 'fast' extra for ONNX Runtime's convolution and GEMM kernels)")


@pytest.mark.gpu
def test_gpu_properties():
    if not backend.gpu_available():
        pytest.skip("no CUDA device / CuPy")
    lines = device_query("0")
    assert lines[0] == "Device id:                     0"
    assert any(line.startswith("Total global memory:") for line in lines)
    assert "No GPU with device id 99" in device_query("99")[-1]
