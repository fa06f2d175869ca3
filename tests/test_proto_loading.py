"""Loading definitions: prototxt, YAML, JSON, binary; errors that say where and what."""

import json

import pytest

import netdef
from netdef.errors import NetdefError, PrototxtSyntaxError, ResourceLimitError, UnknownFieldError
from netdef.proto import load_net, load_solver, netdef_pb2, parse_text, to_text

NET = """name: "tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 2 dim: 3 } }
}
layer {
  name: "r"
  type: "ReLU"
  bottom: "data"
  top: "r"
}
"""


def test_prototxt_yaml_json_give_the_same_message(tmp_path):
    txt = tmp_path / "n.prototxt"
    txt.write_text(NET)
    data = {
        "name": "tiny",
        "layer": [
            {"name": "data", "type": "Input", "top": ["data"], "input_param": {"shape": [{"dim": [2, 3]}]}},
            {"name": "r", "type": "ReLU", "bottom": ["data"], "top": ["r"]},
        ],
    }
    (tmp_path / "n.json").write_text(json.dumps(data))
    yaml = pytest.importorskip("yaml")
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(data))
    a = load_net(str(txt))
    assert load_net(str(tmp_path / "n.json")) == a
    assert load_net(str(tmp_path / "n.yaml")) == a
    (tmp_path / "n.binaryproto").write_bytes(a.SerializeToString())
    assert load_net(str(tmp_path / "n.binaryproto")) == a
    net = netdef.Net(str(tmp_path / "n.yaml"), netdef.TEST)
    assert net.blobs["r"].shape == (2, 3)


def test_typo_in_field_names_file_line_and_suggestion(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text(
        NET.replace(
            "input_param { shape { dim: 2 dim: 3 } }",
            "input_param { shape { dim: 2 dim: 3 } }\n  convolution_param { kernal_size: 3 }",
        )
    )
    with pytest.raises(UnknownFieldError) as info:
        load_net(str(bad))
    msg = str(info.value)
    assert f"{bad}:7:" in msg
    assert "kernal_size" in msg and 'Did you mean "kernel_size"' in msg


def test_yaml_unknown_field_suggests(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("base_lr: 0.1\nmomentun: 0.9\n")
    with pytest.raises(UnknownFieldError, match='Did you mean "momentum"'):
        load_solver(str(bad))


def test_syntax_error_reports_line():
    with pytest.raises(PrototxtSyntaxError, match="<x>:2:"):
        parse_text('name: "a"\nlayer { name: }', netdef_pb2.NetParameter(), "<x>")


def test_bad_enum_value_is_named():
    with pytest.raises(PrototxtSyntaxError, match="MAXX"):
        parse_text("pool: MAXX", netdef_pb2.PoolingParameter(), "<p>")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(NetdefError, match="not found"):
        load_net(str(tmp_path / "nope.prototxt"))


def test_solver_type_enum_is_upgraded(tmp_path):
    f = tmp_path / "s.prototxt"
    f.write_text("base_lr: 0.1\nsolver_type: ADAM\n")
    assert load_solver(str(f)).type == "Adam"


def test_text_roundtrip():
    msg = parse_text(NET, netdef_pb2.NetParameter())
    again = parse_text(to_text(msg), netdef_pb2.NetParameter())
    assert again == msg


def test_ceil_mode_from_a_caffe_fork_is_accepted():
    # Fork fields are part of the schema (see tests/test_proto_forks.py); unknown ones are still refused.
    net = parse_text(
        'layer { name: "p" type: "Pooling" pooling_param { ceil_mode: false } }',
        netdef_pb2.NetParameter(),
        "densenet.prototxt",
    )
    assert net.layer[0].pooling_param.ceil_mode is False
    with pytest.raises(UnknownFieldError, match="floor_mode"):
        parse_text(
            'layer { name: "p" type: "Pooling" pooling_param { floor_mode: true } }',
            netdef_pb2.NetParameter(),
            "densenet.prototxt",
        )


# --- hostile definitions: named errors, bounded work -------------------------------------------------
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_non_utf8_definition_is_a_named_error(tmp_path, suffix):
    path = tmp_path / f"n{suffix}"
    path.write_bytes(b'{"name": "ok",\n "layer": [{"name": "\xff\xfe"}]}')
    with pytest.raises(PrototxtSyntaxError, match=rf"n\{suffix}:2: .*must be UTF-8 text"):
        load_net(str(path))


@pytest.mark.parametrize(
    ("suffix", "text"),
    [(".json", '{"layer": [' * 1000 + "{}" + "]}" * 1000), (".yaml", "layer: " + "[" * 500 + "]" * 500)],
)
def test_deep_nesting_is_refused_without_recursionerror(tmp_path, suffix, text):
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(PrototxtSyntaxError, match="nests deeper than its schema allows.*at most 9 levels"):
        load_net(str(path))


def test_nesting_just_past_the_schema_is_refused_and_a_real_net_is_not(tmp_path):
    deep = tmp_path / "d.json"
    deep.write_text('{"layer": [' * 6 + "{}" + "]}" * 6)
    with pytest.raises(PrototxtSyntaxError, match="nests deeper"):
        load_net(str(deep))
    yaml = pytest.importorskip("yaml")
    data = {
        "name": "t",
        "layer": [{"name": "i", "type": "Input", "top": ["x"], "input_param": {"shape": [{"dim": [1]}]}}],
    }
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(data))
    assert load_net(str(ok)).layer[0].input_param.shape[0].dim == [1]


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import time

    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines.append("name: *a8")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines))
    assert path.stat().st_size < 4000  # expands to 9**9 strings
    start = time.perf_counter()
    with pytest.raises(ResourceLimitError, match="bomb.yaml: aliases expand the definition to more than"):
        load_net(str(path))
    assert time.perf_counter() - start < 5


def test_yaml_recursive_alias_and_control_characters_are_named(tmp_path):
    rec = tmp_path / "rec.yaml"
    rec.write_text("name: x\nlayer: &a [*a]\n")
    with pytest.raises(PrototxtSyntaxError, match="refers to a node that contains it"):
        load_net(str(rec))
    ctrl = tmp_path / "ctrl.yaml"
    ctrl.write_bytes(b"name: x\x1a\n")
    with pytest.raises(PrototxtSyntaxError, match="ctrl.yaml: invalid YAML"):
        load_net(str(ctrl))


def test_binary_definition_with_non_utf8_string_is_named(tmp_path):
    param = netdef_pb2.NetParameter(name="ab")
    param.layer.add(name="x", type="ReLU", top=["t"])
    raw = param.SerializeToString().replace(b'"\x01t', b'"\x01\xe2')
    path = tmp_path / "n.binaryproto"
    path.write_bytes(raw)
    with pytest.raises(PrototxtSyntaxError, match=r"field NetParameter\.layer\[0\]\.top is not UTF-8"):
        load_net(str(path))


def test_definition_path_that_is_a_folder_is_named(tmp_path):
    with pytest.raises(NetdefError, match="cannot read the file"):
        load_net(str(tmp_path))
