"""Tests of the Python layer type (user layers loaded from a module)."""

import os
import sys
import uuid
from pathlib import Path

import numpy
import pytest

import netdef
from netdef.errors import InvalidParameterError, PythonLayerError, PythonLayerNotAllowedError
from netdef.layers import python_layer
from netdef.testing import check_gradient, make_layer, run_layer

USER_MODULE = '''
import json

import numpy

import netdef
from netdef import fillers
from netdef.proto import netdef_pb2


class Affine(netdef.Layer):
    """y = w * x + b per channel (axis 1), w and b learnable; in TEST phase y is doubled."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        opts = json.loads(self.param_str)
        channels = bottom[0].shape[1]
        self.blobs = [self.new_blob((channels,)), self.new_blob((channels,))]
        w_filler = netdef_pb2.FillerParameter(type="constant", value=opts["w"])
        fillers.fill(self.blobs[0], w_filler)
        fillers.fill(self.blobs[1], netdef_pb2.FillerParameter(type="constant", value=opts["b"]))
        self.factor = 2.0 if self.phase == netdef.TEST else 1.0

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        w, b = self.blobs[0].data[None, :], self.blobs[1].data[None, :]
        self.x = bottom[0].data.copy()
        top[0].data = self.factor * (w * self.x + b)

    def backward(self, top, propagate_down, bottom):
        dy = self.factor * top[0].diff
        if self.param_propagate_down[0]:
            self.blobs[0].diff += (dy * self.x).sum(axis=0)
        if self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff = dy * self.blobs[0].data[None, :]


class HalfSumSquares(netdef.Layer):
    """loss = 0.5 * sum(x^2)."""

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward(self, bottom, top):
        top[0].data = numpy.asarray(0.5 * (bottom[0].data ** 2).sum(), dtype=bottom[0].data.dtype)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff = top[0].diff * bottom[0].data


class PycaffeScale:
    """A pycaffe-shaped layer: no netdef base, blobs made with add_blob, reshape(*shape), num."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str)
        self.seen_num = bottom[0].num

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class WithParamInit:
    """pycaffe passes the LayerParameter to the class."""

    def __init__(self, param):
        self.layer_name = param.name

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass


class NotALayer:
    def forward(self, bottom, top):
        pass


helper_value = 3
'''


