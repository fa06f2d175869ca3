"""Weights files: netdef's own round trips and files written by real Caffe."""

import numpy
import pytest

import netdef
from netdef.errors import ShapeMismatchError, WeightsFileError
from netdef.io.atomic import atomic_target
from netdef.io.blobproto import array_to_proto, proto_to_array, read_binaryproto, write_binaryproto
from netdef.io.caffemodel import encode_net, net_to_proto, read_weights
from netdef.proto import net_from_text
from netdef.proto import netdef_pb2 as pb
from netdef.testing.parity import parity_root

NET = """
name: "io"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } bias_filler { type: "uniform" } } }
"""


def make(text=NET):
    return netdef.Net(net_from_text(text), netdef.TEST)


def test_blobproto_legacy_shape_and_double_data():
    proto = pb.BlobProto(num=1, channels=2, height=1, width=3, double_data=[1, 2, 3, 4, 5, 6])
    arr = proto_to_array(proto)
    assert arr.shape == (1, 2, 1, 3) and arr.dtype == numpy.float64
    numpy.testing.assert_array_equal(arr.ravel(), numpy.arange(1, 7))
    again = proto_to_array(array_to_proto(numpy.ones((2, 2), numpy.float32)))
    assert again.shape == (2, 2) and again.dtype == numpy.float32


def test_blobproto_count_mismatch_is_an_error():
    with pytest.raises(WeightsFileError, match="holds 2 values"):
        proto_to_array(pb.BlobProto(shape=pb.BlobShape(dim=[3]), data=[1, 2]))


def test_binaryproto_roundtrip(tmp_path):
    mean = numpy.arange(12, dtype=numpy.float32).reshape(1, 3, 2, 2)
    write_binaryproto(str(tmp_path / "mean.binaryproto"), mean)
    numpy.testing.assert_array_equal(read_binaryproto(str(tmp_path / "mean.binaryproto")), mean)


@pytest.mark.parametrize("suffix", [".caffemodel", ".caffemodel.h5"])
def test_weights_roundtrip_is_bit_identical(tmp_path, suffix):
    a = make()
    path = str(tmp_path / ("w" + suffix))
    a.save(path)
    b = make()
    b.copy_from(path)
    for pa, pb_ in zip(a.params["ip"], b.params["ip"]):
        assert pa.data.tobytes() == pb_.data.tobytes()


def test_caffemodel_decodes_field_by_field(tmp_path):
    net = make()
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    param = pb.NetParameter()
    param.ParseFromString(path.read_bytes())
    assert param.name == "io"
    assert [l.name for l in param.layer] == ["data", "ip"]
    ip = param.layer[1]
    assert ip.type == "InnerProduct" and list(ip.bottom) == ["data"]
    assert [list(b.shape.dim) for b in ip.blobs] == [[4, 3], [4]]
    numpy.testing.assert_array_equal(
        numpy.array(ip.blobs[0].data, numpy.float32).reshape(4, 3), net.params["ip"][0].data
    )


def test_shape_mismatch_names_layer_and_fix(tmp_path):
    make().save(str(tmp_path / "w.caffemodel"))
    other = make(NET.replace("num_output: 4", "num_output: 5"))
    with pytest.raises(ShapeMismatchError, match='"ip".*\\(4, 3\\).*\\(5, 3\\).*rename'):
        other.copy_from(str(tmp_path / "w.caffemodel"))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(WeightsFileError, match="not found"):
        make().copy_from(str(tmp_path / "none.caffemodel"))
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(WeightsFileError, match="bad.caffemodel"):
        make().copy_from(str(bad))


