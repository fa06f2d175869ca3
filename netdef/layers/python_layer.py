"""The ``Python`` layer type: a layer written by the user in a Python module.

A net names the module and class in ``python_param``::

    layer {
      name: "loss" type: "Python" bottom: "pred" bottom: "label" top: "loss"
      python_param { module: "my_layers" layer: "SquaredErrorLoss" param_str: '{"scale": 0.5}' }
      loss_weight: 1
    }

**Building such a layer runs code**: importing the module executes its top level. A
net file therefore never does it by itself; it has to be allowed, in one of these ways
(the first that says yes or no wins):

- for the nets built inside a block or by one solver: ``with python_layers_allowed():``,
  or ``get_solver(path, allow_python_layers=True)``;
- for the process: :func:`allow_python_layers` (``allow_python_layers(False)`` forbids,
  ``None`` goes back to the environment);
- the environment: ``NETDEF_ALLOW_PYTHON_LAYERS=1`` (``0`` or unset: not allowed);
- the command line: ``--allow-python-layers`` on every ``netdef`` command that runs a net.

Otherwise the net fails with a PythonLayerNotAllowedError naming the layer and the module.

The module is imported with ``importlib`` the first time a net builds the layer, so it
must be importable from ``sys.path``: ``PYTHONPATH``, or folders added with
:func:`add_python_layer_path` (``--python-path DIR`` on the command line). Neither the
working directory (unless Python itself put it there, as ``python script.py`` and
``python -c`` do) nor the folder of the net file is searched.

The class is normally a subclass of ``netdef.Layer`` (the base of the built-in
layers) implementing ``setup``, ``reshape``, ``forward`` and ``backward`` on
lists of ``netdef.Blob``; ``self.param_str``, ``self.phase`` and ``self.param``
(the LayerParameter) are set before ``setup`` runs, and parameters go in
``self.blobs`` (``self.new_blob(shape)``). A class written for pycaffe, with
those four methods but no netdef base, works too: it is wrapped so that its
blobs accept pycaffe's ``reshape(*shape)``, ``num``/``channels``/``height``/
``width``, and ``self.blobs.add_blob(*shape)``.

Modules written for pycaffe ``import caffe`` and subclass ``caffe.Layer``. When no
real Caffe can be imported, netdef answers that import, and only while it imports an
allowed Python-layer module, with a stand-in: ``caffe.Layer`` is :class:`CaffeLayer`
(a pycaffe-style base, run through the wrapper above), every other name is netdef's
(``caffe.TRAIN``, ``caffe.io``, ...). A real Caffe on ``sys.path`` is always used
instead, and the stand-in is gone from ``sys.modules`` once the import finishes.

An exception raised by the user's ``setup``/``reshape``/``forward``/``backward`` (or
its constructor) becomes a PythonLayerError naming the layer, its class and where
in the user's file it was raised; the original exception is its ``__cause__``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.abc
import importlib.util
import inspect
import os
import sys
import traceback
import types
from collections.abc import Iterator, Sequence

import numpy

from ..blob import Blob
from ..errors import (
    InvalidParameterError,
    NetdefError,
    PythonLayerError,
    PythonLayerNotAllowedError,
    did_you_mean,
    layer_prefix,
)
from .base import Layer, register_layer

_METHODS = ("setup", "reshape", "forward", "backward")

#: the environment variable that allows Python layers ("1"/"true"/"yes"/"on"; "0"/"false"/"no"/"off")
ALLOW_ENV = "NETDEF_ALLOW_PYTHON_LAYERS"
_ENV_TRUE = ("1", "true", "yes", "on")
_ENV_FALSE = ("", "0", "false", "no", "off")
_process_setting: bool | None = None
_scoped_setting: contextvars.ContextVar[bool | None] = contextvars.ContextVar("python_layers", default=None)


def allow_python_layers(allow: bool | None = True) -> None:
    """Allow (or with False forbid) Python layers in every net this process builds from now on.

    None forgets the setting, so that ``NETDEF_ALLOW_PYTHON_LAYERS`` decides again.
    A :func:`python_layers_allowed` block or a solver's ``allow_python_layers``
    argument still wins over it.
    """
    global _process_setting
    _process_setting = None if allow is None else bool(allow)


@contextlib.contextmanager
def python_layers_allowed(allow: bool | None = True) -> Iterator[None]:
    """Allow (or forbid) Python layers for the nets built inside the block; None changes nothing."""
    if allow is None:
        yield
        return
    token = _scoped_setting.set(bool(allow))
    try:
        yield
    finally:
        _scoped_setting.reset(token)


def python_layers_are_allowed() -> bool:
    """Whether a net built now may import Python-layer modules (block, then process, then environment)."""
    for setting in (_scoped_setting.get(), _process_setting):
        if setting is not None:
            return setting
    value = os.environ.get(ALLOW_ENV, "").strip().lower()
    if value in _ENV_TRUE:
        return True
    if value in _ENV_FALSE:
        return False
    raise PythonLayerNotAllowedError(
        f"{ALLOW_ENV} must be one of {', '.join(_ENV_TRUE)} (allow) or {', '.join(repr(v) for v in _ENV_FALSE)} "
        f"(do not allow). Received: {os.environ.get(ALLOW_ENV)!r}"
    )


def add_python_layer_path(folder: str | os.PathLike) -> str:
    """Put ``folder`` at the end of ``sys.path`` so Python-layer modules in it can be imported; its absolute path.

    At the end, so that a file there never shadows an installed package. This does not
    allow Python layers by itself (see :func:`allow_python_layers`).
    """
    path = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(path):
        raise InvalidParameterError(f"Python layer search path: no such folder. Received: {os.fspath(folder)!r}")
    if path not in sys.path:
        sys.path.append(path)
    return path


def _fail(param, message: str) -> InvalidParameterError:
    return InvalidParameterError(f"{layer_prefix(param.name, 'Python')}: {message}")


def _check_allowed(param, name: str) -> None:
    if python_layers_are_allowed():
        return
    raise PythonLayerNotAllowedError(
        f'{layer_prefix(param.name, "Python")}: building it would import the Python module "{name}" '
        "(python_param.module) and run its code, which a net file may not do by itself. "
        "Allow Python layers if you trust this net and its module: --allow-python-layers on the command line, "
        f"{ALLOW_ENV}=1 in the environment, or from Python netdef.layers.python_layer.allow_python_layers() "
        "or get_solver(..., allow_python_layers=True)"
    )


class CaffeLayer:
    """pycaffe's ``caffe.Layer`` for modules that ``import caffe`` without a real Caffe installed.

    A subclass is run like any pycaffe-style class (no netdef base): it implements
    ``setup``, ``reshape``, ``forward`` and ``backward`` and gets ``param_str``,
    ``phase`` and ``blobs`` (with ``add_blob``) set by netdef.
    """

    def __init__(self, *args, **kwargs):
        pass


class _CaffeSubmodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import caffe.<name>`` with the netdef module ``netdef.<name>`` (while the stand-in is active)."""

    def __init__(self, package: str):
        self.package = package
        self.added: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("caffe."):
            return None
        target_name = self.package + fullname[len("caffe") :]
        if importlib.util.find_spec(target_name) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(self.package + spec.name[len("caffe") :])
        self.added.append(spec.name)
        return module

    def exec_module(self, module) -> None:
        """The netdef module is already executed."""


