"""Tests of the recurrent layers: LSTMUnit, LSTM, RNN."""

import math

import numpy
import pytest

from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.testing import check_gpu_matches_cpu, check_gradient, forward_layer, make_layer, run_backward, run_layer
from netdef.testing.parity import check_layer_case, parametrize_layer_cases


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def lstm_def(num_output: int, expose_hidden: bool = False, filler: str = 'type: "gaussian" std: 0.5') -> str:
    return (
        f'type: "LSTM" recurrent_param {{ num_output: {num_output} expose_hidden: {str(expose_hidden).lower()} '
        f"weight_filler {{ {filler} }} bias_filler {{ {filler} }} }}"
    )


def rnn_def(num_output: int, expose_hidden: bool = False, filler: str = 'type: "gaussian" std: 0.5') -> str:
    return (
        f'type: "RNN" recurrent_param {{ num_output: {num_output} expose_hidden: {str(expose_hidden).lower()} '
        f"weight_filler {{ {filler} }} bias_filler {{ {filler} }} }}"
    )


def numeric_gradient(fn, arr: numpy.ndarray, step: float = 1e-5) -> numpy.ndarray:
    """Central differences of the scalar ``fn()`` with respect to every element of ``arr`` (changed in place)."""
    grad = numpy.zeros(arr.shape)
    flat, g = arr.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        x0 = flat[k]
        flat[k] = x0 + step
        plus = fn()
        flat[k] = x0 - step
        minus = fn()
        flat[k] = x0
        g[k] = (plus - minus) / (2 * step)
    return grad


# --- LSTMUnit -----------------------------------------------------------------------------
def test_lstm_unit_values_by_hand():
    c_prev = numpy.array([[[0.5], [0.5]]])
    # gates i, f, o, g for one cell: sample 0 continues the sequence, sample 1 starts a new one.
    x = numpy.array([[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, -1.0, 1.0]]])
    cont = numpy.array([[1.0, 0.0]])
    layer = make_layer('type: "LSTMUnit"')
    bottom, (c, h) = run_layer(layer, [c_prev, x, cont], num_top=2)
    c0 = 0.5 * 0.5 + 0.5 * 0.0
    c1 = 0.0 * 0.5 + sigmoid(1.0) * math.tanh(1.0)
    numpy.testing.assert_allclose(c.data.ravel(), [c0, c1], rtol=1e-12)
    numpy.testing.assert_allclose(h.data.ravel(), [0.5 * math.tanh(c0), sigmoid(-1.0) * math.tanh(c1)], rtol=1e-12)
    # Backward with dh = 1, dc = 0 on sample 1 (cont 0): c_prev gets nothing, the gates get the chain rule.
    c.diff = numpy.zeros_like(c.data)
    h.diff = numpy.ones_like(h.data)
    layer.backward([c, h], [True, True, False], bottom)
    i, o, g = sigmoid(1.0), sigmoid(-1.0), math.tanh(1.0)
    dc = o * (1 - math.tanh(c1) ** 2)
    numpy.testing.assert_allclose(bottom[0].diff.ravel(), [0.5 * 0.5 * (1 - math.tanh(c0) ** 2), 0.0])
    numpy.testing.assert_allclose(
        bottom[1].diff[0, 1], [dc * g * i * (1 - i), 0.0, math.tanh(c1) * o * (1 - o), dc * i * (1 - g * g)]
    )


def test_lstm_unit_gradient():
    rng = numpy.random.default_rng(0)
    c_prev = rng.standard_normal((1, 3, 2))
    x = rng.standard_normal((1, 3, 8))
    cont = numpy.array([[1.0, 0.0, 1.0]])
    result = check_gradient(make_layer('type: "LSTMUnit"'), [c_prev, x, cont], check_bottoms=[0, 1], num_top=2)
    assert result["checked"] == 6 + 24


def test_lstm_unit_rejects_wrong_gate_width():
    layer = make_layer('type: "LSTMUnit"')
    with pytest.raises(ShapeMismatchError, match=r"4 \* D = 8"):
        run_layer(layer, [numpy.zeros((1, 3, 2)), numpy.zeros((1, 3, 6)), numpy.ones((1, 3))], num_top=2)