def test_legacy_4d_blob_matches_trailing_axes(tmp_path):
    param = pb.NetParameter()
    layer = param.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add(num=1, channels=1, height=4, width=3, data=list(range(12)))
    layer.blobs.add(num=1, channels=1, height=1, width=4, data=[1, 2, 3, 4])
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(param.SerializeToString())
    net = make()
    net.copy_from(str(path))
    numpy.testing.assert_array_equal(net.params["ip"][0].data.ravel(), numpy.arange(12))
    numpy.testing.assert_array_equal(net.params["ip"][1].data, [1, 2, 3, 4])


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    net = make()
    net.save(path)
    before = open(path, "rb").read()

    with pytest.raises(KeyboardInterrupt):
        with atomic_target(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(before[: len(before) // 2])
            raise KeyboardInterrupt
    assert open(path, "rb").read() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.caffemodel"]


@pytest.mark.parametrize("suffix", [".caffemodel", ".h5"])
def test_failed_save_keeps_the_previous_weights(tmp_path, monkeypatch, suffix):
    import netdef.io.caffemodel as cm

    path = str(tmp_path / ("w" + suffix))
    net = make()
    net.save(path)
    before = open(path, "rb").read()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cm, "encode_net_chunks", fail)
    monkeypatch.setattr(cm.backend, "to_numpy", fail)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert open(path, "rb").read() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w" + suffix]


def test_fast_encoder_decodes_to_the_same_message():
    net = make()
    for diff in (False, True):
        decoded = pb.NetParameter()
        decoded.ParseFromString(encode_net(net, write_diff=diff))
        assert decoded == net_to_proto(net, write_diff=diff)


def test_reads_caffemodel_written_by_caffe():
    root = parity_root()
    if root is None:
        pytest.skip("shared/parity not available")
    weights = read_weights(str(root / "nets" / "lenet" / "weights.caffemodel"))
    assert weights["conv1"][0].shape == (20, 1, 5, 5)
    assert weights["ip2"][1].shape == (10,)


def _protobuf_read(path):
    param = pb.NetParameter()
    param.ParseFromString(open(path, "rb").read())
    layers = list(param.layer) or list(param.layers)
    return {l.name: [proto_to_array(b) for b in l.blobs] for l in layers if l.blobs}


def test_memory_mapped_reader_agrees_with_protobuf(tmp_path):
    from netdef.io import wire

    net = make()
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    paths = [path]
    root = parity_root()
    if root is not None:
        paths.append(str(root / "nets" / "cifar10_quick" / "weights.caffemodel"))
    v1 = pb.NetParameter()
    layer = v1.layers.add(name="ip", type=pb.V1LayerParameter.INNER_PRODUCT)
    layer.blobs.add(num=1, channels=1, height=2, width=2, data=[1, 2, 3, 4])
    (tmp_path / "v1.caffemodel").write_bytes(v1.SerializeToString())
    paths.append(str(tmp_path / "v1.caffemodel"))
    for p in paths:
        fast = wire.read_layers(p)
        slow = _protobuf_read(p)
        assert list(fast) == list(slow)
        for name in slow:
            for (a, _), b in zip(fast[name], slow[name]):
                assert a.shape == b.shape and a.tobytes() == b.tobytes()
    assert wire.read_layers(str(tmp_path / "v1.caffemodel"))["ip"][0][1] is True  # legacy 4-D shape


def test_truncated_caffemodel_is_a_named_error(tmp_path):
    path = tmp_path / "w.caffemodel"
    make().save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(WeightsFileError, match="w.caffemodel"):
        make().copy_from(str(path))


# --- damaged and hostile weights, states and mean files ------------------------------------------------
def test_empty_caffemodel_is_a_named_error(tmp_path):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    with pytest.raises(WeightsFileError, match=r"empty.caffemodel: the weights file is empty \(0 bytes\)"):
        make().copy_from(str(path))


def test_hdf5_data_file_given_as_weights_is_named(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f["data"] = numpy.zeros((4, 3), numpy.float32)
        f["label"] = numpy.zeros(4, numpy.float32)
    with pytest.raises(WeightsFileError, match="train.h5: not an HDF5 weights file.*HDF5 data file"):
        make().copy_from(str(path))


def _h5_weights(path, odd):
    import h5py

    with h5py.File(path, "w") as f:
        group = f.create_group("data").create_group("ip")
        group["0"] = numpy.zeros((4, 3), numpy.float32)
        odd(f, group)


@pytest.mark.parametrize(
    ("odd", "expected"),
    [
        (lambda f, g: g.__setitem__("1", __import__("h5py").SoftLink("/data/ip/1")), 'dataset "data/ip/1"'),
        (
            lambda f, g: g.create_dataset("1", data=["a", "b"], dtype=__import__("h5py").string_dtype()),
            'dataset "data/ip/1" holds string values',
        ),
        (lambda f, g: g.create_dataset("1", data=numpy.float32(3)), r"shape \(\)"),
        (
            lambda f, g: g.create_dataset("1", shape=(1 << 24, 1 << 12), dtype="f4", chunks=(1, 16)),
            r'dataset "data/ip/1": shape \(16777216, 4096\) needs 256.0 GiB',
        ),
        (lambda f, g: g.__setitem__("1", __import__("h5py").ExternalLink("nowhere.h5", "/x")), 'dataset "data/ip/1"'),
    ],
    ids=["softlink-loop", "vlen-strings", "scalar", "declares-256GiB", "dangling-external-link"],
)
def test_corrupt_hdf5_weights_are_named(tmp_path, odd, expected):
    pytest.importorskip("h5py")
    path = tmp_path / "w.h5"
    _h5_weights(path, odd)
    from netdef import limits

    limits.set_max_array_bytes("1G")
    try:
        with pytest.raises((WeightsFileError, ShapeMismatchError), match=expected):
            make().copy_from(str(path))
    finally:
        limits.set_max_array_bytes(None)


def test_hdf5_weights_with_a_bad_header_are_named(tmp_path):
    pytest.importorskip("h5py")
    path = tmp_path / "w.h5"
    make().save(str(path))
    raw = bytearray(path.read_bytes())
    raw[8:40] = b"\xff" * 32
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsFileError, match="w.h5"):
        make().copy_from(str(path))


def _h5_state(path, **entries):
    import h5py

    with h5py.File(path, "w") as f:
        f["iter"] = numpy.array([5], numpy.int32)
        f.create_group("history")["0"] = numpy.zeros(3, numpy.float32)
        for name, value in entries.items():
            del f[name]
            value(f, name)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"iter": lambda f, n: f.create_dataset(n, data=b"12")}, 'dataset "iter" holds string values'),
        ({"iter": lambda f, n: f.create_dataset(n, data=numpy.zeros(0, "i4"))}, "must hold one integer"),
        ({"iter": lambda f, n: f.__setitem__(n, __import__("h5py").SoftLink("/iter"))}, 'dataset "iter"'),
        ({"history": lambda f, n: f.create_dataset(n, data=[1.0])}, '"history" must be a group'),
    ],
    ids=["iter-as-string", "iter-empty", "iter-softlink-loop", "history-not-a-group"],
)
def test_corrupt_hdf5_solverstate_is_named(tmp_path, entries, expected):
    pytest.importorskip("h5py")
    from netdef.io.solverstate import read_solverstate

    path = tmp_path / "s.solverstate.h5"
    _h5_state(path, **entries)
    with pytest.raises(WeightsFileError, match=expected):
        read_solverstate(str(path))


