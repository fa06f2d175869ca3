"""`netdef train` (netdef.tools.train) as one Python call, and the device choice the commands share."""

import argparse
import json
import logging
import re
import shlex

import pytest

from netdef import backend
from netdef.errors import NetdefError, SolverError, UnknownFieldError
from netdef.layers import python_layer
from netdef.logparse import parse_caffe_log, read_history
from netdef.logs import setup_logging
from netdef.proto import netdef_pb2 as pb
from netdef.proto import parse_text, to_text
from netdef.solvers import Solver, get_solver
from netdef.tools.common import select_device, split_stages
from netdef.tools.train import add_parser, cmd_train, resume_command, train
from tests.solver_helpers import mlp_text, params_of, solver_param, write_problem

log = logging.getLogger("netdef")


@pytest.fixture
def solver_file(tmp_path):
    listing = write_problem(tmp_path)
    (tmp_path / "mlp.prototxt").write_text(mlp_text(listing))
    param = solver_param(
        f'net: "mlp.prototxt" base_lr: 0.1 random_seed: 4 max_iter: 5 solver_mode: CPU '
        f'snapshot_prefix: "{tmp_path}/run" snapshot_after_train: true'
    )
    path = tmp_path / "solver.prototxt"
    path.write_text(to_text(param))
    return path


def test_train_runs_to_max_iter_and_snapshots(solver_file, caplog):
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver = train(solver_file)
    assert solver.iter == 5
    assert (solver_file.parent / "run_iter_5.caffemodel").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert (
        messages.index("Use CPU.")
        < messages.index("Solver scaffolding done.")
        < messages.index("Starting Optimization")
        < messages.index("Optimization Done.")
    )


def test_train_fine_tunes_from_weights(solver_file, caplog):
    first = train(solver_file)
    with caplog.at_level(logging.INFO, logger="netdef"):
        second = train(solver_file, weights=f"{solver_file.parent}/run_iter_5.caffemodel", sigint_effect="none")
    assert f"Finetuning from {solver_file.parent}/run_iter_5.caffemodel" in caplog.text
    assert second.iter == 5
    assert any((first_value != params_of(second)[key]).any() for key, first_value in params_of(first).items())


def test_train_refuses_weights_with_snapshot(solver_file):
    with pytest.raises(NetdefError, match=r"Give either --snapshot \(resume training\) or --weights"):
        train(solver_file, weights="a.caffemodel", snapshot="b.solverstate")


def test_select_device(caplog):
    with caplog.at_level(logging.INFO, logger="netdef"):
        caplog.clear()  # only what the call below logs
        select_device(None)
    assert caplog.messages == ["Use CPU."]
    with pytest.raises(
        NetdefError, match="--gpu takes a device number, a comma-separated list or 'all'. Received: 'first'"
    ):
        select_device("first")


def test_split_stages():
    assert split_stages(None) == [] and split_stages("a,,b") == ["a", "b"]


# --- solver_mode: Caffe's default (GPU) is quiet on a CPU machine; an explicit GPU request warns ----------------
@pytest.mark.parametrize("given, level", [(False, logging.INFO), (True, logging.WARNING)])
def test_solver_mode_gpu_without_a_gpu(monkeypatch, caplog, given, level):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="netdef"):
        select_device(None, solver_mode_gpu=True, solver_mode_given=given)
    record = next(r for r in caplog.records if "solver_mode" in r.getMessage())
    assert record.levelno == level
    assert ("is not set (Caffe's default is GPU)" in record.getMessage()) == (not given)
    assert caplog.messages[-1] == "Use CPU."


def test_a_solver_without_solver_mode_trains_quietly_on_the_cpu(solver_file, monkeypatch, caplog):
    solver_file.write_text(solver_file.read_text().replace("solver_mode: CPU", ""))
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    monkeypatch.chdir(solver_file.parent)
    with caplog.at_level(logging.INFO, logger="netdef"):
        train(str(solver_file))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("Caffe's default is GPU" in m for m in caplog.messages)


