"""Tests of netdef/layers/hdf5.py: HDF5Data and HDF5Output."""

import h5py
import numpy
import pytest

import netdef
from netdef import limits
from netdef.errors import DataSourceError, InvalidParameterError, WeightsFileError
from netdef.testing import make_net


@pytest.fixture
def h5source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, rows in enumerate((5, 3)):
        with h5py.File(tmp_path / f"part{k}.h5", "w") as f:
            start = 0 if k == 0 else 5
            f["data"] = numpy.arange(start, start + rows, dtype=numpy.float32).reshape(rows, 1) * [[1, 10]]
            f["label"] = numpy.arange(start, start + rows, dtype=numpy.float32)
    (tmp_path / "list.txt").write_text("part0.h5\npart1.h5\n")
    return tmp_path


HDF5 = (
    'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" '
    'hdf5_data_param {{ source: "list.txt" batch_size: {b} {extra} }} }}'
)


def test_hdf5_reads_across_files_and_wraps(h5source):
    n = make_net(HDF5.format(b=3, extra=""))
    seen = []
    for _ in range(4):
        n.forward()
        seen.extend(n.blobs["label"].data.tolist())
        numpy.testing.assert_array_equal(n.blobs["data"].data[:, 1], n.blobs["label"].data * 10)
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]
    assert n.blobs["data"].shape == (3, 2)


def test_hdf5_shuffle_is_a_permutation_and_seeded(h5source):
    def epoch():
        netdef.set_random_seed(5)
        n = make_net(HDF5.format(b=8, extra="shuffle: true"))
        n.forward()
        return n.blobs["label"].data.tolist()

    a = epoch()
    assert sorted(a) == list(range(8)) and a != list(range(8))
    assert a == epoch()


def test_hdf5_state_roundtrip(h5source):
    n = make_net(HDF5.format(b=3, extra=""))
    n.forward()
    state = n.layers[0].get_state()
    n.forward()
    expected = n.blobs["label"].data.copy()
    m = make_net(HDF5.format(b=3, extra=""))
    m.layers[0].set_state(state)
    m.forward()
    numpy.testing.assert_array_equal(m.blobs["label"].data, expected)


def test_hdf5_errors(h5source):
    with pytest.raises(DataSourceError, match="missing.txt"):
        make_net(HDF5.format(b=3, extra="").replace("list.txt", "missing.txt"))
    with pytest.raises(DataSourceError, match='no dataset "lbl"'):
        make_net(HDF5.format(b=3, extra="").replace('top: "label"', 'top: "lbl"'))
    with pytest.raises(InvalidParameterError, match="batch_size"):
        make_net(HDF5.format(b=0, extra=""))


def test_hdf5output_appends_batches(tmp_path):
    out = tmp_path / "out.h5"
    n = make_net(
        'layer { name: "i" type: "Input" top: "x" top: "y" '
        "input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n"
        f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" '
        f'hdf5_output_param {{ file_name: "{out}" }} }}'
    )
    n.blobs["x"].data[...] = 1
    n.forward()
    n.blobs["x"].data[...] = 2
    n.forward()
    with h5py.File(out, "r") as f:
        assert f["data"].shape == (4, 3) and f["label"].shape == (4,)
        numpy.testing.assert_array_equal(f["data"][:, 0], [1, 1, 2, 2])


# --- hostile sources and data ------------------------------------------------------------------------
@pytest.fixture
def finite_check_default():
    yield
    limits.set_check_finite_inputs(None)
    limits.set_max_array_bytes(None)


def test_source_list_not_utf8_is_named(h5source):
    (h5source / "list.txt").write_bytes(b"part0.h5\n\xff\xfe.h5\n")
    with pytest.raises(DataSourceError, match="source list list.txt, line 2: not UTF-8 text"):
        make_net(HDF5.format(b=3, extra=""))


