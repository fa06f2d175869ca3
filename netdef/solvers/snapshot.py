"""Snapshots of a solver and restoring from them (Caffe's Snapshot / Restore, plus netdef's resume sidecar).

A snapshot is Caffe's pair of files, ``<prefix>_iter_<N>.caffemodel`` and
``.solverstate`` (``.caffemodel.h5`` and ``.solverstate.h5`` in HDF5 format), plus
``<state file>.netdef.json``: the read positions of the data layers and the random
streams, with a fingerprint of the state file it belongs to, so a resumed run
continues exactly as if it had not stopped. Caffe's own snapshots restore too
(without a sidecar the data layers start from their beginning).

How a snapshot is written, so that a crash at any moment leaves nothing that looks
usable but is not: the three files are written under temporary names
(``.<name>.<random>.tmp``) and flushed to disk; then a small journal
(``.<state file name>.commit``) records the renames to come; then the sidecar, the
weights and, last, the state file are renamed into place, and the journal is removed.
A state file therefore never exists without its weights and sidecar. The next solver
built with the same prefix finishes what a journal records (every file it names was
complete before the journal was written) and removes temporary files an interrupted
writer left, touching only netdef's own names next to the snapshot prefix (so two runs
must not share a prefix).

The :class:`~netdef.solvers.solver.Solver` calls :func:`check_prefix`, :func:`recover`,
:func:`save` and :func:`restore`; its ``snapshot()``, ``restore()`` and
``snapshot_filename()`` methods delegate here. The resume sidecar is checked by
:mod:`.resume`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from typing import Protocol

import numpy

from .. import backend
from ..errors import SolverError, WeightsFileError
from ..io import caffemodel, solverstate
from ..io.paths import path_candidates
from ..net import Net
from ..proto import netdef_pb2 as pb
from . import resume
from .resume import apply_data_states, data_states

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


def _prefix(param: pb.SolverParameter) -> str:
    """``snapshot_prefix``, refused when the file system could not take it as a name."""
    prefix = param.snapshot_prefix
    if "\0" in prefix:
        raise SolverError(
            f"snapshot_prefix contains a NUL character, which no file name may hold. Received: {prefix!r}. "
            'Valid: a path such as "snapshots/run1"'
        )
    return prefix


def check_prefix(param: pb.SolverParameter) -> None:
    """With ``snapshot`` set, make sure files can be written at ``snapshot_prefix`` (a SolverError otherwise).

    The probe is a new file of netdef's own (created exclusively, so an existing file or
    a symbolic link there is never opened, let alone truncated), removed at once.
    """
    prefix = _prefix(param)
    if not param.snapshot:
        return
    if not param.HasField("snapshot_prefix"):
        raise SolverError(f"snapshot is set (every {param.snapshot} iterations) but snapshot_prefix is not")
    probe = _temp_name(snapshot_filename(prefix, 0, ".tempfile"))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(probe, flags, 0o600))
        os.remove(probe)
    except OSError:
        raise SolverError(
            f"Cannot write to snapshot prefix '{prefix}'. Make sure that the directory exists and is writable."
        ) from None


def _temp_name(target: str) -> str:
    """A fresh temporary name beside ``target`` (keeping a trailing ``.h5``: writers choose formats by it)."""
    folder, name = os.path.split(target)
    suffix = ".h5" if name.endswith(".h5") else ""
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


def _journal_name(state_path: str) -> str:
    folder, name = os.path.split(state_path)
    return os.path.join(folder, f".{name}.commit")


def _journal_temp_name(state_path: str) -> str:
    # a temporary name of the same shape as the others, so that a leftover is recognised and removed
    return _temp_name(state_path + ".commit")


def save(solver: Snapshottable) -> str | None:
    """Write ``solver``'s weights, state and resume sidecar for its current iteration; the state file's path.

    The files are written under temporary names and appear in the order sidecar,
    weights, state file, through a journal that lets the next run finish an
    interrupted set (see the module documentation). When one of them exists and is
    read-only, nothing is written, a warning says so and None is returned.
    """
    p = solver.param
    if not p.HasField("snapshot_prefix"):
        log.warning("snapshot_prefix is not set; snapshot files are named _iter_<N>.* in the working directory")
    _prefix(p)
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
    os.makedirs(os.path.dirname(os.path.abspath(model)), exist_ok=True)
    staged = {target: _temp_name(target) for target in (sidecar, model, state_path)}
    try:
        log.info("Snapshotting to %s file %s", kind, model)
        caffemodel.save_weights(solver.net, staged[model], write_diff=p.snapshot_diff, atomic=False)
        log.info("Snapshotting solver state to %s file %s", kind, state_path)
        solverstate.write_solverstate_any(staged[state_path], state, atomic=False)
        solverstate.write_sidecar(state_path, resume_extras(solver, history), path=staged[sidecar])
        for tmp in staged.values():
            _fsync(tmp)
    except BaseException:
        for tmp in staged.values():
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise
    _commit(staged, _journal_name(state_path), _journal_temp_name(state_path))
    return state_path


def _commit(staged: dict[str, str], journal: str, journal_tmp: str) -> None:
    """Rename every staged file onto its target, in order, through ``journal`` (see :func:`recover`)."""
    entries = [[os.path.basename(tmp), os.path.basename(target)] for target, tmp in staged.items()]
    with open(journal_tmp, "w", encoding="utf-8") as f:
        json.dump({"kind": "netdef-snapshot-journal", "renames": entries}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(journal_tmp, journal)
    for target, tmp in staged.items():
        os.replace(tmp, target)
    _fsync_folder(os.path.dirname(journal))
    os.remove(journal)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _fsync_folder(folder: str) -> None:
    """Make the renames in ``folder`` durable where the platform allows opening a folder."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _own_names(base: str) -> tuple[re.Pattern, re.Pattern]:
    """Patterns of the temporary files and journals netdef writes for snapshot prefix file name ``base``."""
    stem = re.escape(base) + r"_iter_\d+\."
    temp = re.compile(r"\." + stem + r"[^/\\]*\.[0-9a-f]{12}\.tmp(\.h5)?")
    journal = re.compile(r"\." + stem + r"[^/\\]*\.commit")
    return temp, journal


