"""How many threads netdef's work may use: its own helper threads, ONNX Runtime's and BLAS's.

NumPy's BLAS starts one thread per logical core and its idle threads spin for a while
before they sleep. On a quiet machine that is right for large matrix products; on a busy
one (other processes on every core, a container limited to fewer cores than the host
has) the spinning threads fight each other and the other processes, and an iteration can
take twenty times longer. netdef therefore chooses the count itself:

1. An explicit count wins: :func:`apply_policy` with ``threads=N`` (the CLI's
   ``--threads N``) or the environment variable ``NETDEF_NUM_THREADS``. It is never
   changed afterwards. When instead the BLAS library's own variable is set
   (``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OMP_NUM_THREADS``), netdef leaves
   the library alone.
2. Otherwise the count is the number of cores this process may use -- the CPU affinity
   mask and any cgroup CPU quota (containers), whichever is smaller -- minus the cores
   that other processes keep busy (:func:`busy_cores`: the runnable tasks in
   ``/proc/loadavg`` that are not this process's threads, and no more than the machine's
   CPU time in ``/proc/stat`` less this process's, averaged since the last sample). When
   others keep every core busy it is all the cores again: netdef's threads do not spin,
   so each gets its fair slice of a core, and one the scheduler holds back takes fewer
   parts of the work (:func:`run_parts`) instead of holding up the others. Hot layers
   call :func:`refresh`, which samples this again at most once per
   :data:`REFRESH_SECONDS`, so a long training run follows the machine's load as it
   comes and goes.

The count does not go to BLAS, which keeps one thread (:func:`cap_blas`): it goes to
ONNX Runtime's thread pools where its kernels are in use (:mod:`netdef.layers.ort_kernels`),
and to netdef's own helper threads. NumPy runs each operation on one thread; kernels that
are a long series of NumPy operations over independent parts of an array (pooling over
channel planes, convolutions over chunks of samples, large products over row or column
blocks) split the parts over the count with :func:`run_parts`. NumPy releases the
interpreter lock while it computes, so the parts run at the same time. A part handed to
another thread waits about 50 microseconds for it to wake, so only work of about a
millisecond or more is split. When others keep every core busy, a training step of a net
that keeps samples apart runs one replica of the net per thread instead
(:mod:`netdef.batch_split`), with one wait per step. Measured on two cores without ONNX
Runtime (cifar10_quick b100 per step): BLAS's two threads and serial NumPy work 70-73 ms; the same split over
netdef's threads with BLAS switched to one thread for each split and back 100-114 ms
(OpenBLAS's threads between the splits); BLAS at one thread throughout 60-61 ms.

Setting the count needs the ``threadpoolctl`` package (a dependency); without it netdef
leaves the BLAS library's own default alone, runs its NumPy work on one thread and
:func:`describe` says so.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("netdef")

#: The environment variable that fixes the thread count (a positive integer).
ENV_VAR = "NETDEF_NUM_THREADS"
#: The thread-count variables of the BLAS libraries; when one is set, the user has chosen.
BLAS_ENV_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS")
#: Seconds between two samples of the machine's load by :func:`refresh`.
REFRESH_SECONDS = 2.0
#: The shortest time over which :func:`busy_cores` averages the machine's CPU time.
MIN_WINDOW = 0.5
#: A machine whose idle time is less than this many cores' worth has none to give (:func:`busy_cores`).
IDLE_SLACK = 0.25


class _State:
    """The process's thread policy: the controller, the current count and whether it is fixed."""

    def __init__(self) -> None:
        self.controller = None
        self.loaded = False
        self.fixed = False
        self.current: int | None = None
        self.next_check = 0.0
        #: BLAS's thread count at most: one, netdef's count going to its own threads instead
        self.blas_cap: int | None = 1
        #: whether others kept every core busy at the automatic policy's last sample
        self.crowded = False
        #: (monotonic time, machine CPU seconds, own CPU seconds) of the last load average
        self.window: tuple[float, float, float] | None = None