def test_lstm_unit_rejects_cont_with_three_axes():
    layer = make_layer('type: "LSTMUnit"')
    with pytest.raises(ShapeMismatchError, match="cont"):
        run_layer(layer, [numpy.zeros((1, 3, 2)), numpy.zeros((1, 3, 8)), numpy.ones((1, 3, 1))], num_top=2)


def test_lstm_unit_no_force_backward_to_cont():
    layer = make_layer('type: "LSTMUnit"')
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


# --- LSTM -----------------------------------------------------------------------------------
def lstm_by_hand(xs, conts, w, b, u, h=0.0, c=0.0):
    """Scalar LSTM (one input, one cell) with every gate weight w, bias b and recurrent weight u."""
    hs = []
    for x, cont in zip(xs, conts, strict=True):
        pre = w * x + b + u * cont * h
        i = f = o = sigmoid(pre)
        g = math.tanh(pre)
        c = cont * f * c + i * g
        h = o * math.tanh(c)
        hs.append(h)
    return hs, h, c


# Filler values are proto floats: the bias the layer gets is 0.1 rounded to float32.
B_LSTM = float(numpy.float32(0.1))
B_RNN = float(numpy.float32(-0.2))


def test_lstm_values_by_hand():
    layer = make_layer(
        'type: "LSTM" recurrent_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } '
        'bias_filler { type: "constant" value: 0.1 } }'
    )
    x = numpy.array([1.0, -2.0, 0.5]).reshape(3, 1, 1)
    cont = numpy.array([0.0, 1.0, 1.0]).reshape(3, 1)
    bottom, (top,) = run_layer(layer, [x, cont])
    assert [b.shape for b in layer.blobs] == [(4, 1), (4,), (4, 1)]
    want, h_end, c_end = lstm_by_hand([1.0, -2.0, 0.5], [0.0, 1.0, 1.0], 0.5, B_LSTM, 0.5)
    numpy.testing.assert_allclose(top.data.ravel(), want, rtol=1e-12)
    # Without expose_hidden the next forward starts from the last state, as Caffe's RecurrentLayer does.
    bottom[1].data[...] = 1.0
    layer.forward_step(bottom, [top])
    want2, _, _ = lstm_by_hand([1.0, -2.0, 0.5], [1.0, 1.0, 1.0], 0.5, B_LSTM, 0.5, h_end, c_end)
    numpy.testing.assert_allclose(top.data.ravel(), want2, rtol=1e-12)
    layer.reset()
    layer.forward_step(bottom, [top])
    want3, _, _ = lstm_by_hand([1.0, -2.0, 0.5], [1.0, 1.0, 1.0], 0.5, B_LSTM, 0.5)
    numpy.testing.assert_allclose(top.data.ravel(), want3, rtol=1e-12)


def test_lstm_param_layout_with_static_input():
    layer = make_layer(lstm_def(5))
    run_layer(layer, [numpy.zeros((2, 3, 4, 2)), numpy.zeros((2, 3)), numpy.zeros((3, 7))])
    assert [b.shape for b in layer.blobs] == [(20, 8), (20,), (20, 7), (20, 5)]


def test_lstm_gate_order_is_i_f_o_g():
    # Only the g rows of W_xc are non-zero and only the i bias: c_1 = sigmoid(b_i) * tanh(w_g x) * ...
    weights = [numpy.array([[0.0], [0.0], [0.0], [0.3]]), numpy.array([1.0, 0.0, -1.0, 0.0])]
    _, _, (top,) = forward_layer(
        'type: "LSTM" recurrent_param { num_output: 1 }', [numpy.array([[[2.0]]]), numpy.zeros((1, 1))], weights
    )
    c = sigmoid(1.0) * math.tanh(0.6)
    numpy.testing.assert_allclose(top.data.ravel(), [sigmoid(-1.0) * math.tanh(c)], rtol=1e-12)


def test_lstm_gradient_with_static_input():
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((3, 2, 3))
    cont = numpy.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    x_static = rng.standard_normal((2, 2))
    result = check_gradient(make_layer(lstm_def(2)), [x, cont, x_static], check_bottoms=[0, 2])
    assert result["checked"] == 18 + 4 + 24 + 8 + 16 + 16


