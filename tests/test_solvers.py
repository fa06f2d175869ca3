"""Solvers: update rules with literal values, ApplyUpdate's order, Caffe's checks, the training loop."""

import json
import logging
import os
import re
import signal

import numpy as np
import pytest

import netdef
from netdef.errors import SolverError, UnknownFieldError
from netdef.proto import net_from_text, parse_text, to_text
from netdef.proto import netdef_pb2 as pb
from netdef.solvers import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
    handle_signals,
    load_solver_parameter,
)
from tests.solver_helpers import (
    SCORED_NET,
    TINY_NET,
    mlp_text,
    params_of,
    record_losses,
    solver_param,
    write_problem,
)

W0 = np.array([1.0, -2.0, 0.5], np.float32)
G1 = np.array([0.1, 0.2, -0.4], np.float32)
G2 = np.array([0.3, -0.1, 0.2], np.float32)


def tiny_solver(text: str, w=W0, b=None, grads=(G1, G2)):
    """A solver on TINY_NET whose iteration k sees gradient grads[k] on w (and on b when b is given)."""
    solver = get_solver(solver_param(text))
    solver.net.params["w"][0].data[...] = w
    if b is not None:
        solver.net.params["b"][0].data[...] = b
    feed = iter(grads)

    def put_gradients():
        g = next(feed)
        for name in ("w", "b"):
            solver.net.params[name][0].diff[...] = g if (name == "w" or b is not None) else 0

    solver.add_callback(on_gradients_ready=put_gradients)
    return solver


def weights(solver, name="w"):
    return np.array(solver.net.params[name][0].data)


# --- update rules, literal values (w0 = [1, -2, 0.5], g1 = [0.1, 0.2, -0.4], g2 = [0.3, -0.1, 0.2]) ---
UPDATE_CASES = {
    # h = lr*g + m*h; w -= h
    "SGD": ('type: "SGD" base_lr: 0.1 momentum: 0.9', [0.99, -2.02, 0.54], [0.951, -2.028, 0.556]),
    # h' = m*h + lr*g; w -= (1+m)*h' - m*h
    "Nesterov": ('type: "Nesterov" base_lr: 0.1 momentum: 0.9', [0.981, -2.038, 0.576], [0.9159, -2.0352, 0.5704]),
    # h += g^2; w -= lr*g/(sqrt(h)+delta): first step is lr*sign(g)
    "AdaGrad": ('type: "AdaGrad" base_lr: 0.1', [0.9, -2.1, 0.6], [0.8051317, -2.055279, 0.5552786]),
    # h = 0.9h + 0.1g^2; w -= lr*g/(sqrt(h)+delta)
    "RMSProp": (
        'type: "RMSProp" base_lr: 0.1 rms_decay: 0.9',
        [0.6837723, -2.316228, 0.8162277],
        [0.382261, -2.168786, 0.6687858],
    ),
    # hg = rho*hg + (1-rho)g^2; u = g*sqrt((hu+d)/(hg+d)); hu = rho*hu + (1-rho)u^2; w -= lr*u
    "AdaDelta": (
        'type: "AdaDelta" base_lr: 1.0 momentum: 0.95 delta: 1e-6',
        [0.9955323, -2.004471, 0.5044719],
        [0.9895209, -2.001585, 0.5015853],
    ),
    # m, v moments; w -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps): first step is lr*sign(g)
    "Adam": (
        'type: "Adam" base_lr: 0.01 momentum: 0.9 momentum2: 0.999 delta: 1e-8',
        [0.99, -2.01, 0.51],
        [0.9808222, -2.012663, 0.5126634],
    ),
}


@pytest.mark.parametrize("name", list(UPDATE_CASES))
def test_update_rule_literal_values(name):
    text, after1, after2 = UPDATE_CASES[name]
    solver = tiny_solver(text)
    assert type(solver).__name__ == name + "Solver"
    solver.step(1)
    np.testing.assert_allclose(weights(solver), after1, rtol=2e-6, atol=1e-7)
    solver.step(1)
    np.testing.assert_allclose(weights(solver), after2, rtol=2e-6, atol=1e-7)
    assert solver.iter == 2
    assert weights(solver).dtype == np.float32


