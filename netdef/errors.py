"""Error hierarchy: every problem netdef reports on bad input is a NetdefError.

Messages name where the problem is (file, line, layer name and type), what was
received, and what would be valid, so the CLI can print them without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NetdefError(Exception):
    """Base class of every error netdef raises on bad input."""


class PrototxtSyntaxError(NetdefError):
    """A definition file could not be parsed (text, YAML, JSON or binary)."""


class UnknownFieldError(PrototxtSyntaxError):
    """A definition names a field the schema does not have."""


class UnknownLayerTypeError(NetdefError):
    """A layer's `type` is not registered."""


class DuplicateLayerTypeError(NetdefError):
    """Two layer classes were registered under one type name."""


class UnknownBottomBlobError(NetdefError):
    """A layer reads a blob no earlier layer produces."""


class DuplicateTopBlobError(NetdefError):
    """Two layers produce the same blob without being in-place."""


class BlobCountError(NetdefError):
    """A layer got a number of bottoms or tops it cannot work with."""


class ShapeMismatchError(NetdefError):
    """Blob shapes do not fit a layer, a weights file or a shared parameter."""


class InvalidParameterError(NetdefError):
    """A layer or solver parameter has a value that cannot work."""


class WeightsFileError(NetdefError):
    """A weights, mean or solver-state file is missing, unreadable or does not fit."""


class DataSourceError(NetdefError):
    """A data layer's source is missing or its contents do not fit the layer."""


class SolverError(NetdefError):
    """A solver definition cannot be run as given."""


def layer_prefix(name: str, type_name: str) -> str:
    """How every message about one layer begins: ``Layer "conv1" (type Convolution)``."""
    return f'Layer "{name}" (type {type_name})'


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


#: the name this project is installed under (PyPI's "netdef" is an unrelated project); the import name and
#: the command stay "netdef"
DISTRIBUTION = "netdef-caffe"


def install_hint(extra: str, *packages: str) -> str:
    """How to get an optional dependency: the plain package(s), or the project's extra from a checkout."""
    plain = " ".join(packages)
    return f'`pip install {plain}` (the "{extra}" extra of {DISTRIBUTION}: `pip install ".[{extra}]"` in a checkout)'


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest candidate, or an empty string."""
    best = closest(name, candidates)
    return f' Did you mean "{best}"?' if best else ""


class ResourceLimitError(NetdefError):
    """An input asks for more memory or nesting than netdef allows (see netdef.limits)."""


class MeanFileError(DataSourceError):
    """A mean file (``transform_param.mean_file``, ``--mean``) is missing, unreadable or does not fit the data."""


class DatasetError(NetdefError):
    """A dataset tool's input (image list, idx or CIFAR file, database) is bad, or its output cannot be written."""


class PythonLayerNotAllowedError(NetdefError):
    """A net names a Python layer, whose module would run code, and running it was not allowed."""


class PythonLayerError(NetdefError):
    """A user's Python layer raised an exception; the original is the ``__cause__``."""


class TrainingDivergedError(NetdefError):
    """Training produced a non-finite loss or parameter (NaN or infinity)."""


class LogFormatError(NetdefError):
    """A training log or run-record file holds nothing that can be read as one."""


class MissingDependencyError(NetdefError):
    """An optional package or program a feature needs is not installed; the message says how to get it."""


class ParallelError(NetdefError):
    """Data-parallel training cannot go on: the ranks disagree, or one of them died or stopped answering."""
