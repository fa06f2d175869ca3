"""DataTransformer: Caffe's transform_param (crop, mirror, mean, scale) on whole batches."""

import numpy
import pytest

import netdef
from netdef.data import DataTransformer
from netdef.errors import (
    DataSourceError,
    InvalidParameterError,
    MeanFileError,
    ShapeMismatchError,
    WeightsFileError,
)
from netdef.io.blobproto import write_binaryproto
from netdef.proto import netdef_pb2 as pb
from netdef.proto import parse_text


def tparam(text=""):
    return parse_text(text, pb.TransformationParameter(), "<transform_param>")


def batch(n=1, c=2, h=4, w=5):
    return numpy.arange(n * c * h * w, dtype=numpy.float32).reshape(n, c, h, w)


def test_no_parameters_is_identity_in_the_net_dtype():
    x = batch().astype(numpy.uint8)
    y = DataTransformer(tparam()).transform(x, numpy.float64)
    assert y.dtype == numpy.float64
    numpy.testing.assert_array_equal(y, x)


def test_test_phase_center_crop():
    y = DataTransformer(tparam("crop_size: 2"), netdef.TEST).transform(batch())
    # rows (4 - 2) // 2 = 1, columns (5 - 2) // 2 = 1
    numpy.testing.assert_array_equal(y, [[[[6, 7], [11, 12]], [[26, 27], [31, 32]]]])


def test_mean_value_per_channel_then_scale():
    y = DataTransformer(tparam("mean_value: 1 mean_value: 20 scale: 0.5")).transform(batch(c=2, h=1, w=3))
    numpy.testing.assert_array_equal(y, [[[[-0.5, 0, 0.5]], [[-8.5, -8, -7.5]]]])


def test_one_mean_value_for_all_channels():
    y = DataTransformer(tparam("mean_value: 3")).transform(batch(c=2, h=1, w=2))
    numpy.testing.assert_array_equal(y, [[[[-3, -2]], [[-1, 0]]]])


def test_scale_applies_after_the_mean():
    x = numpy.full((1, 1, 1, 1), 10, dtype=numpy.uint8)
    y = DataTransformer(tparam("mean_value: 4 scale: 0.5")).transform(x)
    assert y.item() == 3.0  # (10 - 4) * 0.5, not 10 * 0.5 - 4


def test_mean_file_is_cropped_with_the_data(tmp_path):
    mean = numpy.arange(40, dtype=numpy.float32).reshape(1, 2, 4, 5) * 0.5
    write_binaryproto(str(tmp_path / "mean.binaryproto"), mean)
    t = DataTransformer(tparam(f'mean_file: "{tmp_path / "mean.binaryproto"}" crop_size: 2 scale: 2'), netdef.TEST)
    y = t.transform(batch())
    # x - mean = 0.5 * x at every pixel; the crop takes rows 1..2, columns 1..2; then * 2
    numpy.testing.assert_array_equal(y, [[[[6, 7], [11, 12]], [[26, 27], [31, 32]]]])


