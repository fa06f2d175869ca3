"""Training that diverges (NaN or infinite loss or parameters) stops with a named error, or continues on request."""

import logging
import math
import os
import re

import numpy as np
import pytest

from netdef.errors import SolverError, TrainingDivergedError
from netdef.solvers import divergence, get_solver
from netdef.tools.train import add_parser
from tests.solver_helpers import mlp_text, solver_param, write_problem


def diverging_param(tmp_path, text: str = ""):
    """A classifier with a learning rate that sends it to NaN within a few iterations."""
    listing = write_problem(tmp_path)
    return solver_param(
        f'type: "SGD" base_lr: 1e6 momentum: 0.9 random_seed: 3 max_iter: 50 snapshot_prefix: "{tmp_path}/s" ' + text,
        net_text=mlp_text(listing),
    )


def snapshot_weights_finite(folder) -> list[bool]:
    from netdef.io import caffemodel

    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".caffemodel"):
            blobs = caffemodel.read_weight_blobs(str(folder / name))
            out.append(all(np.isfinite(a).all() for layer in blobs.values() for a, _ in layer))
    return out


def test_a_nan_loss_stops_training_at_once_with_what_to_try(tmp_path):
    solver = get_solver(diverging_param(tmp_path, "snapshot: 1"))
    with pytest.raises(TrainingDivergedError) as err:
        solver.solve()
    message = str(err.value)
    it = solver.iter
    assert it < 50 and not math.isfinite(solver.loss)
    assert message.startswith(f"Training diverged at iteration {it}: the loss is ")
    assert re.search(
        r'First non-finite value: (parameter \d|output "\w+") of Layer "ip[12]" \(type InnerProduct\)\.', message
    )
    assert "Learning rate: 1e+06." in message
    assert "lower base_lr" in message and "clip_gradients (e.g. clip_gradients: 10" in message
    assert "check the input data for NaN" in message
    # the weights of iteration it (after it updates) are finite; their forward pass overflowed
    assert f"the last snapshot is {tmp_path}/s_iter_{it}.solverstate" in message
    assert "--on_divergence continue" in message
    # Every snapshot written holds finite weights: the last good one was not replaced by a NaN one.
    written = snapshot_weights_finite(tmp_path)
    assert len(written) == it and all(written)


def test_continue_keeps_caffes_behaviour_with_one_warning(tmp_path, caplog):
    solver = get_solver(diverging_param(tmp_path, "max_iter: 12 snapshot: 6"), on_divergence="continue")
    with caplog.at_level(logging.WARNING, logger="netdef"):
        solver.solve()
    assert solver.iter == 12
    diverged = [r.getMessage() for r in caplog.records if "Training diverged" in r.getMessage()]
    assert len(diverged) == 1 and diverged[0].endswith("Continuing, as Caffe does (on_divergence: continue).")
    assert "holds non-finite weights" in caplog.text
    assert snapshot_weights_finite(tmp_path) == [False, False]  # written anyway, as Caffe would


def test_a_non_finite_parameter_is_found_at_the_next_display(tmp_path):
    # No loss at all (the loss stays 0): only the parameter check can notice.
    param = solver_param(f'type: "SGD" base_lr: 0.1 display: 4 snapshot_prefix: "{tmp_path}/s"')
    solver = get_solver(param)
    solver.add_callback(on_gradients_ready=lambda: solver.iter == 2 and solver.net.params["b"][0].diff.fill(np.nan))
    with pytest.raises(TrainingDivergedError) as err:
        solver.step(10)
    assert solver.iter == 5  # noticed at the display of iteration 4, after its update
    assert str(err.value).startswith(
        "Training diverged at iteration 5: a parameter is not finite after the update. "
        'First non-finite value: parameter 0 of Layer "b" (type Parameter). Learning rate: 0.1.'
    )


def test_a_snapshot_of_non_finite_weights_is_refused(tmp_path):
    solver = get_solver(solver_param(f'type: "SGD" base_lr: 0.1 snapshot_prefix: "{tmp_path}/s"'))
    solver.step(1)
    good = solver.snapshot()
    solver.net.params["w"][0].data[1] = np.inf
    solver.step(1)
    with pytest.raises(
        TrainingDivergedError, match="Refusing to snapshot at iteration 2: the weights are not finite"
    ) as err:
        solver.snapshot()
    assert f"the last snapshot is {good}" in str(err.value)
    assert sorted(os.listdir(tmp_path)) == [
        "s_iter_1.caffemodel",
        "s_iter_1.solverstate",
        "s_iter_1.solverstate.netdef.json",
    ]


def test_on_divergence_values():
    assert divergence.parse_policy(" Continue ") == "continue"
    with pytest.raises(SolverError, match="on_divergence must be one of stop, continue. Received: 'ignore'"):
        get_solver(solver_param(""), on_divergence="ignore")


def test_finite_checks():
    assert divergence.all_finite(np.array([1e38, 3e38], np.float32))  # no overflow in the check itself
    assert not divergence.all_finite(np.array([1.0, np.nan], np.float32))
    assert not divergence.all_finite(np.array([np.inf, -np.inf]))
    assert divergence.all_finite(np.zeros(0))


def test_the_cli_exits_non_zero_with_the_message(tmp_path, capsys):
    import argparse

    from netdef.cli import main

    param = diverging_param(tmp_path)
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(mlp_text(tmp_path / "list.txt"))
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(
        f'net: "{net_file}" base_lr: 1e6 momentum: 0.9 random_seed: 3 max_iter: 50 lr_policy: "fixed" '
        f'snapshot_prefix: "{tmp_path}/s" snapshot_after_train: false solver_mode: CPU'
    )
    assert param.base_lr == 1e6
    assert main(["train", str(solver_file), "--no-record"]) == 1
    err = capsys.readouterr().err
    assert "netdef: error: Training diverged at iteration" in err and "Traceback" not in err
    assert main(["train", str(solver_file), "--on_divergence", "continue"]) == 0
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert parser.parse_args(["train", "s.prototxt", "--on-divergence", "continue"]).on_divergence == "continue"
