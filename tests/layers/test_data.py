"""Tests of netdef/layers/data.py: Data (LMDB / LevelDB), ImageData and WindowData."""

import gc
import io
import sys
import threading

import numpy
import pytest

import netdef
from netdef.data.prefetch import Prefetcher
from netdef.errors import DataSourceError, InvalidParameterError, ShapeMismatchError
from netdef.io.blobproto import write_binaryproto
from netdef.proto import net_from_text, parse_text
from netdef.proto import netdef_pb2 as pb
from netdef.solvers import get_solver
from netdef.testing import make_net


def prefetch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("netdef prefetch")}


def settle_all_prefetchers() -> None:
    for prefetcher in [o for o in gc.get_objects() if isinstance(o, Prefetcher)]:
        prefetcher.settle()


@pytest.fixture(autouse=True)
def no_thread_outlives_its_net():
    """Every test here leaves no prefetch thread behind once its nets are garbage."""
    before = prefetch_threads()
    yield
    # a batch still being read keeps its layer alive: let the reads finish, then collect the nets
    settle_all_prefetchers()
    gc.collect()
    left = prefetch_threads() - before
    for thread in left:
        thread.join(timeout=5)
    assert [t.name for t in left if t.is_alive()] == []


def forward(n):
    n.forward()
    return n.blobs["data"].data.copy(), n.blobs["label"].data.copy()


def need_lmdb():
    return pytest.importorskip("lmdb", reason="the lmdb package is not installed")


def need_pillow():
    return pytest.importorskip("PIL.Image", reason="Pillow is not installed")


def write_lmdb(path, values):
    lmdb = need_lmdb()
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(f"{i:08d}".encode(), value if isinstance(value, bytes) else value.SerializeToString())
    env.close()


def u8_datum(values, label):
    values = numpy.asarray(values, dtype=numpy.uint8)
    c, h, w = values.shape
    return pb.Datum(channels=c, height=h, width=w, data=values.tobytes(), label=label)