def test_error_does_not_echo_lines_of_an_arbitrary_source_file(h5source):
    (h5source / "secret.txt").write_text("root:x:0:0:TOPSECRET:/root:/bin/sh\n")
    with pytest.raises(DataSourceError) as info:
        make_net(HDF5.format(b=3, extra="").replace("list.txt", "secret.txt"))
    assert "TOPSECRET" not in str(info.value) and "root:x" not in str(info.value)
    assert "line 1 of the source list secret.txt names no existing file" in str(info.value)
    (h5source / "list.txt").write_text("part0.h5\nmissing.h5\n")
    with pytest.raises(DataSourceError, match=r"HDF5 file not found: .*missing.h5 \(line 2 of list.txt\)"):
        n = make_net(HDF5.format(b=3, extra=""))
        n.forward()
        n.forward()


def test_hdf5_file_given_as_source_is_named(h5source):
    with pytest.raises(DataSourceError, match="source part0.h5 is an HDF5 file itself"):
        make_net(HDF5.format(b=3, extra="").replace("list.txt", "part0.h5"))


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, 1e300])
def test_non_finite_data_is_named_with_file_dataset_and_index(h5source, finite_check_default, bad):
    with h5py.File(h5source / "part0.h5", "a") as f:
        data = f["data"][()].astype(numpy.float64)
        data[3, 1] = bad  # 1e300 becomes inf as float32
        del f["data"]
        f["data"] = data
    with pytest.raises(DataSourceError, match=r'part0.h5 dataset "data" holds 1 non-finite.*index \(3, 1\)'):
        make_net(HDF5.format(b=3, extra=""))
    limits.set_check_finite_inputs(False)
    n = make_net(HDF5.format(b=3, extra=""))
    assert n.blobs["data"].shape == (3, 2)


def test_non_finite_check_can_be_skipped_from_the_environment(h5source, monkeypatch):
    with h5py.File(h5source / "part0.h5", "a") as f:
        f["label"][0] = numpy.nan
    monkeypatch.setenv(limits.ENV_CHECK_FINITE, "0")
    make_net(HDF5.format(b=3, extra=""))
    monkeypatch.setenv(limits.ENV_CHECK_FINITE, "1")
    with pytest.raises(DataSourceError, match='"label" holds 1 non-finite'):
        make_net(HDF5.format(b=3, extra=""))


def test_declared_huge_dataset_is_refused_before_reading(h5source, finite_check_default):
    with h5py.File(h5source / "part0.h5", "w") as f:
        f.create_dataset("data", shape=(1 << 22, 1 << 12), dtype="f4", chunks=(1, 64))  # 64 GiB, file is tiny
        f["label"] = numpy.zeros(5, numpy.float32)
    assert (h5source / "part0.h5").stat().st_size < 100_000
    limits.set_max_array_bytes("1G")
    with pytest.raises(DataSourceError, match=r'part0.h5 dataset "data": shape \(4194304, 4096\) needs 64.0 GiB'):
        make_net(HDF5.format(b=3, extra=""))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda f: f.create_dataset("data", data=["a", "b"], dtype=h5py.string_dtype()), "holds string values"),
        (lambda f: f.create_dataset("data", data=numpy.float32(1)), r"has shape \(\)"),
        (lambda f: f.__setitem__("data", h5py.SoftLink("/data")), 'dataset "data": cannot read it'),
        (lambda f: f.create_group("data"), 'dataset "data" is a group'),
    ],
    ids=["vlen-strings", "scalar", "softlink-loop", "group"],
)
def test_odd_datasets_are_named(h5source, make, expected):
    with h5py.File(h5source / "part0.h5", "w") as f:
        make(f)
        f["label"] = numpy.zeros(5, numpy.float32)
    with pytest.raises(DataSourceError, match=f"part0.h5.*{expected}"):
        make_net(HDF5.format(b=3, extra=""))