def test_history_layout_matches_caffe():
    # AdaDelta and Adam keep a second history set after the first, one array per learnable blob.
    assert len(tiny_solver('type: "SGD" base_lr: 0.1').history) == 2
    assert len(tiny_solver('type: "Adam" base_lr: 0.1').history) == 4
    assert len(tiny_solver('type: "AdaDelta" base_lr: 0.1 delta: 1e-6').history) == 4


def test_lr_mult_scales_the_step():
    solver = tiny_solver('type: "SGD" base_lr: 0.1', b=np.zeros(3, np.float32))
    solver.step(1)
    np.testing.assert_allclose(weights(solver), W0 - 0.1 * G1, rtol=1e-6)
    np.testing.assert_allclose(weights(solver, "b"), -0.2 * G1, rtol=1e-6)  # lr_mult 2


@pytest.mark.parametrize(
    ("kind", "w_after", "b_after"),
    [
        # w: g + 0.1*w = [0.2, 0.0, -0.35]; b: g + 0.1*0.5*b = [0.2, 0.15, -0.4], lr 0.2
        ("L2", [0.98, -2.0, 0.535], [1.96, -1.03, 0.08]),
        # w: g + 0.1*sign(w) = [0.2, 0.1, -0.3]; b: g + 0.05*sign(b) = [0.15, 0.15, -0.4] (sign(0) = 0), lr 0.2
        ("L1", [0.98, -2.01, 0.53], [1.97, -1.03, 0.08]),
    ],
)
def test_weight_decay_with_decay_mult(kind, w_after, b_after):
    b0 = np.array([2.0, -1.0, 0.0], np.float32)
    solver = tiny_solver(f'type: "SGD" base_lr: 0.1 weight_decay: 0.1 regularization_type: "{kind}"', b=b0)
    solver.step(1)
    np.testing.assert_allclose(weights(solver), w_after, rtol=1e-6)
    np.testing.assert_allclose(weights(solver, "b"), b_after, rtol=1e-6)


