"""``netdef export``: write a Caffe net and its weights as an ONNX model.

The library call is :func:`netdef.export.export_onnx`; this module parses the options,
prints what was written and, with ``--check``, runs the model in ONNX Runtime next to netdef
and reports how far apart their outputs are.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import NetdefError

log = logging.getLogger("netdef")

EXAMPLE = """example:
  netdef export --model deploy.prototxt --weights bvlc_alexnet.caffemodel --output alexnet.onnx
  netdef export --model train_val.prototxt --weights w.caffemodel --output m.onnx \\
      --input data=1,3,227,227 --dynamic-batch --output-blob prob --check
"""


def parse_input(text: str) -> tuple[str, list[int]]:
    """``NAME=D1,D2,...`` as (name, dims)."""
    name, sep, dims = text.partition("=")
    try:
        shape = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise NetdefError(
            f"--input takes NAME=DIMS with positive dimensions, e.g. data=1,3,224,224. Received: {text!r}"
        )
    return name, shape


def _describe(values) -> str:
    parts = []
    for v in values:
        dims = [d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim]
        parts.append(f"{v.name} ({', '.join(dims)})")
    return ", ".join(parts)


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``netdef export`` from parsed arguments."""
    # the exporter needs the optional onnx package; importing it here keeps the other commands free of it
    from ..export.graph import check_opset
    from ..export.onnx_export import build_net, export_net

    shapes = dict(parse_input(text) for text in args.input or [])
    blobs = [b for text in args.output_blob or [] for b in text.split(",") if b]
    opset = check_opset(args.opset)
    net = build_net(args.model, args.weights, shapes or None)
    model = export_net(
        net, args.output, opset=opset, dynamic_batch=args.dynamic_batch, outputs=blobs or None, weights=args.weights
    )
    graph = model.graph
    print(f"Wrote {args.output}: ONNX opset {model.opset_import[0].version}, {len(graph.node)} nodes")
    print(f"  inputs:  {_describe(graph.input)}")
    print(f"  outputs: {_describe(graph.output)}")
    if args.check:
        return _check(net, model)
    return 0


def _check(net, model) -> int:
    from ..export.verify import TOLERANCE, compare_with_onnxruntime

    errors = compare_with_onnxruntime(net, model)
    worst = max(errors.values(), default=0.0)
    for name, err in errors.items():
        print(f"  check: {name}: max relative error {err:.3g} (ONNX Runtime vs netdef, random inputs)")
    if worst > TOLERANCE:
        raise NetdefError(
            f"the exported model differs from netdef by {worst:.3g} (relative), more than {TOLERANCE:g}; please "
            "report this with the net definition"
        )
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef export``."""
    p = subparsers.add_parser(
        "export",
        help="write a net and its weights as an ONNX model",
        description=(
            "Write a Caffe net (TEST phase) and its weights as an ONNX model that computes exactly what netdef "
            "computes: Caffe's pooling geometry, LRN, Eltwise coefficients, BatchNorm + Scale and the fork layers "
            "netdef runs. A layer without an exact ONNX form is refused with an error naming it. Needs the onnx "
            'package: pip install onnx (the "onnx" extra).'
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", "-model", required=True, help="net definition (deploy.prototxt, .yaml, .json)")
    p.add_argument("--weights", "-weights", help="trained weights (.caffemodel or .h5); without them, the fillers'")
    p.add_argument("--output", "-output", "-o", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset to write (13 or newer; default 17)")
    p.add_argument(
        "--dynamic-batch",
        "--dynamic_batch",
        dest="dynamic_batch",
        action="store_true",
        help="leave the batch dimension open (named 'batch') instead of the net's batch size",
    )
    p.add_argument(
        "--input",
        action="append",
        metavar="NAME=DIMS",
        help="shape of an input, e.g. data=1,3,224,224 (repeatable); a data layer producing NAME becomes an input",
    )
    p.add_argument(
        "--output-blob",
        "--output_blob",
        dest="output_blob",
        action="append",
        metavar="BLOB",
        help="make BLOB a model output (repeatable or comma-separated; default: the net's outputs); layers no "
        "output needs are left out",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run the model in ONNX Runtime and netdef on random inputs and report the largest difference",
    )
    p.set_defaults(func=cmd_export)
    return p


__all__ = ["add_parser", "cmd_export", "parse_input"]
