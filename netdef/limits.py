"""Bounds on what an input file may make netdef allocate, and input checks that cost time.

A definition or data file is small; the arrays it declares need not be. Before netdef
allocates an array whose size a file decides (a blob's shape, an HDF5 dataset, a
``.solverstate`` history blob) it asks :func:`check_bytes`, which counts the bytes with
Python integers (no overflow) and raises :class:`~netdef.errors.ResourceLimitError`
naming what asked and how much, instead of a ``MemoryError`` from deep inside NumPy.

Settings (an API call wins over the environment variable):

- the largest single array, :func:`set_max_array_bytes` or ``NETDEF_MAX_ARRAY_BYTES``
  (bytes, with an optional K/M/G/T suffix). Default: the machine's physical memory
  (or the process's address-space limit, when one is set and lower);
- whether data layers check loaded input data for NaN/inf, :func:`set_check_finite_inputs`
  or ``NETDEF_CHECK_FINITE_INPUTS=0`` to skip the check for speed. Default: on.

Nesting and alias bounds for YAML/JSON definitions are fixed: the schema's own depth is
far below them.
"""

from __future__ import annotations

import os
import re

from .errors import InvalidParameterError, ResourceLimitError

ENV_MAX_ARRAY_BYTES = "NETDEF_MAX_ARRAY_BYTES"
ENV_CHECK_FINITE = "NETDEF_CHECK_FINITE_INPUTS"

#: Deepest nesting accepted in a YAML/JSON definition (the schema nests about 10 levels).
MAX_NESTING = 64
#: Most aliases (``*name``) accepted in one YAML definition.
MAX_YAML_ALIASES = 1000
#: Most values a YAML definition may hold once its aliases are expanded (a large net has tens of thousands).
MAX_DEFINITION_VALUES = 1_000_000

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_max_array_bytes: int | None = None
_check_finite: bool | None = None


def _parse_bytes(text: str, source: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise InvalidParameterError(
            f"{source} must be a number of bytes with an optional K, M, G or T suffix. Received: {text!r}"
        )
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def machine_bytes() -> int:
    """Physical memory, lowered to the address-space limit when one is set (0 when unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            total = min(total, soft) if total else soft
    except (ImportError, ValueError, OSError):
        pass
    return int(total)


def max_array_bytes() -> int:
    """The largest array (in bytes) an input file may make netdef allocate."""
    if _max_array_bytes is not None:
        return _max_array_bytes
    env = os.environ.get(ENV_MAX_ARRAY_BYTES)
    if env:
        return _parse_bytes(env, f"the environment variable {ENV_MAX_ARRAY_BYTES}")
    return machine_bytes() or (1 << 40)


def set_max_array_bytes(limit: int | str | None) -> None:
    """Set the largest array an input may allocate (bytes, or text such as ``"512M"``); None restores the default."""
    global _max_array_bytes
    if limit is None:
        _max_array_bytes = None
        return
    value = _parse_bytes(limit, "set_max_array_bytes()") if isinstance(limit, str) else int(limit)
    if value <= 0:
        raise InvalidParameterError(f"set_max_array_bytes() needs a positive number of bytes. Received: {limit}")
    _max_array_bytes = value


def check_finite_inputs() -> bool:
    """Whether data layers check the data they load for NaN and inf."""
    if _check_finite is not None:
        return _check_finite
    return os.environ.get(ENV_CHECK_FINITE, "1").strip().lower() not in ("0", "false", "no", "off")


def set_check_finite_inputs(enabled: bool | None) -> None:
    """Turn the NaN/inf check on loaded input data on or off; None goes back to the environment's choice."""
    global _check_finite
    _check_finite = None if enabled is None else bool(enabled)


def human_bytes(n: int) -> str:
    """``n`` bytes as text: ``"37.3 GiB (40000000000 bytes)"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def shape_count(shape) -> int:
    """The number of elements of ``shape``, as an exact Python integer."""
    count = 1
    for d in shape:
        count *= int(d)
    return count


def check_bytes(what: str, shape, itemsize: int, copies: int = 1, available: int | None = None) -> int:
    """Raise ResourceLimitError when ``copies`` arrays of ``shape`` would pass the limit; return the bytes.

    ``what`` names who asks (``blob 'conv1.param'``, ``file.h5 dataset "data"``); the
    message gives the shape, the bytes requested, the limit and how to raise it.
    ``available`` lowers the limit further (e.g. a GPU's memory).
    """
    shape = tuple(int(d) for d in shape)
    requested = shape_count(shape) * int(itemsize) * int(copies)
    limit = max_array_bytes() if available is None else min(max_array_bytes(), int(available))
    if requested > limit:
        many = f" ({copies} arrays: data and diff)" if copies == 2 else (f" ({copies} arrays)" if copies > 1 else "")
        raise ResourceLimitError(
            f"{what}: shape {shape} needs {human_bytes(requested)}{many}, more than the limit of "
            f"{human_bytes(limit)}. Valid: a smaller shape, or raise the limit with "
            f"netdef.limits.set_max_array_bytes() or the environment variable {ENV_MAX_ARRAY_BYTES}"
        )
    return requested


__all__ = [
    "ENV_CHECK_FINITE",
    "ENV_MAX_ARRAY_BYTES",
    "MAX_DEFINITION_VALUES",
    "MAX_NESTING",
    "MAX_YAML_ALIASES",
    "check_bytes",
    "check_finite_inputs",
    "human_bytes",
    "machine_bytes",
    "max_array_bytes",
    "set_check_finite_inputs",
    "set_max_array_bytes",
    "shape_count",
]