def test_clip_gradients_scales_by_global_norm(caplog):
    g = np.array([3.0, 0.0, 0.0], np.float32)
    # global norm over w and b: sqrt(9 + 16) = 5 > 1 -> every diff scaled by 0.2
    solver = tiny_solver('type: "SGD" base_lr: 1 clip_gradients: 1', w=np.zeros(3, np.float32), grads=[g])
    solver.add_callback(on_gradients_ready=lambda: solver.net.params["b"][0].diff.__setitem__(1, 4.0))
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.step(1)
    np.testing.assert_allclose(weights(solver), [-0.6, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(weights(solver, "b"), [0, -1.6, 0], rtol=1e-6)  # lr_mult 2
    assert "Gradient clipping: scaling down gradients (L2 norm 5 > 1) by scale factor 0.2" in caplog.text


def test_clip_gradients_leaves_small_gradients():
    solver = tiny_solver('type: "SGD" base_lr: 1 clip_gradients: 10', w=np.zeros(3, np.float32), grads=[G1])
    solver.step(1)
    np.testing.assert_allclose(weights(solver), -G1, rtol=1e-6)


def test_clipping_happens_before_iter_size_normalisation():
    g = np.array([3.0, 4.0, 0.0], np.float32)
    solver = tiny_solver('type: "SGD" base_lr: 1 clip_gradients: 3 iter_size: 2', w=np.zeros(3, np.float32), grads=[g])
    solver.step(1)
    # accumulated norm 5 > 3: scale 0.6, then / iter_size 2 -> 0.3 g (normalising first would not clip: 2.5 < 3)
    np.testing.assert_allclose(weights(solver), -0.3 * g, rtol=1e-6)


def test_regularisation_after_normalisation():
    solver = tiny_solver('type: "SGD" base_lr: 1 iter_size: 4 weight_decay: 0.5', grads=[G1])
    solver.step(1)
    np.testing.assert_allclose(weights(solver), W0 - (G1 / 4 + 0.5 * W0), rtol=1e-6)


def test_lr_property_and_last_lr():
    solver = tiny_solver('type: "SGD" lr_policy: "step" base_lr: 0.1 gamma: 0.5 stepsize: 1', grads=[G1, G2])
    assert solver.lr == pytest.approx(0.1)
    solver.step(1)
    assert solver.last_lr == pytest.approx(0.1)
    assert solver.lr == pytest.approx(0.05)
    assert solver.current_step == 0  # the property computes without advancing anything


# --- Caffe's checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('type: "AdaGrad" base_lr: 0.1 momentum: 0.9', "Momentum cannot be used with AdaGrad. Received: momentum 0.9"),
        ('type: "RMSProp" base_lr: 0.1 momentum: 0.9', "Momentum cannot be used with RMSProp"),
        ('type: "RMSProp" base_lr: 0.1 rms_decay: 1.0', "rms_decay should lie in [0, 1). Received: 1"),
        ('type: "AdaDelta" base_lr: 1 momentum: 1.0', "AdaDelta needs momentum (its decay rate rho) in [0, 1)"),
        ('type: "AdaDelta" base_lr: 1 momentum: 0.9 delta: 0', "AdaDelta needs a positive delta"),
        ('type: "Adam" base_lr: 0.1 momentum: 1.5', "Adam needs momentum (beta1) in [0, 1). Received: 1.5"),
        ('type: "Adam" base_lr: 0.1 momentum2: 1.0', "Adam needs momentum2 (beta2) in [0, 1)"),
        ('type: "sgd" base_lr: 0.1', 'Unknown solver type "sgd". Did you mean "SGD"?'),
        ('type: "Adamm" base_lr: 0.1', 'Did you mean "Adam"?'),
        ('type: "LBFGS" base_lr: 0.1', "Known types: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam"),
        ("base_lr: 0.1 average_loss: 0", "average_loss must be at least 1. Received: 0"),
        ("base_lr: 0.1 iter_size: 0", "iter_size must be at least 1"),
        ('base_lr: 0.1 regularization_type: "L3"', 'Unknown regularization_type "L3". Valid: L1, L2'),
        ('base_lr: 0.1 lr_policy: "steps"', 'Unknown lr_policy "steps". Did you mean "step"?'),
        ("base_lr: 0.1 test_iter: 1", "test_interval must be positive"),
        ("base_lr: 0.1 snapshot: 10", "snapshot is set (every 10 iterations) but snapshot_prefix is not"),
        (
            'base_lr: 0.1 test_iter: 1 test_interval: 5 test_state { stage: "a" } test_state { stage: "b" }',
            "test_state must be unspecified or specified once per test net (1). Received: 2",
        ),
    ],
)
def test_parameter_checks(text, fragment):
    with pytest.raises(SolverError) as err:
        get_solver(solver_param(text))
    assert fragment in str(err.value)


def test_train_net_must_be_given_exactly_once():
    param = parse_text('base_lr: 0.1 lr_policy: "fixed"', pb.SolverParameter())
    with pytest.raises(SolverError, match="must name a train net using one of these fields: net, net_param"):
        get_solver(param)
    param.net_param.CopyFrom(net_from_text(TINY_NET))
    param.train_net_param.CopyFrom(net_from_text(TINY_NET))
    with pytest.raises(SolverError, match="names more than one train net: net_param, train_net_param"):
        get_solver(param)


def test_test_nets_need_their_test_iter():
    param = solver_param("base_lr: 0.1 test_interval: 5")
    param.ClearField("net_param")
    param.train_net_param.CopyFrom(net_from_text(TINY_NET))
    param.test_net_param.add().CopyFrom(net_from_text(TINY_NET))
    with pytest.raises(SolverError, match="test_iter must be specified once for each test network: 1 test nets, 0"):
        get_solver(param)


