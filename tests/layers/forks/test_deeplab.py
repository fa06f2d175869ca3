"""Tests of DeepLab v1's types (netdef/layers/forks/deeplab.py): ImageSegData, Padding, MatWrite."""

import struct

import numpy
import pytest

import netdef
from netdef.errors import BlobCountError, DataSourceError, InvalidParameterError, ShapeMismatchError
from netdef.layers.forks.deeplab import mat_v5_bytes, pad_or_crop
from netdef.proto import netdef_pb2 as pb
from netdef.testing import check_gradient, make_layer, make_net, run_layer

HAS_PADDING_PARAM = "padding_param" in pb.LayerParameter.DESCRIPTOR.fields_by_name
needs_padding_param = pytest.mark.skipif(
    not HAS_PADDING_PARAM, reason="this schema has no LayerParameter.padding_param (DeepLab's V1-only field)"
)

# 2 x 3 RGB image and its 2 x 3 label image
RGB = numpy.array(
    [[[10, 20, 30], [40, 50, 60], [70, 80, 90]], [[11, 21, 31], [41, 51, 61], [71, 81, 91]]], dtype=numpy.uint8
)
SEG = numpy.array([[0, 1, 2], [3, 4, 15]], dtype=numpy.uint8)
BGR = RGB[:, :, ::-1].transpose(2, 0, 1).astype(float)

SEG_DATA = (
    'layer {{ name: "d" type: "ImageSegData" {tops} '
    'image_data_param {{ source: "list.txt" batch_size: {b} {extra} }} transform_param {{ {transform} }} }}'
)
THREE_TOPS = 'top: "data" top: "label" top: "data_dim"'


@pytest.fixture
def files(tmp_path, monkeypatch):
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    image.fromarray(RGB).save(tmp_path / "img" / "a.png")
    image.fromarray(SEG).save(tmp_path / "img" / "a_seg.png")
    big = numpy.arange(4 * 5 * 3, dtype=numpy.uint8).reshape(4, 5, 3)
    image.fromarray(big).save(tmp_path / "img" / "big.png")
    image.fromarray(numpy.arange(20, dtype=numpy.uint8).reshape(4, 5)).save(tmp_path / "img" / "big_seg.png")
    return tmp_path


def seg_net(tmp_path, lines, b=1, extra="label_type: PIXEL", transform="", tops=THREE_TOPS, phase=netdef.TEST):
    (tmp_path / "list.txt").write_text(lines)
    return make_net(SEG_DATA.format(tops=tops, b=b, extra=extra, transform=transform), phase)


def outputs(net):
    net.forward()
    return [net.blobs[k].data.copy() for k in ("data", "label", "data_dim") if k in net.blobs]


# --- ImageSegData ------------------------------------------------------------------------------
def test_pad_to_crop_size_with_mean_and_ignore_label(files):
    net = seg_net(
        files,
        "/a.png /a_seg.png\n",
        extra='label_type: PIXEL root_folder: "img"',
        transform="crop_size: 4 mean_value: 1 mean_value: 2 mean_value: 3",
    )
    assert [net.blobs[k].shape for k in ("data", "label", "data_dim")] == [(1, 3, 4, 4), (1, 1, 4, 4), (1, 1, 1, 2)]
    x, y, dim = outputs(net)
    # TEST phase, image 2 x 3 padded to 4 x 4 at the bottom and right: the centre crop of 4 x 4 is all of it
    want = numpy.zeros((3, 4, 4))
    want[:, :2, :3] = BGR - numpy.array([1, 2, 3])[:, None, None]
    numpy.testing.assert_array_equal(x[0], want)  # the padding holds the mean, so it is 0 after subtraction
    numpy.testing.assert_array_equal(
        y[0, 0], [[0, 1, 2, 255], [3, 4, 15, 255], [255, 255, 255, 255], [255, 255, 255, 255]]
    )
    numpy.testing.assert_array_equal(dim.reshape(-1), [2, 3])


