"""Keep freed memory in the process for the next iteration (glibc's malloc on Linux).

A training iteration allocates the same temporaries every time: column buffers, layer
outputs, gradients. glibc's ``malloc`` serves large blocks with ``mmap`` and hands freed
memory at the top of its heap back to the kernel once it exceeds a small threshold, so each
iteration touches fresh pages again and every page costs a page fault on first write. On a
virtual machine a fault costs several microseconds: LeNet at batch 64 took 7,700 faults and
16 ms of kernel time per iteration, more than half of the iteration.

:func:`tune` therefore raises two of glibc's thresholds with ``mallopt`` the first time a net
is built, so that the freed blocks stay in the heap and are reused:

* ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's maximum): smaller blocks come from the heap;
* ``M_TRIM_THRESHOLD`` to 512 MiB: up to that much free memory at the top of the heap is kept.

The process's peak memory does not grow (the memory kept is memory it used before); what
changes is that it is not returned to the system between iterations. Nothing is changed
when the C library is not glibc, when the process runs on another system, when any of
glibc's own ``MALLOC_*`` variables is set (the user has chosen), or when
``NETDEF_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: ``NETDEF_MALLOC_TUNING=0`` leaves the allocator alone.
ENV_VAR = "NETDEF_MALLOC_TUNING"
#: glibc's environment variables for the same settings; when one is set, netdef does nothing.
GLIBC_ENV_VARS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)
#: ``mallopt`` parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The values set.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 512 * 2**20

_state: dict[str, str] = {}


def _glibc():
    """The C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def _refusal(environ) -> str | None:
    if environ.get(ENV_VAR, "").strip() == "0":
        return f"left alone ({ENV_VAR}=0)"
    given = [name for name in GLIBC_ENV_VARS if name in environ]
    if given:
        return f"left alone ({given[0]} is set)"
    return None


def tune(environ=None) -> str:
    """Apply the settings once per process; returns a one-line description of what was done."""
    if "done" in _state:
        return _state["done"]
    environ = os.environ if environ is None else environ
    outcome = _refusal(environ)
    if outcome is None:
        libc = _glibc()
        if libc is None:
            outcome = "left alone (not glibc)"
        elif libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            outcome = (
                f"glibc keeps freed memory (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB)"
            )
        else:
            outcome = "left alone (mallopt refused)"
    _state["done"] = outcome
    return outcome


def describe() -> str:
    """What :func:`tune` did, or that it has not run yet."""
    return _state.get("done", "not tuned yet (the first net does it)")
