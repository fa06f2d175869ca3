"""`netdef train` (netdef.tools.train) as one Python call, and the device choice the commands share."""

import logging

import pytest

from netdef.errors import NetdefError
from netdef.proto import to_text
from netdef.tools.common import select_device, split_stages
from netdef.tools.train import train
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
