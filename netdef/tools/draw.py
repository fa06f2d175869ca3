"""``netdef draw``: a picture of a net's graph, like Caffe's ``python/draw_net.py``.

``.dot`` needs nothing installed; ``.png``, ``.svg``, ``.pdf`` need Graphviz's ``dot``
program (see :mod:`netdef.draw`). As one Python call::

    from netdef.draw import draw_net_to_file
    draw_net_to_file("models/lenet/train_val.prototxt", "lenet.svg", rankdir="TB")
"""

from __future__ import annotations

import argparse

from ..draw import RANKDIRS, draw_net_to_file
from ..net import TEST, TRAIN


def cmd_draw(args: argparse.Namespace) -> int:
    """Run ``netdef draw`` from parsed arguments."""
    phase = {"TRAIN": TRAIN, "TEST": TEST, "ALL": None}[args.phase]
    draw_net_to_file(
        args.net, args.output, rankdir=args.rankdir, phase=phase, display_lrm=args.display_lrm, blobs=not args.no_blobs
    )
    print(args.output)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef draw``."""
    p = subparsers.add_parser(
        "draw",
        help="draw a net's graph (.dot without extras; .png/.svg/.pdf with Graphviz)",
        description="Draw a net's layers and blobs as Caffe's draw_net.py does. The format follows OUT's "
        "extension: .dot (Graphviz text, nothing to install) or .png, .svg, .pdf (needs Graphviz's `dot`).",
        epilog="example: netdef draw models/lenet/train_val.prototxt lenet.svg --rankdir TB --phase TEST",
    )
    p.add_argument("net", help="net definition file (.prototxt, .yaml, .json)")
    p.add_argument("output", metavar="OUT", help="image or .dot file to write")
    p.add_argument("--rankdir", choices=RANKDIRS, default="LR", help="direction of the graph (default LR)")
    p.add_argument(
        "--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL", help="draw one phase's layers (default: all)"
    )
    p.add_argument("--no-blobs", action="store_true", help="join layers directly instead of drawing blob nodes")
    p.add_argument("--display-lrm", action="store_true", help="show each layer's learning-rate multipliers")
    p.set_defaults(func=cmd_draw)
    return p


__all__ = ["add_parser", "cmd_draw"]
