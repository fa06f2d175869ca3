"""Solver state files: Caffe's ``.solverstate`` (binary SolverState) and ``.solverstate.h5``.

Layouts are Caffe's, so states written by Caffe restore here and the other way round:

- binary: a ``SolverState`` message ``{iter, learned_net, history[], current_step}``,
  one ``BlobProto`` (shape + data) per history blob;
- HDF5: int datasets ``iter`` and ``current_step`` (shape ``(1,)``), a string dataset
  ``learned_net``, and a group ``history`` holding datasets ``"0"``, ``"1"``, ...

What Caffe does not record but an exact resume needs (the data layers' read
positions, the random generator's state) goes into a JSON sidecar next to the
state file, ``<state file>.netdef.json``; Caffe never looks at it.

Every writer here is atomic: it writes a temporary file in the target's folder
and renames it over the target only once the file is complete, so an interrupted
snapshot never leaves a truncated file behind or destroys an older one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy

from ..errors import WeightsFileError
from ..proto import netdef_pb2 as pb
from . import h5
from .atomic import atomic_target, atomic_write_bytes, staged_files
from .blobproto import encode_blob, length_delimited, proto_to_array, varint

SIDECAR_SUFFIX = ".netdef.json"
SIDECAR_KIND = "netdef-solverstate-extra"


@dataclass
class SolverStateData:
    """The contents of a solver state file (either format)."""

    iter: int
    learned_net: str | None
    history: list[numpy.ndarray] = field(default_factory=list)
    current_step: int = 0


# --- binary SolverState ---------------------------------------------------------------
def encode_solverstate(state: SolverStateData) -> bytes:
    """Serialise a SolverState message (field order and presence as Caffe writes them)."""
    parts = [varint(1 << 3) + varint(int(state.iter))]
    if state.learned_net is not None:
        parts.append(length_delimited(2, state.learned_net.encode("utf-8")))
    parts.extend(length_delimited(3, encode_blob(h)) for h in state.history)
    parts.append(varint(4 << 3) + varint(int(state.current_step)))
    return b"".join(parts)


def write_solverstate(path: str, state: SolverStateData, atomic: bool = True) -> None:
    """Write a binary ``.solverstate`` (atomically unless ``atomic`` is False: the caller stages it)."""
    if atomic:
        atomic_write_bytes(path, encode_solverstate(state))
        return
    with open(path, "wb") as f:
        f.write(encode_solverstate(state))


def _read_binary(path: str) -> SolverStateData:
    msg = pb.SolverState()
    try:
        with open(path, "rb") as f:
            msg.ParseFromString(f.read())
    except OSError as err:
        raise WeightsFileError(f"cannot read solver state {path}: {err.strerror or err}") from None
    except Exception as err:  # protobuf's DecodeError says little about where
        raise WeightsFileError(f"{path}: not a binary SolverState file ({err})") from None
    if not msg.HasField("iter"):
        raise WeightsFileError(f"{path}: not a SolverState file (it has no iter field)")
    history = [_blob_array(h, path, i) for i, h in enumerate(msg.history)]
    learned = msg.learned_net if msg.HasField("learned_net") else None
    return SolverStateData(int(msg.iter), learned, history, int(msg.current_step))


def _blob_array(proto, path: str, index: int) -> numpy.ndarray:
    try:
        return proto_to_array(proto)
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: history blob {index}: {err}") from None


# --- HDF5 SolverState -------------------------------------------------------------------
def write_solverstate_hdf5(path: str, state: SolverStateData, atomic: bool = True) -> None:
    """Write a ``.solverstate.h5`` with Caffe's layout (atomically unless ``atomic`` is False)."""
    import h5py

    if atomic:
        with atomic_target(path) as tmp:
            write_solverstate_hdf5(tmp, state, atomic=False)
        return
    with h5py.File(path, "w") as f:
        f.create_dataset("iter", data=numpy.array([state.iter], dtype=numpy.int32))
        if state.learned_net is not None:
            _write_c_string(f, "learned_net", state.learned_net)
        f.create_dataset("current_step", data=numpy.array([state.current_step], dtype=numpy.int32))
        group = f.create_group("history")
        for i, h in enumerate(state.history):
            h = numpy.asarray(h)
            group.create_dataset(str(i), data=h if h.dtype == numpy.float64 else h.astype(numpy.float32))


def _write_c_string(f, name: str, text: str) -> None:
    """A scalar, NUL-terminated fixed-length string dataset, the form HDF5's H5LTmake_dataset_string makes."""
    import h5py

    raw = text.encode("utf-8")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode(), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, numpy.array(raw + b"\0", dtype=f"S{len(raw) + 1}"), mtype=tid)


def _read_hdf5(path: str) -> SolverStateData:
    import h5py

    with h5.open_file(path, WeightsFileError, "HDF5 solver state") as f:
        with h5.h5_errors(path, "the top-level entries", WeightsFileError):
            keys = sorted(f.keys())
        for key in ("iter", "history"):
            if key not in keys:
                raise WeightsFileError(
                    f'{path}: not a solver state file (no "{key}" entry; found: {", ".join(keys[:20]) or "nothing"})'
                )
        it = _hdf5_int(f, "iter", path)
        step = _hdf5_int(f, "current_step", path) if "current_step" in keys else 0
        learned = _hdf5_text(f, "learned_net", path) if "learned_net" in keys else None
        with h5.h5_errors(path, 'group "history"', WeightsFileError):
            group = f["history"]
            names = list(group.keys()) if isinstance(group, h5py.Group) else None
        if names is None:
            raise WeightsFileError(f'{path}: "history" must be a group of datasets 0, 1, .... Received: a dataset')
        if sorted(names, key=_int_or_inf) != [str(i) for i in range(len(names))]:
            raise WeightsFileError(
                f"{path}: history datasets must be named 0..{len(names) - 1}. Received: {', '.join(names[:20])}"
            )
        history = [h5.read_array(group, str(i), path, WeightsFileError) for i in range(len(names))]
    return SolverStateData(it, learned, history, step)


