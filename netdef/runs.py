"""Run records and solver overrides: what a training run was given and what it produced.

**Overrides.** ``--set key=value`` (``overrides=`` in Python) changes one field of a
SolverParameter after its file is read, validated as the file itself is: an unknown
field gets the same did-you-mean error, enums are given by name (``solver_mode=CPU``),
booleans as ``true``/``false``, strings without quotes (``type=Adam``). A repeated field
(``stepvalue``, ``test_iter``, ``weights``) takes several values comma-separated
(``stepvalue=1000,2000``) or by giving the key again; the first ``--set`` of such a key
replaces the file's values and later ones add to them. A dotted key reaches into a
message field (``train_state.stage=big``); a message field given whole takes protobuf
text (``train_state=stage: "big"``).

**Run folders.** :class:`RunRecorder` keeps one run in a folder of its own::

    metrics.jsonl     a {"run": {...}} header line, then one line per display and per test
                      (the JSON Lines format of netdef.logparse; `netdef plot DIR` reads it)
    solver.prototxt   the SolverParameter that ran: after --net and --set, with the
                      snapshot_prefix it used
    net.prototxt      the train net definition that ran; test_net_<i>.prototxt for a test
                      net defined apart from it
    train.log         the log lines, in glog's format (Caffe's parse_log scripts read it)
    metrics.train, metrics.test   with ``csv=True``: Caffe's parse_log tables

Records are flushed line by line, so a run that crashes or is still going can be read
(and plotted) as it stands. A resumed run (``resume=True``; ``netdef train --snapshot``)
recording into the folder of the run it continues appends to it: a new header line, and
seconds that go on from the last record. A new run in a folder that already holds a
record replaces that record (with a warning).

:func:`default_run_dir` names the folder ``netdef train`` uses unless told otherwise:
``runs/<name>[-<overrides>]-<YYYYmmdd-HHMMSS>`` under the working directory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import NetdefError, PrototxtSyntaxError, UnknownFieldError, did_you_mean
from .logparse import RECORDS_FILE, History, Record, write_csv_tables
from .logs import log_to_file
from .proto import parse_text, suggest_field, to_text

log = logging.getLogger("netdef")

#: file names inside a run folder
SOLVER_FILE = "solver.prototxt"
NET_FILE = "net.prototxt"
LOG_FILE = "train.log"
CSV_STEM = "metrics"
#: the folder default run folders go in, relative to the working directory (NETDEF_RUNS_ROOT overrides it)
RUNS_ROOT = "runs"


# --- overrides ------------------------------------------------------------------------
def override_pairs(overrides: Sequence[str] | Mapping[str, object] | None) -> list[tuple[str, str]]:
    """``key=value`` strings (or a mapping; a list value gives a repeated field's values) as (key, value) pairs."""
    if not overrides:
        return []
    pairs: list[tuple[str, str]] = []
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            for v in value if isinstance(value, (list, tuple)) else [value]:
                pairs.append((str(key), _text_of(v)))
        return pairs
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise NetdefError(
                f"--set takes KEY=VALUE, a SolverParameter field and its value (--set base_lr=0.01). Received: {item!r}"
            )
        pairs.append((key.strip(), value.strip()))
    return pairs


def _text_of(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_text_of(v) for v in value)
    return str(value)


def override_strings(overrides: Sequence[str] | Mapping[str, object] | None) -> list[str]:
    """The overrides as ``key=value`` strings, as the run record stores them."""
    return [f"{key}={value}" for key, value in override_pairs(overrides)]


def _field(message: Message, name: str, where: str) -> FieldDescriptor:
    desc = message.DESCRIPTOR
    field = desc.fields_by_name.get(name)
    if field is None:
        names = [f.name for f in desc.fields]
        raise UnknownFieldError(
            f'{where}: unknown field "{name}" in {desc.name}.{suggest_field(name, names)} '
            f"Valid fields of {desc.name}: {', '.join(names)}"
        )
    return field


_TRUE = ("true", "t", "1", "yes")
_FALSE = ("false", "f", "0", "no")


def _scalar(field: FieldDescriptor, text: str, where: str):
    """``text`` as a value of scalar ``field``, or a PrototxtSyntaxError naming what is valid."""
    if field.enum_type is not None:
        enum = field.enum_type
        if text in enum.values_by_name:
            return enum.values_by_name[text].number
        if re.fullmatch(r"-?\d+", text) and int(text) in enum.values_by_number:
            return int(text)
        valid = [v.name for v in enum.values]
        raise PrototxtSyntaxError(
            f"{where}: {text} is not a value of {enum.name}.{did_you_mean(text, valid)} Valid: {', '.join(valid)}"
        )
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        return text
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise PrototxtSyntaxError(f"{where}: {field.name} is a boolean. Received: {text!r}. Valid: true, false")
    try:
        if kind in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
            return float(text)
        return int(text, 0)
    except ValueError:
        what = "a number" if kind in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE) else "an integer"
        raise PrototxtSyntaxError(f"{where}: {field.name} takes {what}. Received: {text!r}") from None


