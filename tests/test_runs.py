"""netdef.runs: --set overrides validated as a solver file is, run folders, and the log copies; netdef.logs defaults."""

import datetime
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netdef import logs
from netdef.errors import NetdefError, PrototxtSyntaxError, UnknownFieldError
from netdef.logparse import Record, read_history
from netdef.proto import netdef_pb2 as pb
from netdef.proto import parse_text
from netdef.runs import RunRecorder, apply_overrides, default_run_dir, override_pairs, run_name

REPO = Path(__file__).resolve().parents[1]


def _param(text: str = 'base_lr: 0.1 lr_policy: "step" stepsize: 10 stepvalue: 5 test_iter: 3') -> pb.SolverParameter:
    return parse_text(text, pb.SolverParameter())


# --- overrides ------------------------------------------------------------------------------
def test_overrides_set_scalars_enums_booleans_and_strings():
    param = _param()
    applied = apply_overrides(
        param, ["type=Adam", "base_lr=0.001", "solver_mode=CPU", "test_initialization=false", "max_iter=0x10"]
    )
    assert applied == ["type=Adam", "base_lr=0.001", "solver_mode=CPU", "test_initialization=false", "max_iter=0x10"]
    assert param.type == "Adam" and param.base_lr == pytest.approx(0.001)
    assert param.solver_mode == pb.SolverParameter.CPU
    assert param.HasField("test_initialization") and param.test_initialization is False
    assert param.max_iter == 16
    assert param.lr_policy == "step" and param.stepsize == 10  # untouched fields keep the file's values


def test_repeated_fields_replace_then_add_comma_separated_or_repeated():
    param = _param()
    apply_overrides(param, ["stepvalue=100,200", "stepvalue=300", "test_iter=7"])
    assert list(param.stepvalue) == [100, 200, 300]
    assert list(param.test_iter) == [7]
    param = _param()
    apply_overrides(param, {"stepvalue": [1, 2], "weights": "a.caffemodel"})
    assert list(param.stepvalue) == [1, 2] and list(param.weights) == ["a.caffemodel"]


def test_dotted_keys_and_message_values():
    param = _param()
    apply_overrides(param, ["train_state.stage=big", "train_state.stage=fast", "train_state.level=2"])
    assert list(param.train_state.stage) == ["big", "fast"] and param.train_state.level == 2
    apply_overrides(param, ['train_state=stage: "small"'])
    assert list(param.train_state.stage) == ["small"] and not param.train_state.HasField("level")


def test_an_unknown_field_gets_the_error_a_solver_file_gets():
    with pytest.raises(UnknownFieldError) as from_set:
        apply_overrides(_param(), ["bse_lr=0.1"])
    assert str(from_set.value).startswith('--set bse_lr=0.1: unknown field "bse_lr" in SolverParameter. ')
    assert 'Did you mean "base_lr"?' in str(from_set.value)
    with pytest.raises(UnknownFieldError) as from_file:
        parse_text("bse_lr: 0.1", pb.SolverParameter(), "s.prototxt")
    # the same message after the location
    assert str(from_set.value).split(": ", 1)[1] == str(from_file.value).split(": ", 1)[1]


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("solver_mode=GPUU", 'GPUU is not a value of SolverMode. Did you mean "GPU"? Valid: CPU, GPU'),
        ("base_lr=fast", "--set base_lr=fast: base_lr takes a number. Received: 'fast'"),
        ("max_iter=1.5", "--set max_iter=1.5: max_iter takes an integer. Received: '1.5'"),
        ("max_iter=99999999999", "--set max_iter=99999999999: "),
        ("debug_info=maybe", "debug_info is a boolean. Received: 'maybe'. Valid: true, false"),
        ("base_lr.x=1", '"base_lr" is not a single message field of SolverParameter'),
        ("train_state=stag: 1", 'unknown field "stag" in NetState'),
    ],
)
def test_bad_values_are_named(item, fragment):
    with pytest.raises(PrototxtSyntaxError) as err:
        apply_overrides(_param(), [item])
    assert fragment in str(err.value)


