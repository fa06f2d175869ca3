"""Writing nets in Python: pycaffe's ``caffe.net_spec`` (``NetSpec``, ``layers as L``, ``params as P``).

    >>> from netdef import layers as L, params as P
    >>> n = NetSpec()
    >>> n.data = L.Input(input_param=dict(shape=dict(dim=[1, 1, 8, 8])))
    >>> n.pool = L.Pooling(n.data, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    >>> [layer.name for layer in n.to_proto().layer]
    ['data', 'pool']

``L.<Type>(*bottoms, ntop=1, in_place=False, **fields)`` describes one layer and
returns its top (a tuple of tops when ``ntop > 1``, the layer itself when
``ntop == 0``). Keyword arguments are LayerParameter fields (``name``,
``loss_weight``, ``param``, ``include``, ``exclude``, ``propagate_down``, any
``*_param``) or fields of the layer's own parameter message
(``kernel_size=5`` becomes ``convolution_param { kernel_size: 5 }``). Lists fill
repeated fields, dicts fill messages, and a single value given for a repeated
field is a one-element list. Enum fields take the number (``P.Pooling.MAX``)
or its name (``"MAX"``).

Naming follows pycaffe: a top is named by the NetSpec attribute it is assigned
to; a layer takes the name of its first top; unnamed tops and layers are called
``<Type><n>`` (``ReLU1``, ``ReLU2`` ...); an ``in_place`` layer writes its
tops into its first bottoms' blobs and is named after the attribute its top was
assigned to.

Layer types are not checked here, so nets for types netdef does not run (or a
Caffe fork's) can be written out; :class:`netdef.Net` reports unknown types.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from google.protobuf.message import Message

from .errors import InvalidParameterError, UnknownFieldError, did_you_mean
from .proto import netdef_pb2 as pb

# Fields the call itself decides; setting them by keyword would contradict the call.
_STRUCTURAL = {"type", "bottom", "top"}

# Layer types whose parameter message is not named after the type.
_EXTRA_PARAM_FIELDS = {
    "Deconvolution": ["convolution_param"],
    "Im2col": ["convolution_param"],
    "RNN": ["recurrent_param"],
    "LSTM": ["recurrent_param"],
    "SoftmaxWithLoss": ["softmax_param"],
}


def _param_fields_by_type() -> dict[str, list[str]]:
    """``{layer type: [its *_param fields]}`` read from the schema (ConvolutionParameter -> Convolution)."""
    out: dict[str, list[str]] = {}
    for field in pb.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name[: -len("Parameter")]
            out.setdefault(type_name, []).append(field.name)
    for type_name, fields in _EXTRA_PARAM_FIELDS.items():
        out.setdefault(type_name, []).extend(fields)
    return out


_PARAM_FIELDS = _param_fields_by_type()


def _type_param_fields(type_name: str) -> list[str]:
    """Where keyword arguments of ``type_name`` may go, besides LayerParameter itself."""
    fields = list(_PARAM_FIELDS.get(type_name, []))
    if type_name.endswith("Loss") and "loss_param" not in fields:
        fields.append("loss_param")
    return fields


def _enum_value(field, value, where: str):
    """An enum field's number from a number or a value name."""
    if isinstance(value, str):
        names = [v.name for v in field.enum_type.values]
        if value not in field.enum_type.values_by_name:
            raise InvalidParameterError(
                f'{where}: "{value}" is not a value of {field.enum_type.name}.{did_you_mean(value, names)} '
                f"Valid: {', '.join(names)}"
            )
        return field.enum_type.values_by_name[value].number
    return value


