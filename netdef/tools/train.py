"""``netdef train``: train a net with a solver definition (Caffe's ``caffe train``).

The command keeps every run in a folder of its own (see :mod:`netdef.runs`):
``runs/<name>[-<overrides>]-<YYYYmmdd-HHMMSS>/`` under the working directory unless
``--run-dir`` names one, holding ``metrics.jsonl`` (every display and test), the
``solver.prototxt`` and ``net.prototxt`` that ran, and ``train.log``. ``--no-record``
turns that off. ``--set key=value`` changes solver fields without editing the file.

As one Python call (which records only when given ``run_dir``)::

    from netdef.tools.train import train
    solver = train("models/digits/solver.prototxt", overrides=["type=Adam"], run_dir="runs/adam")
    solver.records      # what the run reported, without reading a log
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from ..errors import NetdefError
from ..logs import log_lines, log_to_file
from ..runs import RunRecorder, default_run_dir, override_strings
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
    overrides: Sequence[str] | Mapping[str, object] | None = None,
    run_dir: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
    csv: bool = False,
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
        overrides: ``key=value`` changes to the solver definition (``--set``), validated
            as the file is; see :mod:`netdef.runs`.
        run_dir: keep the run in this folder (``--run-dir``): metrics, the solver and net
            that ran, the log. None (the default here) records in memory only
            (``solver.records``). Resuming (``snapshot``) appends to the folder's record;
            a new run replaces it.
        log_file: also write the log to this file, INFO and up even when the console
            is quieter (``--log-file``); appended to when it exists.
        csv: with ``run_dir``, also write Caffe's parse_log tables (``--csv``).
    """
    if snapshot and weights:
        raise NetdefError("Give either --snapshot (resume training) or --weights (fine-tune from a model), not both")
    with contextlib.ExitStack() as stack:
        if log_file is not None:
            stack.enter_context(log_to_file(log_file))
        # the run folder is made once the solver is built, so that a mistake leaves none behind
        with log_lines() if run_dir is not None else contextlib.nullcontext([]) as early_lines:
            param, source = load_solver_parameter(solver, net, overrides=overrides)
            select_device(gpu, param.solver_mode == param.GPU, param.device_id, param.HasField("solver_mode"))
            built = get_solver(
                param, source=source, on_divergence=on_divergence, allow_python_layers=allow_python_layers
            )
            built.overrides = override_strings(overrides)
            if weights:
                built.load_weights(weights)
        if run_dir is not None and getattr(built, "is_root", True):
            recorder = stack.enter_context(RunRecorder(run_dir, csv=csv, resume=bool(snapshot)))
            recorder.write_log(early_lines)
            stack.enter_context(recorder.capture_log())
            log.info("Recording the run in %s", recorder.run_dir)
            built.record_to(recorder, weights=weights, resumed_from=snapshot)
        try:
            with handle_signals(built, sigint_effect, sighup_effect):
                log.info("Starting Optimization")
                built.solve(snapshot)
        finally:
            built.recorder = None
            built.close()  # no prefetch thread outlives training; the returned solver reads on if stepped again
    return built


def resume_command(args: argparse.Namespace, state_file: str, run_dir: str | None = None) -> str:
    """The ``netdef train`` command line that resumes the run ``args`` started from ``state_file``.

    With ``run_dir`` (where the run was recorded) the resumed run records into the same folder.
    """
    words = ["netdef", "train", args.solver or args.solver_pos, "--snapshot", state_file]
    for item in getattr(args, "overrides", None) or []:
        words += ["--set", item]
    if run_dir:
        words += ["--run-dir", run_dir]
    elif getattr(args, "no_record", False):
        words.append("--no-record")
    if getattr(args, "log_file", None):
        words += ["--log-file", args.log_file]
    if getattr(args, "csv", False):
        words.append("--csv")
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
    overrides = args.overrides or []
    run_dir = None
    if not args.no_record:
        run_dir = args.run_dir or default_run_dir(solver_file, override_strings(overrides))
    solver = train(
        solver_file,
        net=args.net,
        weights=args.weights,
        snapshot=args.snapshot,
        gpu=args.gpu,
        sigint_effect=args.sigint_effect,
        sighup_effect=args.sighup_effect,
        on_divergence=args.on_divergence,
        overrides=overrides,
        run_dir=run_dir,
        log_file=args.log_file,
        csv=args.csv,
    )
    if solver.requested_early_exit and solver.is_root:  # data-parallel ranks > 0 stay quiet
        if solver.last_snapshot:
            print(
                f"netdef: training stopped at iteration {solver.iter}; resume it with:\n"
                f"  {resume_command(args, solver.last_snapshot, run_dir)}",
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
            "sources) are resolved against the current directory, as Caffe does. Each run is recorded in a "
            "folder (metrics.jsonl, the solver and net that ran, train.log) that netdef plot reads."
        ),
        epilog=(
            "example: netdef train models/digits/solver.prototxt --set type=Adam --set base_lr=0.001 "
            "--run-dir runs/adam && netdef plot runs/adam -o adam.png"
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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a solver field, validated as in the file (repeatable): --set type=Adam --set base_lr=0.001; "
        "enums by name (solver_mode=CPU); a repeated field comma-separated or by repeating the key "
        "(stepvalue=1000,2000)",
    )
    p.add_argument(
        "--run-dir",
        "--run_dir",
        metavar="DIR",
        help="keep the run's record here: metrics.jsonl, the solver and net that ran, train.log "
        "(default: runs/<name>[-<overrides>]-<YYYYmmdd-HHMMSS>/ under the working directory)",
    )
    p.add_argument("--no-record", "--no_record", action="store_true", help="keep no run record")
    p.add_argument("--csv", action="store_true", help="also write Caffe's parse_log tables in the run folder")
    p.add_argument(
        "--log-file",
        "--log_file",
        metavar="FILE",
        help="also write the log to FILE (INFO and up, even with -q; appended to)",
    )
    add_net_arguments(p, model=False)
    p.set_defaults(func=cmd_train)
    return p


__all__ = ["add_parser", "cmd_train", "resume_command", "train"]
