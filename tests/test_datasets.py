"""netdef.datasets: Datum encoding, Caffe's keys, and writers that leave whole outputs or none."""

import builtins

import numpy
import pytest

from netdef.data.sources import LMDBReader, decode_datum
from netdef.datasets import datum_bytes, format_key, hdf5_list_path, open_db_writer
from netdef.datasets.writers import HDF5Writer, LMDBWriter
from netdef.errors import DatasetError
from netdef.proto import netdef_pb2 as pb


def test_keys_as_caffes_tools_spell_them():
    assert format_key(42, 8, "cat/1.jpg") == b"00000042_cat/1.jpg"
    assert format_key(7) == b"00000007"
    assert format_key(10003, 5) == b"10003"
    assert format_key(3, 10) == b"0000000003"


def test_datum_layouts():
    x = numpy.arange(12, dtype=numpy.uint8).reshape(3, 2, 2)
    d = pb.Datum.FromString(datum_bytes(x, 4))
    assert (d.channels, d.height, d.width, d.label, d.data) == (3, 2, 2, 4, x.tobytes())
    d = pb.Datum.FromString(datum_bytes(numpy.array([0.5, -1.0, 2.0])))
    assert (d.channels, d.height, d.width) == (3, 1, 1) and list(d.float_data) == [0.5, -1.0, 2.0] and not d.data
    d = pb.Datum.FromString(datum_bytes(label=1, encoded=b"\x89PNG"))
    assert d.encoded and d.data == b"\x89PNG" and not d.channels
    with pytest.raises(DatasetError, match="C x H x W"):
        datum_bytes(numpy.zeros((1, 1, 1, 1)))


def test_lmdb_grows_its_map_and_commits_in_batches(tmp_path, monkeypatch):
    pytest.importorskip("lmdb")
    monkeypatch.setattr("netdef.datasets.writers.COMMIT_EVERY", 7)
    value = bytes(range(256)) * 40  # 10 kB per record; 50 records overflow a 64 kB map many times
    with LMDBWriter(str(tmp_path / "db"), map_size=1 << 16) as db:
        for i in range(50):
            db.put(format_key(i), datum_bytes(numpy.frombuffer(value, numpy.uint8)))
    reader = LMDBReader(str(tmp_path / "db"))
    assert len(reader) == 50 and reader.key() == b"00000000"
    assert decode_datum(reader.value())[0].size == len(value)
    reader.close()


def test_an_error_inside_the_block_leaves_nothing(tmp_path):
    pytest.importorskip("lmdb")
    with pytest.raises(RuntimeError):
        with open_db_writer(str(tmp_path / "db")) as db:
            db.put(b"a", b"b")
            raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        with HDF5Writer(str(tmp_path / "x.h5"), {"data": (2,)}) as h5:
            h5.append(data=numpy.zeros((3, 2)))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_leveldb_without_plyvel_names_the_package(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_plyvel(name, *args, **kwargs):
        if name == "plyvel":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_plyvel)
    with pytest.raises(DatasetError, match="needs the plyvel package.*pip install plyvel"):
        open_db_writer(str(tmp_path / "db"), "leveldb")
    assert not (tmp_path / "db").exists()


def test_lmdb_without_lmdb_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_lmdb(name, *args, **kwargs):
        if name == "lmdb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lmdb)
    with pytest.raises(DatasetError, match=r"`pip install lmdb` \(the \"db\" extra"):
        open_db_writer(str(tmp_path / "db"), "lmdb")


def test_hdf5_list_path_and_bad_backend(tmp_path):
    assert hdf5_list_path("data/mnist/mnist_train.h5") == "data/mnist/mnist_train_h5.txt"
    with pytest.raises(DatasetError, match="Valid: lmdb, leveldb"):
        open_db_writer(str(tmp_path / "db"), "rocksdb")
