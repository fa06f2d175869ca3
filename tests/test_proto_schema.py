"""Checks that netdef's protobuf schema is current and matches Caffe's.

The literal numbers and defaults below are taken from BVLC Caffe's
caffe.proto; if one of these fails, the schema has drifted from Caffe.
netdef also accepts fields and messages of Caffe forks (see
tests/test_proto_forks.py); ``test_every_bvlc_field_matches`` compares the
whole schema with BVLC's caffe.proto from ``shared/parity/schema`` and allows
such additions only where they leave every BVLC definition intact.
"""

from __future__ import annotations

import importlib.util
import os
import re
import struct
from pathlib import Path

import pytest
from google.protobuf import descriptor, descriptor_pb2, text_format

from netdef.proto import netdef_pb2 as pb

COMMITTED_PB2 = Path(pb.__file__).resolve().parent / "netdef_pb2.py"

# Lines in protoc's output that depend only on the protoc/protobuf version.
_VERSION_LINE = re.compile(r"^# Protobuf Python Version: .*$", re.M)
_VERSION_CHECK = re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)", re.S)


def _strip_version_stamps(text: str) -> str:
    return _VERSION_CHECK.sub("<version check>", _VERSION_LINE.sub("<version>", text))


# --------------------------------------------------------------------------
# Generated code is up to date
# --------------------------------------------------------------------------


def test_generated_module_is_up_to_date(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (grpcio-tools) is not installed; cannot regenerate netdef_pb2.py")
    from netdef.proto import generate

    fresh = generate.generate(tmp_path).read_text(encoding="utf-8")
    committed = COMMITTED_PB2.read_text(encoding="utf-8")
    hint = "netdef_pb2.py is stale: run `python -m netdef.proto.generate` and commit the result"

    fresh_ver = _VERSION_LINE.search(fresh)
    committed_ver = _VERSION_LINE.search(committed)
    same_protoc = fresh_ver and committed_ver and fresh_ver.group(0) == committed_ver.group(0)
    if same_protoc:
        assert fresh == committed, hint
    else:
        # A different grpcio-tools release only changes the version stamp;
        # the schema-bearing content must still be identical.
        assert _strip_version_stamps(fresh) == _strip_version_stamps(committed), hint


# --------------------------------------------------------------------------
# Spot checks against Caffe's schema
# --------------------------------------------------------------------------


def _field(message_cls, name) -> descriptor.FieldDescriptor:
    return message_cls.DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize(
    "name,number",
    [
        ("name", 1),
        ("type", 2),
        ("bottom", 3),
        ("top", 4),
        ("param", 6),
        ("include", 8),
        ("transform_param", 100),
        ("convolution_param", 106),
        ("inner_product_param", 117),
        ("pooling_param", 121),
        ("python_param", 130),
        ("batch_norm_param", 139),
        ("input_param", 143),
        ("recurrent_param", 146),
        ("swish_param", 147),
        ("clip_param", 148),
    ],
)
def test_layer_parameter_field_numbers(name, number):
    assert _field(pb.LayerParameter, name).number == number


def test_net_parameter_layout():
    assert _field(pb.NetParameter, "layer").number == 100
    assert _field(pb.NetParameter, "layers").number == 2
    assert _field(pb.NetParameter, "layers").message_type.name == "V1LayerParameter"
    assert _field(pb.NetParameter, "input_shape").number == 8


def test_solver_parameter_defaults():
    s = pb.SolverParameter()
    assert s.type == "SGD"
    assert s.regularization_type == "L2"
    assert s.clip_gradients == -1
    assert s.momentum2 == pytest.approx(0.999)
    assert s.delta == pytest.approx(1e-8)
    assert s.rms_decay == pytest.approx(0.99)
    assert s.snapshot_format == pb.SolverParameter.BINARYPROTO
    assert s.solver_mode == pb.SolverParameter.GPU
    assert s.random_seed == -1
    assert s.average_loss == 1
    assert s.iter_size == 1
    assert s.test_initialization is True
    assert s.snapshot_after_train is True
    assert _field(pb.SolverParameter, "type").number == 40


def test_enum_values():
    assert pb.TRAIN == 0 and pb.TEST == 1
    assert pb.SolverParameter.HDF5 == 0 and pb.SolverParameter.BINARYPROTO == 1
    assert pb.PoolingParameter.MAX == 0
    assert pb.PoolingParameter.AVE == 1
    assert pb.PoolingParameter.STOCHASTIC == 2
    assert pb.PoolingParameter.CEIL == 0 and pb.PoolingParameter.FLOOR == 1
    assert pb.V1LayerParameter.CONVOLUTION == 4
    assert pb.V1LayerParameter.DECONVOLUTION == 39
    assert pb.ReductionParameter.SUM == 1
    assert pb.LossParameter.VALID == 1


def test_layer_parameter_defaults():
    conv = pb.ConvolutionParameter()
    assert conv.bias_term is True
    assert conv.group == 1
    assert conv.axis == 1
    assert pb.PoolingParameter().pool == pb.PoolingParameter.MAX
    assert pb.PoolingParameter().stride == 1
    assert pb.PoolingParameter().round_mode == pb.PoolingParameter.CEIL
    assert _field(pb.PoolingParameter, "round_mode").number == 13
    assert pb.NetState().phase == pb.TEST
    assert pb.ParamSpec().lr_mult == 1.0
    assert pb.FillerParameter().type == "constant"
    assert pb.BatchNormParameter().eps == pytest.approx(1e-5)
    assert pb.LRNParameter().beta == pytest.approx(0.75)
    assert pb.DropoutParameter().dropout_ratio == pytest.approx(0.5)


def test_fork_fields_do_not_touch_bvlc_numbers():
    # ceil_mode (BVLC pull request #3057) is 13 in the forks that carry it,
    # but 13 is BVLC's round_mode, so the fork field lives elsewhere.
    assert _field(pb.PoolingParameter, "round_mode").number == 13
    assert _field(pb.PoolingParameter, "ceil_mode").number != 13
    pool = text_format.Parse("ceil_mode: false round_mode: FLOOR", pb.PoolingParameter())
    assert pool.round_mode == pb.PoolingParameter.FLOOR and pool.ceil_mode is False
    with pytest.raises(text_format.ParseError):
        text_format.Parse("floor_mode: true", pb.PoolingParameter())


# --------------------------------------------------------------------------
# Whole-schema comparison with BVLC's caffe.proto
# --------------------------------------------------------------------------


def _bvlc_proto_path() -> Path | None:
    env = os.environ.get("NETDEF_PARITY_DIR")
    roots = [Path(env)] if env else []
    roots.append(Path(__file__).resolve().parents[1].parent / "shared" / "parity")
    for root in roots:
        path = root / "schema" / "caffe.proto"
        if path.exists():
            return path
    return None


def _compile_descriptor(proto: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    target = out / (proto.stem + ".pb")
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto.parent}", f"--descriptor_set_out={target}", str(proto)])
    assert rc == 0, f"protoc could not compile {proto}"
    files = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes())
    return files.file[0]


