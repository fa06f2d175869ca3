"""End-to-end command line: train, test, time, fine-tune, errors."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import netdef
from netdef.cli import main
from tests.solver_helpers import copy_digits

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def digits(tmp_path, monkeypatch):
    """A copy of the bundled digits example in a scratch working directory."""
    copy_digits(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def short_solver(folder, max_iter=60, extra=""):
    text = (REPO / "models" / "digits" / "solver.prototxt").read_text()
    text = text.replace("max_iter: 1000", f"max_iter: {max_iter}").replace("test_interval: 250", "test_interval: 30")
    text = text.replace("display: 50", "display: 20") + extra
    path = folder / "short_solver.prototxt"
    path.write_text(text)
    return str(path)


def test_train_writes_caffe_logs_and_final_weights(digits, capsys):
    solver = short_solver(digits)
    assert main(["train", solver]) == 0
    err = capsys.readouterr().err
    assert re.search(r"Iteration 20 \(.*\), loss = [0-9.]+", err)
    assert "Train net output #0: loss = " in err
    assert "Iteration 20, lr = " in err
    assert "Test net output #0: accuracy = " in err
    weights = digits / "models" / "digits" / "digits_iter_60.caffemodel"
    assert weights.exists()
    net = netdef.Net(str(digits / "models" / "digits" / "deploy.prototxt"), netdef.TEST, weights=str(weights))
    assert net.params["conv1"][0].data.std() > 0


def test_train_solver_spellings_and_test_command(digits, capsys):
    solver = short_solver(digits, max_iter=40)
    assert main(["train", "-solver", solver]) == 0
    assert main(["train", f"-solver={solver}"]) == 0
    assert main(["train", "--solver", solver]) == 0
    weights = "models/digits/digits_iter_40.caffemodel"
    capsys.readouterr()
    assert main(["test", "--model", "models/digits/train_val.prototxt", "--weights", weights, "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    acc = float(next(line for line in out.splitlines() if line.startswith("accuracy")).split("=")[1])
    assert 0.5 < acc <= 1.0


def test_recipe_with_net_override(digits):
    shutil.copytree(REPO / "solvers", digits / "solvers")
    recipe = (digits / "solvers" / "multistep.prototxt").read_text().replace("max_iter: 1000", "max_iter: 20")
    (digits / "solvers" / "multistep.prototxt").write_text(recipe.replace("test_interval: 250", "test_interval: 20"))
    assert main(["train", "--solver", "solvers/multistep.prototxt", "--net", "models/digits/train_val.prototxt"]) == 0
    assert (digits / "snapshots" / "multistep_iter_20.caffemodel").exists()


def test_finetune_from_weights(digits, capsys):
    solver = short_solver(digits, max_iter=20)
    assert main(["train", solver]) == 0
    assert main(["train", solver, "--weights", "models/digits/digits_iter_20.caffemodel"]) == 0
    assert "Finetuning from models/digits/digits_iter_20.caffemodel" in capsys.readouterr().err
    assert main(["train", solver, "--weights", "x.caffemodel", "--snapshot", "y.solverstate"]) == 1
    assert "not both" in capsys.readouterr().err


def test_time_prints_per_layer_rows(digits, capsys):
    assert main(["time", "--model", "models/digits/deploy.prototxt", "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "conv1\tforward:" in out and "conv1\tbackward:" in out
    assert "Average Forward-Backward:" in out


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "net.prototxt"
    bad.write_text('layer { name: "c" type: "Convolution" convolution_param { kernal_size: 3 } }')
    assert main(["test", "--model", str(bad), "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("netdef: error: ")]
    assert len(errors) == 1
    assert "net.prototxt:1:" in err and 'Did you mean "kernel_size"' in err
    assert "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.prototxt")]) == 1
    assert "not found" in capsys.readouterr().err


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "netdef", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0
    for cmd in ("train", "test", "time"):
        assert cmd in out.stdout


@pytest.mark.slow
def test_digits_example_reaches_97_percent(digits, capsys):
    assert main(["train", "models/digits/solver.prototxt"]) == 0
    err = capsys.readouterr().err
    accs = [float(line.rsplit("=", 1)[1]) for line in err.splitlines() if "Test net output #0: accuracy" in line]
    assert accs[-1] >= 0.97
    numpy.testing.assert_array_less(0, accs)


def _train_until(digits, effect):
    """Start a long training run and send SIGINT once iteration 20 is logged."""
    import signal

    solver = short_solver(digits, max_iter=100000).replace(str(digits) + os.sep, "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "netdef", "train", solver, "--sigint_effect", effect, "--run-dir", "runs/r"],
        cwd=digits,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    for line in proc.stderr:
        if "Iteration 20 (" in line:
            proc.send_signal(signal.SIGINT)
            break
    return proc


def test_ctrl_c_stops_cleanly_with_a_final_snapshot(digits):
    proc = _train_until(digits, "stop")
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err
    # as in Caffe, stopping early still writes the final snapshot (snapshot_after_train)
    (state,) = (digits / "models" / "digits").glob("digits_iter_*.solverstate")
    assert "Traceback" not in err
    iteration = state.name[len("digits_iter_") : -len(".solverstate")]
    assert err.endswith(
        f"netdef: training stopped at iteration {iteration}; resume it with:\n"
        f"  netdef train short_solver.prototxt --snapshot models/digits/digits_iter_{iteration}.solverstate "
        "--run-dir runs/r\n"
    )


def test_ctrl_c_with_snapshot_effect_snapshots_and_continues(digits):
    proc = _train_until(digits, "snapshot")
    try:
        snapshotted = False
        for line in proc.stderr:
            snapshotted |= "Snapshotting solver state" in line
            if snapshotted and "Iteration" in line and "loss = " in line:
                break  # an iteration logged after the snapshot: its files are in place
        assert snapshotted
        assert proc.poll() is None, "training should continue after a snapshot request"
        assert list((digits / "models" / "digits").glob("digits_iter_*.solverstate"))
    finally:
        proc.kill()
        proc.communicate()


SMALL_MODELS = [
    "lenet",
    "cifar10_quick",
    "cifar10_full",
    "mnist_autoencoder",
    "mnist_siamese",
    "mlp_sigmoid",
    "mlp_tanh",
    "mlp_deep",
    "cifar10_bn_dropout",
    "inception_mini",
    "resnet_mini",
    "digits",
]


@pytest.mark.parametrize("model", SMALL_MODELS)
def test_netdef_test_runs_each_small_model(model, capsys):
    deploy = REPO / "models" / model / "deploy.prototxt"
    assert main(["test", "--model", str(deploy), "--iterations", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " = " in line]
    assert lines and all(numpy.isfinite(float(line.rsplit("=", 1)[1])) for line in lines)


# --- Python layers run only with consent -------------------------------------------------------------------
PYTHON_NET = """
layer { name: "data" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 } } }
layer { name: "double" type: "Python" bottom: "x" top: "y" python_param { module: "cli_layers" layer: "Double" } }
"""
PYTHON_MODULE = """
import caffe