def expected_random(x, crop, mirror, seed, mean=None, scale=1.0, train=True):
    """Caffe's per-sample loop, written out; draws in the transformer's documented order."""
    rng = numpy.random.default_rng(seed)
    n, c, h, w = x.shape
    flips = rng.integers(0, 2, size=n).astype(bool) if mirror else numpy.zeros(n, bool)
    if train:
        rows = rng.integers(0, h - crop + 1, size=n)
        cols = rng.integers(0, w - crop + 1, size=n)
    else:
        rows = numpy.full(n, (h - crop) // 2)
        cols = numpy.full(n, (w - crop) // 2)
    out = numpy.zeros((n, c, crop, crop))
    for i in range(n):
        for ch in range(c):
            for r in range(crop):
                for q in range(crop):
                    src = (ch, rows[i] + r, cols[i] + q)
                    dst_q = crop - 1 - q if flips[i] else q
                    m = mean[src] if mean is not None else 0.0
                    out[i, ch, r, dst_q] = (x[i][src] - m) * scale
    return out, flips, rows, cols


def test_train_random_crop_and_mirror_seeded(tmp_path):
    x = numpy.random.default_rng(0).integers(0, 256, size=(6, 3, 5, 6)).astype(numpy.uint8)
    mean = numpy.random.default_rng(1).uniform(0, 50, size=(3, 5, 6)).astype(numpy.float32)
    write_binaryproto(str(tmp_path / "m.binaryproto"), mean[None])
    t = DataTransformer(
        tparam(f'crop_size: 3 mirror: true scale: 0.25 mean_file: "{tmp_path / "m.binaryproto"}"'),
        rng=numpy.random.default_rng(1),
    )
    y = t.transform(x, numpy.float64)
    want, flips, rows, cols = expected_random(x.astype(numpy.float64), 3, True, 1, mean.astype(numpy.float64), 0.25)
    numpy.testing.assert_allclose(y, want, rtol=1e-6)
    # the draw really varied, so the test can tell a wrong offset or flip from a right one
    assert flips.any() and not flips.all() and len(set(rows)) > 1 and len(set(cols)) > 1


def test_mirror_is_random_in_the_test_phase_too():
    # Caffe's DataTransformer draws the flip whatever the phase; crops are centred in TEST
    x = batch(n=8, c=1, h=3, w=4)
    netdef.set_random_seed(3)
    y = DataTransformer(tparam("crop_size: 2 mirror: true"), netdef.TEST).transform(x)
    want, flips, _, _ = expected_random(x, 2, True, 3, train=False)
    numpy.testing.assert_array_equal(y, want)
    assert flips.any() and not flips.all()


def test_same_seed_same_batch():
    x = batch(n=4, h=6, w=6)

    def transformer():
        return DataTransformer(tparam("crop_size: 3 mirror: true"), rng=numpy.random.default_rng(11))

    a = transformer().transform(x)
    numpy.testing.assert_array_equal(a, transformer().transform(x))
    netdef.set_random_seed(11)  # the default for transformers built without a generator
    b = DataTransformer(tparam("crop_size: 3 mirror: true")).transform(x)
    numpy.testing.assert_array_equal(a, b)


def test_output_shape():
    assert DataTransformer(tparam("crop_size: 3")).output_shape((2, 3, 5, 4)) == (2, 3, 3, 3)
    assert DataTransformer(tparam()).output_shape((2, 3, 5, 4)) == (2, 3, 5, 4)


def test_error_mean_file_and_mean_value():
    with pytest.raises(InvalidParameterError, match="mean_file or mean_value"):
        DataTransformer(tparam('mean_file: "m.binaryproto" mean_value: 1'))


def test_error_force_color_and_force_gray():
    with pytest.raises(InvalidParameterError, match="force_color and force_gray"):
        DataTransformer(tparam("force_color: true force_gray: true"))


def test_error_crop_larger_than_data():
    with pytest.raises(ShapeMismatchError, match="crop_size 5 is larger"):
        DataTransformer(tparam("crop_size: 5")).transform(batch(h=4, w=6))


def test_error_mean_value_count():
    with pytest.raises(InvalidParameterError, match="one per channel \\(2\\). Received: 3"):
        DataTransformer(tparam("mean_value: 1 mean_value: 2 mean_value: 3")).transform(batch(c=2))


def test_error_mean_file_shape(tmp_path):
    write_binaryproto(str(tmp_path / "m.binaryproto"), numpy.zeros((1, 2, 3, 3), numpy.float32))
    t = DataTransformer(tparam(f'mean_file: "{tmp_path / "m.binaryproto"}"'))
    with pytest.raises(ShapeMismatchError, match=r"\(2, 4, 5\).*\(2, 3, 3\)"):
        t.transform(batch())


def test_error_missing_mean_file_is_a_mean_file_error(tmp_path):
    # it used to be a WeightsFileError ("BlobProto file not found"), which sends users to their weights
    with pytest.raises(MeanFileError, match="mean_file not found: .*nope.binaryproto.*compute_image_mean") as info:
        DataTransformer(tparam(f'mean_file: "{tmp_path / "nope.binaryproto"}"'))
    assert not isinstance(info.value, WeightsFileError)
    assert isinstance(info.value, DataSourceError)


def test_error_unreadable_mean_file_is_a_mean_file_error(tmp_path):
    (tmp_path / "bad.binaryproto").write_bytes(b"\xff\xff\xff")
    with pytest.raises(MeanFileError, match="mean_file: .*bad.binaryproto"):
        DataTransformer(tparam(f'mean_file: "{tmp_path / "bad.binaryproto"}"'))


def test_error_names_the_layer_through_its_factory():
    def error(message, cls=InvalidParameterError):
        return cls(f'Layer "d": {message}')

    with pytest.raises(InvalidParameterError, match='^Layer "d": transform_param'):
        DataTransformer(tparam("force_color: true force_gray: true"), error=error)