# --- a net path that does not resolve says how paths resolve and which field held it ------------------------
@pytest.mark.parametrize("field", ["net", "train_net", "test_net"])
def test_net_file_not_found_names_the_field_and_the_working_directory(tmp_path, monkeypatch, field):
    solver = tmp_path / "conf" / "solver.prototxt"
    solver.parent.mkdir()
    extra = ' train_net: "ok.prototxt" test_iter: 1 test_interval: 5' if field == "test_net" else ""
    (solver.parent / "ok.prototxt").write_text('layer { name: "a" type: "Input" top: "a" input_param { shape {} } }')
    solver.write_text(f'{field}: "models/digits/train_val.prototxt" base_lr: 0.1 lr_policy: "fixed"{extra}')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SolverError) as err:
        get_solver(str(solver))
    message = str(err.value)
    assert message.startswith(f"{solver}: {field}: net file not found: models/digits/train_val.prototxt. ")
    assert f"resolve against the working directory ({tmp_path}), then beside the solver file ({solver.parent})" in (
        message
    )
    assert "run from the folder the paths are relative to" in message


# --- the command that resumes an interrupted run ------------------------------------------------------------
def _args(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    try:
        return parser.parse_args(["train", *argv])
    finally:
        python_layer.allow_python_layers(None)


def test_resume_command_repeats_the_options_that_matter():
    args = _args("my solver.prototxt", "--gpu", "1", "--sighup_effect", "none", "--on_divergence", "continue")
    assert resume_command(args, "snaps/s_iter_20.solverstate") == (
        "netdef train 'my solver.prototxt' --snapshot snaps/s_iter_20.solverstate --gpu 1 --sighup_effect none "
        "--on_divergence continue"
    )
    args = _args("--solver", "s.prototxt", "--weights", "w.caffemodel", "--allow-python-layers", "--python-path", ".")
    assert resume_command(args, "x.solverstate") == (
        "netdef train s.prototxt --snapshot x.solverstate --allow-python-layers --python-path ."
    )


def test_a_stopped_run_prints_the_command_that_resumes_it(solver_file, monkeypatch, capsys):
    monkeypatch.chdir(solver_file.parent)
    real_init = Solver.__init__

    def init(self, *a, **kw):  # ask for a stop during the third iteration, as Ctrl-C does
        real_init(self, *a, **kw)
        self.add_callback(on_start=lambda: self.iter == 2 and self.stop())

    monkeypatch.setattr(Solver, "__init__", init)
    assert cmd_train(_args("solver.prototxt", "--set", "display=2", "--run-dir", "runs/a")) == 0
    err = capsys.readouterr().err
    state = f"{solver_file.parent}/run_iter_3.solverstate"
    resume = f"netdef train solver.prototxt --snapshot {state} --set display=2 --run-dir runs/a"
    assert err.endswith(f"netdef: training stopped at iteration 3; resume it with:\n  {resume}\n")
    monkeypatch.setattr(Solver, "__init__", real_init)
    # the resumed run records into the same folder, after what the first part recorded
    assert cmd_train(_args(*shlex.split(resume)[2:])) == 0
    history = read_history("runs/a")
    assert [(r.iteration, r.phase) for r in history.records] == [(0, "train"), (2, "train"), (4, "train")]
    assert history.records[1].seconds <= history.records[2].seconds
    headers = [json.loads(line)["run"] for line in open("runs/a/metrics.jsonl") if '"run"' in line]
    assert [h["resumed_from"] for h in headers] == [None, state]
    assert [h["iteration"] for h in headers] == [0, 0]


def test_resume_command_keeps_overrides_and_the_record_options():
    args = _args("s.prototxt", "--set", "type=Adam", "--set", "base_lr=0.5", "--no-record", "--log-file", "t.log")
    assert resume_command(args, "x.solverstate") == (
        "netdef train s.prototxt --snapshot x.solverstate --set type=Adam --set base_lr=0.5 --no-record "
        "--log-file t.log"
    )
    args = _args("s.prototxt", "--csv")
    assert resume_command(args, "x.solverstate", "runs/s-1") == (
        "netdef train s.prototxt --snapshot x.solverstate --run-dir runs/s-1 --csv"
    )


# --- run records and --set ----------------------------------------------------------------------------------------
def test_netdef_train_records_the_run_by_default(solver_file, monkeypatch, capsys):
    monkeypatch.chdir(solver_file.parent)
    monkeypatch.delenv("NETDEF_RUNS_ROOT", raising=False)  # the documented default: runs/ in the working directory
    solver_file.write_text(solver_file.read_text() + "display: 2 test_iter: 2 test_interval: 4\n")
    args = _args("solver.prototxt", "--set", "type=Nesterov", "--set", "base_lr=0.05", "--set", "max_iter=6", "--csv")
    assert cmd_train(args) == 0
    (run,) = (solver_file.parent / "runs").iterdir()
    assert re.fullmatch(r"test_netdef_train_records_the_0-type-Nesterov-base_lr-0.05-max_iter-6-\d{8}-\d{6}", run.name)
    assert sorted(p.name for p in run.iterdir()) == [
        "metrics.jsonl",
        "metrics.test",
        "metrics.train",
        "net.prototxt",
        "solver.prototxt",
        "train.log",
    ]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    header = json.loads(lines[0])["run"]
    assert header["overrides"] == ["type=Nesterov", "base_lr=0.05", "max_iter=6"]
    assert header["solver_file"] == "solver.prototxt" and header["type"] == "Nesterov" and header["max_iter"] == 6
    records = [json.loads(line) for line in lines[1:]]
    assert [(r["iteration"], r["phase"]) for r in records] == [
        (0, "test"),
        (0, "train"),
        (2, "train"),
        (4, "test"),
        (4, "train"),
    ]
    assert {r["lr"] for r in records} == {0.0500000007}  # float32 0.05, to 9 digits
    assert set(records[0]["outputs"]) == {"accuracy", "loss"} and set(records[1]["outputs"]) == {"loss"}
    ran = parse_text((run / "solver.prototxt").read_text(), pb.SolverParameter())
    assert ran.type == "Nesterov" and ran.max_iter == 6 and ran.snapshot_prefix == f"{solver_file.parent}/run"
    assert 'name: "mlp"' in (run / "net.prototxt").read_text()
    log_text = (run / "train.log").read_text()
    # the whole log, from the solver's construction on, in glog's format, as Caffe's parsers read it
    assert "Initializing solver from parameters:" in log_text and "Optimization Done." in log_text
    assert "Progress: 4 of 6 iterations (66%)" in log_text
    copied = parse_caffe_log(str(run / "train.log"))
    assert [(r.iteration, r.phase) for r in copied.records] == [(r["iteration"], r["phase"]) for r in records]
    assert (run / "metrics.train").read_text().splitlines()[0] == "NumIters,Seconds,LearningRate,loss"
    assert capsys.readouterr().out == ""  # the results are in the log and the folder, not on stdout


def test_no_record_and_log_file(solver_file, monkeypatch):
    monkeypatch.chdir(solver_file.parent)
    saved = (log.handlers[:], log.level, log.propagate)
    setup_logging(quiet=True)
    try:
        assert cmd_train(_args("solver.prototxt", "--no-record", "--log-file", "out.log")) == 0
        assert cmd_train(_args("solver.prototxt", "--no-record", "--log-file", "out.log")) == 0
    finally:
        log.handlers[:], log.level, log.propagate = saved
    assert not (solver_file.parent / "runs").exists()
    text = (solver_file.parent / "out.log").read_text()
    # INFO lines even with -q, appended run after run
    assert text.count("Optimization Done.") == 2 and text.count("] Use CPU.") == 2


def test_a_mistake_in_set_leaves_no_run_folder(solver_file, monkeypatch):
    monkeypatch.chdir(solver_file.parent)
    with pytest.raises(UnknownFieldError, match=r'--set bas_lr=1: unknown field "bas_lr" in SolverParameter'):
        cmd_train(_args("solver.prototxt", "--set", "bas_lr=1"))
    with pytest.raises(NetdefError, match=r"--set takes KEY=VALUE"):
        cmd_train(_args("solver.prototxt", "--set", "base_lr"))
    assert not (solver_file.parent / "runs").exists()


def test_train_in_python_records_in_memory_and_where_asked(solver_file, tmp_path):
    solver = train(solver_file, overrides={"display": 1, "max_iter": 2})
    assert [(r.iteration, r.phase) for r in solver.records] == [(0, "train"), (1, "train")]
    assert solver.recorder is None
    solver = train(solver_file, overrides=["display=1", "max_iter=2"], run_dir=tmp_path / "py")
    assert [(r.iteration, r.outputs) for r in read_history(str(tmp_path / "py")).records] == [
        (r.iteration, {k: float(f"{v:.9g}") for k, v in r.outputs.items()}) for r in solver.records
    ]
    assert solver.recorder is None  # the folder is closed when train returns