class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass
"""


@pytest.fixture
def python_layer_net(tmp_path, monkeypatch):
    from netdef.layers import python_layer

    monkeypatch.delenv(python_layer.ALLOW_ENV, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers" / "cli_layers.py").write_text(PYTHON_MODULE)
    (tmp_path / "net.prototxt").write_text(PYTHON_NET)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    python_layer.allow_python_layers(None)
    sys.modules.pop("cli_layers", None)


@pytest.mark.parametrize("command", [["test", "--iterations", "1"], ["time", "--iterations", "1"]])
def test_python_layers_need_the_flag_on_every_command(python_layer_net, command, capsys):
    argv = [*command, "--model", "net.prototxt"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert 'netdef: error: Layer "double" (type Python): building it would import the Python module "cli_layers"' in err
    assert "--allow-python-layers" in err and "Traceback" not in err
    assert "cli_layers" not in sys.modules
    assert main([*argv, "--allow-python-layers", "--python-path", "layers"]) == 0
    assert str(python_layer_net / "layers") in sys.path and "caffe" not in sys.modules


def test_an_exception_in_a_python_layer_is_one_line(python_layer_net, capsys):
    (python_layer_net / "layers" / "cli_layers.py").write_text(
        PYTHON_MODULE.replace("top[0].data[...] = 2 * bottom[0].data", "open('settings.json')")
    )
    assert main(["test", "--model", "net.prototxt", "--iterations", "1", "--allow-python-layers", "--python-path",
                 "layers"]) == 1  # fmt: skip
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        'netdef: error: Layer "double" (type Python), class cli_layers.Double: forward raised FileNotFoundError: '
        "[Errno 2] No such file or directory: 'settings.json' "
        f"(at {python_layer_net / 'layers' / 'cli_layers.py'} line 13, in forward)"
    )


def test_pooling_rule_option_sets_the_rule_for_the_nets_a_command_builds(tmp_path):
    from netdef.cli import build_parser
    from netdef.layers import pooling

    try:
        build_parser().parse_args(["time", "--model", "x.prototxt", "--pooling-rule", "caffe-yolov3"])
        assert pooling.current_pooling_rule() == "caffe-yolov3"
    finally:
        pooling.set_pooling_rule(None)
    assert pooling.current_pooling_rule() == "bvlc"
