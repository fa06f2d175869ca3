"""Reading a data layer's next batches in a background thread (Caffe's ``data_param.prefetch``).

While the network computes on batch k, one daemon thread reads and decodes batches
k + 1 .. k + ``depth`` (database reads, image decoding, mean subtraction and scaling), so
that forward finds them ready. What comes out is bit-identical to reading each batch when
forward needs it, because of three rules:

- **Plans are made in the layer's own thread.** Which records or images make a batch is
  decided by the thread that calls forward; so is every random draw that decides it (an
  ``ImageData`` reshuffle at the end of a pass). A batch whose plan needs a draw is planned
  only by the forward that needs it, so the draw happens at the same point among the net's
  other draws (Dropout, ...) as without prefetching. The worker runs jobs; it never draws.
- **Random crops and mirrors are drawn when the batch is taken** (``DataTransformer.finish``),
  in the layer's thread: the net's random stream has exactly one consumer, in batch order.
- **Batches are taken in the order they were planned**, and a job's error is raised by
  the forward that takes its batch (the same exception, message and class as without
  prefetching), never earlier, never from the thread.

``depth`` 0 reads each batch in the calling thread when it is needed (no thread at all).

The thread starts with the first batch submitted and ends when :meth:`Prefetcher.close`
is called, when the prefetcher is garbage collected (with its layer) and at exit; it then
skips the jobs still queued and finishes the one it is running. Queued jobs hold their
layer only until they have run, so an idle thread never keeps a layer alive.

Threads and the GIL: image decoding (Pillow) and large NumPy operations release the GIL,
so they overlap the net's compute; Python-level work (Pillow's header parsing, protobuf
parsing, per-sample bookkeeping) does not. ``benchmarks/data_prefetch.py`` measures it.
"""

from __future__ import annotations

import collections
import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy

from .. import backend

#: a job: what the worker runs to produce one batch
Job = Callable[[], Any]
#: ``plan(first)``: the job for the next batch not yet planned; None when it cannot be planned
#: now (it needs a random draw and ``first`` is False: forward does not need it yet)
Plan = Callable[[bool], Callable[[], Any] | None]


@dataclass
class Batch:
    """One batch as a job hands it over.

    Attributes:
        position: the read position after this batch; what the layer's ``get_state``
            reports once forward has taken it (even when building the batch failed, as
            reading it moved the position on without prefetching too).
        data: the batch, prepared for ``DataTransformer.finish``.
        labels: one label per sample (or None).
        error: the exception building the batch raised, for forward to raise.
    """

    position: Any
    data: numpy.ndarray | None = None
    labels: numpy.ndarray | None = None
    error: Exception | None = None

    def unpack(self) -> tuple[numpy.ndarray, numpy.ndarray | None]:
        """(data, labels), or the error building them raised."""
        if self.error is not None:
            raise self.error
        return self.data, self.labels


def build_batch(position, build: Callable[..., tuple], *args) -> Batch:
    """A :class:`Batch` of ``build(*args)`` (data, labels) at ``position``, holding the error if it fails."""
    try:
        data, labels = build(*args)
    except Exception as err:  # handed to the forward that takes this batch, which raises it
        return Batch(position, error=err)
    return Batch(position, data, labels)


class _Slot:
    """One planned batch: its job until the worker takes it, then the job's result or exception."""

    __slots__ = ("job", "result", "error", "cancelled", "done")

    def __init__(self, job: Job):
        self.job: Job | None = job
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = threading.Event()


def _fill(slot: _Slot, halt: threading.Event) -> None:
    job, slot.job = slot.job, None
    if slot.cancelled or halt.is_set():
        return
    try:
        slot.result = job()
    except BaseException as err:  # kept for the forward that takes the batch; the thread lives on
        slot.error = err


def _work(jobs: queue.SimpleQueue, halt: threading.Event) -> None:
    """The worker: fills the slots it gets, in order, until it gets None; skips their jobs once halted."""
    while True:
        slot = jobs.get()
        if slot is None:
            return
        done = slot.done
        _fill(slot, halt)
        # let go of the slot (through its job or result, of the layer) before saying it is done, so a
        # layer whose batches are all read is never kept alive by this thread
        slot = None
        done.set()
        done = None


def _stop(jobs: queue.SimpleQueue, halt: threading.Event, thread: threading.Thread) -> None:
    """End a worker: it skips the jobs still queued, finishes the one it is running and returns.

    Called by :meth:`Prefetcher.close`, when the prefetcher is garbage collected, and at exit
    (``weakref.finalize``): waiting for the running job there keeps the interpreter from closing
    a database under a read in progress.
    """
    halt.set()
    jobs.put(None)
    if thread is not threading.current_thread():
        thread.join()


