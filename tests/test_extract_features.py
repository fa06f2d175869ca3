"""`netdef extract_features`: blobs of a net over its data layer to LMDB (Caffe's Datum layout) and HDF5."""

import numpy
import pytest

import netdef
from netdef.cli import main
from netdef.data.sources import LMDBReader, decode_datum
from netdef.errors import DatasetError, NetdefError
from netdef.tools.extract_features import extract_features

h5py = pytest.importorskip("h5py")

NET = """name: "feat"
layer { name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "LIST" batch_size: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "r" }
"""


@pytest.fixture
def model(tmp_path):
    x = numpy.arange(5 * 4, dtype=numpy.float32).reshape(5, 4) / 10 - 1
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = x
        f["label"] = numpy.zeros(5, numpy.float32)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'd.h5'}\n")
    (tmp_path / "net.prototxt").write_text(NET.replace("LIST", str(tmp_path / "list.txt")))
    net = netdef.Net(str(tmp_path / "net.prototxt"), netdef.TEST)
    w = numpy.array([[1, 0, 0, 0], [0, -1, 0, 0], [0.5, 0.5, 0.5, 0.5]], numpy.float32)
    net.params["fc"][0].data[...] = w
    net.params["fc"][1].data[...] = [0, 1, 2]
    net.save(str(tmp_path / "w.caffemodel"))
    fc = x @ w.T + [0, 1, 2]
    return tmp_path, fc


def test_lmdb_records_with_caffes_keys(model):
    pytest.importorskip("lmdb")
    folder, fc = model
    argv = ["-q", "extract_features", str(folder / "w.caffemodel"), str(folder / "net.prototxt"), "fc,r"]
    argv += [f"{folder / 'fc_db'},{folder / 'r_db'}", "2", "lmdb", "CPU"]
    assert main(argv) == 0
    for name, expected in (("fc_db", fc[:4]), ("r_db", numpy.maximum(fc[:4], 0))):
        reader = LMDBReader(str(folder / name))
        assert len(reader) == 4
        for i in range(4):
            assert reader.key() == f"{i:010d}".encode()
            values, _ = decode_datum(reader.value())
            assert values.shape == (3, 1, 1)
            numpy.testing.assert_allclose(values.ravel(), expected[i], rtol=1e-6)
            reader.next()
        reader.close()


def test_hdf5_wraps_around_the_data(model):
    folder, fc = model
    count = extract_features(
        str(folder / "w.caffemodel"), str(folder / "net.prototxt"), ["fc"], [str(folder / "fc.h5")], 3, "hdf5"
    )
    assert count == 6
    with h5py.File(folder / "fc.h5", "r") as f:
        numpy.testing.assert_allclose(f["fc"][:], numpy.concatenate([fc, fc[:1]]), rtol=1e-6)


def test_errors(model):
    folder, _ = model
    args = (str(folder / "w.caffemodel"), str(folder / "net.prototxt"))
    with pytest.raises(DatasetError, match="one output per blob"):
        extract_features(*args, "fc,r", str(folder / "a"), 1)
    with pytest.raises(NetdefError, match='Unknown feature blob name "nope"'):
        extract_features(*args, "nope", str(folder / "a"), 1)
    with pytest.raises(DatasetError, match="num_mini_batches must be at least 1"):
        extract_features(*args, "fc", str(folder / "a"), 0)
    assert not (folder / "a").exists()
