"""`netdef train` (netdef.tools.train) as one Python call, and the device choice the commands share."""

import argparse
import logging

import pytest

from netdef import backend
from netdef.errors import NetdefError, SolverError
from netdef.layers import python_layer
from netdef.proto import to_text
from netdef.solvers import Solver, get_solver
from netdef.tools.common import select_device, split_stages
from netdef.tools.train import add_parser, cmd_train, resume_command, train
from tests.solver_helpers import mlp_text, params_of, solver_param, write_problem


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
    assert cmd_train(_args("solver.prototxt")) == 0
    err = capsys.readouterr().err
    state = f"{solver_file.parent}/run_iter_3.solverstate"
    assert err.endswith(
        f"netdef: training stopped at iteration 3; resume it with:\n  netdef train solver.prototxt --snapshot {state}\n"
    )
    monkeypatch.setattr(Solver, "__init__", real_init)
    resumed = train("solver.prototxt", snapshot=state)
    assert resumed.iter == 5