def png_bytes(rgb):
    image = need_pillow()
    buf = io.BytesIO()
    image.fromarray(numpy.asarray(rgb, dtype=numpy.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# three 2 x 2 x 3 uint8 samples: sample k holds 12 k .. 12 k + 11
SAMPLES = [numpy.arange(12).reshape(2, 2, 3) + 12 * k for k in range(3)]

DATA = (
    'layer {{ name: "d" type: "Data" top: "data" top: "label" '
    'data_param {{ source: "db" backend: LMDB batch_size: {b} {extra} }} {transform} }}'
)


@pytest.fixture
def u8db(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "db", [u8_datum(s, 10 + k) for k, s in enumerate(SAMPLES)])
    return tmp_path


# --- Data -----------------------------------------------------------------------------------------
def test_data_uint8_batches_labels_and_wrap_around(u8db):
    n = make_net(DATA.format(b=2, extra="", transform=""))
    assert n.blobs["data"].shape == (2, 2, 2, 3) and n.blobs["label"].shape == (2,)
    x, y = forward(n)
    numpy.testing.assert_array_equal(x, [SAMPLES[0], SAMPLES[1]])
    numpy.testing.assert_array_equal(y, [10, 11])
    x, y = forward(n)
    numpy.testing.assert_array_equal(x, [SAMPLES[2], SAMPLES[0]])  # the cursor starts over after the last record
    numpy.testing.assert_array_equal(y, [12, 10])


def test_data_float_data_and_a_single_top(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "db", [pb.Datum(channels=1, height=1, width=3, float_data=[0.5, -1.25, 3], label=4)])
    n = make_net('layer { name: "d" type: "Data" top: "data" data_param { source: "db" backend: LMDB batch_size: 2 } }')
    n.forward()
    numpy.testing.assert_array_equal(n.blobs["data"].data, [[[[0.5, -1.25, 3]]]] * 2)


def test_data_transform_crop_mirror_mean_scale_seeded(u8db):
    netdef.set_random_seed(2)  # the net built next draws from default_rng(2)
    n = make_net(
        DATA.format(
            b=3,
            extra="",
            transform="transform_param { crop_size: 2 mirror: true scale: 0.5 mean_value: 1 mean_value: 3 }",
        )
    )
    assert n.blobs["data"].shape == (3, 2, 2, 2)
    x, y = forward(n)
    rng = numpy.random.default_rng(2)  # the transformer draws flips, then row offsets, then column offsets
    flips, rows, cols = rng.integers(0, 2, 3), rng.integers(0, 1, 3), rng.integers(0, 2, 3)
    want = numpy.zeros((3, 2, 2, 2))
    for i in range(3):
        patch = SAMPLES[i][:, rows[i] : rows[i] + 2, cols[i] : cols[i] + 2].astype(float)
        if flips[i]:
            patch = patch[:, :, ::-1]
        want[i] = (patch - numpy.array([1, 3])[:, None, None]) * 0.5
    numpy.testing.assert_array_equal(x, want)
    assert flips.any() and not flips.all()
    numpy.testing.assert_array_equal(y, [10, 11, 12])


def test_data_test_phase_center_crop_with_mean_file(u8db):
    mean = numpy.full((1, 2, 2, 3), 2.0, dtype=numpy.float32)
    mean[0, 1] = 4
    write_binaryproto(str(u8db / "mean.binaryproto"), mean)
    n = make_net(
        DATA.format(b=1, extra="", transform='transform_param { crop_size: 2 mean_file: "mean.binaryproto" }'),
        netdef.TEST,
    )
    x, _ = forward(n)
    # (3 - 2) // 2 = 0 for the columns: the centre crop starts at column 0
    numpy.testing.assert_array_equal(x, [[[[-2, -1], [1, 2]], [[2, 3], [5, 6]]]])


def test_data_encoded_png_is_bgr_and_force_gray(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rgb = numpy.array([[[10, 20, 30], [40, 50, 60]]], dtype=numpy.uint8)  # 1 x 2 pixels
    write_lmdb(tmp_path / "db", [pb.Datum(data=png_bytes(rgb), encoded=True, label=7)])
    n = make_net(
        'layer { name: "d" type: "Data" top: "data" top: "label" '
        'data_param { source: "db" backend: LMDB batch_size: 1 } }'
    )
    x, y = forward(n)
    numpy.testing.assert_array_equal(x, [[[[30, 60]], [[20, 50]], [[10, 40]]]])
    assert y.tolist() == [7]
    grey = numpy.array([[[90, 90, 90], [200, 200, 200]]], dtype=numpy.uint8)
    write_lmdb(tmp_path / "grey", [pb.Datum(data=png_bytes(grey), encoded=True, label=1)])
    n = make_net(
        'layer { name: "d" type: "Data" top: "data" transform_param { force_gray: true } '
        'data_param { source: "grey" backend: LMDB batch_size: 1 } }'
    )
    n.forward()
    numpy.testing.assert_array_equal(n.blobs["data"].data, [[[[90, 200]]]])


def test_data_rand_skip_seeded(u8db):
    netdef.set_random_seed(9)
    skip = int(numpy.random.default_rng(9).integers(0, 3))
    n = make_net(DATA.format(b=1, extra="rand_skip: 3", transform=""))
    _, y = forward(n)
    assert y.tolist() == [10 + skip]


def test_data_state_round_trip(u8db):
    n = make_net(DATA.format(b=2, extra="", transform=""))
    forward(n)
    state = n.layers[0].get_state()
    after = [forward(n)[1].tolist() for _ in range(2)]
    fresh = make_net(DATA.format(b=2, extra="", transform=""))
    fresh.layers[0].set_state(state)
    assert [forward(fresh)[1].tolist() for _ in range(2)] == after == [[12, 10], [11, 12]]


def test_data_train_and_test_nets_share_one_database(u8db):
    # lmdb opens a database once per process; both nets must still read it, each at its own position
    train = make_net(DATA.format(b=2, extra="", transform=""))
    test = make_net(DATA.format(b=1, extra="", transform=""), netdef.TEST)
    assert forward(train)[1].tolist() == [10, 11]
    assert forward(test)[1].tolist() == [10]
    assert forward(train)[1].tolist() == [12, 10]
    del train
    assert forward(test)[1].tolist() == [11]


def test_data_leveldb_with_plyvel(tmp_path, monkeypatch):
    plyvel = pytest.importorskip("plyvel", reason="plyvel is not installed")
    monkeypatch.chdir(tmp_path)
    db = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)
    for k, s in enumerate(SAMPLES):
        db.put(f"{k:08d}".encode(), u8_datum(s, k).SerializeToString())
    db.close()
    n = make_net('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "ldb" batch_size: 2 } }')
    assert [forward(n)[1].tolist() for _ in range(2)] == [[0, 1], [2, 0]]


def test_data_error_missing_source(u8db):
    with pytest.raises(DataSourceError, match='"d" \\(type Data\\).*LMDB database not found: nope'):
        make_net(
            'layer { name: "d" type: "Data" top: "data" data_param { source: "nope" backend: LMDB batch_size: 1 } }'
        )


def test_data_error_parameters(u8db):
    with pytest.raises(InvalidParameterError, match="source is required"):
        make_net('layer { name: "d" type: "Data" top: "data" data_param { batch_size: 1 } }')
    with pytest.raises(InvalidParameterError, match="batch_size must be positive. Received: 0"):
        make_net(DATA.format(b=0, extra="", transform=""))
    with pytest.raises(ShapeMismatchError, match="crop_size 3 is larger"):
        make_net(DATA.format(b=1, extra="", transform="transform_param { crop_size: 3 }"))


def test_data_error_empty_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "db", [])
    with pytest.raises(DataSourceError, match="LMDB database db is empty"):
        make_net(DATA.format(b=1, extra="", transform=""))


def test_data_error_bad_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "db", [b"\xff\xff\xff"])
    with pytest.raises(DataSourceError, match="record b'00000000': not a serialised Datum"):
        make_net(DATA.format(b=1, extra="", transform=""))
    write_lmdb(tmp_path / "short", [pb.Datum(channels=1, height=2, width=2, data=b"abc")])
    with pytest.raises(DataSourceError, match="needs 4 data bytes. Received: 3"):
        make_net(
            'layer { name: "d" type: "Data" top: "data" data_param { source: "short" backend: LMDB batch_size: 1 } }'
        )
    write_lmdb(tmp_path / "png", [pb.Datum(data=b"not a png", encoded=True)])
    with pytest.raises(DataSourceError, match="cannot decode the encoded image"):
        make_net(
            'layer { name: "d" type: "Data" top: "data" data_param { source: "png" backend: LMDB batch_size: 1 } }'
        )


def test_data_error_shapes_differ_within_a_batch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "db", [u8_datum(numpy.zeros((1, 2, 2)), 0), u8_datum(numpy.zeros((1, 3, 3)), 1)])
    n = make_net(DATA.format(b=2, extra="", transform=""))
    with pytest.raises(ShapeMismatchError, match="record b'00000001'"):
        n.forward()


