"""``netdef summary``: one table of a net's layers, shapes, parameters, multiply-adds and memory.

As one Python call::

    from netdef.tools.summary import summary
    print(summary("models/cifar10_quick/deploy.prototxt", input_shapes={"data": (1, 3, 32, 32)}))
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from ..errors import NetdefError
from ..net import TEST, TRAIN
from ..summary import NetSummary, summarize
from .common import open_net, split_stages


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``data=1,3,32,32`` -> ``("data", (1, 3, 32, 32))``."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 0:
        raise NetdefError(f"--input-shape takes NAME=D0,D1,... such as data=1,3,32,32. Received: {text!r}")
    return name, shape


def summary(
    model: str,
    *,
    phase: str = "TEST",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
) -> NetSummary:
    """Build ``model`` (CPU, filler weights) in ``phase`` and summarize it (see :func:`netdef.summary.summarize`)."""
    net = open_net(model, TEST if phase == "TEST" else TRAIN, None, level, stages)
    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    return summarize(net, shapes)


def cmd_summary(args: argparse.Namespace) -> int:
    """Run ``netdef summary`` from parsed arguments; prints the table."""
    shapes = dict(parse_input_shape(t) for t in args.input_shape)
    result = summary(args.net, phase=args.phase, input_shapes=shapes, level=args.level, stages=split_stages(args.stage))
    print(result)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef summary``."""
    p = subparsers.add_parser(
        "summary",
        help="table of layers: top shapes, parameters, multiply-adds, activation memory",
        description="Print one line per layer (type, top shapes, learnable and fixed parameter values, forward "
        "multiply-adds, activation memory) and the totals.",
        epilog="example: netdef summary models/cifar10_quick/deploy.prototxt --input-shape data=1,3,32,32",
    )
    p.add_argument("net", help="net definition file (.prototxt, .yaml, .json)")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST", help="net phase (default TEST)")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="reshape an input blob before summarizing (repeatable), e.g. data=1,3,224,224",
    )
    p.add_argument("--level", type=int, default=0, help="net state level for include/exclude rules")
    p.add_argument("--stage", help="comma-separated net state stages for include/exclude rules")
    p.set_defaults(func=cmd_summary)
    return p


__all__ = ["add_parser", "cmd_summary", "parse_input_shape", "summary"]
