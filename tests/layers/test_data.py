"""Core data layers: Input, DummyData, HDF5Data, MemoryData, HDF5Output."""
import h5py
import numpy
import pytest

import netdef
from netdef.errors import DataSourceError, InvalidParameterError
from netdef.proto import net_from_text


def net(text, phase=netdef.TRAIN):
    return netdef.Net(net_from_text(text), phase)


def test_input_one_shape_for_all_tops():
    n = net('layer { name: "i" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }')
    assert n.blobs["a"].shape == n.blobs["b"].shape == (2, 3)


def test_input_shape_count_error():
    with pytest.raises(InvalidParameterError, match='"i".*1 or 3'):
        net('layer { name: "i" type: "Input" top: "a" top: "b" top: "c" '
            'input_param { shape { dim: 1 } shape { dim: 2 } } }')


def test_dummydata_constant_and_gaussian_refill():
    n = net('layer { name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
            'shape { dim: 2 dim: 2 } shape { dim: 1000 } '
            'data_filler { type: "constant" value: 3 } data_filler { type: "gaussian" std: 1 } } }')
    numpy.testing.assert_array_equal(n.blobs["c"].data, numpy.full((2, 2), 3.0))
    first = n.blobs["g"].data.copy()
    n.forward()
    assert not numpy.array_equal(first, n.blobs["g"].data)
    assert abs(n.blobs["g"].data.std() - 1) < 0.1


def test_dummydata_legacy_dims():
    n = net('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { num: 2 channels: 3 height: 4 width: 5 } }')
    assert n.blobs["x"].shape == (2, 3, 4, 5)


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


HDF5 = ('layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" '
        'hdf5_data_param {{ source: "list.txt" batch_size: {b} {extra} }} }}')


def test_hdf5_reads_across_files_and_wraps(h5source):
    n = net(HDF5.format(b=3, extra=""))
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
        n = net(HDF5.format(b=8, extra="shuffle: true"))
        n.forward()
        return n.blobs["label"].data.tolist()

    a = epoch()
    assert sorted(a) == list(range(8)) and a != list(range(8))
    assert a == epoch()


def test_hdf5_state_roundtrip(h5source):
    n = net(HDF5.format(b=3, extra=""))
    n.forward()
    state = n.layers[0].get_state()
    n.forward()
    expected = n.blobs["label"].data.copy()
    m = net(HDF5.format(b=3, extra=""))
    m.layers[0].set_state(state)
    m.forward()
    numpy.testing.assert_array_equal(m.blobs["label"].data, expected)


def test_hdf5_errors(h5source):
    with pytest.raises(DataSourceError, match="missing.txt"):
        net(HDF5.format(b=3, extra="").replace("list.txt", "missing.txt"))
    with pytest.raises(DataSourceError, match='no dataset "lbl"'):
        net(HDF5.format(b=3, extra="").replace('top: "label"', 'top: "lbl"'))
    with pytest.raises(InvalidParameterError, match="batch_size"):
        net(HDF5.format(b=0, extra=""))


MEMORY = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
          'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }')


def test_memorydata_serves_batches_in_order():
    n = net(MEMORY)
    data = numpy.arange(8, dtype=numpy.float32).reshape(4, 1, 1, 2)
    n.set_input_arrays(data, numpy.array([0, 1, 2, 3]))
    n.forward()
    numpy.testing.assert_array_equal(n.blobs["data"].data, data[:2])
    numpy.testing.assert_array_equal(n.blobs["label"].data.ravel(), [0, 1])
    n.forward()
    n.forward()
    numpy.testing.assert_array_equal(n.blobs["label"].data.ravel(), [0, 1])
    with pytest.raises(InvalidParameterError, match="multiple of batch_size 2"):
        n.set_input_arrays(data[:3], numpy.zeros(3))
    with pytest.raises(InvalidParameterError, match="set_input_arrays"):
        net(MEMORY).forward()


def test_hdf5output_appends_batches(tmp_path):
    out = tmp_path / "out.h5"
    n = net('layer { name: "i" type: "Input" top: "x" top: "y" '
            'input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
            f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" '
            f'hdf5_output_param {{ file_name: "{out}" }} }}')
    n.blobs["x"].data[...] = 1
    n.forward()
    n.blobs["x"].data[...] = 2
    n.forward()
    with h5py.File(out, "r") as f:
        assert f["data"].shape == (4, 3) and f["label"].shape == (4,)
        numpy.testing.assert_array_equal(f["data"][:, 0], [1, 1, 2, 2])