def assign_proto(message: Message, name: str, value: Any, where: str = "") -> None:
    """Set field ``name`` of ``message`` from a Python value (pycaffe's ``assign_proto``).

    Lists (or tuples) fill repeated fields, dicts fill sub-messages, a message is
    copied, and a single value given for a repeated field is a one-element list.
    """
    where = where or message.DESCRIPTOR.name
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        names = [f.name for f in message.DESCRIPTOR.fields]
        raise UnknownFieldError(
            f'{where}: {message.DESCRIPTOR.name} has no field "{name}".{did_you_mean(name, names)} '
            f"Valid fields: {', '.join(names)}"
        )
    path = f"{where}.{name}"
    if field.is_repeated:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        target = getattr(message, name)
        for item in items:
            if field.message_type is not None:
                _fill_message(target.add(), item, path)
            else:
                if field.enum_type is not None:
                    item = _enum_value(field, item, path)
                try:
                    target.append(item)
                except (TypeError, ValueError) as err:
                    raise _bad_value(path, field, item, err) from None
        return
    if field.message_type is not None:
        _fill_message(getattr(message, name), value, path)
        return
    if field.enum_type is not None:
        value = _enum_value(field, value, path)
    try:
        setattr(message, name, value)
    except (TypeError, ValueError) as err:
        raise _bad_value(path, field, value, err) from None


def _fill_message(target: Message, value: Any, where: str) -> None:
    if isinstance(value, Message):
        if value.DESCRIPTOR is not target.DESCRIPTOR:
            raise InvalidParameterError(
                f"{where} needs a {target.DESCRIPTOR.name} (or a dict of its fields). "
                f"Received: a {value.DESCRIPTOR.name}"
            )
        target.CopyFrom(value)
        return
    if not isinstance(value, dict):
        raise InvalidParameterError(
            f"{where} is a {target.DESCRIPTOR.name} message: give a dict of its fields. Received: {value!r}"
        )
    target.SetInParent()
    for key, item in value.items():
        assign_proto(target, key, item, where)


def _bad_value(where: str, field, value, err: Exception) -> InvalidParameterError:
    kinds = {
        field.TYPE_STRING: "string",
        field.TYPE_BOOL: "bool",
        field.TYPE_FLOAT: "float",
        field.TYPE_DOUBLE: "float",
        field.TYPE_ENUM: "enum",
    }
    kind = kinds.get(field.type, "integer")
    return InvalidParameterError(f"{where} needs a value of type {kind} ({err}). Received: {value!r}")


