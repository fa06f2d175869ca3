"""netdef.Classifier and netdef.Detector (pycaffe's caffe.Classifier / caffe.Detector) on a tiny colour net."""

import importlib.util

import numpy
import pytest

import netdef
from netdef.errors import MissingDependencyError, NetdefError

# Logit c is the mean of input channel c over a 4x4 input, so scores are a softmax of channel means.
DEPLOY = """name: "colors"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def model(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    net = netdef.Net(str(deploy), netdef.TEST)
    weights = numpy.zeros((3, 3, 4, 4), dtype=numpy.float32)
    for c in range(3):
        weights[c, c] = 1.0 / 16
    net.params["fc"][0].data[...] = weights.reshape(3, 48)
    net.params["fc"][1].data[...] = 0
    net.save(str(tmp_path / "colors.caffemodel"))
    return str(deploy), str(tmp_path / "colors.caffemodel")


def softmax(x):
    e = numpy.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def solid(h, w, rgb):
    return numpy.broadcast_to(numpy.array(rgb, dtype=numpy.float32), (h, w, 3)).copy()


def test_classifier_is_a_test_phase_net_with_a_transformer(model):
    clf = netdef.Classifier(*model, mean=numpy.array([0.1, 0.2, 0.3]), raw_scale=255, channel_swap=(2, 1, 0))
    assert isinstance(clf, netdef.Net) and clf.phase == netdef.TEST
    assert clf.transformer.transpose == {"data": (2, 0, 1)}
    assert clf.transformer.raw_scale == {"data": 255.0}
    assert clf.crop_dims.tolist() == [4, 4] and list(clf.image_dims) == [4, 4]


def test_centre_only_prediction_applies_every_setting(model):
    clf = netdef.Classifier(
        *model, mean=numpy.array([1.0, 2.0, 3.0]), input_scale=0.5, raw_scale=10, channel_swap=(2, 1, 0)
    )
    rgb = [0.1, 0.4, 0.9]
    scores = clf.predict([solid(4, 4, rgb), solid(4, 4, [0, 0, 0]), solid(4, 4, [1, 1, 1])], oversample=False)
    assert scores.shape == (3, 3)
    # BGR order, times the raw scale, minus the mean, times the input scale
    expected = softmax((numpy.array(rgb[::-1]) * 10 - [1, 2, 3]) * 0.5)
    numpy.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    numpy.testing.assert_allclose(scores[1], softmax(-numpy.array([1.0, 2.0, 3.0]) * 0.5), rtol=1e-5)


def test_oversampling_averages_ten_crops(model):
    clf = netdef.Classifier(*model, image_dims=(6, 6))
    rng = numpy.random.default_rng(3)
    image = rng.random((6, 6, 3)).astype(numpy.float32)
    scores = clf.predict([image])
    assert scores.shape == (1, 3)
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]  # the centre starts at int(6/2 - 4/2) = 1
    per_crop = [softmax(image[y : y + 4, x : x + 4].mean((0, 1))) for y, x in corners]
    numpy.testing.assert_allclose(scores[0], numpy.mean(per_crop, axis=0), rtol=1e-5)
    centre = clf.predict([image], oversample=False)
    numpy.testing.assert_allclose(centre[0], per_crop[4], rtol=1e-5)


def test_images_of_other_sizes_are_resized_first(model):
    clf = netdef.Classifier(*model)
    scores = clf.predict([solid(9, 5, [0.2, 0.5, 0.7])], oversample=False)
    numpy.testing.assert_allclose(scores[0], softmax(numpy.array([0.2, 0.5, 0.7])), rtol=1e-5)


def test_classifier_needs_an_input_blob(tmp_path):
    deploy = tmp_path / "dummy.prototxt"
    deploy.write_text(
        'layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }'
    )
    with pytest.raises(NetdefError, match="no input blobs"):
        netdef.Classifier(str(deploy), None)


# --- Detector -------------------------------------------------------------------------------
@pytest.fixture
def scene(tmp_path):
    """A 10x10 RGB .npy image: red everywhere, a green 4x4 square at rows/cols 2..5, a blue one at rows 6..9."""
    image = solid(10, 10, [1, 0, 0])
    image[2:6, 2:6] = [0, 1, 0]
    image[6:10, 6:10] = [0, 0, 1]
    path = tmp_path / "scene.npy"
    numpy.save(path, image)
    return str(path), image


def test_detect_windows_classifies_each_window_in_order(model, scene):
    path, _ = scene
    det = netdef.Detector(*model)
    windows = [numpy.array([2, 2, 6, 6]), numpy.array([6, 6, 10, 10]), numpy.array([0, 6, 4, 10])]
    detections = det.detect_windows(zip([path, path], [windows[:2], windows[2:]]))  # a one-shot iterator works
    assert [d["filename"] for d in detections] == [path] * 3
    assert [d["window"].tolist() for d in detections] == [w.tolist() for w in windows]
    best = [int(numpy.argmax(d["prediction"])) for d in detections]
    assert best == [1, 2, 0]  # green, blue, red (channels in image order: no swap configured)
    numpy.testing.assert_allclose(detections[0]["prediction"], softmax(numpy.array([0.0, 1.0, 0.0])), rtol=1e-5)


def test_crop_without_context_is_a_plain_slice(model, scene):
    _, image = scene
    det = netdef.Detector(*model)
    assert det.crop_dims.tolist() == [4, 4, 3]
    numpy.testing.assert_array_equal(det.crop(image, numpy.array([1, 2, 4, 7])), image[1:4, 2:7])


def test_crop_with_context_padding_follows_rcnn(model):
    det = netdef.Detector(*model, context_pad=1)
    image = numpy.arange(10 * 10 * 3, dtype=numpy.float32).reshape(10, 10, 3)
    # window 2..5 (inclusive) grows by 4/(4 - 2) around its centre to 0..8, which warps 9 -> 4 pixels
    crop = det.crop(image, numpy.array([2, 2, 5, 5]))
    expected = image[0:8, 0:8].reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    numpy.testing.assert_allclose(crop, expected, rtol=1e-6)


def test_context_outside_the_image_is_filled_with_the_mean(model):
    det = netdef.Detector(
        *model, mean=numpy.array([10.0, 20.0, 30.0]), raw_scale=255, channel_swap=(2, 1, 0), context_pad=1
    )
    # the mean is in the net's (BGR, raw-scaled) space; the padding is in image space: RGB, divided by 255
    numpy.testing.assert_allclose(det.crop_mean.reshape(3), numpy.array([30.0, 20.0, 10.0]) / 255)
    image = numpy.random.default_rng(1).random((10, 10, 3)).astype(numpy.float32)
    crop = det.crop(image, numpy.array([0, 0, 1, 1]))  # grown to -1..3: one row and column lie outside
    assert crop.shape == (4, 4, 3)
    numpy.testing.assert_allclose(crop[0], numpy.broadcast_to(det.crop_mean.reshape(3), (4, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(crop[:, 0], numpy.broadcast_to(det.crop_mean.reshape(3), (4, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(crop[1:, 1:], image[0:3, 0:3], rtol=1e-6)


def test_selective_search_without_its_tool_says_what_is_missing(model, scene):
    if importlib.util.find_spec("selective_search_ijcv_with_python") is not None:
        pytest.skip("the selective search tool is installed here")
    det = netdef.Detector(*model)
    with pytest.raises(MissingDependencyError, match="selective_search_ijcv_with_python.*detect_windows"):
        det.detect_selective_search([scene[0]])