@pytest.mark.parametrize("item", ["base_lr", "=3", ""])
def test_an_override_needs_key_equals_value(item):
    with pytest.raises(NetdefError, match=r"--set takes KEY=VALUE, a SolverParameter field and its value"):
        override_pairs([item])


def test_quotes_around_a_string_are_dropped():
    param = _param()
    apply_overrides(param, ['snapshot_prefix="snaps/a b"', "type='Nesterov'"])
    assert param.snapshot_prefix == "snaps/a b" and param.type == "Nesterov"


# --- run folders ----------------------------------------------------------------------------
def test_run_names_and_default_folders(tmp_path):
    assert run_name("models/digits/solver.prototxt") == "digits"
    assert run_name("solvers/step.prototxt", ["type=Adam", "base_lr=0.001"]) == "step-type-Adam-base_lr-0.001"
    assert run_name(None) == "run"
    assert run_name("x/lenet_solver.prototxt", ['snapshot_prefix="a b/c"']) == "lenet_solver-snapshot_prefix-_a_b_c_"
    now = datetime.datetime(2024, 5, 6, 7, 8, 9)
    first = default_run_dir("models/digits/solver.prototxt", root=tmp_path, now=now)
    assert first == str(tmp_path / "digits-20240506-070809")
    Path(first).mkdir()
    assert default_run_dir("models/digits/solver.prototxt", root=tmp_path, now=now) == first + "-2"


def test_recorder_writes_header_definitions_records_and_tables(tmp_path):
    run = tmp_path / "r"
    with RunRecorder(run, csv=True) as rec:
        rec.write_header({"overrides": ["type=Adam"]})
        rec.write_definitions(_param("base_lr: 0.5"), [("net.prototxt", pb.NetParameter(name="n"))])
        rec.add(Record(0, 0.25, 0.5, "train", {"loss": 2.0}))
        rec.add(Record(10, 1.5, 0.5, "test", {"accuracy": 0.75}, test_net=0))
        rec.add(Record(10, 1.75, 0.5, "train", {"loss": 1.0}, iters_per_s=40.0))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["run"]["overrides"] == ["type=Adam"]
    assert [json.loads(line) for line in lines[1:]] == [
        {"iteration": 0, "seconds": 0.25, "lr": 0.5, "phase": "train", "outputs": {"loss": 2.0}},
        {"iteration": 10, "seconds": 1.5, "lr": 0.5, "phase": "test", "outputs": {"accuracy": 0.75}, "test_net": 0},
        {"iteration": 10, "seconds": 1.75, "lr": 0.5, "phase": "train", "outputs": {"loss": 1.0}, "iters_per_s": 40.0},
    ]
    assert (run / "solver.prototxt").read_text() == "base_lr: 0.5\n"
    assert (run / "net.prototxt").read_text() == 'name: "n"\n'
    assert (
        run / "metrics.train"
    ).read_text() == "NumIters,Seconds,LearningRate,loss\n0,0.25,0.5,2.0\n10,1.75,0.5,1.0\n"
    assert (run / "metrics.test").read_text() == "NumIters,Seconds,LearningRate,accuracy\n10,1.5,0.5,0.75\n"
    assert [r.outputs for r in read_history(str(run)).records] == [{"loss": 2.0}, {"accuracy": 0.75}, {"loss": 1.0}]


def test_a_resumed_run_appends_and_goes_on_in_time_a_new_run_replaces(tmp_path, caplog):
    with RunRecorder(tmp_path) as rec:
        rec.add(Record(0, 3.0, 0.1, "train", {"loss": 2.0}))
    with RunRecorder(tmp_path, resume=True) as rec:
        assert rec.seconds_offset == 3.0
        rec.write_header({"resumed_from": "s_iter_10.solverstate"})
        rec.add(Record(10, 0.5, 0.1, "train", {"loss": 1.0}))
    history = read_history(str(tmp_path))
    assert [(r.iteration, r.seconds) for r in history.records] == [(0, 3.0), (10, 3.5)]
    (tmp_path / "train.log").write_text("old log\n")
    with caplog.at_level(logging.WARNING, logger="netdef"), RunRecorder(tmp_path) as rec:
        assert rec.seconds_offset == 0.0
        rec.add(Record(0, 0.25, 0.1, "train", {"loss": 3.0}))
    assert caplog.messages == [f"{tmp_path} holds the record of an earlier run; replacing it"]
    assert [(r.iteration, r.seconds) for r in read_history(str(tmp_path)).records] == [(0, 0.25)]
    assert not (tmp_path / "train.log").exists()