def test_data_error_backend_mismatch_and_missing_packages(u8db, monkeypatch):
    with pytest.raises(DataSourceError, match="LMDB database but data_param.backend is LEVELDB"):
        make_net('layer { name: "d" type: "Data" top: "data" data_param { source: "db" batch_size: 1 } }')
    monkeypatch.setitem(sys.modules, "plyvel", None)
    (u8db / "ldb").mkdir()  # an existing LevelDB folder: only the missing package is the problem
    with pytest.raises(DataSourceError, match="needs the plyvel package.*convert the database to LMDB"):
        make_net('layer { name: "d" type: "Data" top: "data" data_param { source: "ldb" batch_size: 1 } }')
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(DataSourceError, match=r'`pip install lmdb` \(the "db" extra of netdef-caffe'):
        make_net(DATA.format(b=1, extra="", transform=""))


# --- ImageData ------------------------------------------------------------------------------------
IMAGES = {
    "a.png": numpy.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]]),
    "b c.png": numpy.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]),  # a name with a space
    "d.png": numpy.array([[[0, 0, 255], [255, 0, 0]], [[0, 255, 0], [9, 9, 9]]]),
}


def bgr(rgb):
    return numpy.asarray(rgb)[:, :, ::-1].transpose(2, 0, 1)


@pytest.fixture
def images(tmp_path, monkeypatch):
    image = need_pillow()
    monkeypatch.chdir(tmp_path)
    for name, rgb in IMAGES.items():
        image.fromarray(rgb.astype(numpy.uint8)).save(tmp_path / name)
    (tmp_path / "list.txt").write_text("a.png 3\nb c.png 5\n\n# a comment\nd.png 8\n")
    return tmp_path


IMAGE_DATA = (
    'layer {{ name: "i" type: "ImageData" top: "data" top: "label" '
    'image_data_param {{ source: "{src}" batch_size: {b} {extra} }} {transform} }}'
)
# ImageData reads data_param.prefetch, as Caffe's prefetching layers all do
PREFETCH = "data_param {{ prefetch: {} }}"


def test_imagedata_bgr_pixels_labels_and_wrap_around(images):
    n = make_net(IMAGE_DATA.format(src="list.txt", b=2, extra="", transform=""))
    assert n.blobs["data"].shape == (2, 3, 2, 2)
    x, y = forward(n)
    numpy.testing.assert_array_equal(x, [bgr(IMAGES["a.png"]), bgr(IMAGES["b c.png"])])
    assert y.tolist() == [3, 5]
    x, y = forward(n)
    numpy.testing.assert_array_equal(x, [bgr(IMAGES["d.png"]), bgr(IMAGES["a.png"])])
    assert y.tolist() == [8, 3]


def test_imagedata_root_folder_and_list_folder_fallback(images, tmp_path):
    (tmp_path / "sub" / "imgs").mkdir(parents=True)
    (tmp_path / "sub" / "list.txt").write_text("a.png 1\n")
    (tmp_path / "a.png").rename(tmp_path / "sub" / "imgs" / "a.png")
    # "imgs/" + "a.png" is not found from the working directory, so it is looked up beside the list file
    n = make_net(IMAGE_DATA.format(src="sub/list.txt", b=1, extra='root_folder: "imgs/"', transform=""))
    x, _ = forward(n)
    numpy.testing.assert_array_equal(x, [bgr(IMAGES["a.png"])])


def test_imagedata_grey_and_resize(tmp_path, monkeypatch):
    image = need_pillow()
    monkeypatch.chdir(tmp_path)
    image.fromarray(numpy.array([[0, 100]], dtype=numpy.uint8)).save(tmp_path / "g.png")
    (tmp_path / "list.txt").write_text("g.png 0\n")
    extra = "is_color: false new_height: 1 new_width: 4"
    n = make_net(IMAGE_DATA.format(src="list.txt", b=1, extra=extra, transform=""))
    x, _ = forward(n)
    # pixel-centre bilinear: samples at -0.25, 0.25, 0.75, 1.25 (clamped) of [0, 100]
    numpy.testing.assert_array_equal(x, [[[[0, 25, 75, 100]]]])


def test_imagedata_transform_test_phase(images):
    n = make_net(
        IMAGE_DATA.format(
            src="list.txt", b=1, extra="", transform="transform_param { crop_size: 1 scale: 2 mean_value: 5 }"
        ),
        netdef.TEST,
    )
    x, _ = forward(n)
    numpy.testing.assert_array_equal(x, [[[[(30 - 5) * 2]], [[(20 - 5) * 2]], [[(10 - 5) * 2]]]])


def test_imagedata_npy_files_are_taken_as_stored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    numpy.save(tmp_path / "x.npy", numpy.array([[[0.5, 1.5, 2.5]]], dtype=numpy.float32))
    (tmp_path / "list.txt").write_text("x.npy 2\n")
    x, y = forward(make_net(IMAGE_DATA.format(src="list.txt", b=1, extra="", transform="")))
    numpy.testing.assert_array_equal(x, [[[[0.5]], [[1.5]], [[2.5]]]])
    assert y.tolist() == [2]


def test_imagedata_shuffle_seeded_and_state_round_trip(images):
    def run():
        netdef.set_random_seed(4)
        n = make_net(IMAGE_DATA.format(src="list.txt", b=2, extra="shuffle: true", transform=""))
        return n, [forward(n)[1].tolist() for _ in range(3)]

    n, labels = run()
    flat = sum(labels, [])
    assert sorted(flat[:3]) == [3, 5, 8] and sorted(flat[3:6]) == [3, 5, 8]  # each pass is a permutation
    assert run()[1] == labels
    state = n.layers[0].get_state()
    rng = n.rng.checkpoint()
    after = [forward(n)[1].tolist() for _ in range(3)]
    fresh = make_net(IMAGE_DATA.format(src="list.txt", b=2, extra="shuffle: true", transform=""))
    fresh.layers[0].set_state(state)
    fresh.rng.restore(rng)
    assert [forward(fresh)[1].tolist() for _ in range(3)] == after