def test_unwritable_snapshot_prefix(tmp_path):
    with pytest.raises(SolverError, match="Cannot write to snapshot prefix .*Make sure that the directory exists"):
        get_solver(solver_param(f'base_lr: 0.1 snapshot: 5 snapshot_prefix: "{tmp_path}/missing/dir/x"'))


def test_classes_built_directly_ignore_type(tmp_path):
    path = tmp_path / "solver.prototxt"
    param = solver_param('type: "Adam" base_lr: 0.1')
    path.write_text(netdef.proto.to_text(param))
    assert isinstance(get_solver(str(path)), AdamSolver)
    for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver):
        assert type(cls(str(path))) is cls
    assert netdef.get_solver(str(path)).type_name == "Adam"


# --- the loop on real data -----------------------------------------------------------------------------
def mlp_solver(tmp_path, text: str = "", overrides=None, **net_kw):
    listing = write_problem(tmp_path)
    param = solver_param(
        'type: "SGD" base_lr: 0.1 momentum: 0.9 random_seed: 3 ' + text, net_text=mlp_text(listing, **net_kw)
    )
    return get_solver(param, overrides=overrides)


def test_iter_size_matches_a_bigger_batch(tmp_path):
    small = mlp_solver(tmp_path, "iter_size: 2", batch=16)
    big = mlp_solver(tmp_path, "", batch=32)
    for name, blobs in big.net.params.items():
        for k, blob in enumerate(blobs):
            small.net.params[name][k].data[...] = blob.data
    small_losses, big_losses = record_losses(small), record_losses(big)
    small.step(6)
    big.step(6)
    np.testing.assert_allclose(small_losses, big_losses, rtol=1e-5)
    for key, value in params_of(big).items():
        np.testing.assert_allclose(params_of(small)[key], value, rtol=1e-5, atol=1e-6)


def test_same_seed_gives_bit_identical_runs(tmp_path):
    runs = []
    for seed in (5, 5, 6):
        solver = mlp_solver(tmp_path, f"random_seed: {seed}", shuffle=True, dropout=True)
        losses = record_losses(solver)
        solver.step(12)
        runs.append((losses, params_of(solver)))
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        assert np.array_equal(runs[0][1][key], runs[1][1][key])
    assert runs[0][0] != runs[2][0]


def test_smoothed_loss_follows_caffe():
    solver = tiny_solver("base_lr: 0.1 average_loss: 3")
    got = []
    for it, loss in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        solver.iter = it
        solver._update_smoothed_loss(loss, 0, 3)
        got.append(solver.smoothed_loss)
    assert got == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0])


def test_display_log_lines(tmp_path, caplog):
    solver = mlp_solver(tmp_path, "display: 2 average_loss: 2")
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.step(3)
    lines = [r.getMessage() for r in caplog.records]

    head = r"Iteration 0 \([0-9.e+-]+ iter/s, [0-9.e+-]+s/2 iters\), loss = [0-9.]+"
    assert any(re.fullmatch(head, m) for m in lines)
    assert any(re.fullmatch(r"    Train net output #0: loss = [0-9.]+ \(\* 1 = [0-9.]+ loss\)", m) for m in lines)
    assert "Iteration 0, lr = 0.1" in lines and "Iteration 2, lr = 0.1" in lines
    assert not any(m.startswith("Iteration 1") for m in lines)


def test_testing_and_test_all(tmp_path, caplog):
    solver = mlp_solver(tmp_path, "test_iter: 4 test_interval: 3 test_compute_loss: true", test_batch=16)
    assert len(solver.test_nets) == 1
    assert solver.test_nets[0].params["ip1"][0] is solver.net.params["ip1"][0]  # shared weights
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.step(4)  # tests at iteration 0 (test_initialization) and 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Iteration 0, Testing net (#0)") == 1
    assert messages.count("Iteration 3, Testing net (#0)") == 1
    assert any(m.startswith("Test loss: ") for m in messages)
    assert any(m.startswith("    Test net output #0: accuracy = ") for m in messages)
    assert any(m.startswith("    Test net output #1: loss = ") and "(* 1 = " in m for m in messages)
    # test_all: means over test_iter batches; 4 batches of 16 cover the 64 samples once
    result = solver.test_all()
    net = solver.test_nets[0]
    net.share_with(solver.net)
    correct = 0
    for _ in range(4):
        net.forward()
        correct += int((net.blobs["ip2"].data.argmax(1) == net.blobs["label"].data).sum())
    assert result[0]["accuracy"] == pytest.approx(correct / 64)
    assert set(result[0]) == {"accuracy", "loss"}


