"""``netdef upgrade net|solver IN OUT``: rewrite legacy Caffe definitions in the current format.

The counterpart of Caffe's ``upgrade_net_proto_text``, ``upgrade_net_proto_binary``
and ``upgrade_solver_proto_text``. The input may be text or binary (a
``.caffemodel`` too); the output is text, or binary when OUT ends in
``.caffemodel``/``.binaryproto`` or ``--binary`` is given. What was upgraded is
printed; the exit status is 1 when settings had to be dropped (the file is
still written, as Caffe does).
"""

from __future__ import annotations

import argparse
import logging

from ..io.atomic import atomic_write_bytes
from ..proto import netdef_pb2 as pb
from ..proto import read_message, to_text
from ..proto.upgrade import (
    legacy_transform_fields,
    net_needs_data_upgrade,
    upgrade_net,
    upgrade_net_data_transformation,
    upgrade_solver,
)
from ..proto.upgrade_v0 import net_needs_v0_upgrade, upgrade_v0_net

log = logging.getLogger("netdef")

BINARY_SUFFIXES = (".caffemodel", ".binaryproto", ".pb")


def upgrade_net_report(param, where: str) -> tuple[list[str], list[str]]:
    """Upgrade NetParameter ``param`` in place; return (what was upgraded, problems met)."""
    done: list[str] = []
    problems: list[str] = []
    if net_needs_v0_upgrade(param):
        n = len(param.layers)
        padding = sum(1 for entry in param.layers if entry.layer.type == "padding")
        problems += upgrade_v0_net(param, where)
        folded = f", {padding} padding layer(s) folded into the layers they feed" if padding else ""
        done.append(f"V0 layer definitions (layers {{ layer {{ ... }} }}): {n} entries{folded}")
    if net_needs_data_upgrade(param):
        names = [v1.name for v1 in param.layers if legacy_transform_fields(v1)[1]]
        upgrade_net_data_transformation(param)
        done.append(f"data transformation fields moved into transform_param: layer(s) {', '.join(names)}")
    if param.layers:
        done.append(f"V1 layer definitions (layers {{ type: ENUM }}): {len(param.layers)} layer(s)")
    if param.input:
        done.append(f"net input fields (input/input_shape/input_dim) -> an Input layer for {', '.join(param.input)}")
    upgrade_net(param, where, hint=False)
    return done, problems


def upgrade_solver_report(param, where: str) -> tuple[list[str], list[str]]:
    """Upgrade SolverParameter ``param`` (and nets written inside it) in place; return (done, problems)."""
    done: list[str] = []
    problems: list[str] = []
    if param.HasField("solver_type"):
        old = pb.SolverParameter.SolverType.Name(param.solver_type)
        upgrade_solver(param, where)
        done.append(f'solver_type: {old} -> type: "{param.type}"')
    inline = [("net_param", param.net_param)] if param.HasField("net_param") else []
    if param.HasField("train_net_param"):
        inline.append(("train_net_param", param.train_net_param))
    inline += [(f"test_net_param[{i}]", net) for i, net in enumerate(param.test_net_param)]
    for label, net in inline:
        net_done, net_problems = upgrade_net_report(net, f"{where} ({label})")
        done += [f"{label}: {line}" for line in net_done]
        problems += net_problems
    return done, problems


def _write(message, path: str, binary: bool) -> None:
    atomic_write_bytes(path, message.SerializeToString() if binary else to_text(message).encode("utf-8"))


def upgrade_file(kind: str, source: str, target: str, binary: bool = False) -> tuple[list[str], list[str]]:
    """Upgrade the ``kind`` (``"net"`` or ``"solver"``) definition in ``source`` and write it to ``target``.

    The output is text, or binary when ``binary`` is set or ``target`` ends in
    ``.caffemodel``/``.binaryproto``/``.pb``. Returns (what was upgraded, settings
    that could not be carried over); the file is written either way.
    """
    if kind == "net":
        param = read_message(source, pb.NetParameter())
        done, problems = upgrade_net_report(param, source)
    else:
        param = read_message(source, pb.SolverParameter())
        done, problems = upgrade_solver_report(param, source)
    _write(param, target, binary or target.lower().endswith(BINARY_SUFFIXES))
    what = "NetParameter" if kind == "net" else "SolverParameter"
    log.info("Wrote %s %s to %s", "upgraded" if done else "unchanged", what, target)
    return done, problems


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Run ``netdef upgrade`` from parsed arguments; prints what changed, exits 1 when settings were dropped."""
    done, problems = upgrade_file(args.kind, args.input, args.output, args.binary)
    if done:
        print(f"Upgraded {args.input} -> {args.output}:")
        for line in done:
            print(f"  - {line}")
    else:
        print(f"{args.input} is already in the current format; wrote it unchanged to {args.output}")
    if problems:
        print(f"{len(problems)} setting(s) could not be carried over:")
        for problem in problems:
            print(f"  ! {problem}")
        return 1
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef upgrade``."""
    p = subparsers.add_parser(
        "upgrade",
        help="rewrite a legacy (V0/V1) net or solver definition in the current format",
        description=(
            "Read a net or solver definition (text or binary, e.g. a .caffemodel), upgrade every legacy form "
            "netdef knows (V0 and V1 layers, data-layer transformation fields, net input fields, solver_type) "
            "and write it out: as text, or as binary when OUT ends in .caffemodel/.binaryproto or --binary is "
            "given. Prints what was upgraded; exits 1 when a setting had to be dropped (the output is still "
            "written)."
        ),
    )
    p.add_argument("kind", choices=["net", "solver"], help="what the file defines")
    p.add_argument("input", metavar="IN", help="legacy definition file")
    p.add_argument("output", metavar="OUT", help="where to write the upgraded definition (may equal IN)")
    p.add_argument("--binary", action="store_true", help="write binary protobuf instead of text")
    p.set_defaults(func=cmd_upgrade)
    return p


__all__ = ["add_parser", "cmd_upgrade", "upgrade_file", "upgrade_net_report", "upgrade_solver_report"]
