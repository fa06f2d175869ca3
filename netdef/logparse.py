"""Reading what a training run reported: Caffe-format training logs and netdef's JSON Lines run records.

Both give the same thing, a :class:`History`: one :class:`Record` per display
(``phase="train"``) and per test (``phase="test"``), each with the iteration, the
seconds since the run started, the learning rate and the net outputs.

**Caffe training logs** (what ``caffe train`` and ``netdef train`` write to stderr,
glog prefix ``I1130 12:36:17.171142 26768 solver.py:329] ...``). Read as Caffe's
``tools/extra/parse_log.py`` reads them:

- ``Iteration N`` anywhere in a line sets the current iteration; lines before the first
  one are skipped.
- ``Train net output #k: name = value`` and ``Test net output #k: name = value`` add an
  output to the current train or test row; output ``#0`` starts a new row.
- ``lr = value`` sets the learning rate given to the rows that follow (Caffe logs it after
  the display's outputs, so a row carries the rate of the previous display; the first
  rows, before any rate is known, take the rate of the second row).
- Seconds count from the line that says ``Solving`` (else the first timed line); the
  year is taken from the log file's modification time, rolling over when the month
  goes back.

**Run records (JSON Lines)**: one JSON object per line, UTF-8, the format ``netdef
train`` writes beside a run (conventionally ``metrics.jsonl`` in the run folder)::

    {"iteration": 50, "seconds": 0.107, "lr": 0.0498, "phase": "train", "outputs": {"loss": 0.422}}
    {"iteration": 250, "seconds": 0.41, "lr": 0.0490, "phase": "test", "outputs": {"accuracy": 0.98, "loss": 0.07}}

Fields: ``iteration`` (int, the solver's iteration), ``seconds`` (float, wall time
since the run started), ``lr`` (float, the learning rate at that iteration; may be
null), ``phase`` (``"train"`` or ``"test"``), ``outputs`` (``{name: number}``; a
multi-value output is written ``name[k]``). Optional: ``test_net`` (int, which test
net, default 0), ``iters_per_s`` (float). Objects without ``phase`` (for example a
header ``{"run": {...}}``) and unknown fields are ignored, so the format can grow.
:func:`record_line` writes one line.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from dataclasses import dataclass, field, replace

from .errors import LogFormatError

#: the file name of the run records inside a run folder
RECORDS_FILE = "metrics.jsonl"

_ITERATION = re.compile(r"Iteration (\d+)")
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
_OUTPUT = {
    "train": re.compile(r"Train net output #(\d+): (\S+) = " + _NUMBER),
    "test": re.compile(r"Test net output #(\d+): (\S+) = " + _NUMBER),
}
_LR = re.compile(r"lr = " + _NUMBER)
_STAMP = re.compile(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6})")


@dataclass
class Record:
    """One display (train) or one test: where the run was and what the net output.

    ``test_net`` says which test net a test record is of; ``iters_per_s`` is the speed a
    display reports (None when unknown, as at the first display).
    """

    iteration: int
    seconds: float
    lr: float
    phase: str
    outputs: dict[str, float] = field(default_factory=dict)
    test_net: int = 0
    iters_per_s: float | None = None

    def line(self, seconds_offset: float = 0.0) -> str:
        """This record as one run-record line (see :func:`record_line`), ``seconds_offset`` added to its time."""
        extra: dict[str, object] = {}
        if self.phase == "test":
            extra["test_net"] = self.test_net
        if self.iters_per_s is not None:
            extra["iters_per_s"] = round(float(self.iters_per_s), 6)
        lr = None if self.lr is None or math.isnan(self.lr) else self.lr
        return record_line(self.iteration, self.seconds + seconds_offset, lr, self.phase, self.outputs, **extra)

    def shifted(self, seconds: float) -> Record:
        """A copy ``seconds`` later."""
        return replace(self, seconds=self.seconds + seconds, outputs=dict(self.outputs))


@dataclass
class History:
    """The records of one run, in the order they were reported."""

    source: str
    records: list[Record] = field(default_factory=list)
    #: (iteration, seconds, lr) of every ``Iteration N, lr = X`` line of a Caffe log: the rate at N itself
    lr_points: list[tuple[int, float, float]] = field(default_factory=list)

    def phase(self, phase: str) -> list[Record]:
        """The ``"train"`` or ``"test"`` records."""
        return [r for r in self.records if r.phase == phase]

    def output_names(self, phase: str) -> list[str]:
        """Every output name the ``phase`` records carry, in first-seen order."""
        names: dict[str, None] = {}
        for r in self.phase(phase):
            names.update(dict.fromkeys(r.outputs))
        return list(names)

    def series(self, phase: str, name: str, x: str = "iteration") -> tuple[list[float], list[float]]:
        """(x values, values) of output ``name`` (or ``"lr"``) in ``phase``; ``x`` is iteration or seconds.

        The learning rate of a Caffe log comes from its ``lr = `` lines, at their own iteration.
        """
        if name == "lr" and self.lr_points:
            k = 0 if x == "iteration" else 1
            return [p[k] for p in self.lr_points], [p[2] for p in self.lr_points]
        xs, ys = [], []
        for r in self.phase(phase):
            value = r.lr if name == "lr" else r.outputs.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value) and name == "lr"):
                continue
            xs.append(getattr(r, x))
            ys.append(value)
        return xs, ys


def _digits9(value) -> float:
    """``value`` to 9 significant digits: every float32 exactly, without a float64 mean's noise."""
    return float(f"{float(value):.9g}")


