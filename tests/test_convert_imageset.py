"""`netdef convert_imageset`: image lists to LMDB (Datum records, Caffe's keys) and HDF5, read back by the data layers.

The end-to-end check trains models/digits' net twice, once from the bundled HDF5 files and
once from an LMDB that convert_imageset wrote from PNG copies of the same images, and
compares the test accuracy. "The same" means identical: both runs see the same images in
the same order (the list is written in the HDF5 files' row order, convert_imageset keeps
it without --shuffle, the Data layer reads keys in that order, and the HDF5 run has
shuffle off), the same pixel values (PNG grey levels 0..16 times transform_param
scale 1/16 give exactly the HDF5 values k/16) and the same random seed, so every weight
update and the final accuracy agree exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy
import pytest

import netdef
from netdef.cli import main
from netdef.data.sources import LMDBReader, decode_datum
from netdef.errors import DatasetError
from netdef.tools.convert_imageset import convert_imageset

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("lmdb")
h5py = pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int = 5, size=(6, 4)) -> list[tuple[str, int, numpy.ndarray]]:
    """Colour PNGs with distinct pixels; returns (name, label, RGB H x W x 3 array)."""
    rng = numpy.random.default_rng(0)
    out = []
    (folder / "img").mkdir(exist_ok=True)
    for i in range(count):
        rgb = rng.integers(0, 256, size=(*size, 3), dtype=numpy.uint8)
        name = f"img/pic {i}.png"  # a space in the path: the label follows the last space
        Image.fromarray(rgb).save(folder / name)
        out.append((name, i % 3, rgb))
    (folder / "list.txt").write_text("".join(f"{n} {lab}\n" for n, lab, _ in out))
    return out


def records(path) -> list[tuple[bytes, bytes]]:
    reader = LMDBReader(str(path))
    try:
        out = []
        while reader.epoch == 0:
            out.append((reader.key(), reader.value()))
            reader.next()
        return out
    finally:
        reader.close()


def test_lmdb_records_have_caffes_keys_and_bgr_pixels(tmp_path):
    images = write_images(tmp_path)
    assert main(["-q", "convert_imageset", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 0
    got = records(tmp_path / "db")
    assert [k for k, _ in got] == [f"{i:08d}_{n}".encode() for i, (n, _, _) in enumerate(images)]
    for (_, value), (_, label, rgb) in zip(got, images):
        pixels, lab = decode_datum(value)
        assert lab == label
        numpy.testing.assert_array_equal(pixels, rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR, C x H x W
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".db")]  # no temporary folder left


def test_gray_resize_and_shuffle(tmp_path):
    images = write_images(tmp_path)
    out = tmp_path / "db"
    argv = ["-q", "convert-imageset", "--gray", "--shuffle", "--seed", "3", "--resize_height", "3"]
    argv += ["--resize_width", "2", f"{tmp_path}/", str(tmp_path / "list.txt"), str(out)]
    assert main(argv) == 0
    got = records(out)
    names = [k.decode().split("_", 1)[1] for k, _ in got]
    assert sorted(names) == sorted(n for n, _, _ in images)
    assert names != [n for n, _, _ in images]  # seed 3 moves them
    order = numpy.random.default_rng(3).permutation(len(images))
    assert names == [images[i][0] for i in order]
    pixels, _ = decode_datum(got[0][1])
    assert pixels.shape == (1, 3, 2)


def test_encoded_keeps_the_file_bytes_or_reencodes(tmp_path):
    images = write_images(tmp_path, count=2)
    convert_imageset(f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "same"), encoded=True)
    value = records(tmp_path / "same")[0][1]
    datum = netdef.proto.netdef_pb2.Datum.FromString(value)
    assert datum.encoded and datum.data == (tmp_path / images[0][0]).read_bytes()
    pixels, _ = decode_datum(value)
    numpy.testing.assert_array_equal(pixels, images[0][2][:, :, ::-1].transpose(2, 0, 1))
    convert_imageset(f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "jpg"), encoded=True, encode_type="jpg")
    datum = netdef.proto.netdef_pb2.Datum.FromString(records(tmp_path / "jpg")[0][1])
    assert datum.encoded and datum.data[:2] == b"\xff\xd8"  # a JPEG


def test_existing_output_is_refused_and_kept(tmp_path):
    write_images(tmp_path, count=1)
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "keep").write_text("x")
    with pytest.raises(DatasetError, match="already exists"):
        convert_imageset(f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert (tmp_path / "db" / "keep").read_text() == "x"


def test_a_failure_leaves_no_database(tmp_path, capsys):
    write_images(tmp_path, count=2)
    with open(tmp_path / "list.txt", "a") as f:
        f.write("img/missing.png 1\n")
    assert main(["convert_imageset", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 1
    assert "image file not found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "list.txt"]


def test_bad_list_line_and_one_sided_resize(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("just_a_path.png\n")
    with pytest.raises(DatasetError, match='line 1: expected "<image path> <integer label>"'):
        convert_imageset("", str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert main(["convert_imageset", "--resize_height", "4", "", str(tmp_path / "list.txt"), str(tmp_path / "d")]) == 1
    assert "give both --resize_height and --resize_width" in capsys.readouterr().err


def test_hdf5_backend_writes_the_file_and_its_list(tmp_path):
    images = write_images(tmp_path, count=3)
    out = tmp_path / "set.h5"
    convert_imageset(f"{tmp_path}/", str(tmp_path / "list.txt"), str(out), backend="hdf5", scale=0.5)
    with h5py.File(out, "r") as f:
        assert f["data"].dtype == numpy.float32 and f["data"].shape == (3, 3, 6, 4)
        numpy.testing.assert_array_equal(f["data"][1], images[1][2][:, :, ::-1].transpose(2, 0, 1) * 0.5)
        numpy.testing.assert_array_equal(f["label"][:], [0, 1, 2])
    assert (tmp_path / "set_h5.txt").read_text() == f"{out}\n"


def test_progress_bar_only_on_a_terminal():
    import io

    from netdef.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    plain, tty = io.StringIO(), Tty()
    for stream in (plain, tty):
        with Progress(4, "Converting", enabled=None if stream is plain else True, stream=stream) as bar:
            for _ in range(4):
                bar.update()
    assert plain.getvalue() == ""
    assert "Converting [" in tty.getvalue() and "4/4 100%" in tty.getvalue() and tty.getvalue().endswith("\r\033[K")


# --- the digits net trained from an LMDB made by convert_imageset equals the HDF5 run -------------------------
def digits_to_pngs(split: str, folder: Path) -> Path:
    with h5py.File(ROOT / "models" / "digits" / f"{split}.h5", "r") as f:
        data, labels = f["data"][:], f["label"][:]
    levels = numpy.rint(data[:, 0] * 16)
    assert numpy.array_equal(levels / 16, data[:, 0])  # grey levels k/16, exactly
    (folder / split).mkdir()
    lines = []
    for i, (img, label) in enumerate(zip(levels.astype(numpy.uint8), labels)):
        name = f"{split}/{i:04d}.png"
        Image.fromarray(img).save(folder / name)
        lines.append(f"{name} {int(label)}\n")
    list_file = folder / f"{split}.txt"
    list_file.write_text("".join(lines))
    return list_file


def digits_net(tmp_path: Path, lmdb_folder: Path | None) -> Path:
    text = (ROOT / "models" / "digits" / "train_val.prototxt").read_text()
    if lmdb_folder is None:  # the bundled HDF5 files, read in file order
        text = text.replace("shuffle: true", "shuffle: false")
        text = text.replace('"models/digits/', f'"{ROOT}/models/digits/')
        for split in ("train", "test"):
            (tmp_path / f"{split}_list.txt").write_text(f"{ROOT}/models/digits/{split}.h5\n")
            text = text.replace(f"{ROOT}/models/digits/{split}_list.txt", str(tmp_path / f"{split}_list.txt"))
    else:
        for split, batch in (("train", 64), ("test", 120)):
            pattern = (
                r'type: "HDF5Data"(\s+top: "data"\s+top: "label"\s+include \{ phase: '
                + split.upper()
                + r" \}\s+)hdf5_data_param \{[^}]*\}"
            )
            replacement = (
                r'type: "Data"\1'
                + f'data_param {{ source: "{lmdb_folder / split}" backend: LMDB batch_size: {batch} }} '
                + "transform_param { scale: 0.0625 }"
            )
            text, n = re.subn(pattern, replacement, text)
            assert n == 1
    path = tmp_path / ("hdf5.prototxt" if lmdb_folder is None else "lmdb.prototxt")
    path.write_text(text)
    return path


def train_digits(net: Path, iters: int) -> float:
    solver = netdef.get_solver(
        netdef.proto.netdef_pb2.SolverParameter(
            net=str(net),
            test_iter=[3],
            test_interval=10**6,
            base_lr=0.05,
            momentum=0.9,
            weight_decay=0.0005,
            lr_policy="inv",
            gamma=0.0001,
            power=0.75,
            max_iter=iters,
            random_seed=1701,
            snapshot_after_train=False,
            solver_mode=netdef.proto.netdef_pb2.SolverParameter.CPU,
        )
    )
    solver.step(iters)
    return solver.test(0)["accuracy"]


@pytest.mark.slow
def test_digits_from_convert_imageset_lmdb_train_like_the_hdf5_files(tmp_path):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    dbs = tmp_path / "dbs"
    for split in ("train", "test"):
        list_file = digits_to_pngs(split, pngs)
        convert_imageset(f"{pngs}/", str(list_file), str(dbs / split), gray=True)
    iters = 120  # 64 x 120 = 7680 samples: more than five passes over the 1,437 training images
    from_lmdb = train_digits(digits_net(tmp_path, dbs), iters)
    from_hdf5 = train_digits(digits_net(tmp_path, None), iters)
    print(f"test accuracy after {iters} iterations: LMDB {from_lmdb!r}, HDF5 {from_hdf5!r}")
    assert from_lmdb == from_hdf5
    assert from_lmdb > 0.9
