"""Random streams and the defaults that new objects take from netdef's module-level setters."""

import numpy
import pytest

import netdef
from netdef import backend

DROPOUT_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 50 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }
"""


def _masks(net, n):
    out = []
    for _ in range(n):
        net.forward(x=numpy.ones((4, 50), numpy.float32))
        out.append(net.blobs["y"].data != 0)
    return numpy.array(out)


def test_first_object_after_a_seed_draws_what_default_rng_draws():
    backend.set_random_seed(42)
    streams = backend.new_streams()
    numpy.testing.assert_array_equal(streams.numpy.random(5), numpy.random.default_rng(42).random(5))


def test_later_objects_get_distinct_streams_reproducibly():
    backend.set_random_seed(42)
    a, b = backend.new_streams().numpy.random(4), backend.new_streams().numpy.random(4)
    assert not numpy.allclose(a, b)
    backend.set_random_seed(42)
    numpy.testing.assert_array_equal(backend.new_streams().numpy.random(4), a)
    numpy.testing.assert_array_equal(backend.new_streams().numpy.random(4), b)


def test_each_net_owns_its_stream():
    backend.set_random_seed(5)
    one = netdef.Net(netdef.proto.net_from_text(DROPOUT_NET), netdef.TRAIN)
    backend.set_random_seed(5)
    two = netdef.Net(netdef.proto.net_from_text(DROPOUT_NET), netdef.TRAIN)
    # Drawing from one net leaves the other untouched: both see the same masks in turn.
    first = _masks(one, 3)
    numpy.testing.assert_array_equal(_masks(two, 3), first)
    assert one.layers[1].rng is one.rng
    # A net given streams draws from exactly those.
    three = netdef.Net(netdef.proto.net_from_text(DROPOUT_NET), netdef.TRAIN, rng=backend.RandomStreams(9))
    four = netdef.Net(netdef.proto.net_from_text(DROPOUT_NET), netdef.TRAIN, rng=backend.RandomStreams(9))
    numpy.testing.assert_array_equal(_masks(three, 2), _masks(four, 2))
    assert not numpy.array_equal(_masks(three, 1)[0], first[0])


def test_checkpoint_and_restore_continue_exactly():
    net = netdef.Net(netdef.proto.net_from_text(DROPOUT_NET), netdef.TRAIN, rng=backend.RandomStreams(3))
    _masks(net, 2)
    state = net.rng.checkpoint()
    after = _masks(net, 3)
    net.rng.restore(state)
    numpy.testing.assert_array_equal(_masks(net, 3), after)
    # a bare NumPy generator state (older resume files) restores the CPU stream too
    net.rng.restore(state["numpy"])
    numpy.testing.assert_array_equal(_masks(net, 3), after)


def test_uniform_and_normal_on_numpy():
    s = backend.RandomStreams(0)
    u = s.uniform(numpy, (1000,), 2.0, 3.0, numpy.float64)
    assert u.dtype == numpy.float64 and u.min() >= 2.0 and u.max() < 3.0
    g = s.normal(numpy, (20000,), 1.0, 2.0)
    assert g.dtype == numpy.float32 and abs(g.mean() - 1.0) < 0.05 and abs(g.std() - 2.0) < 0.05


@pytest.mark.gpu
def test_device_stream_restores_exactly_on_the_gpu():
    if not backend.gpu_available():
        pytest.skip("CuPy or a CUDA device is not available")
    import cupy

    s = backend.RandomStreams(7)
    s.uniform(cupy, (10,))
    state = s.checkpoint()
    after = backend.to_numpy(s.uniform(cupy, (100,)))
    s.restore(state)
    numpy.testing.assert_array_equal(backend.to_numpy(s.uniform(cupy, (100,))), after)
    other = backend.RandomStreams(8)
    assert not numpy.array_equal(backend.to_numpy(other.uniform(cupy, (100,))), after)