def test_no_test_at_iteration_zero_without_test_initialization(tmp_path, caplog):
    solver = mlp_solver(tmp_path, "test_iter: 1 test_interval: 2 test_initialization: false")
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.step(3)
    tested = [r.getMessage() for r in caplog.records if "Testing net" in r.getMessage()]
    assert tested == ["Iteration 2, Testing net (#0)"]


def test_callbacks_run_in_order(tmp_path):
    solver = mlp_solver(tmp_path)
    events = []
    solver.add_callback(lambda: events.append(("start", solver.iter)), lambda: events.append(("ready", solver.iter)))

    class Hooks:
        def on_start(self):
            events.append(("obj-start", solver.iter))

        def on_gradients_ready(self):
            events.append(("obj-ready", solver.iter))

    solver.add_callback(Hooks())
    solver.step(2)
    assert events == [
        ("start", 0),
        ("obj-start", 0),
        ("ready", 0),
        ("obj-ready", 0),
        ("start", 1),
        ("obj-start", 1),
        ("ready", 1),
        ("obj-ready", 1),
    ]


def test_stop_request_finishes_the_iteration(tmp_path):
    solver = mlp_solver(tmp_path, f'max_iter: 50 snapshot_after_train: true snapshot_prefix: "{tmp_path}/run"')
    solver.add_callback(on_start=lambda: solver.stop() if solver.iter == 3 else None)
    solver.solve()
    assert solver.iter == 4  # iteration 3 completed its update, then the loop ended
    assert solver.requested_early_exit
    assert (tmp_path / "run_iter_4.caffemodel").exists() and (tmp_path / "run_iter_4.solverstate").exists()