@pytest.fixture(autouse=True)
def allowed(monkeypatch):
    """Python layers allowed for the test (the process setting), the environment variable unset."""
    monkeypatch.delenv(python_layer.ALLOW_ENV, raising=False)
    python_layer.allow_python_layers(True)
    yield
    python_layer.allow_python_layers(None)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Name of a fresh module holding USER_MODULE, importable from tmp_path."""
    name = f"user_layers_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def python_def(module: str, layer: str, param_str: str = "", extra: str = "") -> str:
    return f'type: "Python" python_param {{ module: "{module}" layer: "{layer}" param_str: \'{param_str}\' }} {extra}'


NET = """
name: "py"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{
  name: "affine" type: "Python" bottom: "data" top: "y"
  python_param {{ module: "{module}" layer: "Affine" param_str: '{{"w": 2.0, "b": 0.5}}' }}
}}
layer {{
  name: "loss" type: "Python" bottom: "y" top: "loss"
  python_param {{ module: "{module}" layer: "HalfSumSquares" }}
  loss_weight: 1
}}
"""


def test_user_layer_in_a_net_forward_and_backward(user_module, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(module=user_module))
    net = netdef.Net(str(path), netdef.TRAIN)
    assert [layer.type_name for layer in net.layers] == ["Input", "Python", "Python"]
    x = numpy.array([[1.0, -1.0, 0.0], [0.5, 2.0, -0.5]])
    net.blobs["data"].data[...] = x
    out = net.forward()
    y = 2.0 * x + 0.5
    numpy.testing.assert_allclose(net.blobs["y"].data, y, rtol=1e-6)
    numpy.testing.assert_allclose(out["loss"], 0.5 * (y**2).sum(), rtol=1e-6)
    net.backward()
    # dL/dy = y; dL/dw_c = sum_n y x, dL/db_c = sum_n y; no gradient to an Input without force_backward.
    numpy.testing.assert_allclose(net.params["affine"][0].diff, (y * x).sum(axis=0), rtol=1e-6)
    numpy.testing.assert_allclose(net.params["affine"][1].diff, y.sum(axis=0), rtol=1e-6)
    assert set(net.params) == {"affine"}


def test_user_layer_sees_phase_and_param_str(user_module, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(module=user_module))
    net = netdef.Net(str(path), netdef.TEST)
    layer = net.layer_dict["affine"]
    assert layer.phase == netdef.TEST and layer.param_str == '{"w": 2.0, "b": 0.5}'
    net.blobs["data"].data[...] = 1.0
    net.forward()
    numpy.testing.assert_allclose(net.blobs["y"].data, numpy.full((2, 3), 2 * 2.5))


def test_user_layer_gradient(user_module):
    rng = numpy.random.default_rng(0)
    layer = make_layer(python_def(user_module, "Affine", '{"w": 1.5, "b": -0.25}'))
    result = check_gradient(layer, [rng.standard_normal((3, 4))])
    assert result["checked"] == 12 + 4 + 4


def test_pycaffe_style_class_is_wrapped(user_module):
    layer = make_layer(python_def(user_module, "PycaffeScale", "3.0"))
    assert layer.type_name == "Python"
    _, (top,) = run_layer(layer, [numpy.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])])
    numpy.testing.assert_allclose(top.data, 3.0 * numpy.arange(1, 7).reshape(3, 2))
    assert layer.impl.seen_num == 3 and [b.shape for b in layer.blobs] == [(1,)]
    rng = numpy.random.default_rng(1)
    check_gradient(make_layer(python_def(user_module, "PycaffeScale", "-0.7")), [rng.standard_normal((2, 3))])


def test_pycaffe_style_class_gets_the_layer_parameter(user_module):
    layer = make_layer(python_def(user_module, "WithParamInit", extra='name: "copy"'))
    assert layer.impl.layer_name == "copy"
    _, (top,) = run_layer(layer, [numpy.ones((2, 2))])
    numpy.testing.assert_array_equal(top.data, numpy.ones((2, 2)))


def test_working_directory_is_searched_only_when_added(tmp_path, monkeypatch):
    name = f"cwd_layers_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        with pytest.raises(InvalidParameterError, match="no such module"):
            make_layer(python_def(name, "HalfSumSquares"))
        assert str(tmp_path) not in sys.path
        assert python_layer.add_python_layer_path(".") == str(tmp_path)
        assert sys.path[-1] == str(tmp_path)
        layer = make_layer(python_def(name, "HalfSumSquares"))
        _, (top,) = run_layer(layer, [numpy.array([3.0, 4.0])])
        assert float(top.data) == 12.5
    finally:
        sys.modules.pop(name, None)


def test_search_path_must_be_a_folder(tmp_path):
    with pytest.raises(InvalidParameterError, match="no such folder"):
        python_layer.add_python_layer_path(tmp_path / "missing")


def test_missing_module_is_named():
    with pytest.raises(InvalidParameterError, match='no_such_module_xyz": no such module') as err:
        make_layer(python_def("no_such_module_xyz", "Anything"))
    assert "PYTHONPATH" in str(err.value) and 'Layer "L" (type Python)' in str(err.value)


def test_module_that_fails_to_import(tmp_path, monkeypatch):
    name = f"broken_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("import numpy\nraise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidParameterError, match="failed: RuntimeError: boom at import"):
        make_layer(python_def(name, "X"))


def test_missing_class_suggests_closest(user_module):
    with pytest.raises(InvalidParameterError, match=r'no class "Afine"\. Did you mean "Affine"\?') as err:
        make_layer(python_def(user_module, "Afine"))
    assert user_module in str(err.value) and "PycaffeScale" in str(err.value)


def test_class_without_layer_methods_is_refused(user_module):
    with pytest.raises(InvalidParameterError, match="not a netdef.Layer subclass and lacks setup, reshape, backward"):
        make_layer(python_def(user_module, "NotALayer"))
    with pytest.raises(InvalidParameterError, match="is a int, not a class"):
        make_layer(python_def(user_module, "helper_value"))


def test_empty_module_name_is_refused():
    with pytest.raises(InvalidParameterError, match="python_param.module is empty"):
        make_layer('type: "Python" python_param { layer: "X" }')


def test_example_model_runs():
    folder = Path(__file__).resolve().parents[2] / "models" / "python_layer_example"
    old = os.getcwd()
    os.chdir(folder)
    sys.path.append(str(folder))
    try:
        net = netdef.Net("net.prototxt", netdef.TRAIN)
        x = numpy.arange(12, dtype=numpy.float64).reshape(4, 3) / 10
        target = numpy.ones((4, 2))
        net.blobs["data"].data[...] = x
        net.blobs["target"].data[...] = target
        w, b = net.params["ip"][0].data.astype(numpy.float64), net.params["ip"][1].data.astype(numpy.float64)
        loss = float(net.forward()["loss"])
        residual = x @ w.T + b - target
        numpy.testing.assert_allclose(loss, 0.5 * (residual**2).sum() / 4, rtol=1e-5)
        net.backward()
        numpy.testing.assert_allclose(net.params["ip"][0].diff, (residual / 4).T @ x, rtol=1e-4, atol=1e-6)
    finally:
        os.chdir(old)
        sys.path.remove(str(folder))
        sys.modules.pop("example_layers", None)


def test_example_pycaffe_style_layer():
    folder = Path(__file__).resolve().parents[2] / "models" / "python_layer_example"
    sys.path.insert(0, str(folder))
    try:
        layer = make_layer(python_def("example_layers", "PycaffeStyleScale", "2.5"))
        check_gradient(layer, [numpy.random.default_rng(2).standard_normal((2, 3))])
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("example_layers", None)


# --- consent: a net file does not run code by itself -------------------------------------------------------
SIDE_EFFECT_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
"""


