"""Loading definitions: prototxt, YAML, JSON, binary; errors that say where and what."""

import json

import pytest

import netdef
from netdef.errors import NetdefError, PrototxtSyntaxError, UnknownFieldError
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