def recover(param: pb.SolverParameter) -> list[str]:
    """Finish snapshots an interrupted writer left half renamed and remove its temporary files.

    Only netdef's own names next to ``snapshot_prefix`` are touched. Returns the
    state files of the snapshots it finished.
    """
    prefix = _prefix(param)
    folder, base = os.path.split(prefix)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    temp, journal = _own_names(base)
    finished = [path for name in names if journal.fullmatch(name) for path in _replay(folder, name, temp, base)]
    _remove_temporaries(folder, temp)
    return finished


def _replay(folder: str, name: str, temp: re.Pattern, base: str) -> list[str]:
    """Do the renames journal ``name`` records that did not happen yet; the state file it completes."""
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as f:
            renames = json.load(f)["renames"]
        pairs = [(str(tmp), str(target)) for tmp, target in renames]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("Removing %s: not a snapshot journal netdef can read", path)
        pairs = []
    done = []
    for tmp, target in pairs:
        if not temp.fullmatch(tmp) or not target.startswith(base + "_iter_") or os.sep in target:
            log.warning("Snapshot journal %s names a file outside the snapshot set; ignoring it", path)
            break
        if os.path.exists(os.path.join(folder, tmp)):
            os.replace(os.path.join(folder, tmp), os.path.join(folder, target))
            done.append(os.path.join(folder, target))
    os.remove(path)
    if done:
        log.warning("Finished the snapshot an interrupted run left half written: %s", ", ".join(done))
    return done[-1:]


def _remove_temporaries(folder: str, temp: re.Pattern) -> None:
    removed, size = [], 0
    for name in os.listdir(folder or "."):
        if temp.fullmatch(name):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                size += os.lstat(path).st_size
                os.remove(path)
                removed.append(name)
    if removed:
        log.warning(
            "Removed %d temporary file(s) (%.1f MB) that an interrupted snapshot writer left: %s",
            len(removed),
            size / 1e6,
            ", ".join(sorted(removed)),
        )


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
    extras = resume.read_sidecar(state_file)
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
    resume.apply_sidecar(solver, solverstate.sidecar_path(state_file), extras, state)


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
    "recover",
    "resolve_learned_net",
    "restore",
    "resume_extras",
    "save",
    "snapshot_filename",
]