def test_imagedata_error_missing_list_and_parameters(images):
    with pytest.raises(DataSourceError, match="image list file not found: nope.txt"):
        make_net(IMAGE_DATA.format(src="nope.txt", b=1, extra="", transform=""))
    with pytest.raises(InvalidParameterError, match="new_height and new_width both set"):
        make_net(IMAGE_DATA.format(src="list.txt", b=1, extra="new_height: 4", transform=""))
    with pytest.raises(InvalidParameterError, match="rand_skip drew"):
        make_net(IMAGE_DATA.format(src="list.txt", b=1, extra="rand_skip: 1000000", transform=""))


@pytest.mark.parametrize("text, line", [("a.png 3\nb.png\n", 2), ("a.png 3\n\nb.png x1\n", 3)])
def test_imagedata_error_bad_line(images, text, line):
    (images / "bad.txt").write_text(text)
    with pytest.raises(DataSourceError, match=f'bad.txt line {line}: expected "<image path> <integer label>"'):
        make_net(IMAGE_DATA.format(src="bad.txt", b=1, extra="", transform=""))


def test_imagedata_error_empty_list(images):
    (images / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DataSourceError, match="names no images"):
        make_net(IMAGE_DATA.format(src="empty.txt", b=1, extra="", transform=""))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_imagedata_error_image_that_fails_to_load(images, prefetch):
    (images / "broken.png").write_bytes(b"not an image")
    (images / "l2.txt").write_text("a.png 1\nbroken.png 2\nmissing.png 3\n")
    n = make_net(IMAGE_DATA.format(src="l2.txt", b=1, extra="", transform=PREFETCH.format(prefetch)))
    n.forward()
    n.layers[0].prefetcher.settle()  # the bad images are read ahead now: their errors wait for their forward
    with pytest.raises(DataSourceError, match="cannot load image broken.png \\(l2.txt line 2\\)"):
        n.forward()
    with pytest.raises(DataSourceError, match="cannot load image missing.png \\(l2.txt line 3\\).*not found"):
        n.forward()
    assert forward(n)[1].tolist() == [1]  # reading goes on after the failed batches


def test_imagedata_error_sizes_differ_within_a_batch(images):
    image = need_pillow()
    image.fromarray(numpy.zeros((3, 3, 3), dtype=numpy.uint8)).save(images / "big.png")
    (images / "l3.txt").write_text("a.png 1\nbig.png 2\n")
    with pytest.raises(ShapeMismatchError, match=r"big.png \(l3.txt line 2\)"):
        make_net(IMAGE_DATA.format(src="l3.txt", b=2, extra="", transform="")).forward()


# --- WindowData -----------------------------------------------------------------------------------
def ramp_image():
    """10 x 10 RGB: R = 10 x, G = 10 y, B = 200 (bilinear warps of it are exact)."""
    y, x = numpy.mgrid[0:10, 0:10]
    return numpy.stack([10 * x, 10 * y, numpy.full_like(x, 200)], axis=2).astype(numpy.uint8)


WINDOWS = """# 0
img.png
3 10 10
3
2 0.8 2 2 5 5
7 0.1 0 0 3 3
4 0.4 1 1 2 2
"""

WINDOW_DATA = (
    'layer {{ name: "w" type: "WindowData" top: "data" top: "label" '
    'window_data_param {{ source: "{src}" batch_size: {b} fg_threshold: 0.5 bg_threshold: 0.3 {extra} }} '
    "transform_param {{ crop_size: {crop} {transform} }} }}"
)


@pytest.fixture
def windows(tmp_path, monkeypatch):
    image = need_pillow()
    monkeypatch.chdir(tmp_path)
    image.fromarray(ramp_image()).save(tmp_path / "img.png")
    (tmp_path / "windows.txt").write_text(WINDOWS)
    return tmp_path


def window_net(src="windows.txt", b=2, extra="", crop=4, transform=""):
    return make_net(WINDOW_DATA.format(src=src, b=b, extra=extra, crop=crop, transform=transform))


def ramp_patch(xs, ys):
    """The BGR pixels of ramp_image() at columns xs and rows ys (values may be fractional)."""
    xs, ys = numpy.asarray(xs, float), numpy.asarray(ys, float)
    return numpy.stack(
        [
            numpy.full((len(ys), len(xs)), 200.0),
            numpy.repeat(10 * ys[:, None], len(xs), 1),
            numpy.repeat(10 * xs[None, :], len(ys), 0),
        ]
    )


def test_windowdata_warp_background_then_foreground(windows):
    n = window_net()
    assert n.blobs["data"].shape == (2, 3, 4, 4) and n.blobs["label"].shape == (2,)
    x, y = forward(n)
    # fg_fraction 0.25 of 2 -> 0 foreground: both samples are the one background window (label forced to 0)
    numpy.testing.assert_array_equal(x, [ramp_patch(range(0, 4), range(0, 4))] * 2)
    assert y.tolist() == [0, 0]
    x, y = forward(window_net(extra="fg_fraction: 0.5", transform="mean_value: 100", b=2))
    numpy.testing.assert_array_equal(x[0], ramp_patch(range(0, 4), range(0, 4)) - 100)
    numpy.testing.assert_array_equal(x[1], ramp_patch(range(2, 6), range(2, 6)) - 100)
    assert y.tolist() == [0, 2]


