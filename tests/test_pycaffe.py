"""pycaffe's module surface: top-level names, caffe.proto.caffe_pb2, caffe.io's converters, logging switches."""

import importlib.util
import io
import logging
import re

import numpy
import pytest

import netdef as caffe
from netdef.errors import InvalidParameterError, MissingDependencyError, ShapeMismatchError

# Every public name of pycaffe's caffe/__init__.py (BVLC/caffe 1.0), the ones scripts use.
PYCAFFE_NAMES = [
    "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
    "NCCL", "Timer", "init_log", "log", "set_mode_cpu", "set_mode_gpu", "set_device", "Layer", "get_solver",
    "layer_type_list", "set_random_seed", "solver_count", "set_solver_count", "solver_rank", "set_solver_rank",
    "set_multiprocess", "has_nccl", "__version__", "TRAIN", "TEST", "Classifier", "Detector", "io", "layers",
    "params", "NetSpec", "to_proto",
]  # fmt: skip
IO_NAMES = [
    "blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
    "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array", "load_image", "resize_image",
    "oversample", "Transformer", "caffe_pb2",
]  # fmt: skip


@pytest.mark.parametrize("name", PYCAFFE_NAMES)
def test_every_pycaffe_top_level_name_exists(name):
    assert getattr(caffe, name) is not None


@pytest.mark.parametrize("name", IO_NAMES)
def test_every_pycaffe_io_name_exists(name):
    assert callable(getattr(caffe.io, name)) or name == "caffe_pb2"


def test_phases_solver_classes_and_netspec_are_the_real_ones():
    from netdef import solvers
    from netdef.proto import netdef_pb2

    assert (caffe.TRAIN, caffe.TEST) == (netdef_pb2.TRAIN, netdef_pb2.TEST) == (0, 1)
    assert caffe.SGDSolver is solvers.SGDSolver and caffe.AdamSolver is solvers.AdamSolver
    assert "Convolution" in caffe.layer_type_list()
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(input_param=dict(shape=dict(dim=[1, 2])))
    assert [layer.type for layer in caffe.to_proto(n.data).layer] == ["Input"]
    assert caffe.params.Pooling.MAX == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", caffe.__version__)


def test_caffe_pb2_is_netdefs_messages_under_caffes_name():
    import netdef.proto.caffe_pb2 as by_path
    from netdef.proto import caffe_pb2, netdef_pb2

    assert caffe_pb2 is by_path is caffe.proto.caffe_pb2 is caffe.io.caffe_pb2
    assert caffe_pb2.NetParameter is netdef_pb2.NetParameter
    assert caffe_pb2.TRAIN == 0 and caffe_pb2.SolverParameter.CPU == 0
    s = caffe_pb2.SolverParameter()
    s.base_lr = 0.01
    s.test_iter.append(3)
    assert netdef_pb2.SolverParameter.FromString(s.SerializeToString()).test_iter == [3]
    assert "base_lr: 0.01" in str(s)  # pycaffe scripts write solvers with str(message)


def test_net_spec_is_importable_by_pycaffes_module_name():
    import netdef.net_spec

    from netdef import netspec

    assert netdef.net_spec is netspec is caffe.net_spec


def test_draw_is_reached_as_an_attribute():
    if importlib.util.find_spec("netdef.draw") is None:
        pytest.skip("netdef.draw is not part of this tree")
    assert callable(caffe.draw.draw_net_to_file)


# --- caffe.io converters ---------------------------------------------------------------
def test_blobproto_roundtrip_keeps_shape_and_reads_float64():
    arr = numpy.arange(24, dtype=numpy.float64).reshape(2, 3, 4) / 8
    blob = caffe.io.array_to_blobproto(arr, diff=-arr)
    assert list(blob.shape.dim) == [2, 3, 4]
    assert len(blob.double_data) == 0 and len(blob.data) == 24  # stored as float32, as pycaffe does
    back = caffe.io.blobproto_to_array(blob)
    assert back.dtype == numpy.float64 and back.shape == (2, 3, 4)
    numpy.testing.assert_array_equal(back, arr)
    numpy.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), -arr)


def test_blobproto_with_legacy_fields_reads_as_4d():
    blob = caffe.io.caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    back = caffe.io.blobproto_to_array(blob)
    assert back.shape == (1, 2, 1, 3)
    assert back[0, 1, 0].tolist() == [4.0, 5.0, 6.0]


