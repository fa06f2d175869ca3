"""Synchronous data-parallel training on MPI (mpi4py), with NCCL (through CuPy) for GPU gradients.

``mpiexec -n N netdef train solver.prototxt`` starts N processes (ranks); each builds the
same solver. :func:`netdef.solvers.get_solver` notices the MPI launcher and returns a
:func:`data_parallel` solver, which:

- broadcasts rank 0's weights (and update history) to every rank, so all start identical;
- gives each rank a distinct, reproducible random stream (rank 0 keeps the stream a
  single process would have; the others derive theirs from it) and every data layer one
  shared *order* stream, so that shuffles agree across ranks;
- shards the train net's data layers (``shard(rank, size, order_rng)``): the ranks walk
  the same sample order, and of every ``N * batch_size`` samples rank ``r`` reads the
  ``r``-th block of ``batch_size`` (no sample is read twice per epoch);
- averages the gradients across ranks as soon as they are ready (Caffe's ``on_gradients_ready``),
  before clipping, normalisation, regularisation and the update, either layer by layer
  while backward runs (``layer_wise_reduce: true``, Caffe's default) or in one fused
  buffer (``layer_wise_reduce: false``);
- lets rank 0 alone log (other ranks show warnings and errors, prefixed with their rank),
  test and write snapshots; the other ranks wait;
- agrees once per iteration on the requested action (one small allreduce), so a SIGINT or
  SIGHUP on any rank stops or snapshots every rank together;
- turns an error on any rank into ``MPI_Abort`` (the message is printed first), and a
  collective that has waited longer than ``NETDEF_MPI_TIMEOUT`` seconds (default 600; 0
  disables the watch) into an abort with a :class:`~netdef.errors.ParallelError` message, so
  a rank that dies or hangs never leaves the others waiting forever.

With N ranks and batch size B the updates equal those of one process with batch N * B
reading the same samples in the same order (up to float32 rounding), for nets without
batch statistics. BatchNorm computes its statistics per rank, over B samples, and keeps
per-rank running averages, as Caffe's multi-GPU training does; rank 0's are snapshotted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

import numpy

from .. import backend
from ..errors import MissingDependencyError, ParallelError, install_hint
from .resume import apply_data_states, data_states
from .signals import SolverAction

log = logging.getLogger("netdef")

ENV_TIMEOUT = "NETDEF_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
#: set to 1 to use MPI even when no launcher variable says so (or 0 to ignore MPI launchers)
ENV_FORCE = "NETDEF_MPI"
#: world-size variables of the common MPI launchers (MPICH/Intel MPI hydra, Open MPI, MVAPICH)
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_STOP, _SNAPSHOT = 1, 2
#: spawn-key tags that keep the derived streams apart
_RANK_STREAM, _ORDER_STREAM = 0x72616E6B, 0x6F726472


def launched_size() -> int:
    """How many ranks the MPI launcher started (1 outside ``mpiexec``), read from its environment."""
    force = os.environ.get(ENV_FORCE, "").strip()
    if force == "0":
        return 1
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 2 if force == "1" else 1


def timeout_seconds() -> float:
    """The collective watch's limit from ``NETDEF_MPI_TIMEOUT`` (0 or less: no limit)."""
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        return float(raw)
    except ValueError:
        raise ParallelError(f"{ENV_TIMEOUT} must be a number of seconds. Received: {raw!r}") from None


class LocalCommunicator:
    """A one-rank communicator without MPI: data-parallel machinery in a single process (tests, baselines)."""

    rank = 0
    size = 1
    local_rank = 0
    kind = "local"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, array: numpy.ndarray) -> None:
        """Sum ``array`` over all ranks, in place."""

    def start_allreduce_sum(self, array: numpy.ndarray):
        return None

    def wait(self, requests: list) -> None:
        """Finish the started reductions."""

    def progress(self, requests: list) -> None:
        """Let started reductions advance."""

    def bcast(self, obj, what: str = "", timed: bool = True):
        return obj

    def bcast_array(self, array: numpy.ndarray, what: str = "") -> None:
        """Overwrite ``array`` with rank 0's, in place."""

    def agree(self, flags: int, what: str = "", timed: bool = True) -> int:
        """The bitwise OR of every rank's ``flags``."""
        return flags

    def allgather(self, obj, what: str = "") -> list:
        return [obj]

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)

    @contextlib.contextmanager
    def watch(self, what: str, timed: bool = True) -> Iterator[None]:
        """Nothing to watch with one rank."""
        yield


