"""netdef.io.preprocessing: Transformer (pycaffe's caffe.io.Transformer), resize_image, load_image."""

import sys

import numpy
import pytest

from netdef.errors import InvalidParameterError, NetdefError, ShapeMismatchError
from netdef.io.preprocessing import Transformer, load_image, oversample, resize_image


def imagenet_style(shape=(1, 3, 2, 2)):
    t = Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", numpy.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


IMAGE = numpy.array(
    [[[0.0, 0.5, 1.0], [0.2, 0.4, 0.6]], [[1.0, 1.0, 1.0], [0.1, 0.2, 0.3]]], dtype=numpy.float32
)  # H=2, W=2, RGB


def test_preprocess_literal_values():
    out = imagenet_style().preprocess("data", IMAGE)
    assert out.shape == (3, 2, 2) and out.dtype == numpy.float32
    # channel 0 is B: (255 * b - 10) * 0.5
    numpy.testing.assert_allclose(
        out[0], [[(255 - 10) * 0.5, (153 - 10) * 0.5], [(255 - 10) * 0.5, (76.5 - 10) * 0.5]], rtol=1e-6
    )
    # channel 1 is G: (255 * g - 20) * 0.5
    numpy.testing.assert_allclose(out[1], [[53.75, 41.0], [117.5, 15.5]], rtol=1e-6)
    # channel 2 is R: (255 * r - 30) * 0.5
    numpy.testing.assert_allclose(out[2], [[-15.0, 10.5], [112.5, -2.25]], rtol=1e-6)


def test_preprocess_leaves_the_callers_array_alone():
    image = IMAGE.copy()
    imagenet_style().preprocess("data", image)
    numpy.testing.assert_array_equal(image, IMAGE)


def test_deprocess_undoes_preprocess():
    t = imagenet_style()
    out = t.preprocess("data", IMAGE)
    numpy.testing.assert_allclose(t.deprocess("data", out), IMAGE, atol=1e-6)
    numpy.testing.assert_allclose(t.deprocess("data", out[None]), IMAGE, atol=1e-6)
    with pytest.raises(ShapeMismatchError, match="expected one item of shape"):
        t.deprocess("data", numpy.zeros((2, 3, 2, 2)))


def test_preprocess_resizes_to_the_input_size():
    t = Transformer({"data": (1, 1, 3, 3)})
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", numpy.array([[0.0, 1.0], [2.0, 3.0]]))  # H x W grey image
    numpy.testing.assert_allclose(out[0], [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]], atol=1e-6)