class Prefetcher:
    """Runs a layer's batch jobs ``depth`` batches ahead in one daemon thread.

    Args:
        depth: how many batches to read ahead of the one forward takes; 0 reads each batch
            when it is needed, in the calling thread.
        name: names the thread (``netdef prefetch <name>``), e.g. the layer's description.
    """

    def __init__(self, depth: int, name: str = "data"):
        self.depth = int(depth)
        self.name = name
        self._pending: collections.deque[_Slot] = collections.deque()
        self._jobs: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._stop: weakref.finalize | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread, or None before the first batch and after :meth:`close`."""
        return self._thread

    def __len__(self) -> int:
        """Batches planned and not yet taken (queued, being read, or ready)."""
        return len(self._pending)

    def next(self, plan: Plan) -> Any:
        """The next batch: what its job returned; an exception the job raised is raised here.

        Plans batches with ``plan`` until ``depth`` are ahead of the one returned:
        ``plan(True)`` for the one forward needs now, when none is planned, ``plan(False)``
        for the ones after it, stopping at the first that cannot be planned yet (None).
        """
        if self.depth <= 0:
            return plan(True)()
        if not self._pending:
            self._submit(plan(True))
        while len(self._pending) <= self.depth:
            job = plan(False)
            if job is None:
                break
            self._submit(job)
        slot = self._pending.popleft()
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _submit(self, job: Job) -> None:
        if self._thread is None:
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            halt = threading.Event()
            name = f"netdef prefetch {self.name}"
            thread = threading.Thread(target=_work, args=(jobs, halt), name=name, daemon=True)
            thread.start()
            self._jobs, self._thread = jobs, thread
            # closing, garbage collection of this object (with its layer) and the end of the program stop it
            self._stop = weakref.finalize(self, _stop, jobs, halt, thread)
        slot = _Slot(job)
        self._pending.append(slot)
        self._jobs.put(slot)

    def settle(self) -> None:
        """Wait until every planned batch has been read (they stay ready to take)."""
        for slot in list(self._pending):
            slot.done.wait()

    def discard(self) -> None:
        """Drop the batches planned ahead, and return once no job of this prefetcher is running.

        Afterwards the layer may move its read position (``set_state``) without a race.
        """
        pending = list(self._pending)
        self._pending.clear()
        for slot in pending:
            slot.cancelled = True
        for slot in pending:
            slot.done.wait()

    def close(self) -> None:
        """Drop the batches planned ahead and end the thread; a later :meth:`next` starts a new one."""
        self.discard()
        stop = self._stop
        self._thread = self._jobs = self._stop = None
        if stop is not None:
            stop()


class PrefetchingReader:
    """The layer side of prefetching, shared by ``Data`` and ``ImageData`` (a mixin before
    their reader class, e.g. ``ShardedReader``, and ``Layer``).

    Caffe's prefetching layers all read ``data_param.prefetch`` (default 4), ``ImageData``
    included; netdef does too. While the net computes, the prefetcher's thread reads,
    decodes, stacks, mean-subtracts and scales the next batches; forward draws the random
    crops and mirrors and cuts them (``DataTransformer.finish``), so every random draw stays
    in the net's thread in batch order and the results are bit-identical to ``prefetch: 0``,
    which reads each batch in forward without a thread (where Caffe would stall). The read
    position a layer reports (``get_state``) is the one after the last batch forward took, not
    after the batches read ahead; ``set_state``, ``shard`` and :meth:`close` drop the batches
    read ahead, and reading goes on from that position. Memory: up to ``prefetch`` + 1
    batches in the net's float type at their uncropped size.

    A layer provides ``_plan`` (see :meth:`Prefetcher.next`; its jobs return :class:`Batch`
    objects) and ``_taken``, calls ``_start_prefetch`` at the end of its set-up, and extends
    ``_rewind`` to move its reader back; this class is its ``forward``.
    """

    prefetcher: Prefetcher

    def _start_prefetch(self) -> None:
        self.prefetcher = Prefetcher(int(self.param.data_param.prefetch), self.describe())

    def _plan(self, first: bool) -> Job | None:
        raise NotImplementedError

    def _taken(self, position) -> None:
        """Forward took the batch that ends at read position ``position``."""
        raise NotImplementedError

    def _rewind(self) -> None:
        """Drop the batches read ahead: the next forward reads on from the last one taken."""
        self.prefetcher.discard()

    def shard(self, rank: int, size: int, order_rng: numpy.random.Generator | None = None) -> None:
        super().shard(rank, size, order_rng)
        self._rewind()

    def close(self) -> None:
        """End the prefetch thread now; a later forward starts one again, at the same position."""
        self._rewind()
        self.prefetcher.close()

    def forward(self, bottom, top) -> None:
        """Take the next batch, crop and mirror it (drawing now) and put it and its labels in ``top``."""
        batch: Batch = self.prefetcher.next(self._plan)
        self._taken(batch.position)
        x, labels = batch.unpack()
        y = self.transformer.finish(x)
        self.shape = y.shape
        top[0].reshape(y.shape)
        top[0].data = backend.asarray(y, top[0].xp, top[0].dtype)
        if len(top) > 1:
            top[1].data = backend.asarray(labels, top[1].xp, top[1].dtype)


__all__ = ["Batch", "Prefetcher", "PrefetchingReader", "build_batch"]