class MPICommunicator(LocalCommunicator):
    """``MPI.COMM_WORLD`` (or another mpi4py communicator) with a watch on every collective.

    NumPy arrays go to MPI directly; CuPy arrays are staged through host memory (NCCL
    does the GPU gradients, see :class:`NCCLReducer`).
    """

    kind = "mpi"

    def __init__(self, comm=None, timeout: float | None = None):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        self.timeout = timeout_seconds() if timeout is None else float(timeout)
        self._watch: tuple[str, float] | None = None
        self._watch_lock = threading.Lock()
        if self.timeout > 0 and self.size > 1:
            threading.Thread(target=self._watchdog, name="netdef-mpi-watch", daemon=True).start()

    # --- the watch ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self, what: str, timed: bool = True) -> Iterator[None]:
        """Abort the job when the block (a collective) takes longer than the timeout."""
        with self._watch_lock:
            self._watch = (what, time.monotonic()) if timed else None
        try:
            yield
        finally:
            with self._watch_lock:
                self._watch = None

    def _watchdog(self) -> None:
        step = min(1.0, self.timeout / 4)
        while True:
            time.sleep(step)
            with self._watch_lock:
                current = self._watch
            if current is not None and time.monotonic() - current[1] > self.timeout:
                err = ParallelError(
                    f"rank {self.rank} of {self.size}: no answer from the other ranks for {self.timeout:g} s during "
                    f"{current[0]}; a rank has died or hangs. Aborting all ranks. (The limit is {ENV_TIMEOUT}, in "
                    "seconds; 0 disables it.)"
                )
                report_and_abort(self, err)

    # --- collectives ----------------------------------------------------------------------------
    def allreduce_sum(self, array, what: str = "gradient allreduce") -> None:
        host = backend.to_numpy(array) if not isinstance(array, numpy.ndarray) else array
        with self.watch(what):
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        if host is not array:
            array[...] = backend.asarray(host, backend.array_module(array), array.dtype)

    def start_allreduce_sum(self, array: numpy.ndarray):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)

    def wait(self, requests: list) -> None:
        if requests:
            with self.watch("gradient allreduce"):
                self.MPI.Request.Waitall(requests)

    def progress(self, requests: list) -> None:
        if requests:
            self.MPI.Request.Testall(requests)

    def bcast(self, obj, what: str = "broadcast from rank 0", timed: bool = True):
        with self.watch(what, timed):
            return self.comm.bcast(obj, root=0)

    def bcast_array(self, array, what: str = "weight broadcast") -> None:
        host = backend.to_numpy(array) if not isinstance(array, numpy.ndarray) else array
        host = numpy.ascontiguousarray(host)
        with self.watch(what):
            self.comm.Bcast(host, root=0)
        if host is not array:
            array[...] = backend.asarray(host, backend.array_module(array), array.dtype)

    def agree(self, flags: int, what: str = "agreeing on the requested action", timed: bool = True) -> int:
        with self.watch(what, timed):
            return int(self.comm.allreduce(int(flags), op=self.MPI.BOR))

    def allgather(self, obj, what: str = "comparing the nets of all ranks") -> list:
        with self.watch(what):
            return self.comm.allgather(obj)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


def import_mpi():
    """mpi4py's ``MPI`` module, or a MissingDependencyError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise MissingDependencyError(
            f"Training on several processes needs mpi4py and an MPI library ({err}). Install them with "
            f"{install_hint('mpi', 'mpi4py', 'mpich')}, then start the ranks with mpiexec."
        ) from None
    return MPI


_WORLD: list[LocalCommunicator] = []


def world() -> LocalCommunicator:
    """The process's communicator: MPI's world under an MPI launcher, else a one-rank local one."""
    if not _WORLD:
        _WORLD.append(MPICommunicator() if launched_size() > 1 else LocalCommunicator())
    return _WORLD[0]


def local_rank() -> int | None:
    """This rank's number among the ranks on its machine, or None outside an MPI launcher."""
    return world().local_rank if launched_size() > 1 else None


#: how long a failing rank waits, after printing why, before aborting the job
ABORT_GRACE_SECONDS = 0.5


def report_and_abort(comm: LocalCommunicator, err: BaseException) -> None:
    """Print ``err`` (as the CLI would: the message, not the traceback), then abort every rank."""
    message = f"{type(err).__name__}: {err}" if not isinstance(err, KeyboardInterrupt) else "interrupted"
    print(f"netdef: rank {comm.rank} of {comm.size}: {message}", file=sys.stderr, flush=True)
    # The launcher forwards each rank's output asynchronously and drops what is in flight when the job is torn
    # down; a short pause lets the one line that says why reach the user.
    time.sleep(ABORT_GRACE_SECONDS)
    comm.abort(1)