def test_resize_image_literal_values():
    up = resize_image(numpy.array([[[0.0], [1.0]]]), (1, 4))
    numpy.testing.assert_allclose(up[0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-7)
    down = resize_image(numpy.arange(4, dtype=numpy.float32).reshape(1, 4, 1), (1, 2))
    numpy.testing.assert_allclose(down[0, :, 0], [0.5, 2.5])
    same = resize_image(IMAGE, (2, 2))
    numpy.testing.assert_array_equal(same, IMAGE)
    assert same is not IMAGE
    with pytest.raises(ShapeMismatchError, match="H x W x K"):
        resize_image(numpy.zeros((2, 2)), (3, 3))
    with pytest.raises(InvalidParameterError, match="positive"):
        resize_image(IMAGE, (0, 3))


def test_resize_matches_pillow_bilinear_upsampling():
    Image = pytest.importorskip("PIL.Image")
    rng = numpy.random.default_rng(0)
    src = rng.random((5, 7)).astype(numpy.float32)
    ours = resize_image(src[:, :, None], (12, 9))[:, :, 0]
    theirs = numpy.asarray(Image.fromarray(src, mode="F").resize((9, 12), Image.BILINEAR))
    numpy.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_set_mean_image_same_size_and_resized():
    t = Transformer({"data": (1, 2, 2, 2)})
    mean = numpy.arange(8, dtype=numpy.float32).reshape(2, 2, 2)
    t.set_mean("data", mean)
    t.set_transpose("data", (2, 0, 1))
    numpy.testing.assert_allclose(t.preprocess("data", numpy.zeros((2, 2, 2))), -mean)
    t.set_mean("data", numpy.full((1, 2, 5, 7), 3.0))  # 1 x C x H x W binaryproto layout, other size
    assert t.mean["data"].shape == (2, 2, 2)
    numpy.testing.assert_allclose(t.preprocess("data", numpy.ones((2, 2, 2))), -2.0)


def test_setting_errors_name_the_problem():
    t = Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(NetdefError, match='"img" is not one of the Transformer\'s inputs. Inputs: data'):
        t.set_raw_scale("img", 255)
    with pytest.raises(ShapeMismatchError, match="per-channel mean needs 3 values.*Received: 2 values"):
        t.set_mean("data", numpy.array([1.0, 2.0]))
    with pytest.raises(ShapeMismatchError, match="mean image has 1 channels but the input has 3"):
        t.set_mean("data", numpy.zeros((4, 4)))
    with pytest.raises(ShapeMismatchError, match=r"Received: shape \(2, 3, 4, 4\)"):
        t.set_mean("data", numpy.zeros((2, 3, 4, 4)))
    with pytest.raises(InvalidParameterError, match=r"permutation of the input's 3 channels. Received: \(1, 0\)"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(InvalidParameterError, match=r"permutation of the 3 axes.*Received: \(0, 1\)"):
        t.set_transpose("data", (0, 1))
    with pytest.raises(ShapeMismatchError, match="at least a batch and a channel axis"):
        Transformer({"x": (5,)})


def test_preprocess_errors():
    t = Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    with pytest.raises(ShapeMismatchError, match="the image has 1 channels.*but the input has 3"):
        t.preprocess("data", numpy.zeros((4, 4)))
    with pytest.raises(ShapeMismatchError, match="expected one 3-D item"):
        t.preprocess("data", numpy.zeros((1, 4, 4, 3)))


def test_vector_inputs_need_no_transpose():
    t = Transformer({"feat": (2, 3)})
    t.set_mean("feat", numpy.array([1.0, 2.0, 3.0]))
    numpy.testing.assert_allclose(t.preprocess("feat", [1.0, 1.0, 1.0]), [0.0, -1.0, -2.0])


def test_load_image_npy(tmp_path):
    grey = numpy.array([[0.0, 0.5], [1.0, 0.25]], dtype=numpy.float64)
    numpy.save(tmp_path / "g.npy", grey)
    color = load_image(str(tmp_path / "g.npy"))
    assert color.shape == (2, 2, 3) and color.dtype == numpy.float32
    numpy.testing.assert_allclose(color[:, :, 2], grey)
    assert load_image(str(tmp_path / "g.npy"), color=False).shape == (2, 2, 1)
    numpy.save(tmp_path / "bad.npy", numpy.zeros((2, 2, 2, 2)))
    with pytest.raises(ShapeMismatchError, match="H x W or H x W x K"):
        load_image(str(tmp_path / "bad.npy"))
    with pytest.raises(NetdefError, match="Image file not found"):
        load_image(str(tmp_path / "missing.png"))


def test_load_image_png_with_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgba = numpy.zeros((2, 3, 4), dtype=numpy.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = [[0, 51, 102], [153, 204, 255]]
    rgba[..., 3] = 7
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    img = load_image(str(tmp_path / "a.png"))
    assert img.shape == (2, 3, 3) and img.dtype == numpy.float32
    numpy.testing.assert_allclose(img[..., 0], 1.0)
    numpy.testing.assert_allclose(img[..., 1], [[0, 0.2, 0.4], [0.6, 0.8, 1.0]], atol=1e-6)
    Image.fromarray(numpy.array([[0, 255]], dtype=numpy.uint8), mode="L").save(tmp_path / "g.png")
    grey = load_image(str(tmp_path / "g.png"))
    assert grey.shape == (1, 2, 3)
    numpy.testing.assert_allclose(grey[0, :, 1], [0.0, 1.0])
    assert load_image(str(tmp_path / "g.png"), color=False).shape == (1, 2, 1)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(NetdefError, match="cannot read the image"):
        load_image(str(tmp_path / "junk.png"))


def test_load_image_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(NetdefError, match="needs Pillow.*pip install pillow"):
        load_image(str(tmp_path / "x.png"))


def test_oversample_order_is_corners_centre_then_mirrors():
    image = numpy.arange(5 * 6, dtype=numpy.float32).reshape(5, 6, 1)
    crops = oversample([image, image + 100], (3, 4))
    assert crops.shape == (20, 3, 4, 1) and crops.dtype == numpy.float32
    expected = [image[0:3, 0:4], image[0:3, 2:6], image[2:5, 0:4], image[2:5, 2:6]]
    # centre: int(5/2 - 3/2) = 1 and int(6/2 - 4/2) = 1, pycaffe's rounding
    expected.append(image[1:4, 1:5])
    expected += [e[:, ::-1] for e in expected]
    numpy.testing.assert_array_equal(crops[:10], numpy.stack(expected))
    numpy.testing.assert_array_equal(crops[10:], numpy.stack(expected) + 100)


def test_oversample_of_whole_images_repeats_them_and_their_mirrors():
    image = numpy.random.default_rng(0).random((4, 4, 3)).astype(numpy.float32)
    crops = oversample(numpy.stack([image]), (4, 4))
    for k in range(5):
        numpy.testing.assert_array_equal(crops[k], image)
        numpy.testing.assert_array_equal(crops[5 + k], image[:, ::-1])


def test_oversample_errors_name_the_sizes():
    with pytest.raises(ShapeMismatchError, match=r"must fit the images of size \(4, 4\)"):
        oversample([numpy.zeros((4, 4, 1))], (5, 2))
    with pytest.raises(ShapeMismatchError, match="one size"):
        oversample([numpy.zeros((4, 4, 1)), numpy.zeros((5, 4, 1))], (2, 2))
    with pytest.raises(ShapeMismatchError, match="at least one image"):
        oversample([], (2, 2))


def test_resize_image_nearest_and_constant_images():
    image = numpy.array([[1.0, 2.0], [3.0, 4.0]], dtype=numpy.float32)[:, :, None]
    nearest = resize_image(image, (4, 4), interp_order=0)
    assert nearest[:, :, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    flat = resize_image(numpy.full((3, 5, 2), 7.0), (6, 2))
    assert flat.shape == (6, 2, 2) and numpy.all(flat == 7.0)
    with pytest.raises(InvalidParameterError, match="interp_order must be 0 .* or 1 .*Received: 3"):
        resize_image(image, (4, 4), interp_order=3)