def record_line(
    iteration: int, seconds: float, lr: float | None, phase: str, outputs: dict[str, float], **extra
) -> str:
    """One run-record line (without the newline) in the format above; numbers keep 9 significant digits."""
    if phase not in ("train", "test"):
        raise ValueError(f'phase must be "train" or "test". Received: {phase!r}')
    obj = {
        "iteration": int(iteration),
        "seconds": round(float(seconds), 6),
        "lr": None if lr is None else _digits9(lr),
        "phase": phase,
        "outputs": {k: _digits9(v) for k, v in outputs.items()},
    }
    obj.update(extra)
    return json.dumps(obj, allow_nan=True)


# --- Caffe logs ------------------------------------------------------------------------
def _stamp(line: str, year: int) -> datetime.datetime | None:
    m = _STAMP.match(line)
    if not m:
        return None
    month, day, hour, minute, second, micro = (int(g) for g in m.groups())
    try:
        return datetime.datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        return None


def _log_year(path: str) -> int:
    try:
        return datetime.datetime.fromtimestamp(os.path.getmtime(path)).year
    except OSError:
        return datetime.datetime.now().year


def _start_time(lines: list[str], year: int) -> datetime.datetime | None:
    """The time of the line that says ``Solving`` (Caffe's start), or None."""
    for line in lines:
        if "Solving" in line:
            when = _stamp(line, year)
            if when is not None:
                return when
    return None


def _add_output(history: History, rows: dict, phase: str, match, iteration: int, seconds: float, lr: float) -> None:
    """Put one ``... net output #k: name = value`` into the phase's current row; output #0 starts a row."""
    row = rows[phase]
    if row is None or int(match.group(1)) == 0:
        row = Record(iteration, seconds, lr, phase)
        rows[phase] = row
        history.records.append(row)
    row.outputs[match.group(2)] = float(match.group(3))


def parse_caffe_log(path: str, text: str | None = None, year: int | None = None) -> History:
    """The train and test records of a Caffe-format training log (see the module docstring)."""
    if text is None:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    year = _log_year(path) if year is None else year
    lines = text.splitlines()
    start = _start_time(lines, year)
    history = History(path)
    rows: dict[str, Record | None] = {"train": None, "test": None}
    iteration = -1
    lr = math.nan
    last = start
    for line in lines:
        m = _ITERATION.search(line)
        if m:
            iteration = int(m.group(1))
        when = _stamp(line, year) if iteration >= 0 else None
        if when is None:
            continue
        if last is not None and when.month < last.month:
            year += 1
            when = _stamp(line, year)
        start = start or when
        last = when
        seconds = (when - start).total_seconds()
        m = _LR.search(line)
        if m:
            lr = float(m.group(1))
            history.lr_points.append((iteration, seconds, lr))
        for phase, pattern in _OUTPUT.items():
            m = pattern.search(line)
            if m:
                _add_output(history, rows, phase, m, iteration, seconds, lr)
    for phase in ("train", "test"):
        recs = history.phase(phase)
        if len(recs) > 1 and math.isnan(recs[0].lr):
            recs[0].lr = recs[1].lr
    return history