def test_snapshot_request_keeps_training(tmp_path):
    solver = mlp_solver(tmp_path, f'snapshot_prefix: "{tmp_path}/req"')
    solver.add_callback(on_start=lambda: solver.request_action("snapshot") if solver.iter == 1 else None)
    solver.step(3)
    assert solver.iter == 3
    assert sorted(os.listdir(tmp_path)) == [
        "data.h5",
        "list.txt",
        "req_iter_2.caffemodel",
        "req_iter_2.solverstate",
        "req_iter_2.solverstate.netdef.json",
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs POSIX signals")
def test_signals_map_to_actions(tmp_path):
    solver = mlp_solver(tmp_path, f'max_iter: 20 snapshot_after_train: true snapshot_prefix: "{tmp_path}/sig"')
    sends = {2: signal.SIGHUP, 5: signal.SIGINT}
    solver.add_callback(on_start=lambda: os.kill(os.getpid(), sends[solver.iter]) if solver.iter in sends else None)
    before = signal.getsignal(signal.SIGINT)
    with handle_signals(solver, sigint="stop", sighup="snapshot"):
        solver.solve()
    assert signal.getsignal(signal.SIGINT) is before
    assert solver.action_function is None
    assert solver.iter == 6
    assert (tmp_path / "sig_iter_3.solverstate").exists()  # SIGHUP: snapshot after iteration 2, keep going
    assert (tmp_path / "sig_iter_6.solverstate").exists()  # SIGINT: stop, then snapshot_after_train


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs POSIX signals")
def test_signal_effect_none_ignores_the_signal(tmp_path):
    solver = mlp_solver(tmp_path, "max_iter: 4")
    solver.add_callback(on_start=lambda: os.kill(os.getpid(), signal.SIGINT) if solver.iter == 1 else None)
    with handle_signals(solver, sigint="none", sighup="none"):
        solver.solve()
    assert solver.iter == 4 and not solver.requested_early_exit


def test_invalid_signal_effect():
    with pytest.raises(SolverError, match="Invalid signal effect 'halt'. Valid: none, stop, snapshot"):
        with handle_signals(None, sigint="halt"):
            pass


def test_weights_field_and_net_override(tmp_path):
    listing = write_problem(tmp_path)
    (tmp_path / "mlp.prototxt").write_text(mlp_text(listing))
    source = get_solver(solver_param("base_lr: 0.1 random_seed: 1", net_text=mlp_text(listing)))
    source.net.save(str(tmp_path / "start.caffemodel"))
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(
        f'net: "does-not-exist.prototxt" base_lr: 0.1 lr_policy: "fixed" random_seed: 2 '
        f'weights: "{tmp_path}/start.caffemodel"'
    )
    solver = get_solver(str(solver_file), net=str(tmp_path / "mlp.prototxt"))
    assert solver.param.net == str(tmp_path / "mlp.prototxt")
    np.testing.assert_array_equal(solver.net.params["ip1"][0].data, source.net.params["ip1"][0].data)


def test_net_path_relative_to_solver_file(tmp_path, monkeypatch):
    listing = write_problem(tmp_path)
    (tmp_path / "mlp.prototxt").write_text(mlp_text(listing))
    (tmp_path / "solver.prototxt").write_text('net: "mlp.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    monkeypatch.chdir("/")
    solver = get_solver(str(tmp_path / "solver.prototxt"))
    assert solver.net.name == "mlp"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs POSIX signals")
def test_signal_handler_polling_and_second_sigint():
    from netdef.solvers import SignalHandler, SolverAction

    with SignalHandler(sigint="stop", sighup="snapshot") as handler:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGINT)
        assert handler.check_for_signals() is SolverAction.SNAPSHOT  # SIGHUP is reported first, as in Caffe
        assert handler.check_for_signals() is SolverAction.STOP
        assert handler.check_for_signals() is SolverAction.NONE
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl+C before the first was picked up
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass


# --- building from a prepared definition, fine-tuning, output lines ------------------------------------------
def test_get_solver_from_a_prepared_param_and_its_source(tmp_path, monkeypatch, caplog):
    listing = write_problem(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mlp.prototxt").write_text(mlp_text(listing))
    solver_file = tmp_path / "conf" / "solver.prototxt"
    solver_file.write_text('type: "Nesterov" net: "mlp.prototxt" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed"')
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="netdef"):
        param, source = load_solver_parameter(str(solver_file))
        assert (source, param.snapshot_prefix) == (str(solver_file), str(tmp_path / "conf" / "solver"))
        param.max_iter = 3  # a caller may adjust the prepared definition
        solver = get_solver(param, source=source)
    assert type(solver) is NesterovSolver
    assert solver.source == str(solver_file) and solver.param.max_iter == 3
    assert solver.net.name == "mlp"  # "mlp.prototxt" found beside the solver file, not in the working directory
    assert solver.param is not param  # the solver keeps its own copy
    prefix_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("snapshot_prefix")]
    assert prefix_lines == [f"snapshot_prefix was not specified and is set to {tmp_path}/conf/solver"]


def test_a_param_without_source_is_not_looked_up_beside_anything(tmp_path, monkeypatch):
    listing = write_problem(tmp_path)
    (tmp_path / "mlp.prototxt").write_text(mlp_text(listing))
    monkeypatch.chdir("/")
    param = solver_param('base_lr: 0.1 net: "mlp.prototxt"')
    with pytest.raises(netdef.NetdefError, match="mlp.prototxt"):
        get_solver(param)
    assert get_solver(param, source=str(tmp_path / "solver.prototxt")).net.name == "mlp"