def test_windowdata_mirror_seeded_and_scale(windows):
    netdef.set_random_seed(5)
    n = window_net(b=6, extra="fg_fraction: 0.5 scale: 0.5", transform="mirror: true")
    x, y = forward(n)
    rng = numpy.random.default_rng(5)
    rng.integers(0, 1, 3), rng.integers(0, 1, 3)  # window picks (one window of each kind)
    flips = rng.integers(0, 2, 6).astype(bool)
    assert flips.any() and not flips.all()
    for i in range(6):
        want = ramp_patch(range(0, 4), range(0, 4)) if i < 3 else ramp_patch(range(2, 6), range(2, 6))
        if flips[i]:
            want = want[:, :, ::-1]
        numpy.testing.assert_array_equal(x[i], want * 0.5)
    assert y.tolist() == [0, 0, 0, 2, 2, 2]


def test_windowdata_transform_scale_used_when_window_scale_is_unset(windows):
    x, _ = forward(window_net(b=1, transform="scale: 0.25"))
    numpy.testing.assert_array_equal(x[0], ramp_patch(range(0, 4), range(0, 4)) * 0.25)


def test_windowdata_context_pad_inside_the_image(windows):
    (windows / "one.txt").write_text("# 0\nimg.png\n3 10 10\n1\n1 0.9 4 4 5 5\n")
    x, y = forward(window_net(src="one.txt", b=1, extra="fg_fraction: 1 context_pad: 1"))
    # scale 4 / (4 - 2) = 2 around the centre 5 -> columns/rows 3..7 (5 pixels) warped to 4;
    # sample positions 0.125, 1.375, 2.625, 3.875 -> 10 * (3 + p), rounded
    numpy.testing.assert_array_equal(x[0, 2, 0], [31, 44, 56, 69])
    numpy.testing.assert_array_equal(x[0, 1, :, 0], [31, 44, 56, 69])
    numpy.testing.assert_array_equal(x[0, 0], numpy.full((4, 4), 200))
    assert y.tolist() == [1]


def test_windowdata_context_pad_leaving_the_image_pads_with_zeros(windows):
    (windows / "corner.txt").write_text("# 0\nimg.png\n3 10 10\n1\n1 0.9 0 0 1 1\n")
    x, _ = forward(window_net(src="corner.txt", b=1, extra="fg_fraction: 1 context_pad: 1"))
    # region -1..3 (5 px, scale 0.8) clipped to 0..3, warped to round(4 * 0.8) = 3 px after a pad of round(0.8) = 1
    assert (x[0, :, 0, :] == 0).all() and (x[0, :, :, 0] == 0).all()
    numpy.testing.assert_array_equal(x[0, 2, 1, 1:], [2, 15, 28])  # 10 * (0.1667, 1.5, 2.8333), rounded
    numpy.testing.assert_array_equal(x[0, 0, 1:, 1:], numpy.full((3, 3), 200))


def test_windowdata_square_mode(windows):
    (windows / "wide.txt").write_text("# 0\nimg.png\n3 10 10\n1\n1 0.9 2 4 5 5\n")
    x, _ = forward(window_net(src="wide.txt", b=1, extra='fg_fraction: 1 crop_mode: "square"'))
    # 4 x 2 window grown to 4 x 4 around its centre (4, 5): columns 2..6, rows 3..7, warped 5 -> 4
    numpy.testing.assert_array_equal(x[0, 2, 0], [21, 34, 46, 59])
    numpy.testing.assert_array_equal(x[0, 1, :, 0], [31, 44, 56, 69])


def test_windowdata_mean_file_centre_region(windows):
    mean = numpy.arange(3 * 6 * 6, dtype=numpy.float32).reshape(1, 3, 6, 6)
    write_binaryproto(str(windows / "mean.binaryproto"), mean)
    x, _ = forward(window_net(b=1, transform='mean_file: "mean.binaryproto"'))
    # crop 4 of a 6-wide mean: offset (6 - 4) // 2 = 1
    numpy.testing.assert_array_equal(x[0], ramp_patch(range(0, 4), range(0, 4)) - mean[0, :, 1:5, 1:5])


def test_windowdata_cache_images_and_state(windows):
    n = window_net(extra="cache_images: true fg_fraction: 0.5")
    first = forward(n)[0]
    (windows / "img.png").unlink()  # served from the cache from now on
    numpy.testing.assert_array_equal(forward(n)[0], first)
    state = n.layers[0].get_state()
    assert state == {"fg_windows": 1, "bg_windows": 1}
    n.layers[0].set_state(state)


def test_windowdata_error_parameters(windows):
    with pytest.raises(InvalidParameterError, match="crop_size > 0"):
        window_net(crop=0)
    with pytest.raises(InvalidParameterError, match='crop_mode must be "warp" or "square". Received: "fit"'):
        window_net(extra='crop_mode: "fit"')
    with pytest.raises(InvalidParameterError, match="context_pad must be less than crop_size / 2"):
        window_net(extra="context_pad: 2")
    with pytest.raises(DataSourceError, match="window file not found: nope.txt"):
        window_net(src="nope.txt")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("# 0\nimg.png\n3 ten 10\n", "bad.txt line 3: expected the image's height. Received: 'ten'"),
        ("0\nimg.png\n", 'bad.txt line 1: expected "#"'),
        ("# 0\nimg.png\n3 10 10\n2\n1 0.9 0 0 3 3\n", "ends early: expected a window's class label"),
        ("# 0\nimg.png\n3 10 10\n1\n0 0.9 0 0 3 3\n", "line 5: a foreground window .* needs a class label > 0"),
        ("# 3\nimg.png\n3 10 10\n1\n1 0.9 0 0 3 3\n", "line 5: the window's image index 3 is not one of the 1"),
        ("# 0\nimg.png\n3 10 10\n1\n1 0.9 3 0 2 3\n", "line 5: a window needs x1 <= x2"),
        ("# 0\nimg.png\n3 10 10\n1\n1 0.9 0 0 3 3\n", "has no background windows"),
    ],
)
def test_windowdata_error_bad_window_file(windows, text, message):
    (windows / "bad.txt").write_text(text)
    with pytest.raises(DataSourceError, match=message):
        window_net(src="bad.txt")


