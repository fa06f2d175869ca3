"""`netdef visualize` (netdef.tools.visualize): filter grids and activation maps as PNG, written without extras."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from netdef.cli import main
from netdef.errors import NetdefError
from netdef.tools.visualize import activation_grid, activations, encode_png, filter_grid, tile, visualize

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "models" / "digits" / "train_val.prototxt")
LENET = str(ROOT / "models" / "lenet" / "deploy.prototxt")


def decode_png(data: bytes) -> np.ndarray:
    """A minimal reader for the 8-bit, unfiltered PNGs encode_png writes (independent of Pillow)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3}[color]
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    assert depth == 8 and (rows[:, 0] == 0).all()
    pixels = rows[:, 1:].reshape(height, width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels


def test_png_round_trip_grey_and_colour():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (decode_png(encode_png(grey)) == grey).all()
    rgb = np.random.default_rng(0).integers(0, 256, (5, 2, 3)).astype(np.uint8)
    assert (decode_png(encode_png(rgb)) == rgb).all()
    with pytest.raises(NetdefError, match=r"\(H, W\) or \(H, W, 3\)"):
        encode_png(np.zeros((2, 2, 4)))


def test_png_opens_in_pillow_when_present(tmp_path):
    image = pytest.importorskip("PIL.Image")
    (tmp_path / "a.png").write_bytes(encode_png(np.full((7, 9, 3), 200, np.uint8)))
    with image.open(tmp_path / "a.png") as im:
        assert im.size == (9, 7) and im.mode == "RGB" and im.getpixel((0, 0)) == (200, 200, 200)


def test_tile_layout_and_enlarging():
    tiles = np.zeros((5, 2, 3), np.uint8)
    grid = tile(tiles, padding=1, min_tile=6)  # 3 columns, 2 rows, tiles enlarged x2 to 4x6
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1)
    assert grid[0].tolist() == [255] * 22 and grid[1, 1] == 0


def test_filter_grid_of_colour_filters_is_rgb():
    w = np.zeros((4, 3, 2, 2), np.float32)
    w[:, 0] = 1.0  # blue in Caffe's BGR order
    grid = filter_grid(w, min_tile=2)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert grid[1, 1].tolist() == [0, 0, 255]


def test_digits_filters_and_activations(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the digits data paths are relative to the repository root
    out = tmp_path / "conv1.png"
    assert main(["visualize", DIGITS, "-o", str(out)]) == 0
    # conv1: 20 filters of 3x3, enlarged x10, 5 columns and 4 rows with 1-pixel gaps
    assert decode_png(out.read_bytes()).shape == (4 * 31 + 1, 5 * 31 + 1)
    assert capsys.readouterr().out.split() == [str(out)]
    act = tmp_path / "act.png"
    assert main(["visualize", DIGITS, "--blob", "conv1,pool2", "--sample", "130", "-o", str(act)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "act_conv1.png"), str(tmp_path / "act_pool2.png")]
    # pool2: 50 maps of 2x2, enlarged x16, 8 columns and 7 rows
    assert decode_png((tmp_path / "act_pool2.png").read_bytes()).shape == (7 * 33 + 1, 8 * 33 + 1)


def test_sample_number_picks_that_sample(monkeypatch):
    monkeypatch.chdir(ROOT)
    data = activations(DIGITS, ["data"], sample=121)
    import h5py

    with h5py.File(ROOT / "models" / "digits" / "test.h5") as f:
        want = f["data"][121]
    assert np.allclose(data["data"], want)


def test_image_input_for_a_deploy_net(tmp_path):
    x = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    np.save(tmp_path / "digit.npy", x)
    values = activations(LENET, ["data", "conv1"], image=str(tmp_path / "digit.npy"))
    assert values["conv1"].shape == (20, 24, 24)
    assert np.allclose(values["data"][0], x)
    grid = activation_grid(values["conv1"])
    assert grid.shape == (4 * 25 + 1, 5 * 25 + 1)  # 24x24 maps, large enough to stay as they are


def test_input_errors_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(NetdefError, match="one input"):
        activations(DIGITS, ["conv1"])
    with pytest.raises(NetdefError, match="needs a net with an Input layer"):
        activations(DIGITS, ["conv1"], image="x.npy")
    with pytest.raises(NetdefError, match="no blob 'nope'"):
        activations(DIGITS, ["nope"], sample=0)
    with pytest.raises(NetdefError, match="ending in .png"):
        visualize(DIGITS, str(tmp_path / "x.jpg"))


def test_mlp_first_layer_units_are_drawn_as_images(tmp_path):
    from netdef import TEST, Net
    from netdef.tools.visualize import layer_filters

    net = Net(str(ROOT / "models" / "mlp_sigmoid" / "deploy.prototxt"), TEST)
    assert layer_filters(net, "ip1").shape == (50, 1, 28, 28)
    with pytest.raises(NetdefError, match="not image filters"):
        layer_filters(net, "ip2")
    out = tmp_path / "ip1.png"
    visualize(str(ROOT / "models" / "mlp_sigmoid" / "deploy.prototxt"), str(out))
    assert decode_png(out.read_bytes()).shape == (7 * 29 + 1, 8 * 29 + 1)  # 50 units of 28x28 in 8 columns
