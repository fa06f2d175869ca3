"""``netdef device_query``: what compute device netdef would use (Caffe's ``caffe device_query``).

As one Python call::

    from netdef.tools.device_query import device_query
    print("\\n".join(device_query()))
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy

from .. import backend


def _gpu_lines(device_id: int) -> list[str]:
    cupy = backend.cupy
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    free, total = cupy.cuda.Device(device_id).mem_info

    def text(value) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    return [
        f"Device id:                     {device_id}",
        f"Name:                          {text(props.get('name', '?'))}",
        f"Major revision number:         {props.get('major', '?')}",
        f"Minor revision number:         {props.get('minor', '?')}",
        f"Total global memory:           {total}",
        f"Free global memory:            {free}",
        f"Total shared memory per block: {props.get('sharedMemPerBlock', '?')}",
        f"Total registers per block:     {props.get('regsPerBlock', '?')}",
        f"Warp size:                     {props.get('warpSize', '?')}",
        f"Maximum threads per block:     {props.get('maxThreadsPerBlock', '?')}",
        f"Clock rate:                    {props.get('clockRate', '?')}",
        f"Number of multiprocessors:     {props.get('multiProcessorCount', '?')}",
        f"CuPy version:                  {cupy.__version__}",
    ]


def device_query(gpu: str | None = None) -> list[str]:
    """Lines describing GPU ``gpu`` (a number, a comma list or ``all``; None: every GPU), or the CPU when none.

    Without CuPy or a CUDA device the lines say so and describe the CPU netdef runs on.
    """
    lines = []
    if backend.gpu_available():
        count = backend.cupy.cuda.runtime.getDeviceCount()
        if gpu in (None, "all"):
            ids = list(range(count))
        else:
            ids = [int(g) for g in str(gpu).split(",") if g.strip()]
        for i in ids:
            if not 0 <= i < count:
                lines.append(f"No GPU with device id {i}: this machine has {count} (ids 0..{count - 1})")
                continue
            lines += _gpu_lines(i)
        return lines
    lines.append("No CUDA device is available to netdef (CuPy missing or no GPU): netdef runs on the CPU.")
    lines.append(f"CPU:                           {platform.processor() or platform.machine()}")
    lines.append(f"Logical cores:                 {os.cpu_count()}")
    lines.append(f"NumPy version:                 {numpy.__version__}")
    lines.append(f"CPU kernels:                   {cpu_kernels()}")
    lines.append("For the GPU: install the 'gpu' extra (CuPy for CUDA 12) on a machine with an NVIDIA GPU.")
    return lines


def cpu_kernels() -> str:
    """Which kernels the CPU paths use: ONNX Runtime's (the ``fast`` extra) or NumPy's alone."""
    from ..layers import ort_kernels

    if not ort_kernels.active():
        return "NumPy (install the 'fast' extra for ONNX Runtime's convolution and GEMM kernels)"
    import onnxruntime

    block = ort_kernels.block_size()
    convs = f"blocked convolutions (block {block})" if block else "no blocked convolutions"
    return f"ONNX Runtime {onnxruntime.__version__}: {convs} and GEMM"


def cmd_device_query(args: argparse.Namespace) -> int:
    """Run ``netdef device_query`` from parsed arguments."""
    for line in device_query(args.gpu):
        print(line)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef device_query`` (also spelt ``device-query``)."""
    p = subparsers.add_parser(
        "device_query",
        aliases=["device-query"],
        help="show the GPU(s) netdef can use, or say that it runs on the CPU",
        description="Describe the CUDA device(s) CuPy sees (Caffe's `caffe device_query`), or the CPU when "
        "there is none.",
        epilog="example: netdef device_query --gpu 0",
    )
    p.add_argument("--gpu", "-gpu", help="device id(s) to describe (default: all)")
    p.set_defaults(func=cmd_device_query)
    return p


__all__ = ["add_parser", "cmd_device_query", "device_query"]