def _messages(file_proto) -> dict:
    """Every message (nested ones as Outer.Inner) by name."""
    found = {}

    def walk(msgs, prefix):
        for m in msgs:
            name = prefix + m.name
            found[name] = m
            walk(m.nested_type, name + ".")

    walk(file_proto.message_type, "")
    return found


def _enums(file_proto) -> dict:
    found = {e.name: e for e in file_proto.enum_type}
    for name, m in _messages(file_proto).items():
        for e in m.enum_type:
            found[f"{name}.{e.name}"] = e
    return found


_FLOAT_TYPES = (descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)


def _field_signature(f, package: str) -> tuple:
    type_name = f.type_name.replace(f".{package}.", ".")
    default = f.default_value
    if default and f.type in _FLOAT_TYPES:
        # protoc and the runtime print the same float default differently
        # ("1e-08" vs "9.99999994e-09"); compare the stored float32 value.
        default = struct.pack("<f", float(default))
    return (f.number, f.label, f.type, type_name, default, f.options.packed)


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    caffe_proto = _bvlc_proto_path()
    if caffe_proto is None:
        pytest.skip("shared/parity/schema/caffe.proto not found (set NETDEF_PARITY_DIR)")
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (grpcio-tools) is not installed; cannot compile caffe.proto")
    out = tmp_path_factory.mktemp("schemas")
    bvlc = _compile_descriptor(caffe_proto, out)
    ours = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(ours)
    return bvlc, ours


def test_every_bvlc_field_matches(schemas):
    bvlc, ours = schemas
    our_messages = _messages(ours)
    problems = []
    for name, message in _messages(bvlc).items():
        if name not in our_messages:
            problems.append(f"message {name} is missing")
            continue
        theirs = {f.name: f for f in our_messages[name].field}
        for f in message.field:
            if f.name not in theirs:
                problems.append(f"{name}.{f.name} is missing")
            elif _field_signature(f, bvlc.package) != _field_signature(theirs[f.name], ours.package):
                problems.append(
                    f"{name}.{f.name}: BVLC {_field_signature(f, bvlc.package)} "
                    f"!= netdef {_field_signature(theirs[f.name], ours.package)}"
                )
    assert not problems, "\n".join(problems)


