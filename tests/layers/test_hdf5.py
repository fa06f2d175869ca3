"""Tests of netdef/layers/hdf5.py: HDF5Data and HDF5Output."""

import h5py
import numpy
import pytest

import netdef
from netdef.errors import DataSourceError, InvalidParameterError
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
