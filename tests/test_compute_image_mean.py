"""`netdef compute_image_mean`: means of an LMDB, HDF5 files and an image list, as .binaryproto and .npy."""

import numpy
import pytest

from netdef.cli import main
from netdef.data.transform import read_mean_file
from netdef.datasets.datum import datum_bytes, format_key
from netdef.datasets.writers import HDF5Writer, open_db_writer
from netdef.errors import DatasetError
from netdef.io.blobproto import read_binaryproto
from netdef.proto import netdef_pb2 as pb
from netdef.tools.compute_image_mean import compute_image_mean

SAMPLES = numpy.random.default_rng(0).integers(0, 256, size=(5, 3, 4, 6), dtype=numpy.uint8)
MEAN = SAMPLES.astype(numpy.float64).mean(axis=0).astype(numpy.float32)


def test_lmdb_to_binaryproto_and_npy(tmp_path, capsys):
    pytest.importorskip("lmdb")
    with open_db_writer(str(tmp_path / "db")) as db:
        for i, x in enumerate(SAMPLES):
            db.put(format_key(i), datum_bytes(x, i))
    argv = ["compute_image_mean", str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")]
    assert main(argv + ["--npy", str(tmp_path / "mean.npy")]) == 0
    numpy.testing.assert_allclose(read_binaryproto(str(tmp_path / "mean.binaryproto")), MEAN[None], rtol=1e-6)
    numpy.testing.assert_allclose(read_mean_file(str(tmp_path / "mean.binaryproto")), MEAN, rtol=1e-6)
    numpy.testing.assert_allclose(numpy.load(tmp_path / "mean.npy"), MEAN, rtol=1e-6)
    blob = pb.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 6)  # Caffe's layout
    err = capsys.readouterr().err
    assert f"mean_value channel [0]: {MEAN[0].mean():g}" in err


def test_hdf5_and_its_list(tmp_path):
    with HDF5Writer(str(tmp_path / "a.h5"), {"data": (3, 4, 6), "label": ()}) as h5:
        h5.append(data=SAMPLES[:2], label=[0, 1])
    with HDF5Writer(str(tmp_path / "b.h5"), {"data": (3, 4, 6), "label": ()}) as h5:
        h5.append(data=SAMPLES[2:], label=[0, 1, 2])
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    mean = compute_image_mean(str(tmp_path / "list.txt"), str(tmp_path / "m.npy"))
    numpy.testing.assert_allclose(mean, MEAN, rtol=1e-6)
    numpy.testing.assert_allclose(numpy.load(tmp_path / "m.npy"), MEAN, rtol=1e-6)
    assert not (tmp_path / "m.binaryproto").exists()


def test_image_list(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    lines = []
    for i, x in enumerate(SAMPLES):
        Image.fromarray(x[::-1].transpose(1, 2, 0)).save(tmp_path / f"{i}.png")  # stored RGB, read back BGR
        lines.append(f"{i}.png 0\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    mean = compute_image_mean(str(tmp_path / "list.txt"), root=f"{tmp_path}/")
    numpy.testing.assert_allclose(mean, MEAN, rtol=1e-6)


def test_errors(tmp_path, capsys):
    assert main(["compute_image_mean", str(tmp_path / "absent_lmdb")]) == 1
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetError, match="neither an LMDB"):
        compute_image_mean(str(tmp_path / "folder"))