def test_test_phase_centre_crop_scale_and_ignore_label(files):
    net = seg_net(
        files,
        "img/big.png img/big_seg.png\n",
        transform="crop_size: 2 scale: 0.5 mean_value: 4",
        extra="label_type: PIXEL ignore_label: 7",
    )
    x, y, dim = outputs(net)
    big = numpy.arange(60).reshape(4, 5, 3)[:, :, ::-1].transpose(2, 0, 1)
    # centre offsets (4 - 2) // 2 = 1 and (5 - 2) // 2 = 1
    numpy.testing.assert_array_equal(x[0], (big[:, 1:3, 1:3] - 4) * 0.5)
    numpy.testing.assert_array_equal(y[0, 0], [[6, 7], [11, 12]])
    numpy.testing.assert_array_equal(dim.reshape(-1), [2, 2])  # the image size, at most the crop


def test_train_phase_mirror_flips_image_and_label_together(files):
    netdef.set_random_seed(5)
    net = seg_net(
        files, "img/big.png img/big_seg.png\n", b=1, transform="crop_size: 3 mirror: true", phase=netdef.TRAIN
    )
    rng = numpy.random.default_rng(5)  # per image: the flip, then the row offset, then the column offset
    big = numpy.arange(60).reshape(4, 5, 3)[:, :, ::-1].transpose(2, 0, 1)
    seg = numpy.arange(20).reshape(4, 5)
    flips = []
    for _ in range(6):
        flip, r, q = rng.integers(0, 2), rng.integers(0, 2), rng.integers(0, 3)
        x, y, _ = outputs(net)
        want_x, want_y = big[:, r : r + 3, q : q + 3], seg[r : r + 3, q : q + 3]
        if flip:
            want_x, want_y = want_x[..., ::-1], want_y[..., ::-1]
        numpy.testing.assert_array_equal(x[0], want_x)
        numpy.testing.assert_array_equal(y[0, 0], want_y)
        flips.append(flip)
    assert 0 < sum(flips) < 6


def test_image_and_none_label_types_fill_the_plane(files):
    net = seg_net(files, "img/a.png 7\nimg/a.png\nimg/a.png 300\n", b=3, extra="label_type: IMAGE")
    _, y, dim = outputs(net)
    # a missing label reads as 0 (the fork's atoi("")); the 8-bit plane saturates 300 to 255
    assert [set(plane.ravel()) for plane in y[:, 0]] == [{7.0}, {0.0}, {255.0}]
    numpy.testing.assert_array_equal(dim.reshape(3, 2), [[2, 3]] * 3)
    net = seg_net(files, "img/a.png\n", extra="label_type: NONE ignore_label: 9")
    _, y, _ = outputs(net)
    numpy.testing.assert_array_equal(y, numpy.full((1, 1, 2, 3), 9.0))


def test_one_top_batches_and_wrap_around(files):
    net = seg_net(files, "img/a.png img/a_seg.png\nimg/a.png img/a_seg.png\n\n", b=3, tops='top: "data"')
    assert list(net.blobs) == ["data"]
    (x,) = outputs(net)
    numpy.testing.assert_array_equal(x, [BGR] * 3)


def test_refusals(files):
    with pytest.raises(DataSourceError, match=r'Layer "d" \(type ImageSegData\): image list file not found: list.txt'):
        make_net(SEG_DATA.format(tops=THREE_TOPS, b=1, extra="", transform=""), netdef.TEST)
    with pytest.raises(DataSourceError, match=r"list.txt line 2: label_type PIXEL needs .*Received: \'img/a.png\'"):
        seg_net(files, "img/a.png img/a_seg.png\nimg/a.png\n")
    with pytest.raises(DataSourceError, match=r"line 1: label_type IMAGE needs .*Received: 'img/a.png x'"):
        seg_net(files, "img/a.png x\n", extra="label_type: IMAGE")
    with pytest.raises(DataSourceError, match="names no images"):
        seg_net(files, "\n\n")
    with pytest.raises(DataSourceError, match=r"cannot load image img/missing.png \(list.txt line 1\)"):
        seg_net(files, "img/missing.png img/a_seg.png\n")
    with pytest.raises(
        InvalidParameterError, match='takes mean_value, not mean_file. Received: mean_file "m.binaryproto"'
    ):
        seg_net(files, "img/a.png img/a_seg.png\n", transform='mean_file: "m.binaryproto"')
    with pytest.raises(InvalidParameterError, match="1 mean_value or one per channel \\(3\\). Received: 2"):
        seg_net(files, "img/a.png img/a_seg.png\n", transform="mean_value: 1 mean_value: 2")
    with pytest.raises(BlobCountError, match="at most 3 top"):
        seg_net(files, "img/a.png img/a_seg.png\n", tops=THREE_TOPS + ' top: "x"')