# --- run records ----------------------------------------------------------------------
def parse_records(path: str, text: str | None = None) -> History:
    """The records of a JSON Lines run-record file (see the module docstring)."""
    if text is None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    history = History(path)
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise LogFormatError(f"{path}:{number}: not a JSON object ({err.msg}). Received: {line[:80]!r}") from None
        if not isinstance(obj, dict) or "phase" not in obj:
            continue
        try:
            lr = obj.get("lr")
            history.records.append(
                Record(
                    int(obj["iteration"]),
                    float(obj.get("seconds") or 0.0),
                    math.nan if lr is None else float(lr),
                    str(obj["phase"]),
                    {str(k): float(v) for k, v in (obj.get("outputs") or {}).items()},
                    int(obj.get("test_net") or 0),
                    None if obj.get("iters_per_s") is None else float(obj["iters_per_s"]),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise LogFormatError(
                f"{path}:{number}: a run record needs iteration, phase and numeric outputs ({err}). "
                f"Received: {line[:80]!r}"
            ) from None
    return history


def read_history(path: str) -> History:
    """The history of a run folder, a ``.jsonl`` run-record file, or a Caffe-format training log.

    A folder is read through its ``metrics.jsonl`` (else its only ``*.jsonl`` file, else a
    ``*.log`` file). Anything else is sniffed: JSON objects are run records, other text a log.
    """
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        picks = [RECORDS_FILE] if RECORDS_FILE in names else [n for n in names if n.endswith(".jsonl")]
        picks = picks or [n for n in names if n.endswith(".log")]
        if len(picks) != 1:
            raise LogFormatError(
                f"{path} is a folder without one {RECORDS_FILE}, *.jsonl or *.log file to read. "
                f"Found: {', '.join(names) or '(nothing)'}"
            )
        history = read_history(os.path.join(path, picks[0]))
        history.source = path
        return history
    if not os.path.isfile(path):
        raise LogFormatError(f"no such run folder, run-record file or training log: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    first = text.lstrip()[:1]
    history = parse_records(path, text) if first == "{" else parse_caffe_log(path, text)
    if not history.records:
        raise LogFormatError(
            f"{path} holds no training records: expected a Caffe-format training log (lines such as "
            f'"Train net output #0: loss = 0.5") or JSON Lines run records ({{"iteration": ..., "phase": ...}})'
        )
    return history


def _csv_number(value: float) -> str:
    return "" if value is None else repr(float(value))


def write_csv_tables(history: History, out_dir: str, stem: str | None = None, delimiter: str = ",") -> list[str]:
    """Caffe's two tables, ``<stem>.train`` and ``<stem>.test`` in ``out_dir``; the paths written.

    Columns ``NumIters, Seconds, LearningRate`` and one per output, as Caffe's parse_log.py
    writes them; a table with no rows is written with its header only when the other has rows.
    """
    stem = stem or os.path.basename(history.source.rstrip(os.sep))
    os.makedirs(out_dir or ".", exist_ok=True)
    written = []
    for phase in ("train", "test"):
        names = history.output_names(phase)
        path = os.path.join(out_dir, f"{stem}.{phase}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(delimiter.join(["NumIters", "Seconds", "LearningRate", *names]) + "\n")
            for r in history.phase(phase):
                cells = [str(r.iteration), _csv_number(r.seconds), _csv_number(r.lr)]
                cells += [_csv_number(r.outputs[n]) if n in r.outputs else "" for n in names]
                f.write(delimiter.join(cells) + "\n")
        written.append(path)
    return written


__all__ = [
    "RECORDS_FILE",
    "History",
    "LogFormatError",
    "Record",
    "parse_caffe_log",
    "parse_records",
    "read_history",
    "record_line",
    "write_csv_tables",
]