def _caffe_stand_in(package: str) -> types.ModuleType:
    netdef_module = sys.modules[package]
    stand_in = types.ModuleType("caffe", "netdef standing in for pycaffe while a Python-layer module is imported")
    stand_in.__path__ = []  # a package, so that "import caffe.io" reaches the finder
    stand_in.Layer = CaffeLayer

    def __getattr__(name: str):
        return getattr(netdef_module, name)

    stand_in.__getattr__ = __getattr__
    return stand_in


def _real_caffe_exists() -> bool:
    if "caffe" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("caffe") is not None
    except (ImportError, ValueError):
        return True


@contextlib.contextmanager
def _pycaffe_stand_in() -> Iterator[None]:
    """While the block runs, ``import caffe`` gives netdef's stand-in, unless a real Caffe is importable."""
    if _real_caffe_exists():
        yield
        return
    package = __name__.split(".")[0]
    stand_in = _caffe_stand_in(package)
    finder = _CaffeSubmodules(package)
    sys.modules["caffe"] = stand_in
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in ["caffe", *finder.added]:
            if name == "caffe" and sys.modules.get(name) is not stand_in:
                continue
            sys.modules.pop(name, None)


def _import_module(param):
    name = param.python_param.module
    if not name:
        raise _fail(
            param,
            "python_param.module is empty; name the Python module that defines the layer class, "
            'e.g. module: "my_layers"',
        )
    _check_allowed(param, name)
    try:
        with _pycaffe_stand_in():
            return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise _fail(
                param,
                f'cannot import python_param.module "{name}": no such module. Received: "{name}". '
                "Valid: a module importable from sys.path (add its folder with PYTHONPATH or --python-path DIR; "
                "the working directory is not searched unless added)",
            ) from err
        raise _fail(param, f'importing python_param.module "{name}" failed: {type(err).__name__}: {err}') from err
    except Exception as err:
        raise _fail(param, f'importing python_param.module "{name}" failed: {type(err).__name__}: {err}') from err


