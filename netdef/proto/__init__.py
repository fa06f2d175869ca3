"""Reading and writing definitions: prototxt text, YAML, JSON and binary protobuf.

Text errors carry the file, line and column and suggest the closest valid field.
Legacy definitions (V1 ``layers``, ``input``/``input_dim`` fields, ``solver_type``)
are upgraded on load, with a log line, by :mod:`netdef.proto.upgrade`.
"""

from __future__ import annotations

import difflib
import json
import os
import re

from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError, Message

from ..errors import NetdefError, PrototxtSyntaxError, UnknownFieldError, did_you_mean
from . import netdef_pb2

TEXT_SUFFIXES = (".prototxt", ".pbtxt", ".txt", ".solver", ".pt")
YAML_SUFFIXES = (".yaml", ".yml")


def _field_names(message: Message) -> list[str]:
    return [f.name for f in message.DESCRIPTOR.fields]


_PARAM_SUFFIX = "_param"
# Ratio that the distinctive part of a ``*_param`` name must reach against a
# candidate's: every layer parameter block ends in "_param", so comparing whole
# names would rate unrelated blocks as close (``bn_param`` vs ``mvn_param``).
_PARAM_STEM_CUTOFF = 0.8


def _param_stem(name: str) -> str | None:
    """The part of a parameter-block name before its "_param"-like tail, or None."""
    if name.endswith(_PARAM_SUFFIX):
        return name[: -len(_PARAM_SUFFIX)]
    stem, sep, tail = name.rpartition("_")
    if sep and stem and (tail.startswith("param") or difflib.SequenceMatcher(None, tail, "param").ratio() >= 0.7):
        return stem
    return None


def suggest_field(name: str, candidates: list[str]) -> str:
    """Return ' Did you mean "x"?' for a misspelt field name, or "" when nothing is really close.

    Names of parameter blocks (``*_param``, or a misspelt tail such as ``_parm``) are
    compared by what precedes the suffix, and only with other ``*_param`` fields, so
    ``convolution_parm`` suggests ``convolution_param`` while ``foo_param`` suggests
    nothing. Other names use :func:`netdef.errors.did_you_mean`.
    """
    stem = _param_stem(name)
    if stem is None:
        return did_you_mean(name, candidates)
    blocks = {c[: -len(_PARAM_SUFFIX)]: c for c in candidates if c.endswith(_PARAM_SUFFIX)}
    best = difflib.get_close_matches(stem, list(blocks), n=1, cutoff=_PARAM_STEM_CUTOFF)
    return f' Did you mean "{blocks[best[0]]}"?' if best else ""


def _explain_parse_error(err: text_format.ParseError, message: Message, text: str, source: str) -> NetdefError:
    msg = str(err)
    line, col = err.GetLine(), err.GetColumn()
    m = re.search(r'Message type "(?:[A-Za-z0-9_]+\.)*([A-Za-z0-9_]+)" has no field named "([^"]+)"', msg)
    where = f"{source}:{line}:{col}" if line else source
    if m:
        type_name, field = m.groups()
        desc = netdef_pb2.DESCRIPTOR.message_types_by_name.get(type_name, message.DESCRIPTOR)
        if type_name not in netdef_pb2.DESCRIPTOR.message_types_by_name:
            for top in netdef_pb2.DESCRIPTOR.message_types_by_name.values():
                if type_name in top.nested_types_by_name:
                    desc = top.nested_types_by_name[type_name]
        names = [f.name for f in desc.fields]
        return UnknownFieldError(
            f'{where}: unknown field "{field}" in {desc.name}.{suggest_field(field, names)} '
            f"Valid fields of {desc.name}: {', '.join(names)}"
        )
    m = re.search(r'Enum type "([A-Za-z0-9_.]+)" has no value named ([A-Za-z0-9_]+)', msg)
    if m:
        enum = netdef_pb2.DESCRIPTOR.pool.FindEnumTypeByName(m.group(1))
        valid = [v.name for v in enum.values]
        return PrototxtSyntaxError(
            f"{where}: {m.group(2)} is not a value of {enum.name}.{did_you_mean(m.group(2), valid)} "
            f"Valid: {', '.join(valid)}"
        )
    detail = msg.split(":", 2)[-1].strip() if line else msg
    return PrototxtSyntaxError(f"{where}: {detail}")