def test_load_weights_fine_tunes_train_and_test_nets(tmp_path, caplog):
    listing = write_problem(tmp_path)
    trained = get_solver(solver_param("base_lr: 0.1 random_seed: 1", net_text=mlp_text(listing)))
    trained.net.save(str(tmp_path / "a.caffemodel"))
    solver = get_solver(
        solver_param("base_lr: 0.1 random_seed: 2 test_iter: 1 test_interval: 10", net_text=mlp_text(listing))
    )
    assert not np.array_equal(solver.net.params["ip1"][0].data, trained.net.params["ip1"][0].data)
    with caplog.at_level(logging.INFO, logger="netdef"):
        caplog.clear()  # only what the call below logs
        solver.load_weights(f" {tmp_path}/a.caffemodel ,")
        solver.load_weights([f"{tmp_path}/a.caffemodel", f"{tmp_path}/a.caffemodel"])
    for net in (solver.net, solver.test_nets[0]):
        np.testing.assert_array_equal(net.params["ip1"][0].data, trained.net.params["ip1"][0].data)
        np.testing.assert_array_equal(net.params["ip2"][0].data, trained.net.params["ip2"][0].data)
    assert [r.getMessage() for r in caplog.records] == [f"Finetuning from {tmp_path}/a.caffemodel"] * 3


def test_test_output_lines_with_loss_weights(caplog):
    # EuclideanLoss of 3s against 0s: 6 * 9 / (2 * 2) = 13.5, weighted by 2
    solver = get_solver(solver_param("base_lr: 0.1 test_iter: 2 test_interval: 1", net_text=SCORED_NET))
    with caplog.at_level(logging.INFO, logger="netdef"):
        means = solver.test(0)
    lines = [r.getMessage() for r in caplog.records if "net output" in r.getMessage()]
    assert lines == [f"    Test net output #{k}: half = 0.5" for k in range(6)] + [
        "    Test net output #6: loss = 13.5 (* 2 = 27 loss)"
    ]
    assert means["loss"] == 13.5 and means["half"].tolist() == [[0.5] * 3] * 2


# --- what step/solve report: records in memory, progress, run folders --------------------------------------
def test_step_records_every_display_and_test_in_memory():
    # SCORED_NET's outputs are constants: half = six 0.5s, loss = 13.5
    solver = get_solver(solver_param("base_lr: 0.25 display: 2 test_iter: 2 test_interval: 3", net_text=SCORED_NET))
    solver.step(5)  # tests at 0 and 3, displays at 0, 2 and 4
    assert [(r.iteration, r.phase) for r in solver.records] == [
        (0, "test"),
        (0, "train"),
        (2, "train"),
        (3, "test"),
        (4, "train"),
    ]
    train = solver.records[1]
    assert train.outputs == {**{f"half[{k}]": 0.5 for k in range(6)}, "loss": 13.5}
    assert train.lr == 0.25 and train.iters_per_s is None  # nothing ran before the first display
    assert solver.records[2].iters_per_s > 0 and solver.records[3].test_net == 0
    assert solver.records[3].outputs["loss"] == 13.5
    seconds = [r.seconds for r in solver.records]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    # test() and test_all() called directly are recorded too
    solver.test_all()
    assert (solver.records[-1].iteration, solver.records[-1].phase) == (5, "test")


def test_display_is_followed_by_a_progress_line_caffe_parsers_ignore(tmp_path, caplog):
    solver = mlp_solver(tmp_path, "display: 2")
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.step(5)
    progress = [m for m in caplog.messages if m.startswith("Progress: ")]
    assert len(progress) == 2  # displays at 2 and 4; none at 0, where nothing is timed yet
    assert re.fullmatch(r"Progress: 2 of 5 iterations \(40%\), 0:00:\d\d elapsed, ETA 0:00:\d\d", progress[0])
    assert progress[1].startswith("Progress: 4 of 5 iterations (80%), ")
    index = caplog.messages.index(progress[0])
    assert caplog.messages[index - 1].startswith("    Train net output #0: loss = ")
    for words in ("Iteration ", "loss = ", "lr = ", "Testing net", "net output"):
        assert not any(words in m for m in progress)