def test_blobproto_vector_roundtrip_and_pycaffes_old_spelling():
    arrays = [numpy.ones((1, 2, 2, 2), numpy.float32), numpy.arange(3, dtype=numpy.float32)]
    payload = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(payload, bytes)
    assert caffe.io.arraylist_to_blobprotovecor_str(arrays) == payload
    back = caffe.io.blobprotovector_str_to_arraylist(payload)
    assert [a.shape for a in back] == [(1, 2, 2, 2), (3,)]
    assert back[1].tolist() == [0.0, 1.0, 2.0]


def test_array_to_datum_uint8_is_bytes_float_is_float_data():
    pixels = numpy.arange(12, dtype=numpy.uint8).reshape(3, 2, 2)
    datum = caffe.io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 2, 2, 7)
    assert datum.data == bytes(range(12)) and len(datum.float_data) == 0
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == numpy.uint8
    numpy.testing.assert_array_equal(back, pixels)

    values = numpy.full((1, 2, 2), 0.5, dtype=numpy.float32)
    datum = caffe.io.array_to_datum(values)
    assert not datum.HasField("label") and len(datum.data) == 0
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == numpy.float64 and back.tolist() == [[[0.5, 0.5], [0.5, 0.5]]]


def test_datum_errors_name_the_shape():
    with pytest.raises(ShapeMismatchError, match=r"C x H x W.*Received: shape \(2, 2\)"):
        caffe.io.array_to_datum(numpy.zeros((2, 2)))
    datum = caffe.io.caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\x00\x01\x02")
    with pytest.raises(ShapeMismatchError, match="holds 3 values"):
        caffe.io.datum_to_array(datum)


def test_encoded_datum_is_decoded_to_bgr_channels_first():
    image_module = pytest.importorskip("PIL.Image")
    rgb = numpy.zeros((2, 3, 3), dtype=numpy.uint8)
    rgb[..., 0] = 200  # red
    rgb[0, 0, 2] = 50  # one pixel with some blue
    buffer = io.BytesIO()
    image_module.fromarray(rgb).save(buffer, format="PNG")
    datum = caffe.io.caffe_pb2.Datum(data=buffer.getvalue(), encoded=True, label=3)
    back = caffe.io.datum_to_array(datum)
    assert back.shape == (3, 2, 3) and back.dtype == numpy.uint8
    assert back[2].tolist() == [[200] * 3] * 2  # red is the last channel in BGR
    assert back[0, 0, 0] == 50 and back[0, 1, 1] == 0


# --- logging and the switches pycaffe had ------------------------------------------------
@pytest.fixture
def restore_netdef_logger():
    logger = logging.getLogger("netdef")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_init_log_writes_glog_lines_at_the_chosen_level(restore_netdef_logger, capsys):
    caffe.init_log()
    caffe.log("hello from a script")
    err = capsys.readouterr().err
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ logs\.py:\d+\] hello from a script$", err, re.M)

    caffe.init_log(1)
    caffe.log("not shown")
    logging.getLogger("netdef").warning("shown")
    err = capsys.readouterr().err
    assert "not shown" not in err and "shown" in err

    caffe.init_log(0, False)
    assert restore_netdef_logger.handlers == [] and restore_netdef_logger.propagate


def test_init_log_rejects_levels_glog_lacks(restore_netdef_logger):
    with pytest.raises(InvalidParameterError, match=r"0 \(INFO\).*Received: 7"):
        caffe.init_log(7)


def test_multi_gpu_switches_say_one_solver_per_process():
    assert caffe.has_nccl() is False
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(True)
    with pytest.raises(InvalidParameterError, match="Received: solver count 4"):
        caffe.set_solver_count(4)
    with pytest.raises(InvalidParameterError, match="Received: solver rank 1"):
        caffe.set_solver_rank(1)
    with pytest.raises(MissingDependencyError, match="NCCL"):
        caffe.NCCL(None, "")


def test_timer_measures_between_start_and_stop():
    timer = caffe.Timer()
    assert timer.ms == 0.0
    timer.start()
    total = sum(range(20000))
    timer.stop()
    first = timer.ms
    assert total > 0 and first > 0
    assert timer.ms == first  # stopped: the reading stays


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        caffe.Nonexistent  # noqa: B018