def test_windowdata_error_window_outside_image_and_unreadable_image(windows):
    (windows / "out.txt").write_text("# 0\nimg.png\n3 10 10\n1\n1 0.9 6 6 10 10\n")
    with pytest.raises(DataSourceError, match="window \\(6, 6, 10, 10\\) of image img.png does not fit"):
        window_net(src="out.txt", b=1, extra="fg_fraction: 1").forward()
    (windows / "gone.txt").write_text("# 0\nimg.png\n3 10 10\n0\n# 1\ngone.png\n3 10 10\n1\n1 0.9 0 0 3 3\n")
    with pytest.raises(DataSourceError, match="cannot load image gone.png \\(gone.txt line 6\\)"):
        window_net(src="gone.txt", b=1, extra="fg_fraction: 1").forward()


# --- exact resume through a solver snapshot ---------------------------------------------------------
RESUME_NET = """
layer {{ name: "d" type: "{kind}" top: "data" top: "label" {source}
        transform_param {{ crop_size: 1 mirror: true scale: 0.01 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param {{ num_output: 13 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def resume_solver(net_text, prefix):
    param = parse_text(
        f'base_lr: 0.1 lr_policy: "fixed" max_iter: 100 display: 0 snapshot_after_train: false '
        f'random_seed: 3 snapshot_prefix: "{prefix}"',
        pb.SolverParameter(),
    )
    param.net_param.CopyFrom(net_from_text(net_text))
    return get_solver(param)


@pytest.mark.parametrize("kind", ["Data", "ImageData"])
@pytest.mark.parametrize("prefetch", [0, 2, None])  # None: Caffe's default, 4
def test_snapshot_resume_continues_with_the_same_batches(u8db, images, kind, prefetch):
    # 7 images (the 3 files again and again): a batch that ends a pass is read by its own forward,
    # so with 3 images and batches of 2 nothing could be read ahead at the snapshot
    names = list(IMAGES) * 3
    (images / "seven.txt").write_text("".join(f"{names[k]} {k}\n" for k in range(7)))

    def text(prefetch):
        extra = "" if prefetch is None else f"prefetch: {prefetch}"
        source = (
            f'data_param {{ source: "db" backend: LMDB batch_size: 2 {extra} }}'
            if kind == "Data"
            else f'image_data_param {{ source: "seven.txt" batch_size: 2 shuffle: true }} data_param {{ {extra} }}'
        )
        return RESUME_NET.format(kind=kind, source=source)

    def labels_and_inputs(solver, steps):
        seen = []
        for _ in range(steps):
            solver.step(1)
            seen.append((solver.net.blobs["label"].data.tolist(), solver.net.blobs["data"].data.tolist()))
        return seen

    unread = labels_and_inputs(resume_solver(text(0), u8db / "plain"), 6)  # each batch read when needed
    solver = resume_solver(text(prefetch), u8db / "snap")
    assert labels_and_inputs(solver, 2) == unread[:2]  # 4 samples: mid-pass for both sources (3 records / 7 images)
    solver.net.layers[0].prefetcher.settle()
    if prefetch != 0:  # the snapshot is taken with batches read ahead
        assert len(solver.net.layers[0].prefetcher) >= 1
    path = solver.snapshot()
    assert labels_and_inputs(solver, 4) == unread[2:]
    fresh = resume_solver(text(prefetch), u8db / "other")
    fresh.restore(path)
    assert labels_and_inputs(fresh, 4) == unread[2:]


# --- sharding (data-parallel training) ------------------------------------------------------------------
def _order(seed: int) -> numpy.random.Generator:
    return numpy.random.default_rng(seed)


def test_data_shards_take_their_block_of_each_group(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "db", [u8_datum(numpy.full((1, 1, 1), k), k) for k in range(8)])
    text = DATA.format(b=2, extra="", transform="")
    ranks = [make_net(text) for _ in range(2)]
    for rank, n in enumerate(ranks):
        n.layers[0].shard(rank, 2)
    whole = make_net(DATA.format(b=4, extra="", transform=""))
    for _ in range(3):  # 12 records of 8: wraps around
        parts = [forward(n)[1].tolist() for n in ranks]
        assert parts[0] + parts[1] == forward(whole)[1].tolist()
    assert ranks[0].layers[0].get_state() == ranks[1].layers[0].get_state() == whole.layers[0].get_state()


def test_imagedata_shards_are_disjoint_and_share_the_shuffled_order(images):
    text = IMAGE_DATA.format(src="list.txt", b=1, extra="shuffle: true", transform="")
    ranks = []
    for rank in range(3):
        n = make_net(text)
        n.layers[0].shard(rank, 3, _order(9))
        ranks.append(n)
    # as the parallel solver does: every rank starts from rank 0's order (each net drew its own at set-up)
    for n in ranks[1:]:
        n.layers[0].set_state(ranks[0].layers[0].get_state())
    for _ in range(4):  # four epochs of the three images, each reshuffled by the shared order stream
        labels = [forward(n)[1].tolist()[0] for n in ranks]
        assert sorted(labels) == [3, 5, 8]
    states = [n.layers[0].get_state() for n in ranks]
    assert states[0] == states[1] == states[2] and "order_rng" in states[0]
    # a fresh rank continues from the saved state, order stream included
    fresh = make_net(text)
    fresh.layers[0].shard(1, 3, _order(0))
    fresh.layers[0].set_state(states[1])
    assert forward(fresh)[1].tolist() == forward(ranks[1])[1].tolist()


def test_shard_refuses_a_rank_outside_the_size(u8db):
    n = make_net(DATA.format(b=2, extra="", transform=""))
    with pytest.raises(InvalidParameterError, match="0 <= rank < size. Received: rank 2, size 2"):
        n.layers[0].shard(2, 2)


# --- prefetching (data_param.prefetch) ------------------------------------------------------------
DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "data" top: "dropped" dropout_param { dropout_ratio: 0.5 } }'


def run_seeded(text, steps, phase=netdef.TRAIN):
    """What a net of ``text`` (seed 5) shows in each of ``steps`` forwards: data, label, Dropout's output and the
    data layer's read state. Dropout draws from the net's stream after the data layer: the order of draws counts."""
    netdef.set_random_seed(5)
    n = make_net(text, phase)
    seen = []
    for _ in range(steps):
        n.forward()
        blobs = [n.blobs[name].data.tolist() for name in ("data", "label", "dropped") if name in n.blobs]
        seen.append((blobs, n.layers[0].get_state()))
    return n, seen


@pytest.fixture
def db7(tmp_path, monkeypatch):
    """Seven 3 x 4 x 5 uint8 records of random pixels, labelled 0..6."""
    monkeypatch.chdir(tmp_path)
    pixels = numpy.random.default_rng(0).integers(0, 256, (7, 3, 4, 5))
    write_lmdb(tmp_path / "db7", [u8_datum(p, k) for k, p in enumerate(pixels)])
    return tmp_path


DATA7_SOURCE = 'data_param { source: "db7" backend: LMDB batch_size: 3 prefetch: 2 }'
DATA7 = (
    'layer {{ name: "d" type: "Data" top: "data" top: "label" '
    'data_param {{ source: "db7" backend: LMDB batch_size: 3 {prefetch} }} '
    "transform_param {{ crop_size: 3 mirror: true mean_value: 100 mean_value: 120 mean_value: 90 scale: 0.5 }} }}"
)


@pytest.mark.parametrize("phase", [netdef.TRAIN, netdef.TEST])
def test_data_prefetch_gives_the_batches_and_draws_of_reading_in_forward(db7, phase):
    # 8 batches of 3 of the 7 records wrap around 3 times; random crops and mirrors (TRAIN) and Dropout's
    # masks all draw from the net's one stream, so any draw made out of turn would change them
    text = lambda extra: DATA7.format(prefetch=extra) + DROPOUT  # noqa: E731
    _, plain = run_seeded(text("prefetch: 0"), 8, phase)
    for extra in ("prefetch: 1", "prefetch: 5", ""):
        n, seen = run_seeded(text(extra), 8, phase)
        assert n.layers[0].prefetcher.thread.is_alive()
        assert seen == plain, extra


def test_imagedata_prefetch_gives_the_batches_and_draws_of_reading_in_forward(images):
    image = need_pillow()
    pixels = numpy.random.default_rng(1).integers(0, 256, (5, 4, 4, 3)).astype(numpy.uint8)
    for k, rgb in enumerate(pixels):
        image.fromarray(rgb).save(images / f"r{k}.png")
    (images / "five.txt").write_text("".join(f"r{k}.png {k}\n" for k in range(5)))
    # batches of 2 of 5 images: a pass ends inside every other batch, and each pass is reshuffled
    transform = "transform_param { crop_size: 3 mirror: true mean_value: 128 scale: 0.25 }"
    text = lambda p: (  # noqa: E731
        IMAGE_DATA.format(src="five.txt", b=2, extra="shuffle: true", transform=f"{transform} {PREFETCH.format(p)}")
        + DROPOUT
    )
    _, plain = run_seeded(text(0), 12)
    assert sorted(sum((labels for (_, labels, _), _ in plain[:5]), [])) == sorted(list(range(5)) * 2)
    for p in (1, 2, 6):
        assert run_seeded(text(p), 12)[1] == plain, p


def test_prefetch_reads_ahead_in_a_thread_and_reports_the_position_taken(images):
    text = IMAGE_DATA.format(src="list.txt", b=1, extra="", transform=PREFETCH.format(2))
    n = make_net(text)
    layer = n.layers[0]
    assert layer.prefetcher.thread is None  # no thread before the first forward
    assert forward(n)[1].tolist() == [3]
    layer.prefetcher.settle()
    assert len(layer.prefetcher) == 2 and layer.prefetcher.thread.is_alive()
    assert layer.get_state()["pos"] == 1  # the position after the batch taken, not after those read ahead
    # the next two images were read before they were needed: removing their files no longer matters
    (images / "b c.png").unlink()
    x, y = forward(n)
    numpy.testing.assert_array_equal(x, [bgr(IMAGES["b c.png"])])
    assert y.tolist() == [5]
    plain = make_net(IMAGE_DATA.format(src="list.txt", b=1, extra="", transform=PREFETCH.format(0)))
    forward(plain)
    assert plain.layers[0].prefetcher.thread is None
    with pytest.raises(DataSourceError, match="cannot load image b c.png"):
        plain.forward()


def test_data_prefetch_state_is_the_position_taken_and_set_state_drops_the_batches_read_ahead(db7):
    text = lambda p: DATA7.format(prefetch=f"prefetch: {p}")  # noqa: E731
    ahead, plain = make_net(text(3), netdef.TEST), make_net(text(0), netdef.TEST)
    assert forward(ahead)[1].tolist() == forward(plain)[1].tolist() == [0, 1, 2]
    ahead.layers[0].prefetcher.settle()
    state = ahead.layers[0].get_state()
    assert state == plain.layers[0].get_state() == {"key": b"00000003".hex(), "epoch": 0}
    assert ahead.layers[0].reader.get_state() != state  # the cursor itself is three batches further on
    ahead.layers[0].set_state({"key": b"00000005".hex(), "epoch": 0})
    assert len(ahead.layers[0].prefetcher) == 0
    assert [forward(ahead)[1].tolist() for _ in range(2)] == [[5, 6, 0], [1, 2, 3]]
    assert ahead.layers[0].get_state() == {"key": b"00000004".hex(), "epoch": 1}


def test_closing_a_net_ends_its_prefetch_threads_and_the_net_reads_on(db7):
    text = lambda p: DATA7.format(prefetch=f"prefetch: {p}")  # noqa: E731
    plain = make_net(text(0), netdef.TEST)
    expected = [forward(plain)[1].tolist() for _ in range(4)]
    with make_net(text(3), netdef.TEST) as n:
        seen = [forward(n)[1].tolist() for _ in range(2)]
        thread = n.layers[0].prefetcher.thread
        assert thread.is_alive() and thread in prefetch_threads()
        n.close()
        assert not thread.is_alive() and n.layers[0].prefetcher.thread is None
        assert len(n.layers[0].prefetcher) == 0  # the batches read ahead are dropped, not skipped
        seen += [forward(n)[1].tolist() for _ in range(2)]
        assert n.layers[0].prefetcher.thread.is_alive()  # forward started a new one
        thread = n.layers[0].prefetcher.thread
    assert not thread.is_alive()  # leaving the with-block closed the net
    assert seen == expected == [[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 3, 4]]


def test_closing_a_solver_ends_the_threads_of_its_train_and_test_nets(db7, tmp_path):
    param = parse_text(
        'base_lr: 0.1 lr_policy: "fixed" max_iter: 3 display: 0 test_iter: 2 test_interval: 2 '
        'snapshot_after_train: false random_seed: 3 test_initialization: false snapshot_prefix: "snap"',
        pb.SolverParameter(),
    )
    param.net_param.CopyFrom(net_from_text(RESUME_NET.format(kind="Data", source=DATA7_SOURCE)))
    with get_solver(param) as solver:
        solver.step(3)  # tests before the third iteration: both nets have read ahead
        nets = [solver.net, solver.test_nets[0]]
        threads = [net.layers[0].prefetcher.thread for net in nets]
        assert all(t is not None and t.is_alive() for t in threads)
        solver.close()
        assert not any(t.is_alive() for t in threads)
        loss = solver.net.forward_from_to()  # still usable after closing
        assert numpy.isfinite(loss)
        threads = [nets[0].layers[0].prefetcher.thread]
    assert not threads[0].is_alive()


def test_no_prefetch_thread_outlives_train(db7):
    from netdef.tools.train import train

    (db7 / "net.prototxt").write_text(RESUME_NET.format(kind="Data", source=DATA7_SOURCE))
    (db7 / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 3 display: 0 '
        'snapshot_after_train: false solver_mode: CPU snapshot_prefix: "snap"'
    )
    before = prefetch_threads()
    solver = train(db7 / "solver.prototxt")  # the solver (and its net) are still referenced here
    assert solver.iter == 3 and solver.net.layers[0].prefetcher.thread is None
    assert prefetch_threads() == before


def test_data_prefetch_raises_a_bad_record_in_the_forward_that_takes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = [u8_datum(numpy.full((1, 1, 1), k), k) for k in range(6)]
    records[4] = b"\xff\xff\xff"  # in the third batch of two
    write_lmdb(tmp_path / "db", records)
    for prefetch in (0, 4):
        n = make_net(DATA.format(b=2, extra=f"prefetch: {prefetch}", transform=""))
        assert [forward(n)[1].tolist() for _ in range(2)] == [[0, 1], [2, 3]]
        if prefetch:
            n.layers[0].prefetcher.settle()  # the bad record has been read ahead by now
        with pytest.raises(DataSourceError, match="record b'00000004': not a serialised Datum"):
            n.forward()
        assert n.layers[0].get_state()["key"] == b"00000000".hex()  # the failed batch is behind, as without prefetch
        assert forward(n)[1].tolist() == [0, 1]


def test_prefetch_threads_end_on_close_and_with_their_net(u8db):
    n = make_net(DATA.format(b=2, extra="", transform=""))
    forward(n)
    thread = n.layers[0].prefetcher.thread
    assert thread.is_alive() and thread.daemon
    n.layers[0].close()
    assert not thread.is_alive() and n.layers[0].prefetcher.thread is None
    # a closed layer reads on from the batch it gave last (the batches read ahead are dropped)
    assert forward(n)[1].tolist() == [12, 10]
    thread = n.layers[0].prefetcher.thread
    assert thread.is_alive()
    n.layers[0].prefetcher.settle()  # a batch being read keeps its layer alive until it is read
    del n
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_prefetcher_runs_jobs_in_order_and_raises_their_errors_when_taken():
    def job(k):
        if k == 2:
            raise ValueError("job 2 failed")
        return k * 10

    planned = []

    def plan(first):
        k = len(planned)
        planned.append(k)
        return lambda: job(k)

    p = Prefetcher(3, "test")
    assert p.next(plan) == 0 and planned == [0, 1, 2, 3] and len(p) == 3  # 1 .. 3 are read ahead
    assert p.next(plan) == 10 and planned[-1] == 4
    with pytest.raises(ValueError, match="job 2 failed"):
        p.next(plan)
    assert p.next(plan) == 30
    thread = p.thread
    p.close()
    assert not thread.is_alive() and len(p) == 0 and p.thread is None
    # a plan that cannot be made yet (None) is made when its batch is the one needed
    calls = []

    def waits(first):
        calls.append(first)
        return (lambda: "now") if first else None

    assert p.next(waits) == "now" and calls == [True, False]
    assert p.next(waits) == "now" and calls == [True, False, True, False]
    p.close()
