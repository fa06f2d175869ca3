"""Atomic file writes: a file is either its old self or the complete new one, never truncated."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from ..errors import WeightsFileError


def temp_path_for(path: str) -> str:
    """A fresh temporary name in ``path``'s folder that keeps an HDF5 suffix (writers choose formats by it)."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)  # e.g. snapshot_prefix: "snapshots/run1" in a fresh checkout
    suffix = next((s for s in (".h5", ".hdf5") if name.lower().endswith(s)), "")
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


@contextlib.contextmanager
def atomic_target(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    The file is flushed to disk before the rename, so ``path`` always holds either
    its previous contents or the complete new file.
    """
    with staged_files() as stage:
        yield stage(path)


@contextlib.contextmanager
def staged_files() -> Iterator:
    """Write several files so that a failure while writing any of them changes none.

    Yields ``stage(target) -> temporary path``. When the block ends normally, every
    staged file is flushed and renamed onto its target, in the order staged; when it
    raises, the temporary files are removed and the targets keep their old contents.
    """
    staged: list[tuple[str, str]] = []

    def stage(target: str) -> str:
        tmp = temp_path_for(target)
        staged.append((tmp, target))
        return tmp

    try:
        yield stage
        for tmp, target in staged:
            if not os.path.exists(tmp):
                raise WeightsFileError(f"writing {target}: the writer produced no file")
            _fsync(tmp)
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows for read-only handles) refuse; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