def test_training_without_displays_still_reports_progress(tmp_path, caplog):
    solver = mlp_solver(tmp_path, "display: 0")
    solver.quiet_seconds = 0.0  # as if every iteration took a minute
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.step(3)
    progress = [m.split(",")[0] for m in caplog.messages if m.startswith("Progress: ")]
    assert progress == ["Progress: 1 of 3 iterations (33%)", "Progress: 2 of 3 iterations (66%)"]
    solver.quiet_seconds = 3600.0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.step(3)
    assert not [m for m in caplog.messages if m.startswith("Progress: ")]


def test_a_long_test_pass_reports_progress(tmp_path, caplog):
    solver = mlp_solver(tmp_path, "test_iter: 4 test_interval: 10")
    solver.progress_seconds = 0.0  # report after every batch
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.test(0)
    lines = [m for m in caplog.messages if "Test progress" in m]
    assert [m.split(" (")[0] for m in lines] == [f"    Test progress: {k} of 4 batches" for k in (1, 2, 3)]
    assert lines[1].startswith("    Test progress: 2 of 4 batches (50%), ETA 0:00:0")
    solver.progress_seconds = 3600.0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="netdef"):
        solver.test(0)
    assert not [m for m in caplog.messages if "Test progress" in m]


def test_record_to_writes_the_run_folder(tmp_path):
    solver = mlp_solver(tmp_path, "display: 1 test_iter: 1 test_interval: 2", overrides=None)
    solver.step(1)  # recorded in memory before the folder exists; written when recording starts
    run = tmp_path / "run"
    recorder = solver.record_to(run, csv=True, note="first try")
    solver.step(2)
    recorder.close()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    header = json.loads(lines[0])["run"]
    assert header["note"] == "first try" and header["type"] == "SGD" and header["net"] == "mlp"
    written = [json.loads(line) for line in lines[1:]]
    assert [(r["iteration"], r["phase"]) for r in written] == [
        (0, "test"),
        (0, "train"),
        (1, "train"),
        (2, "test"),
        (2, "train"),
    ]
    assert [r["outputs"] for r in written] == [
        {k: float(f"{v:.9g}") for k, v in r.outputs.items()} for r in solver.records
    ]
    assert "iters_per_s" not in written[2] and written[4]["iters_per_s"] > 0 and written[3]["test_net"] == 0
    assert "Iteration 2, Testing net (#0)" in (run / "train.log").read_text()
    assert "Iteration 0, Testing net (#0)" not in (run / "train.log").read_text()  # logged before recording
    assert 'name: "mlp"' in (run / "net.prototxt").read_text()
    assert not (run / "test_net_0.prototxt").exists()  # the test net is the same definition
    assert "base_lr: 0.1" in (run / "solver.prototxt").read_text()
    assert (run / "metrics.test").read_text().startswith("NumIters,Seconds,LearningRate,accuracy,loss\n0,")


def test_overrides_choose_the_class_and_are_kept(tmp_path):
    path = tmp_path / "s.prototxt"
    path.write_text(to_text(solver_param('type: "SGD" base_lr: 0.1', net_text=TINY_NET)))
    solver = get_solver(str(path), overrides=["type=Adam", "base_lr=0.01", "stepvalue=1,2"])
    assert type(solver).__name__ == "AdamSolver" and solver.param.base_lr == pytest.approx(0.01)
    assert solver.overrides == ["type=Adam", "base_lr=0.01", "stepvalue=1,2"]
    assert list(solver.param.stepvalue) == [1, 2]
    direct = netdef.SGDSolver(str(path), overrides={"momentum": 0.5})
    assert direct.param.momentum == 0.5 and direct.overrides == ["momentum=0.5"]
    with pytest.raises(
        UnknownFieldError, match=r'--set momentun=0.5: unknown field "momentun" .* Did you mean "momentum"'
    ):
        get_solver(str(path), overrides=["momentun=0.5"])
    with pytest.raises(SolverError, match=r'Unknown solver type "Adamm". Did you mean "Adam"\?'):
        get_solver(str(path), overrides=["type=Adamm"])