def test_damaged_hdf5_file_is_named(h5source):
    raw = bytearray((h5source / "part0.h5").read_bytes())
    raw[8:64] = b"\xff" * 56
    (h5source / "part0.h5").write_bytes(bytes(raw))
    with pytest.raises(DataSourceError, match="part0.h5"):
        make_net(HDF5.format(b=3, extra=""))


def test_saved_read_position_that_does_not_fit_is_refused(h5source):
    m = make_net(HDF5.format(b=3, extra=""))
    good = m.layers[0].get_state()
    for key, value in [("perm", []), ("perm", [0, 0, 1, 2, 3]), ("row", 99), ("file_pos", "0"), ("loaded", 5)]:
        with pytest.raises(WeightsFileError, match=f"saved read position does not fit.*{key}"):
            m.layers[0].set_state(dict(good, **{key: value}))
    with pytest.raises(WeightsFileError, match="missing entry 'perm'"):
        m.layers[0].set_state({k: v for k, v in good.items() if k != "perm"})
    m.layers[0].set_state(good)


def _output_net(path):
    return make_net(
        'layer { name: "i" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
        f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{path}" }} }}'
    )


def test_hdf5output_refuses_to_replace_files_it_did_not_write(tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(InvalidParameterError, match=r'Layer "o" \(type HDF5Output\): refusing to replace .*notes.txt'):
        _output_net(precious)
    assert precious.read_text() == "keep me"
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = numpy.ones(3)
    with pytest.raises(InvalidParameterError, match="refusing to replace"):
        _output_net(foreign)
    with h5py.File(foreign, "r") as f:
        assert f["x"].shape == (3,)
    with pytest.raises(InvalidParameterError, match="it exists and is a folder"):
        _output_net(tmp_path)


def test_hdf5output_marks_its_files_and_may_replace_them(tmp_path):
    out = tmp_path / "out.h5"
    _output_net(out).forward()
    with h5py.File(out, "r") as f:
        assert f.attrs["netdef_writer"] == "HDF5Output"
    n = _output_net(out)
    n.forward()
    with h5py.File(out, "r") as f:
        assert f["data"].shape == (2, 3)


def test_hdf5_shards_walk_one_order_across_files(h5source):
    """Two ranks x 3 rows read what one net reads with 6 rows, across the file boundary and epochs."""
    ranks = []
    for rank in range(2):
        n = make_net(HDF5.format(b=3, extra="shuffle: true"))
        n.layers[0].shard(rank, 2, numpy.random.default_rng(4))
        ranks.append(n)
    # as the parallel solver does: rank 1 starts from rank 0's read position and orders
    ranks[1].layers[0].set_state(ranks[0].layers[0].get_state())
    seen = [[], []]
    for _ in range(4):  # 24 rows of 8: three epochs, each with a new file and row order
        for rank, n in enumerate(ranks):
            n.forward()
            seen[rank].append(n.blobs["label"].data.tolist())
            numpy.testing.assert_array_equal(n.blobs["data"].data[:, 1], n.blobs["label"].data * 10)
    rows = [v for k in range(4) for rank in range(2) for v in seen[rank][k]]
    for start in (0, 8, 16):
        assert sorted(rows[start : start + 8]) == list(range(8))
    assert ranks[0].layers[0].get_state() == ranks[1].layers[0].get_state()


def test_hdf5_sharded_state_resumes_in_one_process(h5source):
    """A state with the shared order stream resumes an unsharded layer (the stream is ignored there)."""
    n = make_net(HDF5.format(b=3, extra="shuffle: true"))
    n.layers[0].shard(0, 2, numpy.random.default_rng(4))
    n.forward()
    state = n.layers[0].get_state()
    assert "order_rng" in state
    plain = make_net(HDF5.format(b=3, extra="shuffle: true"))
    plain.layers[0].set_state(state)
    assert plain.layers[0].get_state() == {k: v for k, v in state.items() if k != "order_rng"}
