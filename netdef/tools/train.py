"""``netdef train``: train a net with a solver definition (Caffe's ``caffe train``).

As one Python call::

    from netdef.tools.train import train
    solver = train("models/digits/solver.prototxt", weights="pretrained.caffemodel")
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from ..errors import NetdefError
from ..solvers import Solver, get_solver, handle_signals, load_solver_parameter
from .common import add_net_arguments, select_device

log = logging.getLogger("netdef")

SIGNAL_EFFECTS = ("stop", "snapshot", "none")


def train(
    solver: str | os.PathLike,
    *,
    net: str | None = None,
    weights: str | None = None,
    snapshot: str | None = None,
    gpu: str | None = None,
    sigint_effect: str = "stop",
    sighup_effect: str = "snapshot",
    on_divergence: str = "stop",
    allow_python_layers: bool | None = None,
) -> Solver:
    """Train to the solver's ``max_iter``, as ``caffe train`` does; returns the solver.

    Args:
        solver: the solver definition file.
        net: a net definition that replaces the solver's train net (``--net``).
        weights: weights to fine-tune from: a ``.caffemodel``/``.h5`` path or a
            comma-separated list (``--weights``); not together with ``snapshot``.
        snapshot: a ``.solverstate(.h5)`` to resume from (``--snapshot``).
        gpu: the ``--gpu`` value; None follows the solver's ``solver_mode`` (when the
            file does not set it, a GPU if there is one, else quietly the CPU).
        sigint_effect: what Ctrl-C does while training: ``stop``, ``snapshot`` or ``none``.
        sighup_effect: what SIGHUP does while training.
        on_divergence: ``stop`` (a NaN/inf loss or parameter ends training with a
            TrainingDivergedError) or ``continue`` (Caffe's behaviour).
        allow_python_layers: let ``type: "Python"`` layers import their modules (see
            :mod:`netdef.layers.python_layer`); None follows the process setting.
    """
    if snapshot and weights:
        raise NetdefError("Give either --snapshot (resume training) or --weights (fine-tune from a model), not both")
    param, source = load_solver_parameter(solver, net)
    select_device(gpu, param.solver_mode == param.GPU, param.device_id, param.HasField("solver_mode"))
    built = get_solver(param, source=source, on_divergence=on_divergence, allow_python_layers=allow_python_layers)
    if weights:
        built.load_weights(weights)
    with handle_signals(built, sigint_effect, sighup_effect):
        log.info("Starting Optimization")
        built.solve(snapshot)
    return built


def resume_command(args: argparse.Namespace, state_file: str) -> str:
    """The ``netdef train`` command line that resumes the run ``args`` started from ``state_file``."""
    words = ["netdef", "train", args.solver or args.solver_pos, "--snapshot", state_file]
    options = [("--net", args.net, None), ("--gpu", args.gpu, None), ("--level", args.level, 0)]
    options += [("--stage", args.stage, None), ("--sigint_effect", args.sigint_effect, "stop")]
    options += [("--sighup_effect", args.sighup_effect, "snapshot"), ("--on_divergence", args.on_divergence, "stop")]
    for flag, value, default in options:
        if value != default:
            words += [flag, str(value)]
    if getattr(args, "allow_python_layers", False):
        words.append("--allow-python-layers")
    for folder in getattr(args, "python_path", None) or []:
        words += ["--python-path", folder]
    return shlex.join(words)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``netdef train`` from parsed arguments."""
    solver_file = args.solver or args.solver_pos
    if not solver_file:
        raise NetdefError("train needs a solver file: netdef train solver.prototxt (or --solver FILE)")
    solver = train(
        solver_file,
        net=args.net,
        weights=args.weights,
        snapshot=args.snapshot,
        gpu=args.gpu,
        sigint_effect=args.sigint_effect,
        sighup_effect=args.sighup_effect,
        on_divergence=args.on_divergence,
    )
    if solver.requested_early_exit:
        if solver.last_snapshot:
            print(
                f"netdef: training stopped at iteration {solver.iter}; resume it with:\n"
                f"  {resume_command(args, solver.last_snapshot)}",
                file=sys.stderr,
            )
        else:
            print(
                f"netdef: training stopped at iteration {solver.iter} without a snapshot (snapshot_after_train is "
                "false), so it cannot be resumed from here",
                file=sys.stderr,
            )
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef train``."""
    p = subparsers.add_parser(
        "train",
        help="train a net with a solver",
        description=(
            "Train with a solver definition. Relative paths inside the solver (net:, snapshot_prefix, data "
            "sources) are resolved against the current directory, as Caffe does."
        ),
    )
    p.add_argument("solver_pos", nargs="?", metavar="SOLVER", help="solver definition file")
    p.add_argument("--solver", "-solver", help="solver definition file (same as the positional argument)")
    p.add_argument("--net", "-net", help="net definition to train, overriding the solver's net: field")
    p.add_argument("--snapshot", "-snapshot", help="resume from a .solverstate (or .solverstate.h5) file")
    p.add_argument(
        "--sigint_effect",
        "-sigint_effect",
        choices=SIGNAL_EFFECTS,
        default="stop",
        help="what Ctrl-C does during training (default: stop)",
    )
    p.add_argument(
        "--sighup_effect",
        "-sighup_effect",
        choices=SIGNAL_EFFECTS,
        default="snapshot",
        help="what SIGHUP does during training (default: snapshot)",
    )
    p.add_argument(
        "--on_divergence",
        "--on-divergence",
        "-on_divergence",
        choices=("stop", "continue"),
        default="stop",
        help="what a NaN/inf loss or parameter does: stop with an error (default) or continue, as Caffe does",
    )
    add_net_arguments(p, model=False)
    p.set_defaults(func=cmd_train)
    return p


__all__ = ["add_parser", "cmd_train", "resume_command", "train"]
