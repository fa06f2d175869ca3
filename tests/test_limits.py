"""Tests of netdef/limits.py and the size checks before every allocation an input decides."""

import pytest

from netdef import limits
from netdef.blob import Blob
from netdef.errors import InvalidParameterError, ResourceLimitError, ShapeMismatchError
from netdef.testing import make_net


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    monkeypatch.delenv(limits.ENV_MAX_ARRAY_BYTES, raising=False)
    monkeypatch.delenv(limits.ENV_CHECK_FINITE, raising=False)
    yield
    limits.set_max_array_bytes(None)
    limits.set_check_finite_inputs(None)


def test_declared_input_shape_past_the_machine_is_a_named_error_not_memoryerror():
    with pytest.raises(ResourceLimitError) as info:
        make_net('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 100000 dim: 100000 } } }')
    msg = str(info.value)
    assert 'Layer "in" (type Input)' in msg and "blob 'data'" in msg
    assert "(100000, 100000)" in msg and "80000000000 bytes" in msg and limits.ENV_MAX_ARRAY_BYTES in msg


def test_dims_whose_product_overflows_int64_are_refused_before_numpy_sees_them():
    # 2**62 * 4 overflows int64: NumPy said ValueError ("array is too big") before
    with pytest.raises(ResourceLimitError, match="blob 'data'"):
        make_net(
            'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 4611686018427387904 dim: 4 } } }'
        )


def test_parameter_blob_names_its_layer():
    limits.set_max_array_bytes("1M")
    with pytest.raises(ResourceLimitError, match=r"blob 'ip\.param'.*more than the limit of 1\.0 MiB"):
        make_net(
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1000 } } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1000 } }'
        )


def test_limit_from_the_environment_and_from_the_api(monkeypatch):
    monkeypatch.setenv(limits.ENV_MAX_ARRAY_BYTES, "8K")
    assert limits.max_array_bytes() == 8192
    Blob((1024,))  # 4 KiB data + 4 KiB diff: exactly the limit
    with pytest.raises(ResourceLimitError, match="8.0 KiB"):
        Blob((1025,))
    limits.set_max_array_bytes(1 << 20)  # the API wins over the environment
    Blob((1025,)).reshape(100, 100)
    limits.set_max_array_bytes(None)
    assert limits.max_array_bytes() == 8192


def test_bad_limit_settings_are_named(monkeypatch):
    monkeypatch.setenv(limits.ENV_MAX_ARRAY_BYTES, "lots")
    with pytest.raises(InvalidParameterError, match=f"{limits.ENV_MAX_ARRAY_BYTES}.*Received: 'lots'"):
        limits.max_array_bytes()
    with pytest.raises(InvalidParameterError, match="positive"):
        limits.set_max_array_bytes(0)


def test_default_limit_is_the_machine():
    assert limits.max_array_bytes() == limits.machine_bytes() > 0


def test_reshape_checks_before_allocating_and_keeps_the_old_arrays():
    limits.set_max_array_bytes(1000)
    b = Blob((2, 3), name="b")
    b.data[...] = 7
    with pytest.raises(ResourceLimitError, match="blob 'b': shape \\(1000,\\)"):
        b.reshape(1000)
    assert b.shape == (2, 3) and (b.data == 7).all()
    with pytest.raises(ShapeMismatchError, match="negative"):
        Blob((2, -1), name="n")


def test_memoryerror_below_the_limit_becomes_a_named_error(monkeypatch):
    class RefusingXp:
        def zeros(self, shape, dtype):
            raise MemoryError()

    b = Blob((2,), name="small")
    b.xp = RefusingXp()
    monkeypatch.setattr(Blob, "_device_bytes", lambda self: None)
    with pytest.raises(ResourceLimitError, match="blob 'small'.*more memory than is free"):
        b.reshape(3)


def test_check_bytes_counts_exactly_and_reports_copies():
    assert limits.check_bytes("x", (3, 5), 8, copies=2) == 240
    assert limits.shape_count((1 << 40, 1 << 40)) == 1 << 80
    with pytest.raises(ResourceLimitError, match="lower"):
        limits.check_bytes("lower", (10,), 4, available=39)


def test_finite_check_setting(monkeypatch):
    assert limits.check_finite_inputs()
    monkeypatch.setenv(limits.ENV_CHECK_FINITE, "0")
    assert not limits.check_finite_inputs()
    limits.set_check_finite_inputs(True)
    assert limits.check_finite_inputs()


def test_dummydata_and_memorydata_shapes_are_bounded():
    limits.set_max_array_bytes("1M")
    with pytest.raises(ResourceLimitError, match='Layer "d" \\(type DummyData\\)'):
        make_net('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1000 dim: 1000 } } }')
    with pytest.raises(ResourceLimitError, match='Layer "m" \\(type MemoryData\\)'):
        make_net(
            'layer { name: "m" type: "MemoryData" top: "x" top: "y" '
            "memory_data_param { batch_size: 1000 channels: 3 height: 100 width: 100 } }"
        )