def test_fork_additions_keep_clear_of_bvlc_numbers(schemas):
    bvlc, ours = schemas
    our_messages = _messages(ours)
    problems = []
    for name, message in _messages(bvlc).items():
        bvlc_names = {f.name for f in message.field}
        bvlc_numbers = {f.number for f in message.field}
        for r in message.reserved_range:
            bvlc_numbers.update(range(r.start, r.end))
        for f in our_messages[name].field:
            if f.name not in bvlc_names and f.number in bvlc_numbers:
                problems.append(f"fork field {name}.{f.name} reuses BVLC number {f.number}")
    our_enums = _enums(ours)
    for name, enum in _enums(bvlc).items():
        values = {v.name: v.number for v in enum.value}
        assert name in our_enums, f"enum {name} is missing"
        ours_values = {v.name: v.number for v in our_enums[name].value}
        for value, number in values.items():
            if ours_values.get(value) != number:
                problems.append(f"{name}.{value}: BVLC {number} != netdef {ours_values.get(value)}")
        for value, number in ours_values.items():
            if value not in values and number in values.values():
                problems.append(f"fork value {name}.{value} reuses BVLC number {number}")
    assert not problems, "\n".join(problems)


def test_messages_only_forks_define_are_marked(schemas):
    # Every message netdef adds to BVLC's set must be one of the documented fork messages.
    bvlc, ours = schemas
    added = set(_messages(ours)) - set(_messages(bvlc))
    text = (Path(__file__).resolve().parents[1] / "proto" / "netdef.proto").read_text(encoding="utf-8")
    fork_section = text[text.index("// Fork additions\n// =====") :]
    for name in added:
        assert f"message {name.split('.')[-1]} {{" in fork_section, f"{name} is not in the fork section"


def test_blob_data_is_packed():
    for name in ("data", "diff", "double_data", "double_diff"):
        assert _field(pb.BlobProto, name).is_packed
    assert _field(pb.BlobShape, "dim").is_packed


# --------------------------------------------------------------------------
# Text and wire formats
# --------------------------------------------------------------------------

MODERN_PROTOTXT = """
name: "tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  include { phase: TRAIN }
  convolution_param {
    num_output: 4
    kernel_size: 3
    stride: 1
    weight_filler { type: "xavier" }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 round_mode: FLOOR }
}
"""


def test_parse_modern_prototxt():
    net = text_format.Parse(MODERN_PROTOTXT, pb.NetParameter())
    assert net.name == "tiny"
    assert [l.name for l in net.layer] == ["data", "conv1", "pool1"]
    conv = net.layer[1]
    assert conv.convolution_param.num_output == 4
    assert list(conv.convolution_param.kernel_size) == [3]
    assert conv.convolution_param.bias_term is True
    assert conv.param[0].lr_mult == 1
    assert conv.param[1].decay_mult == 0
    assert conv.include[0].phase == pb.TRAIN
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert net.layer[2].pooling_param.round_mode == pb.PoolingParameter.FLOOR


def test_parse_v1_prototxt():
    net = text_format.Parse(
        'name: "old" layers { name: "c" type: CONVOLUTION blobs_lr: 1 blobs_lr: 2 '
        "convolution_param { num_output: 2 kernel_size: 1 } }",
        pb.NetParameter(),
    )
    v1 = net.layers[0]
    assert v1.name == "c"
    assert v1.type == pb.V1LayerParameter.CONVOLUTION
    assert list(v1.blobs_lr) == [1, 2]
    assert v1.convolution_param.num_output == 2


def test_parse_solver_prototxt():
    solver = text_format.Parse(
        'net: "train.prototxt" base_lr: 0.01 lr_policy: "step" stepsize: 100 '
        'type: "Adam" solver_mode: CPU snapshot_format: HDF5',
        pb.SolverParameter(),
    )
    assert solver.type == "Adam"
    assert solver.solver_mode == pb.SolverParameter.CPU
    assert solver.snapshot_format == pb.SolverParameter.HDF5


def test_wire_round_trip_with_blob():
    net = pb.NetParameter(name="rt")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.inner_product_param.num_output = 2
    blob = layer.blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([0.5, -1.0, 2.0, 0.0, 1.5, -0.25])
    legacy = layer.blobs.add(num=1, channels=1, height=1, width=2)
    legacy.double_data.extend([1.0, 2.0])

    data = net.SerializeToString()
    back = pb.NetParameter.FromString(data)
    assert back == net
    assert list(back.layer[0].blobs[0].shape.dim) == [2, 3]
    assert list(back.layer[0].blobs[0].data) == [0.5, -1.0, 2.0, 0.0, 1.5, -0.25]
    assert back.layer[0].blobs[1].width == 2
    assert list(back.layer[0].blobs[1].double_data) == [1.0, 2.0]


def test_wire_encoding_matches_caffe_layout():
    # Field 100 (layer), length-delimited: tag bytes 0xa2 0x06.
    net = pb.NetParameter()
    net.layer.add(name="x")
    assert net.SerializeToString().startswith(b"\xa2\x06")
    # BlobShape.dim is packed: tag 0x0a then length then varints.
    assert pb.BlobShape(dim=[1, 2]).SerializeToString() == b"\x0a\x02\x01\x02"


def test_clip_parameter_bounds_are_required():
    clip = pb.ClipParameter(min=0.0)
    assert not clip.IsInitialized()
    clip.max = 6.0
    assert clip.IsInitialized()