def test_refusals_while_reading(files):
    net = seg_net(files, "img/a.png img/a_seg.png\nimg/a.png img/big_seg.png\n")
    net.forward()
    with pytest.raises(
        ShapeMismatchError, match=r"label image must have its image's size \(2, 3\). Received: \(4, 5\)"
    ):
        net.forward()
    net = seg_net(files, "img/a.png img/a_seg.png\nimg/big.png img/big_seg.png\n", b=2)
    with pytest.raises(ShapeMismatchError, match=r"without crop_size every image needs the first one's size \(2, 3\)"):
        net.forward()


# --- Padding -------------------------------------------------------------------------------------
def test_pad_or_crop_literal_values():
    x = numpy.arange(6.0).reshape(1, 1, 2, 3)
    numpy.testing.assert_array_equal(pad_or_crop(x, 1, 0)[0, 0], [[0, 0, 0, 0], [0, 0, 1, 2], [0, 3, 4, 5]])
    y = numpy.arange(25.0).reshape(1, 1, 5, 5)
    numpy.testing.assert_array_equal(pad_or_crop(y, -1, -2)[0, 0], [[6, 7], [11, 12]])


@needs_padding_param
def test_padding_layer_forward_backward_and_refusals():
    layer = make_layer('type: "Padding" padding_param { pad_beg: -1 pad_end: -2 }')
    bottom, top = run_layer(layer, [numpy.arange(50.0).reshape(1, 2, 5, 5)])
    assert top[0].shape == (1, 2, 2, 2)
    numpy.testing.assert_array_equal(top[0].data[0, 1], [[31, 32], [36, 37]])
    check_gradient(make_layer('type: "Padding" padding_param { pad_beg: 2 pad_end: 1 }'), [numpy.ones((2, 1, 2, 3))])
    check_gradient(make_layer('type: "Padding" padding_param { pad_beg: -1 }'), [numpy.ones((1, 2, 3, 3))])
    with pytest.raises(InvalidParameterError, match="both >= 0 \\(pad\\) or both <= 0 \\(crop\\). Received: pad_beg 1"):
        run_layer(make_layer('type: "Padding" padding_param { pad_beg: 1 pad_end: -1 }'), [numpy.ones((1, 1, 3, 3))])
    with pytest.raises(ShapeMismatchError, match="cropping leaves no pixels"):
        run_layer(make_layer('type: "Padding" padding_param { pad_beg: -2 pad_end: -1 }'), [numpy.ones((1, 1, 3, 3))])


@pytest.mark.skipif(HAS_PADDING_PARAM, reason="the schema has LayerParameter.padding_param")
def test_padding_layer_names_the_missing_schema_field():
    with pytest.raises(InvalidParameterError, match="no LayerParameter.padding_param field"):
        run_layer(make_layer('type: "Padding"'), [numpy.ones((1, 1, 3, 3))])


# --- MatWrite -------------------------------------------------------------------------------------
def read_mat(raw: bytes):
    """(header text, variable name, class, dims, values) of a one-variable level-5 file netdef wrote."""
    assert raw[124:128] == b"\x00\x01IM"
    kind, size = struct.unpack("<II", raw[128:136])
    assert kind == 14 and size == len(raw) - 136
    flags = struct.unpack("<IIII", raw[136:152])
    assert flags[:2] == (6, 8)
    dtype, nbytes = struct.unpack("<II", raw[152:160])
    assert dtype == 5
    dims = struct.unpack(f"<{nbytes // 4}i", raw[160 : 160 + nbytes])
    at = 160 + nbytes + (-nbytes % 8)
    dtype, nbytes = struct.unpack("<II", raw[at : at + 8])
    name = raw[at + 8 : at + 8 + nbytes].decode()
    at += 8 + nbytes + (-nbytes % 8)
    dtype, nbytes = struct.unpack("<II", raw[at : at + 8])
    values = numpy.frombuffer(raw[at + 8 : at + 8 + nbytes], dtype="<f4" if dtype == 7 else "<f8")
    return raw[:116].rstrip().decode(), name, flags[2], dims, values