class _RankFilter(logging.Filter):
    """On ranks other than 0: only warnings and errors, each prefixed with the rank."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "netdef_rank", False):
            record.msg = f"[rank {self.rank}] {record.msg}"
            record.netdef_rank = True
        return True


def quiet_other_ranks(comm: LocalCommunicator) -> None:
    """Let rank 0 alone log below WARNING (once per process)."""
    logger = logging.getLogger("netdef")
    if comm.rank != 0 and not any(isinstance(f, _RankFilter) for f in logger.filters):
        logger.addFilter(_RankFilter(comm.rank))


def _stream_key(streams: backend.RandomStreams) -> int:
    """A 128-bit digest of a NumPy stream's position (reading it does not advance it)."""
    state = json.dumps(streams.numpy.bit_generator.state, sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(state.encode(), digest_size=16).digest(), "little")


def _reseed(streams: backend.RandomStreams, key: int, rank: int) -> None:
    """Move ``streams`` (in place: layers hold its generator) to rank ``rank``'s stream derived from ``key``."""
    seq = numpy.random.SeedSequence(key, spawn_key=(_RANK_STREAM, rank))
    streams.numpy.bit_generator.state = numpy.random.PCG64(seq).state
    # RandomStreams has no public re-seed for the device stream; it derives it from _seq
    streams._seq = seq
    streams._device = None


def order_stream(key: int, index: int) -> numpy.random.Generator:
    """The data-order generator of data layer ``index``: the same on every rank."""
    return numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence(key, spawn_key=(_ORDER_STREAM, index))))


class NCCLReducer:
    """Sums CuPy gradients over all ranks with NCCL (``cupy.cuda.nccl``), one group call per iteration.

    Not exercised by the test suite (it needs one GPU per rank).
    """

    def __init__(self, comm: LocalCommunicator):
        from cupy.cuda import nccl  # noqa: PLC0415 - only on GPU ranks

        self.nccl = nccl
        uid = comm.bcast(nccl.get_unique_id() if comm.is_root else None, "NCCL set-up")
        self.comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.types = {numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32, numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64}

    def allreduce_sum(self, arrays: list) -> None:
        import cupy  # noqa: PLC0415

        stream = cupy.cuda.get_current_stream().ptr
        self.nccl.groupStart()
        for a in arrays:
            self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, self.types[a.dtype], self.nccl.NCCL_SUM, stream)
        self.nccl.groupEnd()


class _GradientReducer:
    """Averages the train net's parameter gradients over the ranks, layer-wise or fused."""

    def __init__(self, solver, comm: LocalCommunicator, layer_wise: bool):
        self.solver, self.comm = solver, comm
        net = solver.net
        self.blobs = net.learnable_params
        self.on_gpu = any(not isinstance(b.diff, numpy.ndarray) for b in self.blobs)
        self.nccl = NCCLReducer(comm) if self.on_gpu and comm.size > 1 and _has_nccl() else None
        self.layer_wise = layer_wise and not self.on_gpu and comm.size > 1
        self.seconds = 0.0
        self.reductions = 0
        self._requests: list = []
        self._passes = 0
        if self.layer_wise:
            # a shared blob is final once the first layer using it has run backward
            first_use: dict[int, int] = {}
            for i, layer in enumerate(net.layers):
                for blob in getattr(layer, "blobs", []):
                    first_use[id(blob)] = min(first_use.get(id(blob), i), i)
            self.ready: dict[int, list] = {}
            for blob in self.blobs:
                self.ready.setdefault(first_use.get(id(blob), 0), []).append(blob)
            self.last_layer = len(net.layers) - 1
            net.before_backward(self._before_backward)
            net.after_backward(self._after_backward)
        elif not self.on_gpu and comm.size > 1:
            dtype = self.blobs[0].diff.dtype if self.blobs else numpy.float32
            self.buffer = numpy.empty(sum(b.count for b in self.blobs), dtype=dtype)

    def on_start(self) -> None:
        self._passes = 0

    def _before_backward(self, index: int) -> None:
        if index == self.last_layer:
            self._passes += 1

    def _after_backward(self, index: int) -> None:
        if self._passes != self.solver.param.iter_size:
            return
        started = time.perf_counter()
        for blob in self.ready.get(index, ()):
            self._requests.append(self.comm.start_allreduce_sum(blob.diff))
        self.comm.progress(self._requests)
        self.seconds += time.perf_counter() - started

    def on_gradients_ready(self) -> None:
        if self.comm.size == 1:
            return
        started = time.perf_counter()
        if self.layer_wise:
            requests, self._requests = self._requests, []
            self.comm.wait(requests)
        elif self.nccl is not None:
            self.nccl.allreduce_sum([b.diff for b in self.blobs])
        elif self.on_gpu:
            for blob in self.blobs:
                self.comm.allreduce_sum(blob.diff)
        elif self.blobs:
            self._fused()
        for blob in self.blobs:
            dt = blob.diff.dtype.type
            blob.diff *= dt(1) / dt(self.comm.size)
        self.seconds += time.perf_counter() - started
        self.reductions += 1

    def _fused(self) -> None:
        offset = 0
        for blob in self.blobs:
            self.buffer[offset : offset + blob.count] = blob.diff.ravel()
            offset += blob.count
        self.comm.allreduce_sum(self.buffer)
        offset = 0
        for blob in self.blobs:
            blob.diff[...] = self.buffer[offset : offset + blob.count].reshape(blob.diff.shape)
            offset += blob.count