def test_a_closed_recorder_refuses_records(tmp_path):
    rec = RunRecorder(tmp_path)
    rec.close()
    rec.close()
    with pytest.raises(NetdefError, match="is closed"):
        rec.add(Record(0, 0.0, 0.1, "train", {}))


def test_a_run_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NetdefError, match="cannot make the run folder"):
        RunRecorder(tmp_path / "file" / "run")


# --- log copies -------------------------------------------------------------------------------
@pytest.fixture
def quiet_console():
    """The netdef logger as ``netdef -q`` leaves it; restored afterwards."""
    log = logging.getLogger("netdef")
    saved = (log.handlers[:], log.level, log.propagate)
    logs.setup_logging(quiet=True)
    yield log
    log.handlers[:], log.level, log.propagate = saved


def test_the_log_copy_holds_info_even_when_the_console_is_quiet(tmp_path, quiet_console, capsys):
    log = quiet_console
    console = log.handlers[0]
    with RunRecorder(tmp_path) as rec, rec.capture_log(), rec.capture_log():
        log.info("Iteration %d, lr = %s", 3, "0.1")
        log.warning("careful")
    log.info("after")
    text = (tmp_path / "train.log").read_text()
    assert [line.split("] ", 1)[1] for line in text.splitlines()] == ["Iteration 3, lr = 0.1", "careful"]
    assert text.startswith("I") and " runs.py:" not in text and " test_runs.py:" in text
    assert "Iteration 3" not in capsys.readouterr().err  # the console stayed quiet
    assert log.level == logging.WARNING and console.level == logging.NOTSET
    assert not [h for h in log.handlers if isinstance(h, logging.FileHandler)]


def test_log_lines_collects_formatted_lines(quiet_console):
    with logs.log_lines() as lines:
        quiet_console.info("Solving %s", "x")
    assert len(lines) == 1 and lines[0].endswith("] Solving x") and lines[0][0] == "I"


def test_set_log_level_and_quiet():
    log = logging.getLogger("netdef")
    saved = log.level
    try:
        logs.set_log_level("warning")
        assert log.level == logging.WARNING
        logs.set_log_level(logging.DEBUG)
        assert log.level == logging.DEBUG
        logs.quiet()
        assert log.level == logging.WARNING
        with pytest.raises(NetdefError, match="unknown level 'LOUD'"):
            logs.set_log_level("LOUD")
    finally:
        log.setLevel(saved)


def test_python_logs_info_to_stderr_by_default_and_quiet_silences_it():
    script = (
        "import logging, netdef.logs as l\n"
        "log = logging.getLogger('netdef')\n"
        "log.info('first')\n"
        "l.quiet()\n"
        "log.info('hidden')\n"
        "log.warning('shown')\n"
        "logging.basicConfig(format='root %(message)s')\n"
        "log.warning('via root')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    lines = run.stderr.splitlines()
    assert [line.split("] ", 1)[-1] for line in lines] == ["first", "shown", "root via root"]
    assert lines[0].startswith("I") and "<string>:3]" not in lines[0] and ".py:3]" in lines[0]


def test_runs_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDEF_RUNS_ROOT", str(tmp_path / "elsewhere"))
    assert default_run_dir("models/digits/solver.prototxt").startswith(str(tmp_path / "elsewhere" / "digits-"))
    monkeypatch.delenv("NETDEF_RUNS_ROOT")
    assert default_run_dir("models/digits/solver.prototxt").startswith(os.path.join("runs", "digits-"))