class Top:
    """One output blob of a layer described with ``L.<Type>(...)`` (``n``-th top of ``fn``)."""

    def __init__(self, fn: Function, n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> pb.NetParameter:
        """A NetParameter holding every layer needed to compute this top (names are automatic)."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name} layer>"


class Function:
    """One layer: its type, its input tops and its parameters (already checked against the schema)."""

    def __init__(self, type_name: str, inputs: tuple, params: dict):
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(
                    f"L.{type_name}: bottom {index} must be a top made by another L.<Type>(...) call "
                    f"(or a NetSpec attribute). Received: {type(inp).__name__}"
                )
        params = dict(params)
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.ntop = params.pop("ntop", 1)
        self.in_place = params.pop("in_place", False)
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise InvalidParameterError(f"L.{type_name}: ntop must be an integer >= 0. Received: {self.ntop!r}")
        if self.in_place and self.ntop > len(self.inputs):
            raise InvalidParameterError(
                f"L.{type_name}: in_place=True writes top i into bottom i, so it needs at least as many bottoms "
                f"as tops. Received: {len(self.inputs)} bottom(s), ntop={self.ntop}"
            )
        self.params = params
        self.layer_param = self._build_params(params)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _build_params(self, params: dict) -> pb.LayerParameter:
        """The LayerParameter fields the keyword arguments set (checked now, so errors point at the call)."""
        layer = pb.LayerParameter()
        where = f"L.{self.type_name}"
        own = _type_param_fields(self.type_name)
        layer_fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
        for key, value in params.items():
            if key in _STRUCTURAL:
                raise InvalidParameterError(
                    f'{where}: "{key}" is set by the call itself (the L.<Type> name, the positional bottoms and '
                    f"the NetSpec attribute names). Received: {key}={value!r}"
                )
            if key in layer_fields:
                assign_proto(layer, key, value, where)
                continue
            for field in own:
                sub = pb.LayerParameter.DESCRIPTOR.fields_by_name[field].message_type
                if key in sub.fields_by_name:
                    assign_proto(getattr(layer, field), key, value, f"{where}.{field}")
                    break
            else:
                raise self._unknown_argument(key, own)
        return layer

    def _unknown_argument(self, key: str, own: list[str]) -> UnknownFieldError:
        layer_fields = [n for n in pb.LayerParameter.DESCRIPTOR.fields_by_name if n not in _STRUCTURAL]
        own_fields = {f: list(pb.LayerParameter.DESCRIPTOR.fields_by_name[f].message_type.fields_by_name) for f in own}
        candidates = layer_fields + [n for names in own_fields.values() for n in names]
        listing = "; ".join(f"fields of {f}: {', '.join(names)}" for f, names in own_fields.items())
        plain = [n for n in layer_fields if not n.endswith("_param")]
        return UnknownFieldError(
            f'L.{self.type_name}: unknown argument "{key}".{did_you_mean(key, candidates)} Valid: '
            f"{listing + '; ' if listing else ''}LayerParameter fields: {', '.join(plain)} and any *_param"
        )

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _layer_name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = pb.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(bottoms[: self.ntop])
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._layer_name(names, autonames)
        # An explicit name= keyword wins over the automatic one, as in pycaffe.
        layer.MergeFrom(self.layer_param)
        layers[self] = layer

    def __repr__(self) -> str:
        return f"<{self.type_name} layer, {len(self.inputs)} bottom(s), {self.ntop} top(s)>"


def to_proto(*tops: Top) -> pb.NetParameter:
    """A NetParameter with every layer needed to compute ``tops``; all names are automatic."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = pb.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """A net under construction: assign tops to attributes to name them, then ``to_proto()``.

    ``n.conv1 = L.Convolution(n.data, ...)`` names the top (and the layer) "conv1";
    ``n["conv1"]`` works too. ``to_proto()`` returns the NetParameter with every
    layer needed to compute every assigned top, in assignment order.
    """

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        if not isinstance(value, (Top, Function)):
            raise TypeError(
                f"NetSpec.{name}: assign a top made by L.<Type>(...) (or a layer with ntop=0). "
                f"Received: {type(value).__name__}"
            )
        self.tops[name] = value

    def __getattr__(self, name: str):
        tops = self.__dict__.get("tops", {})
        if name in tops:
            return tops[name]
        raise AttributeError(
            f'NetSpec has no top "{name}".{did_you_mean(name, tops)} Assigned: {", ".join(tops) or "(none)"}'
        )

    def __setitem__(self, key: str, value) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, key: str):
        try:
            return self.__getattr__(key)
        except AttributeError as err:
            raise KeyError(str(err)) from None

    def __contains__(self, key: str) -> bool:
        return key in self.tops

    def __dir__(self):
        return list(super().__dir__()) + list(self.tops)

    def to_proto(self) -> pb.NetParameter:
        """The NetParameter for every assigned top, named by attribute."""
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = pb.NetParameter()
        net.layer.extend(layers.values())
        return net


def layer_factory(type_name: str):
    """The ``L.<type_name>`` function: ``(*bottoms, ntop=1, in_place=False, **fields)`` -> top(s)."""

    def make_layer(*bottoms, **kwargs):
        fn = Function(type_name, bottoms, kwargs)
        if fn.ntop == 0:
            return fn
        if fn.ntop == 1:
            return fn.tops[0]
        return fn.tops

    make_layer.__name__ = type_name
    make_layer.__qualname__ = f"layers.{type_name}"
    make_layer.__doc__ = (
        f'Describe a "{type_name}" layer for a NetSpec: L.{type_name}(*bottoms, ntop=1, in_place=False, **fields).'
    )
    return make_layer


__all__ = ["Function", "NetSpec", "Top", "assign_proto", "layer_factory", "to_proto"]