def _candidate_classes(module) -> list[str]:
    return sorted(
        n
        for n, v in vars(module).items()
        if isinstance(v, type)
        and not n.startswith("_")
        and (issubclass(v, Layer) or all(callable(getattr(v, m, None)) for m in _METHODS))
    )


def load_layer_class(param) -> type:
    """The user class ``python_param`` names (imported; validated as a layer class)."""
    module = _import_module(param)
    cls_name = param.python_param.layer
    if not cls_name:
        raise _fail(
            param,
            f'python_param.layer is empty; name the class in module "{module.__name__}". '
            f"Valid: {', '.join(_candidate_classes(module)) or '(no layer classes found)'}",
        )
    cls = getattr(module, cls_name, None)
    if cls is None:
        candidates = _candidate_classes(module)
        raise _fail(
            param,
            f'module "{module.__name__}" has no class "{cls_name}".'
            f"{did_you_mean(cls_name, [n for n in vars(module) if not n.startswith('_')])} "
            f'Received: "{cls_name}". Valid: {", ".join(candidates) or "(no layer classes found)"}',
        )
    if not isinstance(cls, type):
        raise _fail(
            param,
            f'"{module.__name__}.{cls_name}" is a {type(cls).__name__}, not a class. Valid: a subclass of netdef.Layer',
        )
    if not issubclass(cls, Layer):
        missing = [m for m in _METHODS if not callable(getattr(cls, m, None))]
        if missing:
            raise _fail(
                param,
                f'class "{module.__name__}.{cls_name}" is not a netdef.Layer subclass and lacks '
                f"{', '.join(missing)}. Valid: a subclass of netdef.Layer, or a class with the methods "
                f"{', '.join(_METHODS)}",
            )
    return cls


@register_layer("Python")
class PythonLayer(Layer):
    """A user-defined layer (Caffe type ``Python``); see the module documentation.

    ``PythonLayer(param, ...)`` builds and returns the user's object itself (for
    a ``netdef.Layer`` subclass) or a wrapper around it (for a pycaffe-style
    class), so the net calls the user's methods directly. Bottom/top counts and
    shapes are whatever the user class accepts.
    """

    def __new__(cls, param, phase: int = 0, dtype=numpy.float32, xp=None, rng=None):
        user_cls = load_layer_class(param)
        if issubclass(user_cls, Layer):
            # object.__new__: the user's class may itself derive from PythonLayer, whose __new__ is this one.
            layer = object.__new__(user_cls)
            layer.param_str = param.python_param.param_str
            # A user's __init__ may predate the rng argument: pass what every version takes, then hand over the streams.
            _guarded(param, user_cls, "__init__", layer.__init__)(param, phase=phase, dtype=dtype, xp=xp)
            if rng is not None:
                layer.rng = rng
            # Caffe reports the type of every Python layer as "Python", whatever the class.
            layer.type_name = "Python"
            layer.param_str = param.python_param.param_str
            layer.phase = phase
            for method in _METHODS:
                setattr(layer, method, _guarded(param, user_cls, method, getattr(layer, method)))
            return layer
        return _PycaffeLayer(param, phase, dtype, xp, user_cls, rng)


def _where_raised(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename} line {last.lineno}, in {last.name})"


def _guarded(param, user_cls: type, method: str, function):
    """``function`` (a user's method), raising a PythonLayerError that names the layer for what it raises."""

    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except NetdefError:
            raise  # already names the problem (e.g. the user's own self.error(...))
        except Exception as err:
            raise PythonLayerError(
                f"{layer_prefix(param.name, 'Python')}, class {user_cls.__module__}.{user_cls.__qualname__}: "
                f"{method} raised {type(err).__name__}: {err}{_where_raised(err)}"
            ) from err

    call.__wrapped__ = function
    return call