def test_hdf5_solverstate_learned_net_not_utf8_is_named(tmp_path):
    pytest.importorskip("h5py")
    from netdef.io.solverstate import read_solverstate

    path = tmp_path / "s.solverstate.h5"
    _h5_state(path)
    import h5py

    with h5py.File(path, "a") as f:
        f["learned_net"] = numpy.bytes_(b"\xff\xfe")
    with pytest.raises(WeightsFileError, match='dataset "learned_net" is not UTF-8'):
        read_solverstate(str(path))


@pytest.mark.parametrize("dims", [[1 << 62, 1 << 62], [-2, -3], [1 << 40, 0]])
def test_blob_dims_that_overflow_are_named(tmp_path, dims):
    from netdef.io.solverstate import read_solverstate

    blob = pb.BlobProto(data=[1.0, 2.0])
    blob.shape.dim.extend(dims)
    mean = tmp_path / "mean.binaryproto"
    mean.write_bytes(blob.SerializeToString())
    with pytest.raises(WeightsFileError, match="mean.binaryproto.*out of range|mean.binaryproto.*needs"):
        read_binaryproto(str(mean))
    state = tmp_path / "s.solverstate"
    state.write_bytes(pb.SolverState(iter=3, history=[blob]).SerializeToString())
    with pytest.raises(WeightsFileError, match="s.solverstate: history blob 0"):
        read_solverstate(str(state))
    model = tmp_path / "w.caffemodel"
    param = pb.NetParameter()
    param.layer.add(name="ip", type="InnerProduct", blobs=[blob])
    model.write_bytes(param.SerializeToString())
    with pytest.raises(WeightsFileError, match="w.caffemodel"):
        make().copy_from(str(model))


def test_weights_matching_no_layer_or_part_warn_which_keep_their_values(tmp_path, caplog):
    other = make(NET.replace('name: "ip"', 'name: "fc"'))
    path = tmp_path / "other.caffemodel"
    other.save(str(path))
    net = make()
    before = net.params["ip"][0].data.copy()
    with caplog.at_level("WARNING", logger="netdef"):
        net.copy_from(str(path))
    assert "No layer of the net matched a layer in" in caplog.text and "(ip)" in caplog.text
    numpy.testing.assert_array_equal(net.params["ip"][0].data, before)
    caplog.clear()
    two = (
        NET + 'layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "ip2" inner_product_param { num_output: 2 } }'
    )
    with caplog.at_level("WARNING", logger="netdef"):
        make(two).copy_from(_saved(tmp_path))
    assert "1 of 2 layers with parameters are not in" in caplog.text and "ip2" in caplog.text


def _saved(tmp_path):
    path = tmp_path / "mine.caffemodel"
    make().save(str(path))
    return str(path)


def test_sidecar_that_is_not_an_object_is_named(tmp_path):
    from netdef.io.solverstate import read_sidecar, sidecar_path

    state = tmp_path / "s.solverstate"
    with open(sidecar_path(str(state)), "w") as f:
        f.write("[1, 2]")
    with pytest.raises(WeightsFileError, match="not a netdef resume sidecar \\(a JSON list, not an object\\)"):
        read_sidecar(str(state))


def test_missing_leveldb_is_named_before_the_missing_package(tmp_path, monkeypatch):
    import sys

    from netdef.data.sources import LevelDBReader
    from netdef.errors import DataSourceError

    monkeypatch.setitem(sys.modules, "plyvel", None)
    with pytest.raises(DataSourceError, match="LevelDB database not found: .*nodb"):
        LevelDBReader(str(tmp_path / "nodb"))
    (tmp_path / "db").mkdir()
    with pytest.raises(DataSourceError, match="needs the plyvel package"):
        LevelDBReader(str(tmp_path / "db"))


def test_weights_named_hdf5_are_written_as_hdf5(tmp_path):
    net = netdef.Net(
        net_from_text(
            'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }'
        ),
        netdef.TEST,
    )
    path = tmp_path / "w.hdf5"
    net.save(str(path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"  # the HDF5 signature, not a binary NetParameter