def test_lstm_expose_hidden_values_and_gradient():
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((3, 2, 3))
    cont = numpy.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    h0, c0 = rng.standard_normal((1, 2, 2)), rng.standard_normal((1, 2, 2))
    layer = make_layer(lstm_def(2, expose_hidden=True))
    bottom, top = run_layer(layer, [x, cont, h0, c0], num_top=3)
    # The same weights without expose_hidden, carrying (h0, c0) over from a previous call, give the same sequence.
    carried = make_layer(lstm_def(2))
    cbottom, ctop = run_layer(carried, [x, cont])
    for mine, theirs in zip(carried.blobs, layer.blobs, strict=True):
        mine.data[...] = theirs.data
    carried._state = [h0[0], c0[0]]
    carried.forward_step(cbottom, ctop)
    numpy.testing.assert_allclose(top[0].data, ctop[0].data, rtol=1e-12)
    numpy.testing.assert_allclose(top[1].data[0], top[0].data[-1], rtol=1e-12)
    assert top[2].data.shape == (1, 2, 2)

    # Gradients through the h top only; the h_T/c_T diffs are ignored and h0/c0 get zeros (Caffe).
    proj = rng.standard_normal(top[0].shape)
    bottom[2].diff = numpy.full((1, 2, 2), 7.0)
    run_backward(
        layer,
        bottom,
        top,
        [proj, numpy.full((1, 2, 2), 100.0), numpy.full((1, 2, 2), 100.0)],
        [True, False, True, True],
    )
    assert not bottom[2].diff.any() and not bottom[3].diff.any()

    def objective():
        layer.forward_step(bottom, top)
        return float(numpy.sum(top[0].data * proj))

    numpy.testing.assert_allclose(bottom[0].diff, numeric_gradient(objective, bottom[0].data), atol=1e-7)
    for p in layer.blobs:
        numpy.testing.assert_allclose(p.diff, numeric_gradient(objective, p.data), atol=1e-7)


def test_lstm_debug_info_logs_each_pass(caplog):
    layer = make_layer('type: "LSTM" name: "seq" recurrent_param { num_output: 2 debug_info: true }')
    with caplog.at_level("INFO", logger="netdef"):
        bottom, top = run_layer(layer, [numpy.ones((2, 1, 3)), numpy.zeros((2, 1))])
        run_backward(layer, bottom, top, [numpy.ones(top[0].shape)], [True, False])
    assert any('LSTM "seq"] h:' in r.getMessage() for r in caplog.records)
    assert any("gate diffs" in r.getMessage() for r in caplog.records)


def test_lstm_rejects_zero_num_output():
    with pytest.raises(InvalidParameterError, match="num_output must be positive. Received: 0"):
        run_layer(make_layer('type: "LSTM"'), [numpy.zeros((2, 1, 3)), numpy.zeros((2, 1))])


def test_lstm_rejects_cont_shape():
    with pytest.raises(ShapeMismatchError, match=r"cont.*\(2, 1\)"):
        run_layer(make_layer(lstm_def(2)), [numpy.zeros((2, 1, 3)), numpy.zeros((2, 2))])


def test_lstm_rejects_h0_shape_and_bottom_count():
    layer = make_layer(lstm_def(2, expose_hidden=True))
    with pytest.raises(ShapeMismatchError, match=r"h_0.*\(1, 1, 2\)"):
        run_layer(
            layer,
            [numpy.zeros((2, 1, 3)), numpy.zeros((2, 1)), numpy.zeros((1, 1, 3)), numpy.zeros((1, 1, 2))],
            num_top=3,
        )
    with pytest.raises(BlobCountError, match="at least 4"):
        run_layer(make_layer(lstm_def(2, expose_hidden=True)), [numpy.zeros((2, 1, 3)), numpy.zeros((2, 1))], num_top=3)


def test_lstm_rejects_changed_input_width():
    layer = make_layer(lstm_def(2))
    bottom, top = run_layer(layer, [numpy.zeros((2, 1, 3)), numpy.zeros((2, 1))])
    bottom[0].reshape((2, 1, 4))
    with pytest.raises(ShapeMismatchError, match="made for 3"):
        layer.reshape(bottom, top)


