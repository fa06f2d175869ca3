"""Enum constants for layer parameters, as pycaffe's ``caffe.params`` (``from netdef import params as P``).

``P.<Name>.<VALUE>`` is the number of enum value ``VALUE`` declared in the
``<Name>Parameter`` message: ``P.Pooling.MAX == 0``, ``P.Pooling.AVE == 1``,
``P.Eltwise.SUM == 1``, ``P.Loss.VALID == 1``, ``P.Convolution.CAFFE == 1``.
"""

from __future__ import annotations

from .errors import did_you_mean
from .proto import netdef_pb2 as pb


class EnumValues:
    """The enum values of one ``<Name>Parameter`` message, as attributes."""

    def __init__(self, name: str, descriptor):
        self._name = name
        self._values = {v.name: v.number for enum in descriptor.enum_types for v in enum.values}
        self._enums = {enum.name: {v.name: v.number for v in enum.values} for enum in descriptor.enum_types}

    def __getattr__(self, attr: str) -> int:
        values = self.__dict__.get("_values", {})
        if attr in values:
            return values[attr]
        if attr.startswith("_"):
            raise AttributeError(attr)
        listing = "; ".join(f"{e}: {', '.join(v)}" for e, v in self._enums.items()) or "(none)"
        raise AttributeError(
            f'{self._name}Parameter has no enum value "{attr}".{did_you_mean(attr, values)} Values: {listing}'
        )

    def __dir__(self):
        return list(self._values)

    def __repr__(self) -> str:
        return f"<params.{self._name}: {', '.join(f'{k}={v}' for k, v in self._values.items())}>"


def _messages() -> dict[str, object]:
    return {
        name[: -len("Parameter")]: desc
        for name, desc in pb.DESCRIPTOR.message_types_by_name.items()
        if name.endswith("Parameter") and name != "Parameter"
    }


def __getattr__(name: str) -> EnumValues:
    messages = _messages()
    if name in messages:
        return EnumValues(name, messages[name])
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with_enums = sorted(n for n, d in messages.items() if d.enum_types)
    raise AttributeError(
        f'netdef.params has no "{name}": there is no {name}Parameter message.{did_you_mean(name, messages)} '
        f"Messages with enum values: {', '.join(with_enums)}"
    )


def __dir__():
    return sorted(_messages())
