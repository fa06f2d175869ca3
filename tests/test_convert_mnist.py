"""`netdef convert_mnist`: synthetic idx files (plain and gzipped) to LMDB and HDF5."""

import numpy
import pytest

from netdef.cli import main
from netdef.data.sources import LMDBReader, decode_datum
from netdef.datasets.mnist import read_idx, write_idx
from netdef.errors import DatasetError
from netdef.tools.convert_mnist import convert_mnist

h5py = pytest.importorskip("h5py")


@pytest.fixture
def idx(tmp_path):
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=numpy.uint8)
    labels = numpy.array([3, 1, 4, 1, 5, 9, 2], dtype=numpy.uint8)
    write_idx(str(tmp_path / "img-idx3-ubyte.gz"), images)
    write_idx(str(tmp_path / "lab-idx1-ubyte"), labels)
    return tmp_path, images, labels


def test_idx_header_is_read(idx):
    folder, images, labels = idx
    raw = (folder / "lab-idx1-ubyte").read_bytes()
    assert raw[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 7])  # magic 2049, then the count
    numpy.testing.assert_array_equal(read_idx(str(folder / "img-idx3-ubyte.gz"), 2051), images)


def test_lmdb_has_caffes_keys_and_datums(idx):
    pytest.importorskip("lmdb")
    folder, images, labels = idx
    argv = [
        "-q",
        "convert_mnist",
        str(folder / "img-idx3-ubyte.gz"),
        str(folder / "lab-idx1-ubyte"),
        str(folder / "db"),
    ]
    assert main(argv) == 0
    reader = LMDBReader(str(folder / "db"))
    assert len(reader) == 7
    for i in range(7):
        assert reader.key() == f"{i:08d}".encode()
        pixels, label = decode_datum(reader.value())
        numpy.testing.assert_array_equal(pixels, images[i][None])
        assert label == labels[i]
        reader.next()
    reader.close()


def test_hdf5_scaled_with_its_list(idx):
    folder, images, labels = idx
    out = folder / "mnist_train.h5"
    convert_mnist(str(folder / "img-idx3-ubyte.gz"), str(folder / "lab-idx1-ubyte"), str(out), backend="hdf5")
    with h5py.File(out, "r") as f:
        numpy.testing.assert_array_equal(f["data"][:], images[:, None].astype(numpy.float32) / 256)
        numpy.testing.assert_array_equal(f["label"][:], labels)
    assert (folder / "mnist_train_h5.txt").read_text() == f"{out}\n"


def test_errors(idx):
    folder, _, _ = idx
    with pytest.raises(DatasetError, match="expected an image file \\(magic 2051\\). Received: magic number 2049"):
        convert_mnist(str(folder / "lab-idx1-ubyte"), str(folder / "lab-idx1-ubyte"), str(folder / "x"))
    write_idx(str(folder / "short-idx1-ubyte"), numpy.zeros(3, numpy.uint8))
    with pytest.raises(DatasetError, match="holds 7 images but .* holds 3 labels"):
        convert_mnist(str(folder / "img-idx3-ubyte.gz"), str(folder / "short-idx1-ubyte"), str(folder / "x"))
    (folder / "trunc").write_bytes((folder / "lab-idx1-ubyte").read_bytes()[:-2])
    with pytest.raises(DatasetError, match="need 7 values after the header. Received: 5"):
        read_idx(str(folder / "trunc"))
    assert not (folder / "x").exists()
