"""The ``Python`` layer type: a layer written by the user in a Python module.

A net names the module and class in ``python_param``::

    layer {
      name: "loss" type: "Python" bottom: "pred" bottom: "label" top: "loss"
      python_param { module: "my_layers" layer: "SquaredErrorLoss" param_str: '{"scale": 0.5}' }
      loss_weight: 1
    }

The module is imported with ``importlib`` the first time a net builds the layer,
so it must be importable: on ``sys.path``/``PYTHONPATH``, or in the current
working directory, which netdef adds at the end of ``sys.path`` when it is not
there already (as running Caffe with ``PYTHONPATH=.``). The folder of the net
file is not searched.

The class is normally a subclass of ``netdef.Layer`` (the base of the built-in
layers) implementing ``setup``, ``reshape``, ``forward`` and ``backward`` on
lists of ``netdef.Blob``; ``self.param_str``, ``self.phase`` and ``self.param``
(the LayerParameter) are set before ``setup`` runs, and parameters go in
``self.blobs`` (``self.new_blob(shape)``). A class written for pycaffe, with
those four methods but no netdef base, works too: it is wrapped so that its
blobs accept pycaffe's ``reshape(*shape)``, ``num``/``channels``/``height``/
``width``, and ``self.blobs.add_blob(*shape)``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Sequence

import numpy

from ..blob import Blob
from ..errors import InvalidParameterError, did_you_mean, layer_prefix
from .base import Layer, register_layer

_METHODS = ("setup", "reshape", "forward", "backward")


def _fail(param, message: str) -> InvalidParameterError:
    return InvalidParameterError(f"{layer_prefix(param.name, 'Python')}: {message}")


def _ensure_cwd_on_path() -> None:
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        # Appended, not prepended, so that a file in the working directory never shadows an installed package.
        sys.path.append(cwd)


def _import_module(param):
    name = param.python_param.module
    if not name:
        raise _fail(
            param,
            "python_param.module is empty; name the Python module that defines the layer class, "
            'e.g. module: "my_layers"',
        )
    _ensure_cwd_on_path()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise _fail(
                param,
                f'cannot import python_param.module "{name}": no such module. Received: "{name}". '
                f"Valid: a module importable from sys.path (the working directory {os.getcwd()!r} is on it; "
                "add other folders with PYTHONPATH)",
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
            layer.__init__(param, phase=phase, dtype=dtype, xp=xp)
            if rng is not None:
                layer.rng = rng
            # Caffe reports the type of every Python layer as "Python", whatever the class.
            layer.type_name = "Python"
            layer.param_str = param.python_param.param_str
            layer.phase = phase
            return layer
        return _PycaffeLayer(param, phase, dtype, xp, user_cls, rng)


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

    def setup(self, bottom, top):
        self._impl.setup(_wrap(bottom), _wrap(top))
        # The user may have replaced the list instead of calling add_blob.
        self.blobs = getattr(self._impl, "blobs", self._blobs)

    def reshape(self, bottom, top):
        self._impl.reshape(_wrap(bottom), _wrap(top))

    def forward(self, bottom, top):
        self._impl.forward(_wrap(bottom), _wrap(top))

    def backward(self, top, propagate_down, bottom):
        self._impl.backward(_wrap(top), list(propagate_down), _wrap(bottom))


def _instantiate(user_cls: type, param):
    # pycaffe calls the class with the LayerParameter; a plain class without __init__ takes nothing.
    try:
        params = inspect.signature(user_cls).parameters.values()
        takes_param = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    except (TypeError, ValueError):
        takes_param = False
    try:
        return user_cls(param) if takes_param else user_cls()
    except Exception as err:
        raise _fail(
            param, f'creating "{user_cls.__module__}.{user_cls.__name__}" failed: {type(err).__name__}: {err}'
        ) from err


__all__ = ["PythonLayer", "load_layer_class"]
