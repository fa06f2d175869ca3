"""The solver loop: nets, iterations, testing and display.

This is Caffe's ``Solver`` (solver.cpp) in Python: it builds the train net and the
test nets from a SolverParameter, runs ``iter_size`` forward/backward passes per
iteration, smooths the loss over ``average_loss`` iterations, tests every
``test_interval`` iterations, snapshots every ``snapshot`` iterations (the files
are :mod:`.snapshot`'s business), and leaves the update rule (``apply_update``) to
its subclasses in :mod:`.sgd_solvers`. Log lines use Caffe's wording on the
``netdef`` logger.

Divergence: unlike Caffe, training stops with a TrainingDivergedError as soon as the
loss of an iteration is NaN or infinite, and when a parameter is non-finite at a
display iteration or before a snapshot (parameters are not scanned every iteration: a
bad parameter makes the next loss non-finite anyway). The error names the iteration,
the first layer whose parameter or output is non-finite, the learning rate and what to
try. No snapshot of non-finite weights is written, so the last good one stays the
newest; ``on_divergence="continue"`` keeps Caffe's behaviour (a warning, then training
and snapshots go on).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy

from .. import backend
from ..errors import SolverError, TrainingDivergedError
from ..io.paths import resolve_path
from ..layers.python_layer import python_layers_allowed
from ..logparse import Record
from ..logs import format_g, output_line
from ..net import TEST, TRAIN, Net
from ..proto import load_net, load_solver, to_text
from ..proto import netdef_pb2 as pb
from ..proto.upgrade import upgrade_solver
from ..runs import NET_FILE, RunRecorder, apply_overrides, override_strings
from . import divergence as _divergence
from . import snapshot as _snapshot
from .lr_policy import learning_rate
from .signals import SolverAction, parse_action

log = logging.getLogger("netdef")

_TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


def load_solver_parameter(
    solver,
    net: str | None = None,
    *,
    source: str | None = None,
    overrides: Sequence[str] | Mapping[str, object] | None = None,
) -> tuple[pb.SolverParameter, str | None]:
    """The SolverParameter to run, and the file it came from (None for a message).

    A file is read and upgraded (legacy ``solver_type``); as Caffe does for solver
    files, an unset ``snapshot_prefix`` becomes the file's path without extension,
    and a prefix naming an existing folder becomes ``<folder>/<file stem>``.
    A SolverParameter is copied as it is; with ``source`` it counts as already
    prepared from that file (by an earlier call), and ``source`` is returned with it.
    ``net`` replaces whatever train net the definition names (the CLI's ``--net``).
    ``overrides`` (``["type=Adam", "base_lr=0.001"]``, the CLI's ``--set``) change fields
    after the file is read, validated as the file is (see :mod:`netdef.runs`).
    """
    if isinstance(solver, pb.SolverParameter):
        param = pb.SolverParameter()
        param.CopyFrom(solver)
        if overrides:
            apply_overrides(param, overrides)
            upgrade_solver(param, "--set")
    elif isinstance(solver, (str, os.PathLike)):
        source = os.fspath(solver)
        param = load_solver(source)
        if overrides:
            apply_overrides(param, overrides)
            upgrade_solver(param, "--set")
        if not param.HasField("snapshot_prefix"):
            param.snapshot_prefix = os.path.splitext(source)[0]
            log.info("snapshot_prefix was not specified and is set to %s", param.snapshot_prefix)
        elif os.path.isdir(param.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(source))[0]
            param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
            log.info("snapshot_prefix was a directory and is replaced to %s", param.snapshot_prefix)
    else:
        raise SolverError(
            f"A solver is built from a solver file path or a SolverParameter. Received: {type(solver).__name__}"
        )
    if net is not None:
        for name in _TRAIN_NET_FIELDS:
            param.ClearField(name)
        param.net = os.fspath(net)
    return param, source


def _copy_net(net_param: pb.NetParameter) -> pb.NetParameter:
    copy = pb.NetParameter()
    copy.CopyFrom(net_param)
    return copy


def _same_definition(a: pb.NetParameter, b: pb.NetParameter) -> bool:
    """Whether two net definitions are the same apart from their state (phase, level, stages)."""
    a, b = _copy_net(a), _copy_net(b)
    a.ClearField("state")
    b.ClearField("state")
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _clock(seconds: float) -> str:
    """``H:MM:SS``."""
    minutes, secs = divmod(int(max(seconds, 0.0) + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _flat_outputs(outputs: Iterable[tuple[str, numpy.ndarray]]) -> dict[str, float]:
    """``{name: value}``, a multi-value output as ``name[k]`` (the run-record convention)."""
    flat: dict[str, float] = {}
    for name, value in outputs:
        values = numpy.asarray(value).ravel()
        if values.size == 1:
            flat[name] = float(values[0])
        else:
            flat.update((f"{name}[{k}]", float(v)) for k, v in enumerate(values))
    return flat


def _set_state(net_param: pb.NetParameter, phase: int, override: pb.NetState | None) -> None:
    """The net's state as Caffe sets it: the phase, then the net file's own state, then the solver's."""
    state = pb.NetState()
    state.phase = phase
    state.MergeFrom(net_param.state)
    if override is not None:
        state.MergeFrom(override)
    net_param.state.CopyFrom(state)


class Solver:
    """Base of all solvers (pycaffe's ``caffe.Solver``).

    Args:
        solver: a solver definition file path, or a SolverParameter.
        net: optional net definition path that replaces the solver's train net.
        source: with a SolverParameter already prepared by ``load_solver_parameter``,
            the file it came from (net paths are also looked up beside it).
        on_divergence: ``"stop"`` (default) raises a TrainingDivergedError when the loss
            or a parameter becomes NaN/inf; ``"continue"`` warns once and goes on, as Caffe.
        allow_python_layers: True lets the nets' ``type: "Python"`` layers import their
            modules (which runs their code), False forbids it; None (default) follows
            ``netdef.layers.python_layer.allow_python_layers`` and ``NETDEF_ALLOW_PYTHON_LAYERS``.
        overrides: ``key=value`` changes to the definition (the CLI's ``--set``), see
            :mod:`netdef.runs`.

    Attributes:
        param: the SolverParameter in use.
        net: the train net.
        test_nets: the test nets (sharing the train net's parameters).
        iter: number of parameter updates done so far.
        current_step: the lr policy's step counter (``step``/``multistep``).
        history: per learnable parameter the update history (AdaDelta and Adam
            keep a second set after the first, as Caffe orders them).
        last_snapshot: the state file of the newest snapshot written (None before the first).
        records: what ``step``/``solve`` reported, one :class:`netdef.logparse.Record` per
            display (``phase="train"``: iteration, seconds, lr, every train output,
            ``iters_per_s``) and per test net tested (``phase="test"``, ``test_net``), the
            same as a run folder's ``metrics.jsonl``; ``History("run", solver.records)``
            gives per-output series.
        recorder: the :class:`netdef.runs.RunRecorder` writing the run folder (``record_to``), or None.
        overrides: the ``key=value`` overrides applied to the definition.
    """

    type_name = ""
    #: how many history arrays the update keeps per learnable parameter
    history_sets = 1
    #: whether this solver logs and writes files (snapshots, run records): False on data-parallel ranks > 0
    is_root = True
    #: seconds between progress lines of a long test pass
    progress_seconds = 10.0
    #: seconds of training without a display line after which a progress line is logged anyway
    quiet_seconds = 60.0

    def __init__(
        self,
        solver,
        net: str | None = None,
        *,
        source: str | None = None,
        on_divergence: str = "stop",
        allow_python_layers: bool | None = None,
        overrides: Sequence[str] | Mapping[str, object] | None = None,
    ):
        param, source = load_solver_parameter(solver, net, source=source, overrides=overrides)
        self.param = param
        self.source = source
        self.overrides = override_strings(overrides)
        self.records: list[Record] = []
        self.recorder: RunRecorder | None = None
        # (file name, definition) of the nets as they were read, for the run folder
        self._definitions: list[tuple[str, pb.NetParameter]] = []
        self._run_start: float | None = None
        self.on_divergence = _divergence.parse_policy(on_divergence)
        if param.HasField("type") and self.type_name and param.type != self.type_name:
            log.warning('Solver file asks for type "%s"; building a %s solver as requested', param.type, self.type_name)
        if log.isEnabledFor(logging.INFO):
            log.info("Initializing solver from parameters:\n%s", to_text(param))
        self._check_common()
        self.check_param()
        if self.is_root:  # data-parallel training (.parallel): only rank 0 writes and tidies snapshot files
            _snapshot.check_prefix(param)
            _snapshot.recover(param)
        # One set of random streams for the solver's nets: random_seed seeds it, else the default.
        self.rng = backend.RandomStreams(param.random_seed) if param.random_seed >= 0 else backend.new_streams()
        with python_layers_allowed(allow_python_layers):
            self.net = self._init_train_net()
            self.test_nets = self._init_test_nets()
        self.load_weights(param.weights)
        log.info("Solver scaffolding done.")
        self.iter = 0
        self.current_step = 0
        self.requested_early_exit = False
        self.action_function: Callable[[], SolverAction | str] | None = None
        self._pending: deque[SolverAction] = deque()
        self._callbacks: list[tuple[Callable | None, Callable | None]] = []
        self._losses: list[float] = []
        self.smoothed_loss = 0.0
        self.loss = 0.0
        self.last_lr: float | None = None
        self.last_snapshot: str | None = None
        self._divergence_reported = False
        self.history = [
            blob.xp.zeros_like(blob.data) for _ in range(self.history_sets) for blob in self.net.learnable_params
        ]

    # --- checks -----------------------------------------------------------------------
    def _check_common(self) -> None:
        p = self.param
        if p.average_loss < 1:
            raise SolverError(f"average_loss must be at least 1. Received: {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"iter_size must be at least 1. Received: {p.iter_size}")
        if p.regularization_type not in ("L1", "L2"):
            raise SolverError(f'Unknown regularization_type "{p.regularization_type}". Valid: L1, L2')
        if p.max_iter < 0:
            raise SolverError(f"max_iter must not be negative. Received: {p.max_iter}")
        # lr policy problems (unknown name, missing stepsize, ...) surface now rather than at the first update
        learning_rate(p, 0, 0)

    def check_param(self) -> None:
        """Solver-type specific checks (Caffe's constructor sanity checks); raise SolverError."""

    # --- nets -----------------------------------------------------------------------------
    def _read_net(self, path: str, field: str = "net") -> pb.NetParameter:
        # As Caffe opens it (relative to the working directory), else next to the solver file.
        resolved = resolve_path(path, self.source)
        if not os.path.exists(resolved):
            where = f"{self.source}: " if self.source else ""
            beside = f", then beside the solver file ({os.path.dirname(self.source) or '.'})" if self.source else ""
            raise SolverError(
                f"{where}{field}: net file not found: {path}. Relative paths in a solver file resolve against the "
                f"working directory ({os.getcwd()}){beside}, as in Caffe: run from the folder the paths are relative "
                "to (for the bundled models, the repository root), or give an absolute path"
            )
        return load_net(resolved)

    def _init_train_net(self) -> Net:
        p = self.param
        given = [name for name in _TRAIN_NET_FIELDS if p.HasField(name)]
        if not given:
            raise SolverError(
                "The solver definition must name a train net using one of these fields: " + ", ".join(_TRAIN_NET_FIELDS)
            )
        if len(given) > 1:
            raise SolverError(
                "The solver definition names more than one train net: "
                + ", ".join(given)
                + ". Use only one of "
                + ", ".join(_TRAIN_NET_FIELDS)
            )
        which = given[0]
        if which in ("net_param", "train_net_param"):
            net_param = _copy_net(getattr(p, which))
            log.info("Creating training net specified in %s.", which)
        else:
            log.info("Creating training net from %s file: %s", which, getattr(p, which))
            net_param = self._read_net(getattr(p, which), which)
        _set_state(net_param, TRAIN, p.train_state)
        self._definitions.append((NET_FILE, _copy_net(net_param)))
        return Net(net_param, rng=self.rng)

    def _count_test_nets(self) -> int:
        """How many test nets the definition asks for (Caffe's InitTestNets checks)."""
        p = self.param
        generic = int(p.HasField("net_param")) + int(p.HasField("net"))
        if generic > 1:
            raise SolverError("Both net_param and net are given; the solver needs only one of them")
        explicit = len(p.test_net_param) + len(p.test_net)
        if generic:
            if len(p.test_iter) < explicit:
                raise SolverError(
                    f"test_iter must be specified for each test network: {explicit} test nets, "
                    f"{len(p.test_iter)} test_iter values"
                )
        elif len(p.test_iter) != explicit:
            raise SolverError(
                f"test_iter must be specified once for each test network: {explicit} test nets, "
                f"{len(p.test_iter)} test_iter values"
            )
        count = explicit + (len(p.test_iter) - explicit if generic else 0)
        if p.test_state and len(p.test_state) != count:
            raise SolverError(
                f"test_state must be unspecified or specified once per test net ({count}). "
                f"Received: {len(p.test_state)}"
            )
        if count and p.test_interval <= 0:
            raise SolverError(f"test_interval must be positive when there are test nets. Received: {p.test_interval}")
        return count

    def _test_net_definitions(self, count: int) -> list[tuple[str, pb.NetParameter]]:
        """(where it was specified, definition) for each test net: the test_net* fields, then the generic net."""
        p = self.param
        sources = [("test_net_param", _copy_net(net_param)) for net_param in p.test_net_param]
        sources += [(f"test_net file: {path}", self._read_net(path, "test_net")) for path in p.test_net]
        for _ in range(count - len(sources)):
            if p.HasField("net_param"):
                sources.append(("net_param", _copy_net(p.net_param)))
            else:
                sources.append((f"net file: {p.net}", self._read_net(p.net, "net")))
        return sources

    def _init_test_nets(self) -> list[Net]:
        p = self.param
        nets = []
        for i, (where, net_param) in enumerate(self._test_net_definitions(self._count_test_nets())):
            if not self._definitions or not _same_definition(net_param, self._definitions[0][1]):
                self._definitions.append((f"test_net_{i}.prototxt", _copy_net(net_param)))
            _set_state(net_param, TEST, p.test_state[i] if p.test_state else None)
            log.info("Creating test net (#%d) specified by %s", i, where)
            test_net = Net(net_param, rng=self.rng)
            test_net.share_with(self.net)
            nets.append(test_net)
        return nets

    def load_weights(self, weights: str | os.PathLike | Iterable[str]) -> None:
        """Fine-tune: copy trained weights into the train and test nets, layer by layer, by layer name.

        ``weights`` is a ``.caffemodel`` / ``.caffemodel.h5`` path, a comma-separated
        list of them, or several such strings (the solver's ``weights:`` entries);
        later files overwrite earlier ones. Each file is logged as "Finetuning from".
        """
        entries = [weights] if isinstance(weights, (str, os.PathLike)) else weights
        for entry in entries:
            for path in (s.strip() for s in os.fspath(entry).split(",")):
                if not path:
                    continue
                log.info("Finetuning from %s", path)
                for net in [self.net, *self.test_nets]:
                    net.copy_from(path)

    # --- callbacks and actions --------------------------------------------------------------
    def add_callback(
        self, on_start: Callable[[], None] | None = None, on_gradients_ready: Callable[[], None] | None = None
    ) -> None:
        """Call ``on_start()`` before each iteration's passes and ``on_gradients_ready()`` before its update.

        An object with ``on_start``/``on_gradients_ready`` methods may be passed as
        the only argument instead.
        """
        if on_gradients_ready is None and on_start is not None and not callable(on_start):
            obj = on_start
            on_start = getattr(obj, "on_start", None)
            on_gradients_ready = getattr(obj, "on_gradients_ready", None)
        self._callbacks.append((on_start, on_gradients_ready))

    def set_action_function(self, function: Callable[[], SolverAction | str] | None) -> None:
        """Poll ``function`` for stop/snapshot requests between iterations (Caffe's SetActionFunction)."""
        self.action_function = function

    def request_action(self, action: str | SolverAction) -> None:
        """Ask for ``"stop"`` or ``"snapshot"`` at the end of the current iteration (safe from callbacks)."""
        action = parse_action(action)
        if action is not SolverAction.NONE:
            self._pending.append(action)

    def stop(self) -> None:
        """Finish the current iteration, then return from ``step``/``solve``."""
        self.request_action(SolverAction.STOP)

    def get_requested_action(self) -> SolverAction:
        """The next pending request (``request_action``), else what the action function reports."""
        if self._pending:
            return self._pending.popleft()
        if self.action_function is not None:
            return parse_action(self.action_function() or SolverAction.NONE)
        return SolverAction.NONE

    # --- the loop -----------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate the next update will use (the lr policy at the current iteration)."""
        return learning_rate(self.param, self.iter, self.current_step)[0]

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (fewer when a stop is requested); displays and tests go to ``records``."""
        with self._log_copy():
            self._step(int(iters))

    def _step(self, iters: int) -> None:
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self._losses = []
        self.smoothed_loss = 0.0
        timer = time.perf_counter()
        if self._run_start is None:
            self._run_start = timer
        started = (timer, start_iter, stop_iter)
        said = timer
        iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            self._run_callbacks(0)
            display = bool(p.display) and self.iter % p.display == 0
            loss = self._train_loss()
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            if display:
                now = time.perf_counter()
                self._display(now - timer, self.iter - iterations_last, started)
                timer = said = now
                iterations_last = self.iter
            elif time.perf_counter() - said >= self.quiet_seconds:
                # no silent minutes when displays are rare (or off)
                self._log_progress(*started)
                said = time.perf_counter()
            self._run_callbacks(1)
            self.apply_update()
            if display and not _divergence.params_finite(self.net):
                self._diverged("a parameter is not finite after the update")
            request = self.get_requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request is SolverAction.SNAPSHOT:
                self.snapshot()
            if request is SolverAction.STOP:
                self.requested_early_exit = True
                break

    def _run_callbacks(self, which: int) -> None:
        """The ``on_start`` (0) or ``on_gradients_ready`` (1) callbacks, in the order added."""
        for pair in self._callbacks:
            if pair[which] is not None:
                pair[which]()

    def _train_loss(self) -> float:
        """Forward and backward ``iter_size`` times; the mean loss (a non-finite one is divergence)."""
        loss = 0.0
        for _ in range(self.param.iter_size):
            loss += self.net.forward_backward()
        loss /= self.param.iter_size
        self.loss = loss
        if not math.isfinite(loss):
            self._diverged(f"the loss is {format_g(loss)}")
        return loss

    def _display(self, lapse: float, iterations: int, started: tuple[float, int, int] | None = None) -> None:
        """Caffe's display lines (speed and smoothed loss, then every train net output), a record, and progress."""
        speed = iterations / (lapse if lapse else 1)
        log.info(
            "Iteration %d (%s iter/s, %ss/%d iters), loss = %s",
            self.iter,
            format_g(speed),
            format_g(lapse),
            self.param.display,
            format_g(self.smoothed_loss),
        )
        outputs = [(name, backend.to_numpy(self.net.blobs[name].data)) for name in self.net.outputs]
        self._log_outputs("Train", outputs, self.net.loss_weights())
        self._record("train", outputs, iters_per_s=speed if iterations else None)
        if started is not None:
            self._log_progress(*started)

    def _log_progress(self, start_time: float, start_iter: int, stop_iter: int) -> None:
        """``Progress: 100 of 1000 iterations (10%), 0:00:02 elapsed, ETA 0:00:18`` after a display.

        The words avoid what Caffe's log parsers match ("Iteration ", "loss = ", "lr = ",
        "Testing net", "net output"), so their tables stay as they were.
        """
        done = self.iter - start_iter
        if done <= 0 or stop_iter <= 0:
            return
        elapsed = time.perf_counter() - start_time
        eta = elapsed / done * (stop_iter - self.iter)
        log.info(
            "Progress: %d of %d iterations (%d%%), %s elapsed, ETA %s",
            self.iter,
            stop_iter,
            int(100 * self.iter / stop_iter),
            _clock(elapsed),
            _clock(eta),
        )

    def _record(self, phase: str, outputs: Iterable[tuple[str, numpy.ndarray]], **extra) -> Record:
        """Keep one display or test in ``records`` (and the run folder, when recording)."""
        now = time.perf_counter()
        if self._run_start is None:
            self._run_start = now
        record = Record(self.iter, now - self._run_start, self.lr, phase, _flat_outputs(outputs), **extra)
        self.records.append(record)
        if self.recorder is not None:
            self.recorder.add(record)
        return record

    # --- run folders -----------------------------------------------------------------------------
    def record_to(self, run_dir: str | os.PathLike | RunRecorder, *, csv: bool = False, **info) -> RunRecorder | None:
        """Keep this run in a folder from now on: metrics, the solver and nets that run, the log.

        Writes ``solver.prototxt`` and ``net.prototxt`` (see :mod:`netdef.runs`) and the
        records so far, then every display and test as ``step``/``solve`` report them; the
        log is copied into ``train.log`` while they run. A run that did not start at
        iteration 0 (restored from a snapshot) appends to a record already in the folder;
        otherwise that record is replaced. ``csv`` also writes Caffe's parse_log tables at
        the end of ``solve`` (or ``recorder.write_tables()``). ``info`` goes into the
        header line of ``metrics.jsonl``. Returns the recorder; ``solver.recorder.close()``
        ends the recording. On a data-parallel rank other than 0 nothing is written (None).
        """
        if not self.is_root:  # data-parallel ranks other than 0 keep records in memory only
            return None
        if not isinstance(run_dir, RunRecorder):
            first = self.records[0].iteration if self.records else self.iter
            run_dir = RunRecorder(run_dir, csv=csv, resume=first > 0)
        recorder = run_dir
        recorder.write_header(
            {
                "solver_file": self.source,
                "overrides": self.overrides,
                "type": self.param.type,
                "net": self.net.name,
                "iteration": self.iter,
                "max_iter": self.param.max_iter,
                **info,
            }
        )
        recorder.write_definitions(self.param, self._definitions)
        for record in self.records:
            recorder.add(record)
        self.recorder = recorder
        return recorder

    def _log_copy(self):
        return self.recorder.capture_log() if self.recorder is not None else contextlib.nullcontext()

    def close(self) -> None:
        """End the background work of the training and test nets (:meth:`netdef.Net.close`).

        The solver stays usable; ``with get_solver(...) as solver:`` closes it at the end.
        """
        for net in (self.net, *self.test_nets):
            net.close()

    def __enter__(self) -> Solver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def solve(self, resume_file: str | None = None) -> None:
        """Train to ``max_iter`` (optionally resuming from a ``.solverstate``), then snapshot and test."""
        with self._log_copy():
            self._solve(resume_file)
        if self.recorder is not None and self.recorder.csv:
            self.recorder.write_tables()

    def _solve(self, resume_file: str | None) -> None:
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        # As Caffe: one more forward pass to report the final train loss, and a final test.
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_from_to()
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, format_g(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _diverged(self, what: str) -> None:
        """Stop with a TrainingDivergedError (or, with ``on_divergence="continue"``, warn once)."""
        lr = self.last_lr if self.last_lr is not None else self.lr
        where = _divergence.first_non_finite(self.net)
        message = _divergence.describe(self.iter, what, where, lr, self.param.clip_gradients)
        if self.on_divergence == "continue":
            if not self._divergence_reported:
                log.warning("%s Continuing, as Caffe does (on_divergence: continue).", message)
                self._divergence_reported = True
            return
        last = f"the last snapshot is {self.last_snapshot}" if self.last_snapshot else "no snapshot was written"
        raise TrainingDivergedError(
            f"{message} Training stopped without snapshotting the non-finite weights ({last}). "
            'To keep training as Caffe does, use --on_divergence continue (on_divergence="continue" in Python).'
        )

    def _update_smoothed_loss(self, loss: float, start_iter: int, average_loss: int) -> None:
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self._losses[idx]) / average_loss
            self._losses[idx] = loss

    @staticmethod
    def _log_outputs(kind: str, outputs: Iterable[tuple[str, numpy.ndarray]], weights: Mapping[str, float]) -> None:
        """Caffe's "    Train net output #0: loss = 0.5 (* 1 = 0.5 loss)" lines, numbered across all values."""
        index = 0
        for name, value in outputs:
            for v in value.ravel():
                log.info("    %s net output #%d: %s", kind, index, output_line(name, v, weights.get(name, 0.0)))
                index += 1

    # --- testing ---------------------------------------------------------------------------------
    def test_all(self) -> list[OrderedDict]:
        """Test every test net; one ``{output: mean over test_iter batches}`` per net tested."""
        results = []
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            scores = self.test(i)
            if scores is not None:
                results.append(scores)
        return results

    def test(self, test_net_id: int = 0) -> OrderedDict | None:
        """Run ``test_iter`` forward passes of one test net; its mean outputs (None when stopped)."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        net.share_with(self.net)
        iterations = p.test_iter[test_net_id]
        sums, loss = self._run_test_net(net, iterations)
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return None
        if p.test_compute_loss and iterations:
            log.info("Test loss: %s", format_g(loss / iterations))
        means = OrderedDict((name, total / iterations) for name, total in sums.items())
        self._log_outputs("Test", means.items(), net.loss_weights())
        self._record("test", means.items(), test_net=test_net_id)
        return OrderedDict((name, float(mean) if mean.size == 1 else mean) for name, mean in means.items())

    def _run_test_net(self, net: Net, iterations: int) -> tuple[OrderedDict[str, numpy.ndarray], float]:
        """Forward ``net`` ``iterations`` times (acting on requests between passes); output sums and loss sum."""
        sums: OrderedDict[str, numpy.ndarray] = OrderedDict()
        loss = 0.0
        start = reported = time.perf_counter()
        for done in range(iterations):
            now = time.perf_counter()
            if done and now - reported >= self.progress_seconds:
                # no silent minutes: a long test pass says how far it is
                reported = now
                log.info(
                    "    Test progress: %d of %d batches (%d%%), ETA %s",
                    done,
                    iterations,
                    int(100 * done / iterations),
                    _clock((now - start) / done * (iterations - done)),
                )
            self._handle_requests_while_testing()
            if self.requested_early_exit:
                break
            iter_loss = net.forward_from_to()
            if self.param.test_compute_loss:
                loss += iter_loss
            for name in net.outputs:
                value = backend.to_numpy(net.blobs[name].data).astype(numpy.float64)
                sums[name] = sums[name] + value if name in sums else value.copy()
        return sums, loss

    def _handle_requests_while_testing(self) -> None:
        request = self.get_requested_action()
        while request is not SolverAction.NONE:
            if request is SolverAction.SNAPSHOT:
                self.snapshot()
            elif request is SolverAction.STOP:
                self.requested_early_exit = True
            request = self.get_requested_action()

    # --- updates (subclasses) ------------------------------------------------------------------
    def apply_update(self) -> None:
        """Turn the accumulated gradients into a parameter update and advance ``iter``."""
        raise NotImplementedError

    # --- snapshots (see .snapshot) ---------------------------------------------------------------
    def snapshot_filename(self, extension: str, iteration: int | None = None) -> str:
        """``<snapshot_prefix>_iter_<N><extension>`` (Caffe's SnapshotFilename); N is ``iter`` unless given."""
        return _snapshot.snapshot_filename(
            self.param.snapshot_prefix, self.iter if iteration is None else iteration, extension
        )

    def snapshot(self) -> str | None:
        """Write the weights and the solver state for the current iteration; returns the state file's path.

        BINARYPROTO: ``<prefix>_iter_<N>.caffemodel`` + ``.solverstate``; HDF5:
        ``.caffemodel.h5`` + ``.solverstate.h5``. The files are replaced together, atomically;
        netdef's resume extras go to ``<state file>.netdef.json``. When one of these
        files already exists and is read-only, nothing is written (a warning says so)
        and None is returned.

        Non-finite weights are not written: a TrainingDivergedError says so, and the
        previous snapshot stays the newest. With ``on_divergence="continue"`` they are
        written, with a warning, as Caffe would.
        """
        if not _divergence.params_finite(self.net):
            where = _divergence.first_non_finite(self.net)
            if self.on_divergence != "continue":
                last = f"the last snapshot is {self.last_snapshot}" if self.last_snapshot else "no snapshot was written"
                raise TrainingDivergedError(
                    f"Refusing to snapshot at iteration {self.iter}: the weights are not finite ({where}); {last}. "
                    'on_divergence="continue" (--on_divergence continue) writes them anyway, as Caffe does.'
                )
            log.warning("Snapshot at iteration %d holds non-finite weights (%s)", self.iter, where)
        path = _snapshot.save(self)
        if path is not None:
            self.last_snapshot = path
        return path

    def restore(self, state_file: str) -> None:
        """Restore iteration, lr step, weights and history from a ``.solverstate`` / ``.solverstate.h5``.

        Files written by Caffe work too. When netdef wrote the file, its sidecar also
        restores the data layers' read positions and the random generator, so the run
        continues exactly as if it had not stopped.
        """
        _snapshot.restore(self, state_file)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} iter={self.iter} net={self.net.name!r}>"