_state = _State()


# --- cores ----------------------------------------------------------------------------
def _affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cgroup_quota_cores(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 CFS files), or None."""
    text = _read(os.path.join(root, "cpu.max"))
    if text:
        fields = text.split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    quota = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us")) or _read(os.path.join(root, "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us")) or _read(os.path.join(root, "cpu.cfs_period_us"))
    if quota and period and int(quota) > 0 and int(period) > 0:
        return int(quota) / int(period)
    return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (at least 1)."""
    cores = _affinity_cores()
    quota = cgroup_quota_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _own_running_threads() -> int:
    """This process's threads that are running or runnable (Linux; 1 elsewhere)."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 1
    running = 0
    for tid in tids:
        stat = _read(f"/proc/self/task/{tid}/stat")
        # the state letter follows the parenthesised command name
        if stat and stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R":
            running += 1
    return max(1, running)


def busy_cores(samples: int = 3) -> int:
    """Cores other processes keep busy (Linux; else 0).

    A snapshot: runnable tasks system-wide minus this process's own, the least of ``samples``
    readings. From the second call on, when the previous one is at least :data:`MIN_WINDOW`
    ago, also the average since then -- the CPU time of the whole machine (``/proc/stat``)
    less this process's own, rounded -- and the smaller of the two counts:

    - a snapshot alone also counts a task that runs for a few milliseconds; taken at such a
      moment it held netdef at one thread for a whole refresh interval (cifar10_quick: 2 s
      of 64 ms steps instead of 38);
    - an average alone counts a process that works in bursts and sleeps in between (a
      benchmark's other framework, taking turns with netdef) as busy all the time.

    A process that keeps a core busy is in both. Except where the machine had no idle core
    to give (less than :data:`IDLE_SLACK` of one) and others had at least half a core of it:
    their CPU time is then what they got, not what they would use, and the snapshot counts.
    Two CPU-bound processes beside netdef on two cores get 1 to 1.3 cores between them.
    """
    snapshot = min(_busy_sample() for _ in range(max(1, samples)))
    now, cpu = time.monotonic(), _cpu_seconds()
    last = _state.window
    if cpu is None or (last is not None and now - last[0] < MIN_WINDOW):
        return snapshot
    _state.window = (now, *cpu)
    if last is None:
        return snapshot
    seconds = now - last[0]
    machine, others = (cpu[0] - last[1]) / seconds, (cpu[0] - last[1] - cpu[1] + last[2]) / seconds
    if others >= 0.5 and machine >= (os.cpu_count() or 1) - IDLE_SLACK:
        return snapshot
    return min(snapshot, max(0, round(others)))


def _cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds the whole machine has spent working (``/proc/stat``, steal not counted) and this
    process's own (all its threads); None where ``/proc/stat`` is missing."""
    text = _read("/proc/stat")
    try:
        # cpu user nice system idle iowait irq softirq steal ...: user, nice, system, irq and softirq work
        fields = [int(v) for v in text.split("\n", 1)[0].split()[1:8]]
        work = sum(fields[:3]) + sum(fields[5:7])
        ticks = os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return None
    own = os.times()
    return work / ticks, own.user + own.system


def _busy_sample() -> int:
    text = _read("/proc/loadavg")
    if not text:
        return 0
    try:
        runnable = int(text.split()[3].split("/")[0])
    except (IndexError, ValueError):
        return 0
    return max(0, runnable - _own_running_threads())


def auto_threads() -> int:
    """The policy's count without an explicit setting: the available cores that others do not keep busy;
    all available cores when others keep every one of them busy.

    netdef's threads do not spin while they wait, and a thread the scheduler holds back takes
    fewer parts of :func:`run_parts` while the others take more. So where every core is busy
    a thread per core gets its fair slice of each, and one thread would get a slice of one
    (cifar10_quick b100 on two cores beside two CPU-bound processes, alternating runs: 64-92 ms
    per step on two threads, median 66; 70-96 on one, median 82). Where some cores are free,
    they are the ones to use (beside one such process: 60-64 ms on one thread, 64-68 on two).
    """
    return _auto_count()[0]


def _auto_count() -> tuple[int, bool]:
    """:func:`auto_threads`, and whether others keep every core busy."""
    cores = available_cores()
    free = cores - busy_cores()
    return (free, False) if free >= 1 else (cores, True)


def _set_auto() -> None:
    n, _state.crowded = _auto_count()
    _set(n)


# --- applying the count -------------------------------------------------------------------
def _controller():
    if not _state.loaded:
        _state.loaded = True
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _state.controller = None
        else:
            _state.controller = ThreadpoolController()
    return _state.controller


def _env_threads() -> int | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be a positive integer. Received: {value!r}") from None
    if n <= 0:
        raise ValueError(f"{ENV_VAR} must be a positive integer. Received: {value!r}")
    return n


def _set(n: int, force: bool = False) -> None:
    if n == _state.current and not force:
        return
    controller = _controller()
    if controller is not None:
        blas = n if _state.blas_cap is None else min(n, _state.blas_cap)
        for lib in controller.lib_controllers:
            lib.set_num_threads(blas)
    _state.current = n


def cap_blas(limit: int) -> None:
    """Run the BLAS library with at most ``limit`` threads from now on (1 from the start); netdef's
    count still goes to other pools (:func:`count`). Where the user set the BLAS library's own
    variable, netdef leaves it alone as always."""
    _state.blas_cap = max(1, int(limit))
    if _state.current is not None:
        _set(_state.current, force=True)


def apply_policy(threads: int | None = None) -> int:
    """Set the thread count of the native thread pools; the count chosen.

    Args:
        threads: a fixed count (>= 1); None applies ``NETDEF_NUM_THREADS`` when it is set,
            else the automatic policy (see the module docstring), which :func:`refresh`
            then keeps up to date.

    Raises:
        ValueError: a count below 1, or a malformed ``NETDEF_NUM_THREADS``.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"the thread count must be at least 1. Received: {threads}")
    if threads is None:
        threads = _env_threads()
    _state.fixed = threads is not None
    _state.next_check = time.monotonic() + REFRESH_SECONDS
    if threads is None and any(os.environ.get(name) for name in BLAS_ENV_VARS):
        _state.fixed = True
        return _library_threads()
    _state.crowded = False
    if threads is None:
        _set_auto()
        return _state.current
    _set(threads)
    return threads


def refresh() -> None:
    """Re-apply the automatic policy when its last sample is older than REFRESH_SECONDS (cheap otherwise)."""
    if _state.fixed:
        return
    now = time.monotonic()
    if _state.current is None and _state.next_check == 0.0:
        try:
            apply_policy()
        except ValueError as err:
            log.warning("%s; choosing the thread count automatically", err)
            _set_auto()
        return
    if now < _state.next_check:
        return
    _state.next_check = now + REFRESH_SECONDS
    _set_auto()


def _library_threads() -> int:
    controller = _controller()
    if controller is None or not controller.lib_controllers:
        return available_cores()
    return int(controller.lib_controllers[0].num_threads)


def current() -> int | None:
    """The count last set by netdef (None before the first :func:`apply_policy` / :func:`refresh`)."""
    return _state.current


def count() -> int:
    """Threads for netdef's own helpers (:func:`run_parts`) and ONNX Runtime's pools: netdef's count, else the
    BLAS library's.

    Inside a thread working on parts of :func:`run_parts` it is 1: the threads are taken.
    """
    if getattr(_local, "sharing", False):
        return 1
    if _state.current is None and _state.next_check == 0.0 and not _state.fixed:
        refresh()
    return _state.current if _state.current is not None else _library_threads()


def crowded() -> bool:
    """Whether the automatic count found every core kept busy by other processes (False for a fixed count)."""
    return _state.crowded


def pool_threads() -> int:
    """Threads for ONNX Runtime's own pools: :func:`count`, but 1 where others keep every core busy.

    Such a pool cuts a product into one block per thread up front, so a thread the scheduler
    holds back holds up the whole product; :func:`run_parts` does not wait for it. The digits
    example beside two CPU-bound processes on two cores: 4.6-4.9 s with two-thread pools,
    3.8-4.3 s with one-thread pools and netdef's helpers still on two threads.
    """
    return 1 if _state.crowded else count()


def describe() -> str:
    """One line: the count, where it came from, and the libraries it applies to."""
    if _state.current is None and _state.next_check == 0.0:
        apply_policy()
    if _state.current is None:
        return f"{_library_threads()} (the BLAS library's own variable is set; netdef leaves it alone)"
    how = "fixed" if _state.fixed else "automatic"
    controller = _controller()
    if controller is None:
        return f"{_state.current} ({how}); threadpoolctl not installed, so the BLAS library keeps its default"
    libs = ", ".join(f"{lib.internal_api} {lib.version}" for lib in controller.lib_controllers) or "none found"
    if _state.blas_cap is not None and libs != "none found":
        libs += f" (capped at {_state.blas_cap}: netdef splits the heavy work over its own threads)"
    crowded = (
        "; every core busy, so ONNX Runtime's pools run 1 and training steps split by samples" if _state.crowded else ""
    )
    return (
        f"{_state.current} ({how}; cores usable {available_cores()}, busy {busy_cores()}{crowded}); libraries: {libs}"
    )


# --- splitting NumPy work -------------------------------------------------------------------
#: Work over fewer bytes than this runs on one thread: waking a second one costs about 50
#: microseconds. LeNet's first pooling (2.9 MB) took 0.34 ms on two threads against 0.50 on one.
SPLIT_BYTES = 1 << 20
_workers: dict[str, object] = {"pool": None, "size": 0}
_workers_lock = threading.Lock()
_local = threading.local()


def _executor(size: int) -> ThreadPoolExecutor:
    """The shared helper threads (``size`` of them at least), made on first use."""
    with _workers_lock:
        if _workers["pool"] is None or _workers["size"] < size:
            old = _workers["pool"]
            _workers["pool"], _workers["size"] = ThreadPoolExecutor(size, thread_name_prefix="netdef"), size
            if old is not None:
                old.shutdown(wait=False)
        return _workers["pool"]


def _forget_workers() -> None:
    """In a forked child the parent's helper threads do not exist: make new ones when needed."""
    _workers["pool"], _workers["size"] = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def run_parts(fn, parts: list) -> list:
    """``fn`` over ``parts`` spread over :func:`count` threads (this one included); the results in order.

    ``fn`` takes an iterator over parts and returns one result per part it was given, in the
    same order, or None when the parts have no results (each is then None). Each thread that
    joins calls ``fn`` once, and its iterator hands it the next part not yet taken each time
    it asks, so that a thread can reuse buffers from one part to the next. A thread takes its
    next part only when it has finished the one before: a helper that is slow to start (the
    cores busy with other work) takes fewer parts, or none, and the others do its share
    instead of waiting for it. ``fn`` must only write memory no other part writes. With one
    thread, or one part, ``fn`` runs here over all parts. An exception raised in any part is
    raised here, after every part taken has ended; parts not taken by then are not run.
    """
    k = min(count(), len(parts))
    if k <= 1 or _controller() is None:  # without threadpoolctl BLAS could not be held at one thread
        return _results(fn(iter(parts)), len(parts))
    run = _Run(fn, parts)
    pool = _executor(k - 1)
    for _ in range(k - 1):
        pool.submit(run.join)
    run.join()
    run.wait()
    if run.error is not None:
        raise run.error
    return run.results


def _results(out, n: int) -> list:
    return [None] * n if out is None else list(out)


class _Run:
    """One :func:`run_parts` call: the parts not yet taken, the results, the threads still working."""

    def __init__(self, fn, parts: list) -> None:
        self.fn, self.parts = fn, parts
        self.results: list = [None] * len(parts)
        self.taken = 0
        self.working = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def _next(self) -> int | None:
        """The index of the next part, now taken; None when all are taken or one failed. Hold ``cond``."""
        if self.taken >= len(self.parts) or self.error is not None:
            return None
        self.taken += 1
        return self.taken - 1

    def _take(self) -> int | None:
        with self.cond:
            return self._next()

    def join(self) -> None:
        """Work on parts until none is left (nothing to do when they are all taken already)."""
        with self.cond:  # the first part and the count of working threads change together, for wait()
            first = self._next()
            if first is None:
                return
            self.working += 1
        mine: list[int] = []

        def take():
            i = first
            while i is not None:
                mine.append(i)
                yield self.parts[i]
                i = self._take()

        _local.sharing = True
        try:
            with _one_blas_thread():
                out = _results(self.fn(take()), len(mine))
            for i, res in zip(mine, out, strict=True):
                self.results[i] = res
        except BaseException as err:  # noqa: BLE001 - raised again by the caller of run_parts
            with self.cond:
                self.error = self.error or err
        finally:
            _local.sharing = False
            with self.cond:
                self.working -= 1
                self.cond.notify_all()

    def wait(self) -> None:
        """Until every part is taken and every thread that took one has finished."""
        with self.cond:
            while self.working:
                self.cond.wait()


_blas_hold: dict = {"depth": 0, "saved": []}
_blas_lock = threading.Lock()


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS at one thread while threads work on parts (each is a thread already); restored after the last.

    Under netdef's policy BLAS has one thread anyway (:func:`cap_blas`). Where the user set the
    BLAS library's own variable it has the user's count, and each thread's products would start
    that many threads.
    """
    with _blas_lock:
        if _blas_hold["depth"] == 0:
            libs = [lib for lib in _controller().lib_controllers if lib.num_threads > 1]
            _blas_hold["saved"] = [(lib, lib.num_threads) for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_hold["depth"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_hold["depth"] -= 1
            if _blas_hold["depth"] == 0:
                for lib, n in _blas_hold["saved"]:
                    lib.set_num_threads(n)


def even_slices(n: int, k: int) -> list[slice]:
    """``range(n)`` cut into ``k`` consecutive slices whose lengths differ by at most one."""
    return [slice(n * i // k, n * (i + 1) // k) for i in range(k)]


def chunk_count(items: int, item_bytes: int, chunk_bytes: int) -> int:
    """How many chunks to cut ``items`` items of ``item_bytes`` each into, each at most ``chunk_bytes``
    (one item at least).

    Work of :data:`SPLIT_BYTES` or more gets a multiple of :func:`count` chunks, so that the
    threads of :func:`run_parts` end together on a quiet machine. Each thread then has a chunk
    in flight (a cifar10_quick step on two cores: 89 MiB at its peak, 88 on one thread).
    Halving the chunks when split saved 2-3 MiB and cost 2.5% of the step's time, so they keep
    their size.
    """
    if items <= 0:
        return 0
    k = count() if items * item_bytes >= SPLIT_BYTES else 1
    parts = -(-items // max(1, chunk_bytes // max(1, item_bytes)))
    return min(items, -(-parts // k) * k)


class ThreadsAction(argparse.Action):
    """``--threads N`` on a command line: validates N and applies it at once (see :func:`apply_policy`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values < 1:
            parser.error(f"{option_string} must be at least 1. Received: {values}")
        apply_policy(values)
        setattr(namespace, self.dest, values)
