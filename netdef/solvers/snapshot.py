"""Snapshots of a solver and restoring from them (Caffe's Snapshot / Restore, plus netdef's resume sidecar).

A snapshot is Caffe's pair of files, ``<prefix>_iter_<N>.caffemodel`` and
``.solverstate`` (``.caffemodel.h5`` and ``.solverstate.h5`` in HDF5 format), plus
``<state file>.netdef.json``: the read positions of the data layers and the random
streams, with a fingerprint of the state file it belongs to, so a resumed run
continues exactly as if it had not stopped. Caffe's own snapshots restore too
(without a sidecar the data layers start from their beginning).

The :class:`~netdef.solvers.solver.Solver` calls :func:`check_prefix`, :func:`save`
and :func:`restore`; its ``snapshot()``, ``restore()`` and ``snapshot_filename()``
methods delegate here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Protocol

import numpy

from .. import backend
from ..errors import SolverError, WeightsFileError
from ..io import caffemodel, solverstate
from ..io.paths import path_candidates
from ..net import Net
from ..proto import netdef_pb2 as pb

log = logging.getLogger("netdef")


class Snapshottable(Protocol):
    """What a snapshot reads from a solver and a restore writes back (a :class:`~.solver.Solver` has it all)."""

    param: pb.SolverParameter
    type_name: str
    history_sets: int
    iter: int
    current_step: int
    history: list
    net: Net
    test_nets: list[Net]
    rng: backend.RandomStreams

    def snapshot_filename(self, extension: str, iteration: int | None = None) -> str: ...


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """``<prefix>_iter_<iteration><extension>`` (Caffe's SnapshotFilename)."""
    return f"{prefix}_iter_{iteration}{extension}"


def check_prefix(param: pb.SolverParameter) -> None:
    """With ``snapshot`` set, make sure files can be written at ``snapshot_prefix`` (a SolverError otherwise)."""
    if not param.snapshot:
        return
    if not param.HasField("snapshot_prefix"):
        raise SolverError(f"snapshot is set (every {param.snapshot} iterations) but snapshot_prefix is not")
    probe = snapshot_filename(param.snapshot_prefix, 0, ".tempfile")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError:
        raise SolverError(
            f"Cannot write to snapshot prefix '{param.snapshot_prefix}'. Make sure that the directory exists and "
            "is writable."
        ) from None


def save(solver: Snapshottable) -> str | None:
    """Write ``solver``'s weights, state and resume sidecar for its current iteration; the state file's path.

    The files are replaced together: all are written to temporary names and renamed
    only once every one is complete. When one of them exists and is read-only,
    nothing is written, a warning says so and None is returned.
    """
    p = solver.param
    if not p.HasField("snapshot_prefix"):
        log.warning("snapshot_prefix is not set; snapshot files are named _iter_<N>.* in the working directory")
    hdf5 = p.snapshot_format == pb.SolverParameter.HDF5
    model = solver.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
    state_path = solver.snapshot_filename(".solverstate.h5" if hdf5 else ".solverstate")
    sidecar = solverstate.sidecar_path(state_path)
    # Renaming over a file ignores its own permissions; keep the protection a plain open() would give.
    protected = [f for f in (model, state_path, sidecar) if _read_only(f)]
    if protected:
        log.warning(
            "Snapshot at iteration %d skipped: %s is read-only and netdef does not replace read-only files",
            solver.iter,
            protected[0],
        )
        return None
    kind = "HDF5" if hdf5 else "binary proto"
    history = [backend.to_numpy(h) for h in solver.history]
    state = solverstate.SolverStateData(solver.iter, model, history, solver.current_step)
    with solverstate.staged_files() as stage:
        log.info("Snapshotting to %s file %s", kind, model)
        caffemodel.save_weights(solver.net, stage(model), write_diff=p.snapshot_diff, atomic=False)
        log.info("Snapshotting solver state to %s file %s", kind, state_path)
        solverstate.write_solverstate_any(stage(state_path), state, atomic=False)
        solverstate.write_sidecar(state_path, resume_extras(solver, history), path=stage(sidecar))
    return state_path


def fingerprint(iteration: int, current_step: int, history) -> str:
    """A digest of a solver state's contents; the sidecar records it to be matched with its state file."""
    digest = hashlib.blake2b(f"{iteration}:{current_step}:{len(history)}".encode(), digest_size=16)
    for h in history:
        h = numpy.asarray(h)
        digest.update(numpy.ascontiguousarray(h, dtype=h.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def resume_extras(solver: Snapshottable, history) -> dict:
    """The sidecar's contents for ``solver`` whose update history (as NumPy arrays) is ``history``."""
    return {
        "iter": solver.iter,
        "current_step": solver.current_step,
        "solver_type": solver.type_name,
        "fingerprint": fingerprint(solver.iter, solver.current_step, history),
        "rng": solver.rng.checkpoint(),
        "train_net": data_states(solver.net),
        "test_nets": [data_states(n) for n in solver.test_nets],
    }


def data_states(net: Net) -> dict:
    """``{layer name: state}`` for each layer of ``net`` that has a read position (``get_state``)."""
    return {layer.name: layer.get_state() for layer in net.layers if callable(getattr(layer, "get_state", None))}


def apply_data_states(net: Net, states: dict) -> None:
    """Give each layer of ``net`` that has an entry in ``states`` its recorded state back (``set_state``)."""
    for layer in net.layers:
        set_state = getattr(layer, "set_state", None)
        if callable(set_state) and layer.name in states:
            set_state(states[layer.name])


def resolve_learned_net(name: str, state_path: str) -> str:
    """The weights file a state file names (``learned_net``), as found on disk.

    As Caffe: the recorded path as it stands (relative to the working directory);
    then, for snapshots moved or opened from elsewhere, relative to the state file's
    folder and, by its file name alone, in that folder. A WeightsFileError lists the
    places looked at when none exists.
    """
    beside_by_name = path_candidates(os.path.basename(name), state_path)[-1]
    candidates = list(dict.fromkeys([*path_candidates(name, state_path), beside_by_name]))
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise WeightsFileError(
        f"{state_path}: the weights file it names (learned_net) was not found: {name} "
        f"(looked for: {', '.join(candidates)})"
    )


def restore(solver: Snapshottable, state_file: str) -> None:
    """Restore ``solver``'s iteration, lr step, weights and history from a ``.solverstate(.h5)`` file.

    With netdef's sidecar beside it (and matching it), the data layers' read
    positions and the random streams are restored too.
    """
    state_file = os.fspath(state_file)
    state = solverstate.read_solverstate(state_file)
    shapes = [blob.shape for blob in solver.net.learnable_params] * solver.history_sets
    history = solverstate.check_history(state.history, shapes, state_file, solver.type_name)
    if state.learned_net:
        solver.net.copy_from(resolve_learned_net(state.learned_net, state_file))
    solver.iter = int(state.iter)
    solver.current_step = int(state.current_step)
    log.info("%sSolver: restoring history", solver.type_name)
    for h, arr in zip(solver.history, history, strict=True):
        h[...] = backend.asarray(arr, backend.array_module(h), h.dtype)
    for net in solver.test_nets:
        net.share_with(solver.net)
    _restore_sidecar(solver, state_file, state)


def _restore_sidecar(solver: Snapshottable, state_file: str, state: solverstate.SolverStateData) -> None:
    extras = solverstate.read_sidecar(state_file)
    if extras is None:
        log.info(
            "%s has no netdef resume sidecar (a Caffe snapshot?): data layers start from their beginning", state_file
        )
        return
    if extras.get("fingerprint") != fingerprint(state.iter, state.current_step, state.history):
        log.warning(
            "Ignoring %s: it does not belong to this solver state (written by another snapshot)",
            solverstate.sidecar_path(state_file),
        )
        return
    if extras.get("rng") is not None:
        solver.rng.restore(extras["rng"])
    apply_data_states(solver.net, extras.get("train_net", {}))
    for net, states in zip(solver.test_nets, extras.get("test_nets", []), strict=False):
        apply_data_states(net, states)


def _read_only(path: str) -> bool:
    """True for an existing file without any write permission bit (whoever runs us, root included)."""
    try:
        return not os.stat(path).st_mode & 0o222
    except OSError:
        return False


__all__ = [
    "Snapshottable",
    "apply_data_states",
    "check_prefix",
    "data_states",
    "fingerprint",
    "resolve_learned_net",
    "restore",
    "resume_extras",
    "save",
    "snapshot_filename",
]