def test_mat_v5_bytes_layout():
    raw = mat_v5_bytes("data", numpy.arange(6, dtype=numpy.float32).reshape(1, 1, 2, 3))
    assert len(raw) == 128 + 8 + 16 + 24 + 16 + 8 + 24
    text, name, cls, dims, values = read_mat(raw)
    assert text.startswith("MATLAB 5.0 MAT-file")
    # single class (7), dims W x H x C x N, values in the blob's memory order (column-major W first)
    assert (name, cls, dims, values.tolist()) == ("data", 7, (3, 2, 1, 1), [0, 1, 2, 3, 4, 5])
    _, _, cls, _, values = read_mat(mat_v5_bytes("data", numpy.array([[0.5]])))
    assert (cls, values.tolist()) == (6, [0.5])


MAT_NET = (
    'layer {{ name: "in" type: "Input" top: "x" top: "z" input_param {{ shape {{ dim: 2 dim: 3 }} '
    "shape {{ dim: 1 dim: 1 dim: 1 dim: 2 }} }} }} "
    'layer {{ name: "w" type: "MatWrite" bottom: "x" bottom: "z" mat_write_param {{ {p} }} }}'
)


def test_matwrite_names_files_from_source_with_strip_and_period(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "ids.txt").write_text("img1.jpg extra\n\nimg2.jpg\nimg3.jpg\n")
    net = make_net(MAT_NET.format(p='prefix: "out/" source: "ids.txt" strip: 4 period: 2'))
    net.blobs["x"].data[...] = numpy.arange(6).reshape(2, 3)
    for _ in range(3):
        net.forward()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "img1_blob_0.mat",
        "img1_blob_1.mat",
        "img3_blob_0.mat",
        "img3_blob_1.mat",
    ]
    _, name, cls, dims, values = read_mat((tmp_path / "out" / "img1_blob_0.mat").read_bytes())
    # a 2-axis (N, C) blob is N x C x 1 x 1 in the fork's legacy view: W x H x C x N = 1 x 1 x 3 x 2
    assert (name, cls, dims, values.tolist()) == ("data", 7, (1, 1, 3, 2), [0, 1, 2, 3, 4, 5])
    with pytest.raises(DataSourceError, match="forward pass 5 has no file name: mat_write_param.source lists 3"):
        net.forward()
        net.forward()


def test_matwrite_without_source_and_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = make_net(MAT_NET.format(p='prefix: "r_"'))
    net.forward()
    net.forward()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "r_iter_0_blob_0.mat",
        "r_iter_0_blob_1.mat",
        "r_iter_1_blob_0.mat",
        "r_iter_1_blob_1.mat",
    ]
    with pytest.raises(InvalidParameterError, match="mat_write_param.prefix is required"):
        make_net(MAT_NET.format(p=""))
    with pytest.raises(InvalidParameterError, match="period must be positive. Received: 0"):
        make_net(MAT_NET.format(p='prefix: "a" period: 0'))
    (tmp_path / "ids.txt").write_text("ab\n")
    with pytest.raises(DataSourceError, match=r"ids.txt line 1: strip 2 leaves nothing of 'ab'. Valid: strip < 2"):
        make_net(MAT_NET.format(p='prefix: "a" source: "ids.txt" strip: 2'))
    with pytest.raises(DataSourceError, match="cannot read mat_write_param.source nope.txt"):
        make_net(MAT_NET.format(p='prefix: "a" source: "nope.txt"'))
    net = make_net(MAT_NET.format(p='prefix: "no/such/folder/"'))
    with pytest.raises(InvalidParameterError, match="cannot write no/such/folder/iter_0_blob_0.mat"):
        net.forward()