def _has_nccl() -> bool:
    try:
        from cupy.cuda import nccl  # noqa: F401, PLC0415
    except Exception:
        return False
    return True


def _net_signature(net) -> str:
    """What must be equal on every rank: the learnable parameters' layers and shapes."""
    parts = [f"{spec.layer}:{spec.index}:{tuple(spec.blob.shape)}" for spec in net.param_specs]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


class DataParallelMixin:
    """Synchronous data parallelism over ``comm`` for a solver class (see the module documentation).

    Build one with :func:`data_parallel` (``data_parallel(SGDSolver)(path)``); ``get_solver``
    does so under an MPI launcher.

    Attributes:
        comm: the communicator (``rank``, ``size``, ``is_root``).
        is_root: True on rank 0, the rank that logs, tests, writes snapshots and run records.
        communication_seconds: time spent reducing gradients so far (this rank's wait included).
    """

    abort_on_error = True

    def __init__(self, *args, comm: LocalCommunicator | None = None, **kwargs):
        self.comm = comm if comm is not None else world()
        self._parallel_ready = False
        self._testing = False
        self._deferred = 0
        quiet_other_ranks(self.comm)
        with self._guard():
            super().__init__(*args, **kwargs)
            self._setup_parallel()

    @property
    def is_root(self) -> bool:
        return self.comm.is_root

    @property
    def communication_seconds(self) -> float:
        return self._reducer.seconds

    # --- set-up ---------------------------------------------------------------------------------
    def _setup_parallel(self) -> None:
        comm = self.comm
        signatures = comm.allgather((_net_signature(self.net), type(self).__name__, self.param.iter_size))
        if any(s != signatures[0] for s in signatures):
            bad = next(r for r, s in enumerate(signatures) if s != signatures[0])
            raise ParallelError(
                f"rank {bad} built a different solver or net than rank 0 ({signatures[bad]} vs {signatures[0]}); "
                "every rank must run the same definitions"
            )
        key = comm.bcast(_stream_key(self.rng) if comm.is_root else None, "random stream set-up")
        sharded = []
        for index, layer in enumerate(self.net.layers):
            if callable(getattr(layer, "shard", None)):
                layer.shard(comm.rank, comm.size, order_stream(key, index))
                sharded.append(layer.name)
        # every rank starts from rank 0's read positions (rand_skip, shuffles drawn at set-up)
        states = comm.bcast(data_states(self.net) if comm.is_root else None, "data position broadcast")
        if not comm.is_root:
            apply_data_states(self.net, states)
        if comm.rank:
            _reseed(self.rng, key, comm.rank)
        self._broadcast_weights()
        self._reducer = _GradientReducer(self, comm, bool(self.param.layer_wise_reduce))
        self.add_callback(self._reducer.on_start, self._reducer.on_gradients_ready)
        self._parallel_ready = True
        if comm.size > 1:
            log.info(
                "Data-parallel training on %d ranks (%s); each reads its own share of %s; gradients reduced %s",
                comm.size,
                comm.kind,
                ", ".join(sharded) or "no data layer",
                "layer by layer during backward" if self._reducer.layer_wise else "in one fused buffer",
            )

    def _broadcast_weights(self) -> None:
        for blobs in self.net.params.values():
            for blob in blobs:
                self.comm.bcast_array(blob.data)
        for h in self.history:
            self.comm.bcast_array(h)

    def _rekey(self) -> None:
        """Give ranks > 0 fresh streams derived from rank 0's position (after a snapshot or a restore)."""
        key = self.comm.bcast(_stream_key(self.rng) if self.comm.is_root else None, "random stream re-key")
        if self.comm.rank:
            _reseed(self.rng, key, self.comm.rank)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """On more than one rank, an error anywhere aborts every rank (the others would wait forever)."""
        try:
            yield
        except BaseException as err:
            if self.comm.size > 1 and self.abort_on_error and not isinstance(err, SystemExit):
                report_and_abort(self.comm, err)
            raise

    # --- the loop ---------------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        with self._guard():
            super().step(iters)

    def solve(self, resume_file: str | None = None) -> None:
        with self._guard():
            super().solve(resume_file)

    def get_requested_action(self) -> SolverAction:
        """Every rank's requests combined: stop when any rank stops, else snapshot when any snapshots."""
        local = super().get_requested_action()
        if self._testing:
            # only rank 0 tests: a snapshot waits for the next agreement, a stop ends the test now
            if local is SolverAction.SNAPSHOT:
                self._deferred |= _SNAPSHOT
                return SolverAction.NONE
            return local
        flags = self._deferred | (_STOP if local is SolverAction.STOP else 0)
        flags |= _SNAPSHOT if local is SolverAction.SNAPSHOT else 0
        self._deferred = 0
        mine, flags = flags, self.comm.agree(flags)
        if flags & ~mine:
            wanted = "stop" if flags & _STOP else "a snapshot"
            log.info("Another rank asked for %s (a signal); every rank follows", wanted)
        if flags & _STOP:
            return SolverAction.STOP
        return SolverAction.SNAPSHOT if flags & _SNAPSHOT else SolverAction.NONE

    def test_all(self):
        """Rank 0 tests; every rank gets its results and learns whether it stopped meanwhile."""
        results: list = []
        if self.comm.is_root:
            self._testing = True
            try:
                results = super().test_all()
            finally:
                self._testing = False
        results, stopped = self.comm.bcast(
            (results, self.requested_early_exit) if self.comm.is_root else None, "testing on rank 0", timed=False
        )
        self.requested_early_exit = bool(stopped)
        return results

    # --- weights, snapshots, resume ---------------------------------------------------------------
    def load_weights(self, weights) -> None:
        super().load_weights(weights)
        if getattr(self, "_parallel_ready", False):
            self._broadcast_weights()

    def snapshot(self) -> str | None:
        """Rank 0 writes the files; every rank learns the path and re-keys its random stream."""
        path = super().snapshot() if self.comm.is_root else None
        path = self.comm.bcast(path, "snapshot on rank 0", timed=False)
        if not self.comm.is_root:
            self.rng.checkpoint()  # keeps the device-stream epoch in step with rank 0's
            if path is not None:
                self.last_snapshot = path
        self._rekey()
        return path

    def restore(self, state_file: str) -> None:
        """Every rank reads the snapshot (it must be on a file system they all see); rank 0's values win."""
        super().restore(state_file)
        if self._parallel_ready:
            self._broadcast_weights()
            self._rekey()


_CLASSES: dict[type, type] = {}


def data_parallel(solver_class: type) -> type:
    """The data-parallel version of ``solver_class`` (e.g. ``data_parallel(SGDSolver)``), built once per class."""
    if issubclass(solver_class, DataParallelMixin):
        return solver_class
    if solver_class not in _CLASSES:
        _CLASSES[solver_class] = type(
            f"DataParallel{solver_class.__name__}",
            (DataParallelMixin, solver_class),
            {"__doc__": f"{solver_class.__name__} trained data-parallel over MPI ranks (netdef.solvers.parallel)."},
        )
    return _CLASSES[solver_class]


def is_root(solver) -> bool:
    """Whether ``solver`` runs on the rank that logs and writes files (True for every single-process solver)."""
    return getattr(solver, "is_root", True)


__all__ = [
    "DEFAULT_TIMEOUT",
    "ENV_TIMEOUT",
    "DataParallelMixin",
    "LocalCommunicator",
    "MPICommunicator",
    "NCCLReducer",
    "data_parallel",
    "import_mpi",
    "is_root",
    "launched_size",
    "local_rank",
    "order_stream",
    "quiet_other_ranks",
    "report_and_abort",
    "timeout_seconds",
    "world",
]
