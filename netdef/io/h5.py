"""Reading HDF5 files that may be corrupt or hostile: every h5py failure becomes a named error.

h5py reports damaged files, soft-link loops, external links to missing files and
unsupported types as OSError, KeyError, RuntimeError, TypeError or ValueError from deep
inside the library. The helpers here turn each into the caller's NetdefError subclass
with the file and the dataset, check a dataset's type and size (against
:mod:`netdef.limits`) before reading it, and never show the file's contents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy

from .. import limits
from ..errors import NetdefError

#: What h5py raises for a damaged or unusual file (its own errors subclass these).
H5PY_ERRORS = (OSError, KeyError, RuntimeError, TypeError, ValueError, IndexError, AttributeError)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NUMERIC_KINDS = "fiub"


@contextlib.contextmanager
def h5_errors(path: str, where: str, cls: type[NetdefError]) -> Iterator[None]:
    """Turn an h5py failure inside the block into ``cls("<path>: <where>: <h5py's reason>")``."""
    try:
        yield
    except NetdefError:
        raise
    except H5PY_ERRORS as err:
        reason = str(err).strip() or type(err).__name__
        raise cls(
            f"{path}: {where}: cannot read it ({reason}). The file may be damaged or not what it should be"
        ) from None


def open_file(path: str, cls: type[NetdefError], what: str = "HDF5 file"):
    """``h5py.File(path, "r")``, or ``cls`` naming the file when it is not a readable HDF5 file."""
    import h5py

    try:
        return h5py.File(path, "r")
    except H5PY_ERRORS as err:
        raise cls(f"cannot open {what} {path}: {str(err).strip() or type(err).__name__}") from None


def is_hdf5_file(path: str) -> bool:
    """Whether ``path`` starts with HDF5's signature (a user block may move it; h5py then decides)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def dataset(group, name: str, path: str, cls: type[NetdefError]):
    """The dataset ``group[name]``: refused when missing, a group, a link that leads nowhere, or not numeric."""
    import h5py

    where = f'dataset "{_full_name(group, name)}"'
    with h5_errors(path, where, cls):
        if name not in group:
            raise cls(f"{path}: no {where}. Found: {_listing(group)}")
        obj = group[name]
    if not isinstance(obj, h5py.Dataset):
        raise cls(f"{path}: {where} is a {type(obj).__name__.lower()}, not a dataset")
    with h5_errors(path, where, cls):
        dtype, shape = obj.dtype, obj.shape
    if shape is None or dtype.kind not in NUMERIC_KINDS:
        held = "no dataspace (an empty dataset)" if shape is None else f"{_describe(dtype)} values"
        raise cls(f"{path}: {where} holds {held}. Valid: a dataset of numbers (integers or floats)")
    return obj


def read_array(group, name: str, path: str, cls: type[NetdefError], dtype=None, min_ndim: int = 0) -> numpy.ndarray:
    """Read the numeric dataset ``group[name]`` (as ``dtype`` when given), checking rank and size first."""
    obj = dataset(group, name, path, cls)
    where = f'dataset "{_full_name(group, name)}"'
    if len(obj.shape) < min_ndim:
        raise cls(
            f"{path}: {where} has shape {tuple(obj.shape)}. Valid: at least {min_ndim} axis"
            f"{'es' if min_ndim > 1 else ''} (the first indexes samples)"
        )
    target = numpy.dtype(dtype) if dtype is not None else obj.dtype
    try:
        limits.check_bytes(f"{path} {where}", obj.shape, target.itemsize)
    except NetdefError as err:
        raise cls(str(err)) from None
    with h5_errors(path, where, cls):
        values = obj.astype(target)[()] if dtype is not None else obj[()]
    return numpy.asarray(values)


def _full_name(group, name: str) -> str:
    try:
        base = group.name or "/"
    except H5PY_ERRORS:
        base = "/"
    return f"{base.strip('/')}/{name}" if base.strip("/") else name


def _listing(group) -> str:
    try:
        names = sorted(group.keys())
    except H5PY_ERRORS:
        return "(the entries cannot be listed)"
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return shown or "nothing"


def _describe(dtype) -> str:
    if dtype.kind in "SUO":
        return "string"
    if dtype.kind == "V" and dtype.names:
        return "compound (record)"
    return f"{dtype}"


__all__ = ["H5PY_ERRORS", "dataset", "h5_errors", "is_hdf5_file", "open_file", "read_array"]
