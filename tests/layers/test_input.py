"""Tests of netdef/layers/input.py: Input, DummyData and MemoryData."""

import numpy
import pytest

from netdef.errors import InvalidParameterError
from netdef.testing import make_net


def test_input_one_shape_for_all_tops():
    n = make_net('layer { name: "i" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }')
    assert n.blobs["a"].shape == n.blobs["b"].shape == (2, 3)


def test_input_shape_count_error():
    with pytest.raises(InvalidParameterError, match='"i".*1 or 3'):
        make_net(
            'layer { name: "i" type: "Input" top: "a" top: "b" top: "c" '
            "input_param { shape { dim: 1 } shape { dim: 2 } } }"
        )


def test_dummydata_constant_and_gaussian_refill():
    n = make_net(
        'layer { name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
        "shape { dim: 2 dim: 2 } shape { dim: 1000 } "
        'data_filler { type: "constant" value: 3 } data_filler { type: "gaussian" std: 1 } } }'
    )
    numpy.testing.assert_array_equal(n.blobs["c"].data, numpy.full((2, 2), 3.0))
    first = n.blobs["g"].data.copy()
    n.forward()
    assert not numpy.array_equal(first, n.blobs["g"].data)
    assert abs(n.blobs["g"].data.std() - 1) < 0.1


def test_dummydata_legacy_dims():
    n = make_net(
        'layer { name: "d" type: "DummyData" top: "x" dummy_data_param { num: 2 channels: 3 height: 4 width: 5 } }'
    )
    assert n.blobs["x"].shape == (2, 3, 4, 5)


MEMORY = (
    'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
    "memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }"
)


def test_memorydata_serves_batches_in_order():
    n = make_net(MEMORY)
    data = numpy.arange(8, dtype=numpy.float32).reshape(4, 1, 1, 2)
    n.set_input_arrays(data, numpy.array([0, 1, 2, 3]))
    n.forward()
    numpy.testing.assert_array_equal(n.blobs["data"].data, data[:2])
    numpy.testing.assert_array_equal(n.blobs["label"].data.ravel(), [0, 1])
    n.forward()
    n.forward()
    numpy.testing.assert_array_equal(n.blobs["label"].data.ravel(), [0, 1])
    with pytest.raises(InvalidParameterError, match="multiple of batch_size 2"):
        n.set_input_arrays(data[:3], numpy.zeros(3))
    with pytest.raises(InvalidParameterError, match="set_input_arrays"):
        make_net(MEMORY).forward()


def test_input_declared_shapes_are_checked_with_the_layer_named():
    from netdef import limits
    from netdef.errors import ResourceLimitError, ShapeMismatchError

    with pytest.raises(ShapeMismatchError, match=r'Layer "in" \(type Input\): declared shape: .*negative'):
        make_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: -3 } } }')
    limits.set_max_array_bytes("1M")
    try:
        with pytest.raises(ResourceLimitError, match=r'Layer "in" \(type Input\): declared shape: blob \'x\''):
            make_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1000 dim: 1000 } } }')
    finally:
        limits.set_max_array_bytes(None)


def test_memorydata_shards_serve_their_block_of_each_group():
    data = numpy.arange(16, dtype=numpy.float32).reshape(8, 1, 1, 2)
    labels = numpy.arange(8)
    ranks = [make_net(MEMORY) for _ in range(2)]
    for rank, n in enumerate(ranks):
        n.layers[0].shard(rank, 2)
        n.set_input_arrays(data, labels)
    seen = []
    for _ in range(3):
        for n in ranks:
            n.forward()
            seen.extend(n.blobs["label"].data.ravel().tolist())
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]
    with pytest.raises(InvalidParameterError, match="multiple of batch_size 2 x 2 ranks. Received: 6"):
        ranks[0].set_input_arrays(data[:6], labels[:6])
    early = make_net(MEMORY)
    early.set_input_arrays(data[:6], labels[:6])
    with pytest.raises(InvalidParameterError, match="x 2 ranks"):
        early.layers[0].shard(1, 2)
