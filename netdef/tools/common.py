"""What the commands share: choosing the device, the net options, consent to Python layers, opening a net,
printing results."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Sequence

from .. import backend
from ..errors import NetdefError
from ..layers import pooling, python_layer
from ..net import Net
from ..progress import on_terminal
from ..solvers import parallel

log = logging.getLogger("netdef")


def select_device(
    gpu: str | None, solver_mode_gpu: bool = False, device_id: int = 0, solver_mode_given: bool = True
) -> None:
    """Make the CPU or one GPU the default device, as Caffe's tools do, and log the choice.

    Args:
        gpu: the ``--gpu`` value: a device number, a comma-separated list or ``all``
            (every visible device); None for the CPU unless the solver asks for the
            GPU. One process uses one device (the first listed); under ``mpiexec``
            each rank takes the listed device at its machine-local rank, in turn.
        solver_mode_gpu: the solver's ``solver_mode`` is GPU; used when ``gpu`` is
            None and a device is available (the CPU otherwise).
        device_id: the solver file's ``device_id``, for ``solver_mode_gpu``.
        solver_mode_given: whether the solver file sets ``solver_mode`` itself. Only
            then does a GPU request without a GPU warn; Caffe's default (GPU) falls
            back to the CPU quietly, with an INFO line.
    """
    if gpu is None and solver_mode_gpu:
        if backend.gpu_available():
            gpu = str(device_id)
        elif solver_mode_given:
            log.warning("solver_mode is GPU but no CUDA device/CuPy is available: running on the CPU")
        else:
            log.info(
                "solver_mode is not set (Caffe's default is GPU) and no CUDA device/CuPy is available: using the CPU"
            )
    if gpu is None:
        backend.set_mode_cpu()
        log.info("Use CPU.")
        return
    ids = _device_ids(gpu)
    device = ids[0]
    local = parallel.local_rank()
    if local is not None:
        # one process per GPU: the ranks on a machine take the listed devices in turn
        device = ids[local % len(ids)]
        if parallel.launched_size() > len(ids) and local >= len(ids):
            log.warning("More ranks than GPUs listed (%s): rank %d shares device %d", ids, local, device)
    elif len(ids) > 1:
        log.warning(
            "One process trains on one device; using device %d of %s. To train on all of them, start one process "
            "per GPU: mpiexec -n %d netdef train ... --gpu %s",
            device,
            ids,
            len(ids),
            gpu,
        )
    backend.set_device(device)
    backend.set_mode_gpu()
    log.info("Use GPU with device ID %d", device)


def _device_ids(gpu: str) -> list[int]:
    """``--gpu``'s devices: a number, a comma-separated list, or ``all`` (every visible device)."""
    if gpu == "all":
        count = backend.cupy.cuda.runtime.getDeviceCount() if backend.gpu_available() else 1
        return list(range(max(count, 1)))
    try:
        return [int(g) for g in gpu.split(",")]
    except ValueError:
        raise NetdefError(f"--gpu takes a device number, a comma-separated list or 'all'. Received: {gpu!r}") from None


class _AllowPythonLayers(argparse.Action):
    """``--allow-python-layers``: takes effect as it is parsed, for whichever command runs."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        python_layer.allow_python_layers(True)
        setattr(namespace, self.dest, True)


class _PythonPath(argparse.Action):
    """``--python-path DIR``: one more folder Python-layer modules are imported from."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            python_layer.add_python_layer_path(values)
        except NetdefError as err:
            parser.error(f"{option_string}: {err}")
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


def add_python_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """``--allow-python-layers`` and ``--python-path DIR`` (repeatable)."""
    parser.add_argument(
        "--allow-python-layers",
        "--allow_python_layers",
        "-allow_python_layers",
        action=_AllowPythonLayers,
        help=(
            'let the net\'s type: "Python" layers import their modules, which runs their code (only for nets you '
            f"trust; also: {python_layer.ALLOW_ENV}=1)"
        ),
    )
    parser.add_argument(
        "--python-path",
        "--python_path",
        "-python_path",
        metavar="DIR",
        action=_PythonPath,
        help="a folder to import Python-layer modules from (repeatable; e.g. --python-path . for the working "
        "directory, which is not searched otherwise)",
    )


class _PoolingRule(argparse.Action):
    """``--pooling-rule RULE``: takes effect as it is parsed, for the nets the command builds."""

    def __call__(self, parser, namespace, values, option_string=None):
        pooling.set_pooling_rule(values)
        setattr(namespace, self.dest, values)


def add_gpu_argument(parser: argparse.ArgumentParser) -> None:
    """What every command that builds a net takes: ``--gpu`` / ``-gpu``, the Python-layer options and the
    pooling rule."""
    parser.add_argument("--gpu", "-gpu", help="GPU device id to use (CPU when omitted)")
    add_python_layer_arguments(parser)
    parser.add_argument(
        "--pooling-rule",
        "--pooling_rule",
        choices=pooling.POOLING_RULES,
        action=_PoolingRule,
        help="Pooling output sizes: bvlc (default) or caffe-yolov3, the patched rule that port's published "
        f"nets need (also: {pooling.POOLING_RULE_ENV})",
    )


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


def print_results(lines: Iterable[str]) -> None:
    """Print a command's final results on stdout, unless the log already showed them on this terminal.

    Results go to stdout when it is redirected (files, pipes, tests), when logging is
    quiet (``-q``), or when the log goes somewhere else than the terminal; a person at a
    terminal watching the INFO log does not see each line twice.
    """
    shown_by_log = on_terminal(sys.stdout) and on_terminal(sys.stderr) and log.isEnabledFor(logging.INFO)
    if shown_by_log:
        return
    for line in lines:
        print(line)


__all__ = [
    "add_gpu_argument",
    "add_net_arguments",
    "add_python_layer_arguments",
    "open_net",
    "print_results",
    "select_device",
    "split_stages",
]
