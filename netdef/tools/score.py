"""``netdef test``: score a trained model, the mean of each net output over some batches (Caffe's ``caffe test``).

As one Python call::

    from netdef.tools.score import score
    means = score("models/digits/train_val.prototxt", "digits_iter_1000.caffemodel", iterations=3)
    # {"accuracy": 0.980556, "loss": 0.0699628}
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy

from .. import backend
from ..errors import NetdefError
from ..logs import format_g, output_line
from ..net import TEST
from .common import add_net_arguments, open_net, select_device, split_stages

log = logging.getLogger("netdef")


def _labelled(name: str, values: numpy.ndarray):
    """(label, value) for each value of output ``name``: ``name``, or ``name[k]`` for a multi-value output."""
    for k, v in enumerate(values):
        yield (name if values.size == 1 else f"{name}[{k}]"), v


def score(
    model: str,
    weights: str | None = None,
    *,
    iterations: int = 50,
    gpu: str | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
) -> dict[str, float]:
    """Run ``iterations`` TEST-phase forward passes; the mean of every output value.

    Each batch's values, the mean loss and the means (with their loss weights) are
    logged as ``caffe test`` logs them. An output with several values gives one
    entry per value, ``name[k]``.

    Args:
        model: the net definition file.
        weights: trained weights (``.caffemodel``/``.h5``); None tests the filler weights.
        iterations: how many batches.
        gpu: the ``--gpu`` value (None: the CPU).
        level, stages: the net state for include/exclude rules.
    """
    select_device(gpu)
    net = open_net(model, TEST, weights, level, stages)
    if not weights:
        log.warning("No --weights given: testing the net's initial (filler) weights")
    totals: dict[str, numpy.ndarray] = {}
    loss = 0.0
    for i in range(iterations):
        outputs = net.forward()
        loss += net.loss
        for name, value in outputs.items():
            value = backend.to_numpy(value).astype(numpy.float64).reshape(-1)
            totals[name] = totals.get(name, 0) + value
            for label, v in _labelled(name, value):
                log.info("Batch %d, %s", i, output_line(label, v))
    log.info("Loss: %s", format_g(loss / iterations))
    weights_of = net.loss_weights()
    means: dict[str, float] = {}
    for name, total in totals.items():
        for label, v in _labelled(name, total / iterations):
            log.info("%s", output_line(label, v, weights_of.get(name, 0.0)))
            means[label] = float(v)
    return means


def cmd_test(args: argparse.Namespace) -> int:
    """Run ``netdef test`` from parsed arguments; prints ``name = mean`` for each output value."""
    if not args.model:
        raise NetdefError("test needs --model NET.prototxt (and usually --weights MODEL.caffemodel)")
    means = score(
        args.model,
        args.weights,
        iterations=args.iterations,
        gpu=args.gpu,
        level=args.level,
        stages=split_stages(args.stage),
    )
    for label, v in means.items():
        print(output_line(label, v))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef test``."""
    p = subparsers.add_parser("test", help="score a trained model (TEST phase, mean of each output)")
    add_net_arguments(p)
    p.add_argument("--iterations", "-iterations", type=int, default=50, help="number of batches (default 50)")
    p.set_defaults(func=cmd_test)
    return p


__all__ = ["add_parser", "cmd_test", "score"]
