"""The ``netdef`` command line (the shape of Caffe's ``caffe`` tool): builds the parser and dispatches.

Each command lives in its own module under :mod:`netdef.tools`, which registers
its sub-parser and calls a public library function; this module only puts them
together, sets up logging, and turns a NetdefError into one line and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import threads
from .errors import NetdefError
from .logs import setup_logging

#: the command modules under netdef.tools, in the order ``netdef --help`` lists them
COMMAND_MODULES = (
    "train",
    "score",
    "timing",
    "upgrade",
    "classify",
    "summary",
    "plot",
    "draw",
    "visualize",
    "device_query",
    "parse_log",
    "convert_imageset",
    "compute_image_mean",
    "convert_mnist",
    "convert_cifar",
    "extract_features",
    "export",
)
COMMANDS = tuple(importlib.import_module(f"{__package__}.tools.{name}") for name in COMMAND_MODULES)


def build_parser() -> argparse.ArgumentParser:
    """The ``netdef`` argument parser with every command's sub-parser."""
    p = argparse.ArgumentParser(
        prog="netdef",
        description="Train, test and time Caffe-style networks defined in prototxt (also YAML/JSON) files.",
        epilog="Caffe's single-dash spellings (-solver, -weights, -model, ...) are accepted too.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    p.add_argument(
        "--threads",
        type=int,
        action=threads.ThreadsAction,
        metavar="N",
        help=(
            "CPU threads for netdef's NumPy work and large products (BLAS keeps one) and for ONNX "
            "Runtime's kernels with the 'fast' extra (default: NETDEF_NUM_THREADS, else the cores not "
            "busy, or all when every core is busy; see docs/performance.md)"
        ),
    )
    # the package front door is imported before any of its modules (and sits above cli in the layering)
    version = getattr(sys.modules.get(__package__), "__version__", "unknown")
    p.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        # -q also after the command name; SUPPRESS keeps a -q given before it
        command.add_parser(sub).add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only print warnings and errors"
        )
    return p


def _normalise_argv(argv: list[str]) -> list[str]:
    """Accept Caffe's ``-flag=value`` spelling as ``--flag value``."""
    out = []
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and "=" in a and len(a) > 2:
            out.append("-" + a)
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``netdef`` with ``argv`` (default: the process's arguments); the exit status."""
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    if not args.command:
        parser.print_help()
        return 2
    setup_logging(args.quiet)
    try:
        return args.func(args)
    except NetdefError as err:
        print(f"netdef: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"netdef: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("netdef: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
