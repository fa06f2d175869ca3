"""Turning SIGINT/SIGHUP into solver actions, as Caffe's ``SignalHandler`` does.

Caffe's ``train`` command catches both signals and maps each to one of
``stop`` (finish the current iteration, snapshot if ``snapshot_after_train``,
return), ``snapshot`` (write a snapshot and keep training) or ``none`` (ignore
the signal). The defaults are ``SIGINT -> stop`` and ``SIGHUP -> snapshot``.

Usage::

    with handle_signals(solver, sigint="stop", sighup="snapshot"):
        solver.solve()

The handlers only set flags; the solver polls them once per iteration (and once
per test batch), so a signal never interrupts an update half way. A second
SIGINT that arrives before the solver has picked up the first one (a stuck
iteration) raises ``KeyboardInterrupt`` as Python normally would.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import threading
from collections.abc import Iterator

from ..errors import SolverError

log = logging.getLogger("netdef")


class SolverAction(str, enum.Enum):
    """What a solver is asked to do between iterations (Caffe's ``SolverAction``)."""

    NONE = "none"
    STOP = "stop"
    SNAPSHOT = "snapshot"


def parse_action(value: str | SolverAction) -> SolverAction:
    """``"stop"``/``"snapshot"``/``"none"`` (any case) as a SolverAction; a named error otherwise."""
    if isinstance(value, SolverAction):
        return value
    try:
        return SolverAction(str(value).strip().lower())
    except ValueError:
        valid = ", ".join(a.value for a in SolverAction)
        raise SolverError(f"Invalid signal effect {value!r}. Valid: {valid}") from None


class SignalHandler:
    """Catches SIGINT and SIGHUP while active and reports them as solver actions.

    Args:
        sigint: action for SIGINT (default ``"stop"``).
        sighup: action for SIGHUP (default ``"snapshot"``; ignored where the
            platform has no SIGHUP).
    """

    def __init__(
        self, sigint: str | SolverAction = SolverAction.STOP, sighup: str | SolverAction = SolverAction.SNAPSHOT
    ):
        self.sigint_action = parse_action(sigint)
        self.sighup_action = parse_action(sighup)
        self._got_sigint = 0
        self._got_sighup = False
        self._previous: dict[int, object] = {}

    def _on_sigint(self, signum, frame) -> None:
        self._got_sigint += 1
        if self._got_sigint > 1 and self.sigint_action is SolverAction.STOP:
            raise KeyboardInterrupt

    def _on_sighup(self, signum, frame) -> None:
        self._got_sighup = True

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere signals stay as they are, with a warning)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "Signal handlers can only be installed from the main thread; SIGINT/SIGHUP keep their default behaviour"
            )
            return
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        if hasattr(signal, "SIGHUP"):
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_sighup)

    def uninstall(self) -> None:
        """Put back the handlers that were active before ``install``."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def check_for_signals(self) -> SolverAction:
        """The action asked for since the last call (SIGHUP first, as Caffe), clearing it."""
        # Logging happens here, not in the handlers: a handler may interrupt a logging call.
        if self._got_sighup:
            self._got_sighup = False
            log.info("Caught SIGHUP (action: %s)", self.sighup_action.value)
            return self.sighup_action
        if self._got_sigint:
            self._got_sigint = 0
            log.info("Caught SIGINT (action: %s)", self.sigint_action.value)
            return self.sigint_action
        return SolverAction.NONE

    def __enter__(self) -> SignalHandler:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.uninstall()


@contextlib.contextmanager
def handle_signals(
    solver=None, sigint: str | SolverAction = SolverAction.STOP, sighup: str | SolverAction = SolverAction.SNAPSHOT
) -> Iterator[SignalHandler]:
    """Map SIGINT/SIGHUP to solver actions for the duration of the block.

    Args:
        solver: when given, its action function is set to poll the handler
            (and reset when the block ends).
        sigint, sighup: ``"stop"``, ``"snapshot"`` or ``"none"``.
    """
    handler = SignalHandler(sigint, sighup)
    with handler:
        if solver is not None:
            previous = solver.action_function
            solver.set_action_function(handler.check_for_signals)
        try:
            yield handler
        finally:
            if solver is not None:
                solver.set_action_function(previous)