# --- RNN --------------------------------------------------------------------------------------
def test_rnn_values_by_hand():
    layer = make_layer(
        'type: "RNN" recurrent_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } '
        'bias_filler { type: "constant" value: -0.2 } }'
    )
    xs, conts = [1.0, 2.0, -1.0], [0.0, 1.0, 0.0]
    _, (top,) = run_layer(layer, [numpy.array(xs).reshape(3, 1, 1), numpy.array(conts).reshape(3, 1)])
    assert [b.shape for b in layer.blobs] == [(1, 1), (1,), (1, 1), (1, 1), (1,)]
    h, want = 0.0, []
    for x, cont in zip(xs, conts, strict=True):
        h = math.tanh(0.5 * x + B_RNN + 0.5 * cont * h)
        want.append(math.tanh(0.5 * h + B_RNN))
    numpy.testing.assert_allclose(top.data.ravel(), want, rtol=1e-12)


def test_rnn_param_layout_with_static_input():
    layer = make_layer(rnn_def(3))
    run_layer(layer, [numpy.zeros((2, 4, 5)), numpy.zeros((2, 4)), numpy.zeros((4, 2, 3))])
    assert [b.shape for b in layer.blobs] == [(3, 5), (3,), (3, 6), (3, 3), (3, 3), (3,)]


def test_rnn_gradient_with_static_input():
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((3, 2, 3))
    # cont_0 = 0 everywhere: otherwise each forward of the check would start from the previous one's state.
    cont = numpy.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    x_static = rng.standard_normal((2, 2))
    layer = make_layer(rnn_def(2))
    check_gradient(layer, [x, cont, x_static], check_bottoms=[0, 2])


def test_rnn_gradient_plain():
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((4, 2, 2))
    cont = numpy.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    result = check_gradient(make_layer(rnn_def(3)), [x, cont], check_bottoms=[0])
    assert result["checked"] == 16 + 6 + 3 + 9 + 9 + 3


def test_rnn_expose_hidden_uses_h0_and_gives_it_no_gradient():
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((2, 2, 2))
    cont = numpy.ones((2, 2))
    h0 = rng.standard_normal((1, 2, 3))
    layer = make_layer(rnn_def(3, expose_hidden=True))
    bottom, top = run_layer(layer, [x, cont, h0], num_top=2)
    w_xh, b_h, w_hh, w_ho, b_o = (p.data for p in layer.blobs)
    h = h0[0]
    for t in range(2):
        h = numpy.tanh(x[t] @ w_xh.T + b_h + h @ w_hh.T)
        numpy.testing.assert_allclose(top[0].data[t], numpy.tanh(h @ w_ho.T + b_o), rtol=1e-12)
    numpy.testing.assert_allclose(top[1].data[0], h, rtol=1e-12)
    run_backward(layer, bottom, top, [numpy.ones(top[0].shape), numpy.ones(top[1].shape)], [True, False, True])
    assert not bottom[2].diff.any()


def test_rnn_no_force_backward_to_cont():
    layer = make_layer(rnn_def(2))
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, False, True]


def test_rnn_rejects_x_static_batch():
    with pytest.raises(ShapeMismatchError, match="x_static"):
        layer = make_layer(rnn_def(2))
        bottom, top = run_layer(layer, [numpy.zeros((2, 3, 2)), numpy.zeros((2, 3)), numpy.zeros((3, 4))])
        bottom[2].reshape((2, 4))
        layer.reshape(bottom, top)


def test_rnn_rejects_unknown_filler():
    with pytest.raises(InvalidParameterError, match="Unknown filler"):
        run_layer(make_layer(rnn_def(2, filler='type: "gaussain"')), [numpy.zeros((2, 1, 3)), numpy.zeros((2, 1))])


# --- parity with Caffe --------------------------------------------------------------------------
TYPES = {"LSTM", "RNN", "LSTMUnit"}


@parametrize_layer_cases(TYPES)
def test_parity(case):
    errors = check_layer_case(case)
    assert any(k.startswith("top_") for k in errors)


# --- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("definition", [lstm_def(3), rnn_def(3), 'type: "LSTMUnit"'])
def test_gpu_matches_cpu(definition):
    rng = numpy.random.default_rng(6)
    if "LSTMUnit" in definition:
        bottoms = [rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 4, 12)), numpy.array([[1.0, 0.0, 1.0, 1.0]])]
        check_gpu_matches_cpu(definition, bottoms, num_top=2, propagate_down=[True, True, False])
    else:
        bottoms = [rng.standard_normal((5, 4, 2)), numpy.ones((5, 4))]
        check_gpu_matches_cpu(definition, bottoms, propagate_down=[True, False])