def apply_overrides(param: Message, overrides: Sequence[str] | Mapping[str, object] | None) -> list[str]:
    """Apply ``key=value`` overrides to ``param`` (a SolverParameter) in place; the ``key=value`` strings applied.

    See the module docstring for the syntax. Errors are the ones a solver file with the
    same mistake gets (UnknownFieldError, PrototxtSyntaxError), located at ``--set key=value``.
    """
    pairs = override_pairs(overrides)
    replaced: set[str] = set()
    for key, value in pairs:
        where = f"--set {key}={value}"
        message = param
        parts = key.split(".")
        for depth, part in enumerate(parts):
            field = _field(message, part, where)
            if depth == len(parts) - 1:
                break
            if field.message_type is None or field.is_repeated:
                raise PrototxtSyntaxError(
                    f'{where}: "{part}" is not a single message field of {message.DESCRIPTOR.name}, so '
                    f'"{key}" names nothing. Valid: a dotted key through message fields (train_state.stage=...)'
                )
            message = getattr(message, part)
        name = parts[-1]
        try:
            if field.is_repeated:
                container = getattr(message, name)
                if key not in replaced:
                    del container[:]
                    replaced.add(key)
                if field.message_type is not None:
                    parse_text(value, container.add(), where)
                else:
                    container.extend(_scalar(field, v.strip(), where) for v in value.split(",") if v.strip())
            elif field.message_type is not None:
                sub = getattr(message, name)
                sub.Clear()
                parse_text(value, sub, where)
                sub.SetInParent()
            else:
                setattr(message, name, _scalar(field, value, where))
        except (ValueError, TypeError) as err:
            raise PrototxtSyntaxError(f"{where}: {err}. Received: {value!r}") from None
    return [f"{key}={value}" for key, value in pairs]


# --- where runs go ----------------------------------------------------------------------
def run_name(solver_file: str | os.PathLike | None, overrides: Sequence[str] = ()) -> str:
    """A run's folder name without the time: the solver file's stem (the folder's name for
    ``.../<model>/solver.prototxt``, the zoo convention), then the overrides' values."""
    if solver_file is None:
        stem = "run"
    else:
        path = os.path.abspath(os.fspath(solver_file))
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem == "solver":
            stem = os.path.basename(os.path.dirname(path)) or stem
    parts = [stem, *(s.replace("=", "-") for s in overrides)]
    name = re.sub(r"[^A-Za-z0-9._,+-]+", "_", "-".join(parts))
    return name[:96]


