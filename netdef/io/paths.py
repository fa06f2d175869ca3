"""Where a path named inside a definition file is looked for."""

from __future__ import annotations

import os


def path_candidates(path: str, beside: str | None = None) -> list[str]:
    """The places ``path`` is looked for, in order: as given (relative to the working
    directory, as Caffe opens files), then relative to the folder ``beside`` (a file or
    a folder; typically the file that named ``path``)."""
    path = os.fspath(path)
    out = [path]
    if beside and not os.path.isabs(path):
        folder = beside if os.path.isdir(beside) else os.path.dirname(os.path.abspath(beside))
        out.append(os.path.join(folder, path))
    return list(dict.fromkeys(out))


def resolve_path(path: str, beside: str | None = None) -> str:
    """The first of ``path_candidates`` that exists; ``path`` unchanged when none does,
    so the caller's error names the path as the user wrote it."""
    for candidate in path_candidates(path, beside):
        if os.path.exists(candidate):
            return candidate
    return os.fspath(path)