@pytest.fixture
def side_effect_module(tmp_path, monkeypatch):
    """A module whose top level writes a marker file (and has no layer class); (name, marker path)."""
    name = f"side_effect_{uuid.uuid4().hex[:12]}"
    marker = tmp_path / "marker"
    (tmp_path / f"{name}.py").write_text(SIDE_EFFECT_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_python_layer_is_refused_without_consent(side_effect_module, tmp_path):
    python_layer.allow_python_layers(None)
    name, marker = side_effect_module
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(
        'layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
        f'layer {{ name: "mine" type: "Python" bottom: "x" top: "y" python_param {{ module: "{name}" layer: "X" }} }}\n'
    )
    with pytest.raises(PythonLayerNotAllowedError) as err:
        netdef.Net(str(net_file), netdef.TEST)
    message = str(err.value)
    assert 'Layer "mine" (type Python)' in message and f'"{name}"' in message
    assert "--allow-python-layers" in message and "NETDEF_ALLOW_PYTHON_LAYERS=1" in message
    assert "allow_python_layers" in message
    assert not marker.exists() and name not in sys.modules


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_environment_variable_allows(side_effect_module, monkeypatch, value):
    python_layer.allow_python_layers(None)
    name, marker = side_effect_module
    monkeypatch.setenv(python_layer.ALLOW_ENV, value)
    with pytest.raises(InvalidParameterError, match='has no class "X"'):
        make_layer(python_def(name, "X"))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_environment_variable_can_say_no(side_effect_module, monkeypatch, value):
    python_layer.allow_python_layers(None)
    monkeypatch.setenv(python_layer.ALLOW_ENV, value)
    with pytest.raises(PythonLayerNotAllowedError):
        make_layer(python_def(side_effect_module[0], "X"))
    assert not side_effect_module[1].exists()


def test_environment_variable_with_a_bad_value_is_named(side_effect_module, monkeypatch):
    python_layer.allow_python_layers(None)
    monkeypatch.setenv(python_layer.ALLOW_ENV, "maybe")
    expected = "NETDEF_ALLOW_PYTHON_LAYERS must be one of .* Received: 'maybe'"
    with pytest.raises(PythonLayerNotAllowedError, match=expected):
        make_layer(python_def(side_effect_module[0], "X"))


def test_block_setting_wins_over_process_and_environment(side_effect_module, monkeypatch):
    name, marker = side_effect_module
    monkeypatch.setenv(python_layer.ALLOW_ENV, "1")
    python_layer.allow_python_layers(False)
    assert not python_layer.python_layers_are_allowed()
    with python_layer.python_layers_allowed():
        assert python_layer.python_layers_are_allowed()
        with python_layer.python_layers_allowed(False):
            assert not python_layer.python_layers_are_allowed()
        with python_layer.python_layers_allowed(None):
            assert python_layer.python_layers_are_allowed()
    with pytest.raises(PythonLayerNotAllowedError):
        make_layer(python_def(name, "X"))
    assert not marker.exists()
    python_layer.allow_python_layers(None)
    assert python_layer.python_layers_are_allowed()  # the environment decides again


# --- modules written for pycaffe -------------------------------------------------------------------------
PYCAFFE_MODULE = """
import caffe
from caffe.proto import netdef_pb2


class Double(caffe.Layer):
    def setup(self, bottom, top):
        self.train = self.phase == caffe.TRAIN
        self.filler_type = netdef_pb2.FillerParameter().type

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
"""


@pytest.fixture
def pycaffe_module(tmp_path, monkeypatch):
    name = f"pycaffe_layers_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(PYCAFFE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_pycaffe_module_loads_unchanged_without_caffe(pycaffe_module):
    assert "caffe" not in sys.modules
    layer = make_layer(python_def(pycaffe_module, "Double"), phase=netdef.TRAIN)
    _, (top,) = run_layer(layer, [numpy.array([[1.0, -2.0]])])
    numpy.testing.assert_array_equal(top.data, [[2.0, -4.0]])
    assert layer.impl.train and layer.impl.filler_type == "constant"
    assert isinstance(layer.impl, python_layer.CaffeLayer)
    check_gradient(make_layer(python_def(pycaffe_module, "Double")), [numpy.ones((2, 3))])
    # The stand-in is gone once the import is over: it never hides a Caffe installed later.
    assert not any(n == "caffe" or n.startswith("caffe.") for n in sys.modules)


def test_a_real_caffe_is_never_shadowed(pycaffe_module, tmp_path, monkeypatch):
    real = tmp_path / "real" / "caffe"
    (real / "proto").mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\nTRAIN = 0\nclass Layer:\n    pass\n")
    (real / "proto" / "__init__.py").write_text("")
    (real / "proto" / "netdef_pb2.py").write_text("class FillerParameter:\n    type = 'real'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "real"))
    try:
        layer = make_layer(python_def(pycaffe_module, "Double"), phase=netdef.TRAIN)
        run_layer(layer, [numpy.ones((1, 2))])
        assert sys.modules["caffe"].REAL and layer.impl.filler_type == "real"
        assert not isinstance(layer.impl, python_layer.CaffeLayer)
    finally:
        for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
            del sys.modules[name]


# --- errors inside user code -----------------------------------------------------------------------------
FAILING_MODULE = """
import netdef


class OpensAFile(netdef.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        open(self.param_str).read()


class PycaffeFails:
    def setup(self, bottom, top):
        raise KeyError("wanted_option")

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class OwnError(netdef.Layer):
    def setup(self, bottom, top):
        raise self.error("needs an option")


class BadInit(netdef.Layer):
    def __init__(self, param, **kwargs):
        raise ValueError("init failed")
"""


@pytest.fixture
def failing_module(tmp_path, monkeypatch):
    name = f"failing_layers_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(FAILING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_exception_in_forward_names_the_layer(failing_module, tmp_path):
    missing = str(tmp_path / "no_such_file.txt")
    layer = make_layer(python_def(failing_module, "OpensAFile", missing, extra='name: "reader"'))
    with pytest.raises(PythonLayerError) as err:
        run_layer(layer, [numpy.ones((1, 2))])
    message = str(err.value)
    assert message.startswith(f'Layer "reader" (type Python), class {failing_module}.OpensAFile: forward raised ')
    assert "FileNotFoundError" in message and "no_such_file.txt" in message
    assert f"{failing_module}.py line 10, in forward" in message
    assert isinstance(err.value.__cause__, FileNotFoundError)


def test_exception_in_pycaffe_setup_and_in_init(failing_module):
    layer = make_layer(python_def(failing_module, "PycaffeFails"))
    with pytest.raises(PythonLayerError, match="PycaffeFails: setup raised KeyError: 'wanted_option'") as err:
        run_layer(layer, [numpy.ones(2)])
    assert isinstance(err.value.__cause__, KeyError)
    with pytest.raises(PythonLayerError, match=r"BadInit: __init__ raised ValueError: init failed"):
        make_layer(python_def(failing_module, "BadInit"))


def test_a_netdef_error_from_user_code_passes_unchanged(failing_module):
    layer = make_layer(python_def(failing_module, "OwnError"))
    with pytest.raises(InvalidParameterError, match=r'Layer "L" \(type Python\): needs an option') as err:
        run_layer(layer, [numpy.ones(2)])
    assert not isinstance(err.value, PythonLayerError)