def default_run_dir(
    solver_file: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    root: str | os.PathLike | None = None,
    now: datetime.datetime | None = None,
) -> str:
    """``<root>/<run name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... when that folder already exists.

    ``root`` defaults to ``$NETDEF_RUNS_ROOT``, else ``runs`` in the working directory.
    """
    root = root if root is not None else os.environ.get("NETDEF_RUNS_ROOT") or RUNS_ROOT
    when = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = os.path.join(os.fspath(root), f"{run_name(solver_file, overrides)}-{when}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


# --- the recorder --------------------------------------------------------------------------
def _last_seconds(path: str) -> float:
    """The ``seconds`` of the last record in an existing run-record file (0 when there is none)."""
    last = 0.0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "phase" in obj and isinstance(obj.get("seconds"), (int, float)):
                last = float(obj["seconds"])
    return last


class RunRecorder:
    """Writes one run's folder (see the module docstring).

    Args:
        run_dir: the folder; made when missing. Recording into a folder that already
            holds run records appends to them.
        csv: also write Caffe's parse_log tables (``metrics.train``, ``metrics.test``) when
            :meth:`write_tables` or :meth:`close` is called.
        resume: the run continues one recorded in this folder: append to its record
            instead of replacing it.

    Attributes:
        run_dir: the folder.
        seconds_offset: seconds already recorded in the folder by earlier processes (a
            resumed run goes on from there).
        records: what was recorded into this folder by this recorder.
    """

    def __init__(self, run_dir: str | os.PathLike, *, csv: bool = False, resume: bool = False):
        self.run_dir = os.fspath(run_dir)
        self.csv = csv
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as err:
            raise NetdefError(f"cannot make the run folder {self.run_dir}: {err.strerror or err}") from None
        self.metrics_path = os.path.join(self.run_dir, RECORDS_FILE)
        self.log_path = os.path.join(self.run_dir, LOG_FILE)
        earlier = os.path.isfile(self.metrics_path)
        self.seconds_offset = _last_seconds(self.metrics_path) if earlier and resume else 0.0
        if earlier and not resume:
            log.warning("%s holds the record of an earlier run; replacing it", self.run_dir)
            for name in (LOG_FILE, f"{CSV_STEM}.train", f"{CSV_STEM}.test"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.run_dir, name))
        self.records: list[Record] = []
        mode = "a" if resume else "w"
        self._file = open(self.metrics_path, mode, encoding="utf-8")  # noqa: SIM115 (open for the run's length)
        self._log_depth = 0
        self._log_stack: contextlib.ExitStack | None = None

    def write_header(self, info: Mapping[str, object]) -> None:
        """The ``{"run": {...}}`` line: what ran (solver file, overrides, ...), when, and with which netdef."""
        header = {"started": datetime.datetime.now().isoformat(timespec="seconds"), **info}
        self._write(json.dumps({"run": header}, default=str))

    def write_definitions(self, solver_param: Message, nets: Iterable[tuple[str, Message]] = ()) -> None:
        """``solver.prototxt`` and each (file name, NetParameter) as protobuf text."""
        for name, message in [(SOLVER_FILE, solver_param), *nets]:
            with open(os.path.join(self.run_dir, name), "w", encoding="utf-8") as f:
                f.write(to_text(message))

    def add(self, record: Record) -> None:
        """Append one record to ``metrics.jsonl`` (flushed, so the file is readable while training)."""
        self.records.append(record)
        self._write(record.line(seconds_offset=self.seconds_offset))

    def _write(self, line: str) -> None:
        if self._file.closed:
            raise NetdefError(f"the run record in {self.run_dir} is closed")
        self._file.write(line + "\n")
        self._file.flush()

    def write_log(self, lines: Iterable[str]) -> None:
        """Append already formatted log lines to ``train.log`` (what was logged before recording began)."""
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)

    @contextlib.contextmanager
    def capture_log(self) -> Iterator[None]:
        """Copy the ``netdef`` log into ``train.log`` while inside (nested uses copy once)."""
        if self._log_depth == 0:
            self._log_stack = contextlib.ExitStack()
            self._log_stack.enter_context(log_to_file(self.log_path))
        self._log_depth += 1
        try:
            yield
        finally:
            self._log_depth -= 1
            if self._log_depth == 0 and self._log_stack is not None:
                self._log_stack.close()
                self._log_stack = None

    def write_tables(self) -> list[str]:
        """Caffe's parse_log tables of what this recorder recorded (``metrics.train``, ``metrics.test``)."""
        history = History(self.run_dir, [r.shifted(self.seconds_offset) for r in self.records])
        return write_csv_tables(history, self.run_dir, CSV_STEM)

    def close(self) -> None:
        """Write the tables (with ``csv``) and close the files."""
        if self._file.closed:
            return
        if self.csv:
            self.write_tables()
        self._file.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RunRecorder {self.run_dir!r} records={len(self.records)}>"


__all__ = [
    "CSV_STEM",
    "LOG_FILE",
    "NET_FILE",
    "RUNS_ROOT",
    "SOLVER_FILE",
    "RunRecorder",
    "apply_overrides",
    "default_run_dir",
    "override_pairs",
    "override_strings",
    "run_name",
]