def parse_text(text: str, message: Message, source: str = "<string>") -> Message:
    """Parse protobuf text into ``message``, raising a named error that says where and what."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as err:
        raise _explain_parse_error(err, message, text, source) from None
    return message


def _check_dict_fields(data, message: Message, source: str, path: str = "") -> None:
    """Reject unknown keys in a YAML/JSON mapping with a did-you-mean message."""
    if not isinstance(data, dict):
        raise PrototxtSyntaxError(
            f"{source}: expected a mapping for {message.DESCRIPTOR.name}{path}, got {type(data).__name__}"
        )
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            names = list(fields)
            raise UnknownFieldError(
                f'{source}: unknown field "{key}" in {message.DESCRIPTOR.name}{path}.{suggest_field(key, names)} '
                f"Valid fields: {', '.join(names)}"
            )
        if field.message_type is not None:
            sub = getattr(message, key)
            items = value if isinstance(value, list) else [value]
            for k, item in enumerate(items):
                proto = sub.add() if field.is_repeated else sub
                where = f"{path}.{key}[{k}]" if isinstance(value, list) else f"{path}.{key}"
                _check_dict_fields(item, proto, source, where)


def parse_mapping(data, message: Message, source: str = "<mapping>") -> Message:
    """Fill ``message`` from a YAML/JSON-style dict using the protobuf field names."""
    _check_dict_fields(data, type(message)(), source)
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise PrototxtSyntaxError(f"{source}: {err}") from None
    return message


def read_message(path: str, message: Message) -> Message:
    """Read ``path`` into ``message``: text, YAML or JSON by suffix, binary otherwise or on failure."""
    if not os.path.exists(path):
        raise NetdefError(f"File not found: {path}")
    lower = path.lower()
    if lower.endswith(YAML_SUFFIXES):
        import yaml

        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as err:
                raise PrototxtSyntaxError(f"{path}: invalid YAML: {err}") from None
        return parse_mapping(data or {}, message, path)
    if lower.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise PrototxtSyntaxError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
        return parse_mapping(data, message, path)
    with open(path, "rb") as f:
        raw = f.read()
    if lower.endswith(TEXT_SUFFIXES) or not _looks_binary(raw):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PrototxtSyntaxError(f"{path}: not UTF-8 text and not a binary protobuf") from None
        return parse_text(text, message, path)
    return parse_binary(raw, message, path)


def _looks_binary(raw: bytes) -> bool:
    return b"\x00" in raw[:4096] or any(b < 9 for b in raw[:64])


def parse_binary(raw: bytes, message: Message, source: str = "<bytes>") -> Message:
    try:
        message.ParseFromString(raw)
    except DecodeError as err:
        raise PrototxtSyntaxError(f"{source}: not a valid binary {message.DESCRIPTOR.name}: {err}") from None
    return message


def load_net(path_or_text: str) -> netdef_pb2.NetParameter:
    """Load a net definition file and upgrade legacy forms."""
    from .upgrade import upgrade_net

    param = read_message(path_or_text, netdef_pb2.NetParameter())
    return upgrade_net(param, path_or_text)


def load_solver(path: str) -> netdef_pb2.SolverParameter:
    """Load a solver definition file and upgrade legacy forms."""
    from .upgrade import upgrade_solver

    param = read_message(path, netdef_pb2.SolverParameter())
    return upgrade_solver(param, path)


def net_from_text(text: str, source: str = "<string>") -> netdef_pb2.NetParameter:
    from .upgrade import upgrade_net

    return upgrade_net(parse_text(text, netdef_pb2.NetParameter(), source), source)


def to_text(message: Message) -> str:
    return text_format.MessageToString(message)


def write_text(message: Message, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_text(message))
