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

from .. import limits
from ..errors import NetdefError, PrototxtSyntaxError, ResourceLimitError, UnknownFieldError, did_you_mean
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


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise NetdefError(f"File not found: {path}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise NetdefError(f"{path}: cannot read the file: {err.strerror or err}") from None


def _decode_utf8(raw: bytes, path: str, what: str) -> str:
    """``raw`` as text; bytes that are not UTF-8 become an error naming the line (their bytes are not shown)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise PrototxtSyntaxError(
            f"{path}:{line}: {what} must be UTF-8 text; byte {err.start} is not. Received: a byte sequence that "
            "is not UTF-8. Valid: save the file as UTF-8"
        ) from None


def read_message(path: str, message: Message) -> Message:
    """Read ``path`` into ``message``: text, YAML or JSON by suffix, binary otherwise or on failure."""
    raw = _read_bytes(path)
    lower = path.lower()
    if lower.endswith(YAML_SUFFIXES):
        data = load_yaml(_decode_utf8(raw, path, "a YAML definition"), path, schema_depth(message.DESCRIPTOR))
        return parse_mapping(data or {}, message, path)
    if lower.endswith(".json"):
        return parse_mapping(load_json(_decode_utf8(raw, path, "a JSON definition"), path, message), message, path)
    if lower.endswith(TEXT_SUFFIXES) or not _looks_binary(raw):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PrototxtSyntaxError(f"{path}: not UTF-8 text and not a binary protobuf") from None
        return parse_text(text, message, path)
    return parse_binary(raw, message, path)


def schema_depth(descriptor, _seen: frozenset = frozenset()) -> int:
    """How deep a YAML/JSON tree for ``descriptor`` can nest: a level per message, per list and for the values."""
    if descriptor.full_name in _seen:
        return limits.MAX_NESTING  # a message that contains itself: the fixed cap applies
    seen = _seen | {descriptor.full_name}
    depth = 0
    for field in descriptor.fields:
        inner = schema_depth(field.message_type, seen) if field.message_type is not None else 1
        depth = max(depth, inner + int(field.is_repeated))
    return min(1 + depth, limits.MAX_NESTING)


def _children(node) -> list:
    if isinstance(node, dict):
        return list(node.values())
    return list(node) if isinstance(node, list) else []


def check_nesting(data, limit: int, source: str) -> None:
    """Raise PrototxtSyntaxError when the tree ``data`` nests deeper than ``limit`` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > limit:
            raise PrototxtSyntaxError(
                f"{source}: the definition nests deeper than its schema allows. Received: more than {limit} "
                f"levels. Valid: at most {limit} levels of mappings and lists"
            )
        stack.extend((child, depth + 1) for child in _children(node))


def load_json(text: str, source: str, message: Message) -> object:
    """Parse JSON text, refusing nesting deeper than ``message``'s schema (never a RecursionError)."""
    limit = schema_depth(message.DESCRIPTOR)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PrototxtSyntaxError(f"{source}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    except RecursionError:
        raise PrototxtSyntaxError(
            f"{source}: the definition nests deeper than its schema allows. Received: hundreds of levels. "
            f"Valid: at most {limit} levels of mappings and lists"
        ) from None
    check_nesting(data, limit, source)
    return data


class _YamlLimit(Exception):
    """The YAML composer stopped at a bound; ``resource`` tells an alias bomb from deep nesting."""

    def __init__(self, message: str, resource: bool):
        super().__init__(message)
        self.resource = resource


_YAML_LOADER = None


def _yaml_loader_class():
    """A SafeLoader that counts nesting and aliases while it composes (PyYAML's composer recurses per level)."""
    global _YAML_LOADER
    if _YAML_LOADER is not None:
        return _YAML_LOADER
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream, depth_limit: int):
            super().__init__(stream)
            self.depth_limit = depth_limit
            self.depth = 0
            self.aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > limits.MAX_YAML_ALIASES:
                    raise _YamlLimit(
                        f"more than {limits.MAX_YAML_ALIASES} aliases (*name). Valid: at most "
                        f"{limits.MAX_YAML_ALIASES}",
                        resource=True,
                    )
                return super().compose_node(parent, index)
            self.depth += 1
            try:
                if self.depth > self.depth_limit:
                    raise _YamlLimit(
                        f"line {self.peek_event().start_mark.line + 1}: the definition nests deeper than its schema "
                        f"allows. Valid: at most {self.depth_limit} levels of mappings, lists and values",
                        resource=False,
                    )
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    _YAML_LOADER = BoundedLoader
    return BoundedLoader


def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_yaml_expansion(root, limit: int) -> None:
    """Refuse a composed YAML graph whose aliases expand to more than ``limit`` nodes, or that refers to itself."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _yaml_children(node))
            if sizes[key] > limit:
                raise _YamlLimit(
                    f"aliases expand the definition to more than {limit} values (an alias bomb?). Valid: at most "
                    f"{limit} values once every alias is expanded",
                    resource=True,
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise _YamlLimit("an alias refers to a node that contains it (a recursive structure)", resource=False)
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _yaml_children(node) if id(c) not in sizes)


def load_yaml(text: str, source: str, depth_limit: int = limits.MAX_NESTING) -> object:
    """Parse YAML safely: plain data only, nesting and alias expansion bounded (no RecursionError, no alias bomb)."""
    import yaml

    try:
        loader = _yaml_loader_class()(text, depth_limit)
    except yaml.YAMLError as err:  # the reader refuses control characters before parsing starts
        raise PrototxtSyntaxError(f"{source}: invalid YAML: {err}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_yaml_expansion(node, limits.MAX_DEFINITION_VALUES)
        return loader.construct_document(node)
    except _YamlLimit as err:
        raise (ResourceLimitError if err.resource else PrototxtSyntaxError)(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise PrototxtSyntaxError(f"{source}: invalid YAML: {err}") from None
    finally:
        loader.dispose()


def _looks_binary(raw: bytes) -> bool:
    return b"\x00" in raw[:4096] or any(b < 9 for b in raw[:64])


def parse_binary(raw: bytes, message: Message, source: str = "<bytes>") -> Message:
    try:
        message.ParseFromString(raw)
    except DecodeError as err:
        raise PrototxtSyntaxError(f"{source}: not a valid binary {message.DESCRIPTOR.name}: {err}") from None
    check_text_fields(message, source)
    return message


def check_text_fields(message: Message, source: str) -> None:
    """Refuse a parsed binary message whose string fields are not UTF-8 (protobuf hands those back as bytes)."""
    stack = [(message, message.DESCRIPTOR.name)]
    while stack:
        msg, path = stack.pop()
        for field, value in msg.ListFields():
            values = list(value) if field.is_repeated else [value]
            where = f"{path}.{field.name}"
            if field.message_type is not None:
                stack.extend((v, f"{where}[{i}]" if field.is_repeated else where) for i, v in enumerate(values))
            elif field.type == field.TYPE_STRING and any(isinstance(v, bytes) for v in values):
                raise PrototxtSyntaxError(
                    f"{source}: field {where} is not UTF-8 text. Received: bytes that are not UTF-8. "
                    "Valid: UTF-8 strings (the file may be damaged)"
                )


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