def _hdf5_int(f, name: str, path: str) -> int:
    """An integer counter stored as a one-element (or scalar) integer dataset, as Caffe writes ``iter``."""
    obj = h5.dataset(f, name, path, WeightsFileError)
    if obj.dtype.kind not in "iu" or obj.size != 1:
        raise WeightsFileError(
            f'{path}: dataset "{name}" must hold one integer. Received: {obj.dtype} values of shape {obj.shape}'
        )
    with h5.h5_errors(path, f'dataset "{name}"', WeightsFileError):
        return int(numpy.asarray(obj[()]).ravel()[0])


def _hdf5_text(f, name: str, path: str) -> str:
    """A string dataset (fixed-length, NUL-terminated or variable-length) as text."""
    import h5py

    where = f'dataset "{name}"'
    with h5.h5_errors(path, where, WeightsFileError):
        obj = f[name]
        raw = obj[()] if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "SOU" and obj.size == 1 else None
    if raw is None:
        raise WeightsFileError(f"{path}: {where} must hold one string (the weights file's name)")
    raw = numpy.asarray(raw).ravel()[0] if isinstance(raw, numpy.ndarray) else raw
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise WeightsFileError(f"{path}: {where} is not UTF-8 text") from None
    return text.rstrip("\0")


def _int_or_inf(name: str) -> float:
    return int(name) if name.isdigit() else float("inf")


def read_solverstate(path: str) -> SolverStateData:
    """Read a ``.solverstate`` (binary) or ``.solverstate.h5`` (HDF5, chosen by the ``.h5`` suffix as Caffe does)."""
    if not os.path.exists(path):
        raise WeightsFileError(f"solver state file not found: {path}")
    return _read_hdf5(path) if path.endswith(".h5") else _read_binary(path)


def write_solverstate_any(path: str, state: SolverStateData, atomic: bool = True) -> None:
    """Write in the format the name asks for (``.h5``: HDF5, otherwise binary)."""
    (write_solverstate_hdf5 if path.endswith(".h5") else write_solverstate)(path, state, atomic=atomic)


# --- netdef's sidecar ------------------------------------------------------------------------
def sidecar_path(state_path: str) -> str:
    """Where netdef keeps the extra resume state of ``state_path``."""
    return state_path + SIDECAR_SUFFIX


def write_sidecar(state_path: str, extra: dict, path: str | None = None) -> None:
    """Write the extra resume state (JSON) of ``state_path`` atomically (or to ``path``, staged by the caller)."""
    payload = json.dumps(dict(extra, kind=SIDECAR_KIND, version=1), default=_json_default).encode("utf-8")
    if path is None:
        atomic_write_bytes(sidecar_path(state_path), payload)
        return
    with open(path, "wb") as f:
        f.write(payload)


def read_sidecar(state_path: str) -> dict | None:
    """The extra resume state saved with ``state_path``, or None when there is none (e.g. Caffe wrote it)."""
    path = sidecar_path(state_path)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise WeightsFileError(f"{path}: unreadable netdef resume sidecar ({err})") from None
    if not isinstance(data, dict) or data.get("kind") != SIDECAR_KIND:
        kind = (
            f"kind {data.get('kind')!r}" if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"
        )
        raise WeightsFileError(f"{path}: not a netdef resume sidecar ({kind})")
    return data


def _json_default(value):
    if isinstance(value, numpy.ndarray):
        return value.tolist()
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"cannot store a {type(value).__name__} in the resume sidecar")


def check_history(
    history: Sequence[numpy.ndarray], shapes: Sequence[tuple[int, ...]], path: str, solver_type: str
) -> list[numpy.ndarray]:
    """Match the history blobs of a state file to the solver's, reshaping where only the layout differs."""
    if len(history) != len(shapes):
        raise WeightsFileError(
            f"{path}: incorrect number of history blobs for a {solver_type} solver on this net. "
            f"Received: {len(history)}. Expected: {len(shapes)}"
        )
    out = []
    for i, (h, shape) in enumerate(zip(history, shapes, strict=True)):
        count = int(numpy.prod(shape, dtype=numpy.int64))
        if h.size != count:
            raise WeightsFileError(
                f"{path}: history blob {i} has shape {tuple(h.shape)} but the parameter it belongs to has "
                f"shape {tuple(shape)}"
            )
        out.append(h.reshape(shape))
    return out


__all__ = [
    "SolverStateData",
    "atomic_target",
    "staged_files",
    "atomic_write_bytes",
    "check_history",
    "encode_solverstate",
    "read_sidecar",
    "read_solverstate",
    "sidecar_path",
    "write_sidecar",
    "write_solverstate",
    "write_solverstate_any",
    "write_solverstate_hdf5",
]
