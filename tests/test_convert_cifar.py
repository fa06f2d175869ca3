"""`netdef convert_cifar`: tiny synthetic CIFAR-10/100 batches, binary and pickled, to LMDB and HDF5."""

import pickle

import numpy
import pytest

from netdef.cli import main
from netdef.data.sources import LMDBReader, decode_datum
from netdef.datasets.cifar import find_layout, read_python_batch
from netdef.errors import DatasetError
from netdef.tools.convert_cifar import convert_cifar

h5py = pytest.importorskip("h5py")


def images(n, seed):
    return numpy.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=numpy.uint8)


def cifar10_binary(folder, sizes=(3, 2), test=2):
    folder.mkdir()
    batches = []
    for k, n in enumerate(sizes, 1):
        x, y = images(n, k), numpy.arange(n, dtype=numpy.uint8) % 10
        records = numpy.concatenate([y[:, None], x.reshape(n, -1)], axis=1)
        (folder / f"data_batch_{k}.bin").write_bytes(records.tobytes())
        batches.append((x, y))
    x, y = images(test, 99), numpy.full(test, 7, numpy.uint8)
    (folder / "test_batch.bin").write_bytes(numpy.concatenate([y[:, None], x.reshape(test, -1)], axis=1).tobytes())
    return batches, (x, y)


def read_all(path):
    reader = LMDBReader(str(path))
    out = []
    while reader.epoch == 0:
        out.append((reader.key(), *decode_datum(reader.value())))
        reader.next()
    reader.close()
    return out


def test_cifar10_binary_to_lmdb_with_caffes_keys(tmp_path):
    pytest.importorskip("lmdb")
    train, test = cifar10_binary(tmp_path / "cifar-10-batches-bin")
    assert main(["-q", "convert_cifar", str(tmp_path), str(tmp_path / "out"), "lmdb"]) == 0
    got = read_all(tmp_path / "out" / "cifar10_train_lmdb")
    assert [k for k, _, _ in got] == [b"00000", b"00001", b"00002", b"10000", b"10001"]
    expected = numpy.concatenate([x for x, _ in train])
    for (_, pixels, label), want, want_label in zip(got, expected, numpy.concatenate([y for _, y in train])):
        numpy.testing.assert_array_equal(pixels, want)  # R, G, B planes as in the file
        assert label == want_label
    got = read_all(tmp_path / "out" / "cifar10_test_lmdb")
    assert [k for k, _, _ in got] == [b"00000", b"00001"] and got[1][2] == 7


def test_cifar10_python_to_hdf5_minus_the_training_mean(tmp_path):
    folder = tmp_path / "py"
    folder.mkdir()
    parts = []
    for name, seed, n in (("data_batch_1", 1, 3), ("data_batch_2", 2, 3), ("test_batch", 3, 2)):
        x = images(n, seed)
        d = {b"data": x.reshape(n, -1), b"labels": list(range(n)), b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        parts.append(x)
    written = convert_cifar(str(folder), str(tmp_path / "out"), backend="hdf5")
    train = numpy.concatenate(parts[:2]).astype(numpy.float32)
    mean = train.mean(axis=0)
    numpy.testing.assert_allclose(numpy.load(tmp_path / "out" / "mean.npy"), mean, rtol=1e-6)
    with h5py.File(written["train"], "r") as f:
        numpy.testing.assert_allclose(f["data"][:], train - mean, rtol=1e-5, atol=1e-4)
        numpy.testing.assert_array_equal(f["label"][:], [0, 1, 2, 0, 1, 2])
    with h5py.File(written["test"], "r") as f:
        numpy.testing.assert_allclose(f["data"][:], parts[2] - mean, rtol=1e-5, atol=1e-4)
    assert (tmp_path / "out" / "cifar10_test_h5.txt").read_text() == f"{written['test']}\n"
    assert (tmp_path / "out" / "mean.binaryproto").exists()


def test_cifar100_binary_and_python_labels(tmp_path):
    x = images(2, 5)
    coarse, fine = numpy.array([1, 2], numpy.uint8), numpy.array([55, 66], numpy.uint8)
    binary = tmp_path / "bin"
    binary.mkdir()
    rows = numpy.concatenate([coarse[:, None], fine[:, None], x.reshape(2, -1)], axis=1).tobytes()
    (binary / "train.bin").write_bytes(rows)
    layout = find_layout(str(binary))
    assert (layout.name, layout.kind) == ("cifar100", "binary")
    written = convert_cifar(str(binary), str(tmp_path / "o1"), backend="hdf5", subtract_mean=False)
    with h5py.File(written["train"], "r") as f:
        numpy.testing.assert_array_equal(f["label"][:], [55, 66])
        numpy.testing.assert_array_equal(f["data"][:], x)
    python = tmp_path / "py"
    python.mkdir()
    d = {"data": x.reshape(2, -1), "fine_labels": [55, 66], "coarse_labels": [1, 2]}
    (python / "train").write_bytes(pickle.dumps(d))
    written = convert_cifar(str(python), str(tmp_path / "o2"), backend="hdf5", labels="coarse", subtract_mean=False)
    with h5py.File(written["train"], "r") as f:
        numpy.testing.assert_array_equal(f["label"][:], [1, 2])


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DatasetError, match="not allowed"):
        read_python_batch(str(tmp_path / "data_batch_1"))


def test_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no CIFAR batches"):
        convert_cifar(str(tmp_path / "empty"), str(tmp_path / "out"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="whole number of 3073-byte records"):
        convert_cifar(str(tmp_path / "bad"), str(tmp_path / "out"), backend="hdf5", subtract_mean=False)
