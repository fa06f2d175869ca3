"""``netdef time``: time forward and backward of each layer (Caffe's ``caffe time``).

As one Python call::

    from netdef.tools.timing import time_net
    report = time_net("models/lenet/deploy.prototxt", iterations=5)
    print("\\n".join(report.lines()))
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy

from .. import backend
from ..errors import NetdefError
from ..net import TEST, TRAIN
from ..progress import Progress
from .common import add_net_arguments, open_net, print_results, select_device, split_stages

log = logging.getLogger("netdef")


@dataclass
class TimingReport:
    """Seconds spent over all iterations: per layer forward and backward, and per whole iteration."""

    layer_names: list[str]
    forward: numpy.ndarray
    backward: numpy.ndarray
    iterations: numpy.ndarray

    def lines(self) -> list[str]:
        """Caffe's summary: average milliseconds per layer and pass, then the totals."""
        ms = 1e3 / len(self.iterations)
        width = max(len(name) for name in self.layer_names)
        lines = []
        for i, name in enumerate(self.layer_names):
            lines.append(f"{name:>{width}}\tforward: {self.forward[i] * ms:.4f} ms.")
            lines.append(f"{name:>{width}}\tbackward: {self.backward[i] * ms:.4f} ms.")
        lines.append(f"Average Forward pass: {self.forward.sum() * ms:.4f} ms.")
        lines.append(f"Average Backward pass: {self.backward.sum() * ms:.4f} ms.")
        lines.append(f"Average Forward-Backward: {self.iterations.sum() * ms:.4f} ms.")
        lines.append(f"Total Time: {self.iterations.sum() * 1e3:.4f} ms.")
        return lines


def _sync() -> None:
    # GPU kernels run asynchronously: wait for them so each layer's time is its own.
    if backend.mode() == "GPU":
        backend.cupy.cuda.Stream.null.synchronize()


def time_net(
    model: str,
    *,
    iterations: int = 50,
    phase: str = "TRAIN",
    weights: str | None = None,
    gpu: str | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
) -> TimingReport:
    """Time ``iterations`` forward-backward passes of ``model``, layer by layer, and log Caffe's report.

    One untimed forward and backward pass comes first (warm-up). Each layer runs on
    its own (``net.records[i].forward()`` / ``.backward()``), synchronised with the
    GPU after each, as ``caffe time`` measures.

    Args:
        model: the net definition file.
        iterations: how many timed passes.
        phase: ``"TRAIN"`` or ``"TEST"``.
        weights: weights to load first (optional).
        gpu: the ``--gpu`` value (None: the CPU).
        level, stages: the net state for include/exclude rules.
    """
    if iterations < 1:
        raise NetdefError(f"--iterations must be at least 1. Received: {iterations}")
    select_device(gpu)
    net = open_net(model, TEST if phase == "TEST" else TRAIN, weights, level, stages)
    n = len(net.layers)
    log.info("Performing Forward")
    net.forward_from_to()
    log.info("Performing Backward")
    net.backward_from_to()
    report = TimingReport(list(net.layer_names), numpy.zeros(n), numpy.zeros(n), numpy.zeros(iterations))
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    progress = Progress(iterations, "Timing")
    # on a terminal the bar stands in for the per-iteration lines
    iteration_level = logging.DEBUG if progress.enabled else logging.INFO
    for it in range(iterations):
        t_iter = time.perf_counter()
        for i, rec in enumerate(net.records):
            t0 = time.perf_counter()
            rec.forward()
            _sync()
            report.forward[i] += time.perf_counter() - t0
        for i in reversed(range(n)):
            t0 = time.perf_counter()
            net.records[i].backward()
            _sync()
            report.backward[i] += time.perf_counter() - t0
        report.iterations[it] = time.perf_counter() - t_iter
        log.log(iteration_level, "Iteration: %d forward-backward time: %.3f ms.", it + 1, report.iterations[it] * 1e3)
        progress.update()
    progress.close()
    log.info("Average time per layer: ")
    for line in report.lines():
        log.info(line)
    log.info("*** Benchmark ends ***")
    return report


def cmd_time(args: argparse.Namespace) -> int:
    """Run ``netdef time`` from parsed arguments; prints the per-layer report unless the log showed it."""
    if not args.model:
        raise NetdefError("time needs --model NET.prototxt")
    report = time_net(
        args.model,
        iterations=args.iterations,
        phase=args.phase,
        weights=args.weights,
        gpu=args.gpu,
        level=args.level,
        stages=split_stages(args.stage),
    )
    print_results(report.lines())
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef time``."""
    p = subparsers.add_parser("time", help="time forward and backward per layer, like `caffe time`")
    add_net_arguments(p)
    p.add_argument("--iterations", "-iterations", type=int, default=50, help="number of iterations (default 50)")
    p.add_argument("--phase", "-phase", choices=["TRAIN", "TEST"], default="TRAIN", help="net phase (default TRAIN)")
    p.set_defaults(func=cmd_time)
    return p


__all__ = ["TimingReport", "add_parser", "cmd_time", "time_net"]
