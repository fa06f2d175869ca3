"""What the commands share: choosing the device, the net options, and opening a net from them."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from .. import backend
from ..errors import NetdefError
from ..net import Net

log = logging.getLogger("netdef")


def select_device(gpu: str | None, solver_mode_gpu: bool = False, device_id: int = 0) -> None:
    """Make the CPU or one GPU the default device, as Caffe's tools do, and log the choice.

    Args:
        gpu: the ``--gpu`` value: a device number, a comma-separated list (netdef
            uses the first) or ``all`` (device 0); None for the CPU unless the
            solver asks for the GPU.
        solver_mode_gpu: the solver file says ``solver_mode: GPU``; used when ``gpu`` is
            None and a device is available (with a warning and the CPU otherwise).
        device_id: the solver file's ``device_id``, for ``solver_mode_gpu``.
    """
    if gpu is None and solver_mode_gpu:
        if backend.gpu_available():
            gpu = str(device_id)
        else:
            log.warning("solver_mode is GPU but no CUDA device/CuPy is available: running on the CPU")
    if gpu is None:
        backend.set_mode_cpu()
        log.info("Use CPU.")
        return
    if gpu == "all":
        gpu = "0"
        log.info("netdef trains on one device; --gpu all uses device 0")
    try:
        ids = [int(g) for g in gpu.split(",")]
    except ValueError:
        raise NetdefError(f"--gpu takes a device number, a comma-separated list or 'all'. Received: {gpu!r}") from None
    if len(ids) > 1:
        log.info("netdef trains on one device; using the first of %s", ids)
    backend.set_device(ids[0])
    backend.set_mode_gpu()
    log.info("Use GPU with device ID %d", ids[0])


def add_gpu_argument(parser: argparse.ArgumentParser) -> None:
    """``--gpu`` / ``-gpu``."""
    parser.add_argument("--gpu", "-gpu", help="GPU device id to use (CPU when omitted)")


def add_net_arguments(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """The options train, test and time share (Caffe's flags, with its single-dash spellings)."""
    add_gpu_argument(parser)
    if model:
        parser.add_argument("--model", "-model", help="net definition file (.prototxt, .yaml, .json)")
    parser.add_argument(
        "--weights", "-weights", help="weights (.caffemodel or .h5) to start from; train accepts a comma-separated list"
    )
    parser.add_argument("--level", "-level", type=int, default=0, help="net state level for include/exclude rules")
    parser.add_argument("--stage", "-stage", help="comma-separated net state stages for include/exclude rules")


def split_stages(stage: str | None) -> list[str]:
    """``--stage a,b`` as a list of stage names (empty entries dropped)."""
    return [s for s in (stage or "").split(",") if s]


def open_net(model: str, phase: int, weights: str | None = None, level: int = 0, stages: Sequence[str] = ()) -> Net:
    """The net ``model`` defines, in ``phase`` with the given state, with ``weights`` loaded when given."""
    return Net(model, phase, weights=weights, level=level, stages=list(stages))


__all__ = ["add_gpu_argument", "add_net_arguments", "open_net", "select_device", "split_stages"]
