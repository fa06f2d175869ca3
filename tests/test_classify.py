"""`netdef classify`: a tiny deploy net with saved weights, images as .npy (and PNG with Pillow)."""

import sys

import numpy
import pytest

import netdef
from netdef.cli import main

# Three classes, each the mean of one BGR channel of a 4x4 input scaled to [0, 255]:
# a pure red image gives logits (0, 0, 1), so softmax (1, 1, e) / (2 + e).
DEPLOY = """name: "colors"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
LABELS = "blue\ngreen\nred\n"
P_TOP = numpy.e / (2 + numpy.e)
P_REST = 1 / (2 + numpy.e)


@pytest.fixture
def model(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    net = netdef.Net(str(deploy), netdef.TEST)
    weights = numpy.zeros((3, 3, 4, 4), dtype=numpy.float32)
    for c in range(3):
        weights[c, c] = 1.0 / (255 * 16)
    net.params["fc"][0].data[...] = weights.reshape(3, 48)
    net.params["fc"][1].data[...] = 0
    net.save(str(tmp_path / "colors.caffemodel"))
    (tmp_path / "labels.txt").write_text(LABELS)
    return tmp_path


def solid(h, w, rgb):
    return numpy.broadcast_to(numpy.array(rgb, dtype=numpy.float32), (h, w, 3)).copy()


def run(model, *extra):
    return main(
        [
            "-q",
            "classify",
            "--model",
            str(model / "deploy.prototxt"),
            "--weights",
            str(model / "colors.caffemodel"),
            *extra,
        ]
    )


def test_top_k_lines_for_a_npy_image(model, capsys):
    numpy.save(model / "red.npy", solid(4, 4, [1, 0, 0]))
    assert run(model, "--labels", str(model / "labels.txt"), "--top-k", "2", str(model / "red.npy")) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"---------- Prediction for {model / 'red.npy'} ----------",
        f'{P_TOP:.4f} - "red"',
        f'{P_REST:.4f} - "blue"',
    ]
    assert f"{P_TOP:.4f}" == "0.5761"


def test_png_image_with_pillow(model, capsys):
    Image = pytest.importorskip("PIL.Image")
    pixels = numpy.zeros((6, 10, 3), dtype=numpy.uint8)
    pixels[..., 1] = 255
    Image.fromarray(pixels).save(model / "green.png")
    assert run(model, "--labels", str(model / "labels.txt"), "--top-k", "1", str(model / "green.png")) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f'{P_TOP:.4f} - "green"']


def test_many_images_are_batched_in_order_and_resized(model, capsys):
    colors = {"b": [0, 0, 1], "r": [1, 0, 0], "g": [0, 1, 0]}
    paths = []
    for name, rgb in colors.items():
        numpy.save(model / f"{name}.npy", solid(7, 5, rgb))
        paths.append(str(model / f"{name}.npy"))
    assert run(model, "--labels", str(model / "labels.txt"), "--top-k", "1", *paths) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1::2] == [f'{P_TOP:.4f} - "blue"', f'{P_TOP:.4f} - "red"', f'{P_TOP:.4f} - "green"']


def test_mean_and_scales_change_the_input(model, capsys):
    numpy.save(model / "red.npy", solid(4, 4, [1, 0, 0]))
    # subtracting 255 from the R channel (BGR index 2) leaves all logits 0
    assert run(model, "--mean", "0,0,255", "--top-k", "3", str(model / "red.npy")) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ['0.3333 - "0"', '0.3333 - "1"', '0.3333 - "2"']
    numpy.save(model / "mean.npy", numpy.full((3, 8, 8), 127.5, dtype=numpy.float32))
    # 16 pixels of (255 - 127.5) * 2 / 4080: logit 1 for R, -1 for B and G
    assert (
        run(model, "--mean", str(model / "mean.npy"), "--input-scale", "2", "--top-k", "1", str(model / "red.npy")) == 0
    )
    p = numpy.exp(1) / (numpy.exp(1) + 2 * numpy.exp(-1))
    assert capsys.readouterr().out.splitlines()[1:] == [f'{p:.4f} - "2"']
    # no channel swap: the red channel is read as class 0 ("blue"); raw scale 255 -> 510 doubles the logit
    assert run(model, "--channel-swap", "none", "--raw-scale", "510", "--top-k", "1", str(model / "red.npy")) == 0
    p = numpy.exp(2) / (numpy.exp(2) + 2)
    assert capsys.readouterr().out.splitlines()[1:] == [f'{p:.4f} - "0"']


def test_binaryproto_mean(model, capsys):
    from netdef.io.blobproto import write_binaryproto

    write_binaryproto(str(model / "mean.binaryproto"), numpy.full((1, 3, 4, 4), 255.0, dtype=numpy.float32))
    numpy.save(model / "white.npy", solid(4, 4, [1, 1, 1]))
    assert run(model, "--mean", str(model / "mean.binaryproto"), "--top-k", "1", str(model / "white.npy")) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ['0.3333 - "0"']


def test_greyscale_net(tmp_path, capsys):
    deploy = tmp_path / "grey.prototxt"
    deploy.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 2 '
        'dim: 2 } } }\nlayer { name: "fc" type: "InnerProduct" bottom: "data" top: "prob" '
        "inner_product_param { num_output: 2 } }\n"
    )
    net = netdef.Net(str(deploy), netdef.TEST)
    net.params["fc"][0].data[...] = [[1, 1, 1, 1], [-1, -1, -1, -1]]
    net.params["fc"][1].data[...] = [0, 100]
    net.save(str(tmp_path / "grey.caffemodel"))
    numpy.save(tmp_path / "img.npy", numpy.array([[0.0, 0.2], [0.4, 0.2]]))
    assert (
        main(
            [
                "-q",
                "classify",
                "--model",
                str(deploy),
                "--weights",
                str(tmp_path / "grey.caffemodel"),
                "--top-k",
                "5",
                str(tmp_path / "img.npy"),
            ]
        )
        == 0
    )
    # scores are printed as the net gives them: 0.8 * 255 = 204 and 100 - 204
    assert capsys.readouterr().out.splitlines()[1:] == ['204.0000 - "0"', '-104.0000 - "1"']


def test_classify_errors(model, capsys):
    numpy.save(model / "red.npy", solid(4, 4, [1, 0, 0]))
    (model / "short.txt").write_text("a\nb\n")
    assert run(model, "--labels", str(model / "short.txt"), str(model / "red.npy")) == 1
    assert "has 2 labels but the output has 3 classes" in capsys.readouterr().err
    assert run(model, "--channel-swap", "1,0", str(model / "red.npy")) == 1
    assert "permutation of the input's 3 channels. Received: (1, 0)" in capsys.readouterr().err
    assert run(model, "--mean", "1,2", str(model / "red.npy")) == 1
    assert "per-channel mean needs 3 values" in capsys.readouterr().err
    assert run(model, "--mean", "nofile.binaryproto", str(model / "red.npy")) == 1
    assert "--mean takes a .binaryproto or .npy mean file" in capsys.readouterr().err
    assert run(model, "--output", "nope", str(model / "red.npy")) == 1
    assert '--output "nope" is not a blob of the net. Blobs: data, fc, prob' in capsys.readouterr().err
    assert run(model, "--top-k", "0", str(model / "red.npy")) == 1
    assert "--top-k must be at least 1" in capsys.readouterr().err
    assert run(model, str(model / "missing.npy")) == 1
    assert "Image file not found" in capsys.readouterr().err


def test_png_without_pillow_explains(model, capsys, monkeypatch):
    (model / "x.png").write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert run(model, str(model / "x.png")) == 1
    assert "needs Pillow, which is not installed: run `pip install pillow`" in capsys.readouterr().err


def test_net_with_several_outputs_needs_output(tmp_path, capsys):
    deploy = tmp_path / "two.prototxt"
    deploy.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 2 '
        'dim: 2 } } }\nlayer { name: "a" type: "ReLU" bottom: "data" top: "a" }\n'
        'layer { name: "b" type: "TanH" bottom: "data" top: "b" }\n'
    )
    netdef.Net(str(deploy), netdef.TEST).save(str(tmp_path / "w.caffemodel"))
    numpy.save(tmp_path / "img.npy", solid(2, 2, [0, 0, 1]))
    args = ["-q", "classify", "--model", str(deploy), "--weights", str(tmp_path / "w.caffemodel")]
    assert main(args + [str(tmp_path / "img.npy")]) == 1
    assert "The net has 2 outputs (a, b); choose one with --output" in capsys.readouterr().err
    assert main(args + ["--output", "a", "--top-k", "1", str(tmp_path / "img.npy")]) == 0
    # image (0, 0, 1) -> BGR (1, 0, 0) * 255: blob "a" holds 255 at the four B positions first
    assert capsys.readouterr().out.splitlines()[1:] == ['255.0000 - "0"']


# --- preprocessing from the model folder (preprocess.yaml beside deploy.prototxt) -------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def random_weights(deploy, path, seed=0, std=0.3):
    net = netdef.Net(str(deploy), netdef.TEST)
    rng = numpy.random.default_rng(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, std, size=b.data.shape)
    net.save(str(path))
    return net


def direct_scores(net, x):
    out = net.forward(data=x[None])
    return numpy.asarray(out["prob"][0], dtype=numpy.float64)


def test_digits_model_takes_images_as_0_to_1(tmp_path):
    from netdef.tools.classify import classify_files, model_preprocessing

    deploy = REPO / "models" / "digits" / "deploy.prototxt"
    assert model_preprocessing(str(deploy))["raw_scale"] == 1.0
    net = random_weights(deploy, tmp_path / "w.caffemodel", std=0.1)
    h5py = pytest.importorskip("h5py")
    with h5py.File(REPO / "models" / "digits" / "test.h5", "r") as f:
        digit = f["data"][0, 0]
    numpy.save(tmp_path / "digit.npy", digit[:, :, None])  # H x W x 1 in [0, 1], taken as stored
    expected = direct_scores(net, digit[None])
    got = classify_files(str(deploy), str(tmp_path / "w.caffemodel"), [str(tmp_path / "digit.npy")], top=10)[0]
    scores = numpy.zeros(10)
    for score, label in got:
        scores[int(label)] = score
    # before preprocess.yaml the default raw scale 255 fed the net 255x its training range
    numpy.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    wrong = direct_scores(net, digit[None] * 255)
    assert not numpy.allclose(scores, wrong, atol=1e-3)
    # an explicit option still overrides the model folder
    got = classify_files(
        str(deploy), str(tmp_path / "w.caffemodel"), [str(tmp_path / "digit.npy")], top=10, raw_scale=255
    )[0]
    scores = numpy.zeros(10)
    for score, label in got:
        scores[int(label)] = score
    numpy.testing.assert_allclose(scores, wrong, rtol=1e-5, atol=1e-6)


def test_cifar_model_keeps_rgb_and_subtracts_its_mean(tmp_path, monkeypatch, capsys):
    from netdef.errors import MeanFileError
    from netdef.tools.classify import classify_files

    deploy = REPO / "models" / "cifar10_quick" / "deploy.prototxt"
    net = random_weights(deploy, tmp_path / "w.caffemodel", seed=1, std=0.02)
    rng = numpy.random.default_rng(2)
    image = rng.random((32, 32, 3)).astype(numpy.float32)
    numpy.save(tmp_path / "im.npy", image)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MeanFileError, match="data/cifar10/mean.npy.*convert_cifar"):
        classify_files(str(deploy), "w.caffemodel", ["im.npy"])
    assert main(["classify", "--model", str(deploy), "--weights", "w.caffemodel", "im.npy"]) == 1
    assert "mean file not found: " in capsys.readouterr().err
    mean = rng.random((3, 32, 32)).astype(numpy.float32) * 100
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    numpy.save(tmp_path / "data" / "cifar10" / "mean.npy", mean)
    got = classify_files(str(deploy), "w.caffemodel", ["im.npy"], top=10)[0]
    scores = numpy.zeros(10)
    for score, label in got:
        scores[int(label)] = score
    expected = direct_scores(net, image.transpose(2, 0, 1) * 255 - mean)  # R, G, B as in the CIFAR files
    numpy.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    swapped = direct_scores(net, image[:, :, ::-1].transpose(2, 0, 1) * 255 - mean)
    assert not numpy.allclose(scores, swapped, atol=1e-4)


def test_every_preprocess_file_is_valid():
    from netdef.tools.classify import model_preprocessing

    files = sorted((REPO / "models").glob("*/preprocess.yaml"))
    assert {p.parent.name for p in files} >= {"digits", "cifar10_quick", "cifar10_full", "lenet"}
    for path in files:
        meta = model_preprocessing(str(path.parent / "deploy.prototxt"))
        assert meta["source"] == str(path) and "raw_scale" in meta
        assert "preprocess.yaml" in (path.parent / "README.md").read_text()


def test_bad_preprocess_file_is_named(tmp_path, model):
    from netdef.tools.classify import model_preprocessing

    (model / "preprocess.yaml").write_text("raw_scale: 1\nswap: none\n")
    with pytest.raises(netdef.errors.NetdefError, match="preprocess.yaml: unknown key\\(s\\) swap"):
        model_preprocessing(str(model / "deploy.prototxt"))