class _BlobVec(list):
    """A layer's parameter list with pycaffe's ``add_blob(*shape)``."""

    def __init__(self, layer: Layer, items=()):
        super().__init__(items)
        self._layer = layer

    def add_blob(self, *shape) -> None:
        """Append a zero-filled parameter blob of the given shape."""
        self.append(self._layer.new_blob(_shape_args(shape)))


def _shape_args(shape) -> tuple[int, ...]:
    if len(shape) == 1 and not isinstance(shape[0], (int, numpy.integer)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


class _PycaffeBlob:
    """A view of a Blob with pycaffe's spelling (``reshape(*shape)``, ``num``, ``channels``, ...)."""

    __slots__ = ("_blob",)

    def __init__(self, blob: Blob):
        object.__setattr__(self, "_blob", blob)

    @property
    def data(self):
        return self._blob.data

    @data.setter
    def data(self, value) -> None:
        self._blob.data = value

    @property
    def diff(self):
        return self._blob.diff

    @diff.setter
    def diff(self, value) -> None:
        self._blob.diff = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self._blob.shape

    @property
    def count(self) -> int:
        return self._blob.count

    def _axis(self, i: int) -> int:
        shape = self._blob.shape
        return shape[i] if i < len(shape) else 1

    @property
    def num(self) -> int:
        return self._axis(0)

    @property
    def channels(self) -> int:
        return self._axis(1)

    @property
    def height(self) -> int:
        return self._axis(2)

    @property
    def width(self) -> int:
        return self._axis(3)

    def reshape(self, *shape) -> None:
        self._blob.reshape(_shape_args(shape))

    def __repr__(self) -> str:
        return repr(self._blob)


def _wrap(blobs: Sequence[Blob]) -> list[_PycaffeBlob]:
    return [_PycaffeBlob(b) for b in blobs]


class _PycaffeLayer(Layer):
    """Runs a pycaffe-style class (setup/reshape/forward/backward, no netdef base) as a layer."""

    type_name = "Python"

    def __init__(self, param, phase: int, dtype, xp, user_cls: type, rng=None):
        self._impl = None
        super().__init__(param, phase=phase, dtype=dtype, xp=xp, rng=rng)
        self._impl = _instantiate(user_cls, param)
        self._impl.param_str = param.python_param.param_str
        self._impl.phase = phase
        self._impl.blobs = self.blobs

    @property
    def blobs(self) -> _BlobVec:
        return self._blobs

    @blobs.setter
    def blobs(self, value) -> None:
        self._blobs = value if isinstance(value, _BlobVec) else _BlobVec(self, value)
        if self._impl is not None:
            self._impl.blobs = self._blobs

    @property
    def impl(self):
        """The user's object."""
        return self._impl

    def _call(self, method: str, *args) -> None:
        _guarded(self.param, type(self._impl), method, getattr(self._impl, method))(*args)

    def setup(self, bottom, top):
        self._call("setup", _wrap(bottom), _wrap(top))
        # The user may have replaced the list instead of calling add_blob.
        self.blobs = getattr(self._impl, "blobs", self._blobs)

    def reshape(self, bottom, top):
        self._call("reshape", _wrap(bottom), _wrap(top))

    def forward(self, bottom, top):
        self._call("forward", _wrap(bottom), _wrap(top))

    def backward(self, top, propagate_down, bottom):
        self._call("backward", _wrap(top), list(propagate_down), _wrap(bottom))


def _instantiate(user_cls: type, param):
    # pycaffe calls the class with the LayerParameter; a plain class without __init__ takes nothing.
    try:
        params = inspect.signature(user_cls).parameters.values()
        takes_param = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    except (TypeError, ValueError):
        takes_param = False
    create = _guarded(param, user_cls, "__init__", user_cls)
    return create(param) if takes_param else create()


__all__ = [
    "ALLOW_ENV",
    "CaffeLayer",
    "PythonLayer",
    "add_python_layer_path",
    "allow_python_layers",
    "load_layer_class",
    "python_layers_allowed",
    "python_layers_are_allowed",
]
