"""Recurrent layers: LSTMUnit (one LSTM step), LSTM and RNN over a (T, N, ...) sequence.

Caffe builds LSTM and RNN as an unrolled internal net of InnerProduct, Eltwise,
Scale, Slice, TanH and LSTMUnit layers. netdef computes the same function with a
loop over the time steps instead; the parameter blobs have exactly the layout
and order of the unrolled net's parameters, so ``.caffemodel`` files transfer.

Behaviour kept from Caffe (it is what the reference data shows):

* ``cont_t`` (0 or 1) multiplies the previous hidden state (and, through the
  forget gate, the previous cell state) at step ``t``; 0 starts a new sequence.
* Without ``expose_hidden`` the state entering step 0 is the state the previous
  forward pass ended with (zeros at first), so ``cont_0 = 1`` continues a
  sequence across batches.
* No gradient crosses batch boundaries: the diffs of the exposed ``h_T``/``c_T``
  tops are ignored and the exposed ``h_0``/``c_0`` bottoms get zero gradient.
* LSTMUnit folds ``cont`` into the forget gate, ``f = cont * sigmoid(f')``, and
  its gradient uses ``f * (1 - f)`` with that product (exact for binary cont).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy

from .. import backend, fillers
from ..blob import Blob
from ..errors import ShapeMismatchError
from . import ort_kernels
from .base import Layer, register_layer

log = logging.getLogger("netdef")


def _sigmoid(xp, x):
    # The tanh form never overflows in exp(), for either sign of x.
    return 0.5 * (1.0 + xp.tanh(0.5 * x))


def _lstm_step(xp, c_prev, gates, cont):
    """One LSTM step on (N, D) cells and (N, 4D) pre-activations in the order i, f, o, g.

    Returns ``(c, h, cache)``; ``cache`` holds what ``_lstm_step_backward`` needs.
    """
    d = c_prev.shape[-1]
    i = _sigmoid(xp, gates[:, :d])
    f = _sigmoid(xp, gates[:, d : 2 * d])
    cont_col = cont[:, None]
    # Caffe sets f to exactly 0 for cont == 0 (not cont * f), which also keeps a NaN/inf c_prev out.
    f = xp.where(cont_col == 0, xp.zeros((), dtype=f.dtype), cont_col * f)
    o = _sigmoid(xp, gates[:, 2 * d : 3 * d])
    g = xp.tanh(gates[:, 3 * d :])
    c = f * c_prev + i * g
    tanh_c = xp.tanh(c)
    h = o * tanh_c
    return c, h, (c_prev, i, f, o, g, tanh_c)


def _lstm_step_backward(xp, dc, dh, cache):
    """Gradients of one LSTM step: ``(dc_prev, dgates)`` from the diffs of c and h."""
    c_prev, i, f, o, g, tanh_c = cache
    dc_total = dc + dh * o * (1.0 - tanh_c * tanh_c)
    dgates = xp.concatenate(
        [
            dc_total * g * i * (1.0 - i),
            dc_total * c_prev * f * (1.0 - f),
            dh * tanh_c * o * (1.0 - o),
            dc_total * i * (1.0 - g * g),
        ],
        axis=1,
    )
    return dc_total * f, dgates


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One step of an LSTM (Caffe type ``LSTMUnit``), the cell LSTM layers unroll into.

    With the gate pre-activations ``x = [i', f', o', g']`` split along the last axis::

        i = sigmoid(i'), f = cont * sigmoid(f'), o = sigmoid(o'), g = tanh(g')
        c = f * c_prev + i * g
        h = o * tanh(c)

    Bottoms:
        c_prev: ``(1, N, D)`` previous cell state.
        x: ``(1, N, 4D)`` gate inputs in the order i, f, o, g.
        cont: ``(1, N)`` sequence continuation indicators (no gradient).

    Tops:
        c: ``(1, N, D)`` new cell state; h: ``(1, N, D)`` new hidden state.
    """

    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        names = ("c_prev", "x", "cont")
        n = bottom[0].shape[1] if bottom[0].num_axes > 1 else None
        for k, b in enumerate(bottom):
            axes = 2 if k == 2 else 3
            if b.num_axes != axes or b.shape[0] != 1 or b.shape[1] != n:
                raise self.error(
                    f"bottom {k} ({names[k]}) must have shape (1, N{', ...' if axes == 3 else ''}) with {axes} axes "
                    f"and N = bottom 0's second axis. Received: shapes {[b.shape for b in bottom]}",
                    ShapeMismatchError,
                )
        d = bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * d:
            raise self.error(
                f"bottom 1 (gate inputs) needs 4 * D = {4 * d} channels for cell size D = {d}. "
                f"Received: {bottom[1].shape}",
                ShapeMismatchError,
            )
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        xp = backend.array_module(bottom[0].data)
        c, h, self._cache = _lstm_step(xp, bottom[0].data[0], bottom[1].data[0], bottom[2].data[0])
        top[0].data = c[None]
        top[1].data = h[None]

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = backend.array_module(top[0].diff)
        dc_prev, dgates = _lstm_step_backward(xp, top[0].diff[0], top[1].diff[0], self._cache)
        if propagate_down[0]:
            bottom[0].diff = dc_prev[None]
        if propagate_down[1]:
            bottom[1].diff = dgates[None]


class _RecurrentLayer(Layer):
    """What LSTM and RNN share: bottoms, parameter set-up, the carried state, shape checks.

    Subclasses set ``gate_factor`` (rows of W per hidden unit: 4 for LSTM, 1 for
    RNN) and ``state_names`` (the recurrent states, in Caffe's bottom/top order).
    """

    gate_factor = 1
    state_names: tuple[str, ...] = ("h",)

    def __init__(self, param, phase: int = 0, dtype=numpy.float32, xp=None, rng=None):
        super().__init__(param, phase=phase, dtype=dtype, xp=xp, rng=rng)
        # Blob counts depend on expose_hidden: x, cont, [x_static], [one bottom per state].
        exposed = len(self.state_names) if param.recurrent_param.expose_hidden else 0
        self.min_num_bottom = 2 + exposed
        self.max_num_bottom = 3 + exposed
        self.exact_num_top = 1 + exposed

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    # --- set-up ------------------------------------------------------------------
    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        rp = self.param.recurrent_param
        self.num_output = int(rp.num_output)
        if self.num_output <= 0:
            raise self.error(f"recurrent_param.num_output must be positive. Received: {rp.num_output}")
        self.expose_hidden = bool(rp.expose_hidden)
        self.debug_info = bool(rp.debug_info)
        exposed = len(self.state_names) if self.expose_hidden else 0
        self.static_input = len(bottom) > 2 + exposed
        if bottom[0].num_axes < 2:
            raise self.error(
                f"bottom 0 (x) must have at least 2 axes (T, N, ...). Received: shape {bottom[0].shape}",
                ShapeMismatchError,
            )
        self.input_dim = bottom[0].count_range(2)
        self.static_dim = bottom[2].count_range(1) if self.static_input else 0
        if self.static_input and bottom[2].num_axes < 1:
            raise self.error(
                "bottom 2 (x_static) must have at least 1 axis (N, ...). Received: a scalar", ShapeMismatchError
            )
        self.blobs = self.make_params()
        self._state = None

    def _param(self, shape: Sequence[int], filler) -> Blob:
        blob = self.new_blob(shape)
        fillers.fill(blob, filler, self.rng.numpy)
        return blob

    def make_params(self) -> list[Blob]:
        raise NotImplementedError

    # --- shapes ------------------------------------------------------------------
    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            raise self.error(
                f"bottom 0 (x) must have at least 2 axes (T, N, ...). Received: shape {x.shape}", ShapeMismatchError
            )
        t, n = x.shape[:2]
        if cont.shape != (t, n):
            raise self.error(
                f"bottom 1 (cont) must have shape (T, N) = {(t, n)} to match x {x.shape}. Received: {cont.shape}",
                ShapeMismatchError,
            )
        if x.count_range(2) != self.input_dim:
            raise self.error(
                f"bottom 0 (x) has {x.count_range(2)} features per step, but the weights were made for "
                f"{self.input_dim}. Received: shape {x.shape}",
                ShapeMismatchError,
            )
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1 or xs.shape[0] != n or xs.count_range(1) != self.static_dim:
                raise self.error(
                    f"bottom 2 (x_static) must have shape (N, ...) with N = {n} and {self.static_dim} features. "
                    f"Received: {xs.shape}",
                    ShapeMismatchError,
                )
        state_shape = (1, n, self.num_output)
        if self.expose_hidden:
            offset = 2 + self.static_input
            for k, name in enumerate(self.state_names):
                if bottom[offset + k].shape != state_shape:
                    raise self.error(
                        f"bottom {offset + k} ({name}_0) must have shape {state_shape}. "
                        f"Received: {bottom[offset + k].shape}",
                        ShapeMismatchError,
                    )
            for k in range(len(self.state_names)):
                top[1 + k].reshape(state_shape)
        top[0].reshape((t, n, self.num_output))

    # --- the carried state ---------------------------------------------------------
    def reset(self) -> None:
        """Forget the state carried over from the previous forward pass (Caffe's Reset)."""
        self._state = None

    def initial_state(self, xp, bottom: Sequence[Blob], n: int, dtype) -> list:
        if self.expose_hidden:
            offset = 2 + self.static_input
            return [bottom[offset + k].data[0] for k in range(len(self.state_names))]
        shape = (n, self.num_output)
        state = self._state
        if state is None or state[0].shape != shape or backend.array_module(state[0]) is not xp:
            return [xp.zeros(shape, dtype=dtype) for _ in self.state_names]
        return [s.astype(dtype, copy=False) for s in state]

    def finish_forward(self, top: Sequence[Blob], final_state: list) -> None:
        if self.expose_hidden:
            for k, s in enumerate(final_state):
                top[1 + k].data = s[None].copy()
        else:
            self._state = final_state

    def zero_state_diffs(self, propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        # Caffe shares only the data of the exposed initial states, so no gradient reaches them.
        if self.expose_hidden:
            offset = 2 + self.static_input
            for k in range(len(self.state_names)):
                if propagate_down[offset + k]:
                    b = bottom[offset + k]
                    b.diff = backend.array_module(b.data).zeros(b.shape, dtype=b.data.dtype)

    # --- input projections shared by both cells --------------------------------------
    def project_inputs(self, bottom: Sequence[Blob], w_x, b_x, w_static):
        """``W_x x_t + b`` for all t at once, plus ``W_static x_static`` (or 0) per sample."""
        x = bottom[0].data
        t, n = x.shape[:2]
        xw = (ort_kernels.matmul(x.reshape(t * n, -1), w_x.T) + b_x).reshape(t, n, -1)
        static = 0
        if self.static_input:
            static = bottom[2].data.reshape(n, -1) @ w_static.T
        return xw, static

    def backward_inputs(
        self, propagate_down, bottom, dpre, w_x_blob: Blob, b_x_blob: Blob, w_static_blob: Blob | None, pdown
    ) -> None:
        """Gradients of the input projections from the (T, N, K) pre-activation diffs ``dpre``."""
        x = bottom[0].data
        t, n = x.shape[:2]
        flat = dpre.reshape(t * n, -1)
        if pdown[0]:
            w_x_blob.diff += ort_kernels.matmul(flat.T, x.reshape(t * n, -1))
        if pdown[1]:
            b_x_blob.diff += flat.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff = ort_kernels.matmul(flat, w_x_blob.data).reshape(x.shape)
        if self.static_input:
            xs = bottom[2].data
            dstatic = dpre.sum(axis=0)
            if pdown[2]:
                w_static_blob.diff += dstatic.T @ xs.reshape(n, -1)
            if propagate_down[2]:
                bottom[2].diff = (dstatic @ w_static_blob.data).reshape(xs.shape)

    def log_debug(self, what: str, values) -> None:
        if self.debug_info:
            xp = backend.array_module(values)
            log.info(
                '[%s "%s"] %s: mean |value| %.6g',
                self.type_name,
                self.name,
                what,
                float(xp.abs(values).mean()) if values.size else 0.0,
            )


@register_layer("LSTM")
class LSTMLayer(_RecurrentLayer):
    """Long short-term memory over a sequence (Caffe type ``LSTM``).

    For t = 0 .. T-1, with ``h_{-1}, c_{-1}`` the initial state::

        [i', f', o', g'] = W_xc x_t + b_c + W_xc_static x_static + W_hc (cont_t * h_{t-1})
        c_t, h_t = LSTMUnit(c_{t-1}, [i', f', o', g'], cont_t)

    Parameters (Caffe's order): ``W_xc (4H, I)``, ``b_c (4H)``, optional
    ``W_xc_static (4H, S)`` (no bias), ``W_hc (4H, H)``; gate rows in the order
    i, f, o, g; ``H = num_output``.

    Bottoms:
        x: ``(T, N, ...)``, I features per step.
        cont: ``(T, N)`` continuation indicators (no gradient).
        x_static (optional): ``(N, ...)``, S features.
        h_0, c_0 (with ``expose_hidden``): ``(1, N, H)`` initial state (no gradient, as in Caffe).

    Tops:
        h: ``(T, N, H)``; with ``expose_hidden`` also h_T and c_T, ``(1, N, H)``
        (their diffs are ignored, as in Caffe).
    """

    gate_factor = 4
    state_names = ("h", "c")

    def make_params(self) -> list[Blob]:
        rp = self.param.recurrent_param
        g = self.gate_factor * self.num_output
        blobs = [self._param((g, self.input_dim), rp.weight_filler), self._param((g,), rp.bias_filler)]
        if self.static_input:
            blobs.append(self._param((g, self.static_dim), rp.weight_filler))
        blobs.append(self._param((g, self.num_output), rp.weight_filler))
        return blobs

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x, cont = bottom[0].data, bottom[1].data
        xp = backend.array_module(x)
        steps, n = x.shape[:2]
        w_static = self.blobs[2].data if self.static_input else None
        w_h = self.blobs[-1].data
        xw, static = self.project_inputs(bottom, self.blobs[0].data, self.blobs[1].data, w_static)
        h, c = self.initial_state(xp, bottom, n, x.dtype)
        hs = xp.empty((steps, n, self.num_output), dtype=x.dtype)
        self._caches, self._h_conted = [], []
        for t in range(steps):
            h_conted = cont[t][:, None] * h
            gates = xw[t] + static + h_conted @ w_h.T
            c, h, cache = _lstm_step(xp, c, gates, cont[t])
            hs[t] = h
            self._caches.append(cache)
            self._h_conted.append(h_conted)
        self.log_debug("h", hs)
        top[0].data = hs
        self.finish_forward(top, [h, c])

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        x, cont = bottom[0].data, bottom[1].data
        xp = backend.array_module(x)
        steps, n = x.shape[:2]
        w_h_blob = self.blobs[-1]
        w_h = w_h_blob.data
        dtop = top[0].diff
        dgates_all = xp.empty((steps, n, self.gate_factor * self.num_output), dtype=x.dtype)
        # The diffs of h_T/c_T tops are not used: Caffe cuts gradients at batch boundaries.
        dh_next = xp.zeros((n, self.num_output), dtype=x.dtype)
        dc_next = xp.zeros((n, self.num_output), dtype=x.dtype)
        for t in reversed(range(steps)):
            dc_next, dgates = _lstm_step_backward(xp, dc_next, dtop[t] + dh_next, self._caches[t])
            dgates_all[t] = dgates
            if self.param_propagate_down[-1]:
                w_h_blob.diff += dgates.T @ self._h_conted[t]
            dh_next = (dgates @ w_h) * cont[t][:, None]
        self.log_debug("gate diffs", dgates_all)
        pdown = list(self.param_propagate_down)
        self.backward_inputs(
            propagate_down,
            bottom,
            dgates_all,
            self.blobs[0],
            self.blobs[1],
            self.blobs[2] if self.static_input else None,
            pdown,
        )
        self.zero_state_diffs(propagate_down, bottom)


@register_layer("RNN")
class RNNLayer(_RecurrentLayer):
    """Simple (Elman) recurrent net with a tanh output layer (Caffe type ``RNN``).

    For t = 0 .. T-1, with ``h_{-1}`` the initial state::

        h_t = tanh(W_xh x_t + b_h + W_xh_static x_static + W_hh (cont_t * h_{t-1}))
        o_t = tanh(W_ho h_t + b_o)

    Parameters (Caffe's order): ``W_xh (H, I)``, ``b_h (H)``, optional
    ``W_xh_static (H, S)`` (no bias), ``W_hh (H, H)``, ``W_ho (H, H)``, ``b_o (H)``;
    ``H = num_output``.

    Bottoms:
        x: ``(T, N, ...)``, I features per step.
        cont: ``(T, N)`` continuation indicators (no gradient).
        x_static (optional): ``(N, ...)``, S features.
        h_0 (with ``expose_hidden``): ``(1, N, H)`` initial state (no gradient, as in Caffe).

    Tops:
        o: ``(T, N, H)``; with ``expose_hidden`` also h_T, ``(1, N, H)`` (its diff is ignored).
    """

    gate_factor = 1
    state_names = ("h",)

    def make_params(self) -> list[Blob]:
        rp = self.param.recurrent_param
        h = self.num_output
        blobs = [self._param((h, self.input_dim), rp.weight_filler), self._param((h,), rp.bias_filler)]
        if self.static_input:
            blobs.append(self._param((h, self.static_dim), rp.weight_filler))
        blobs += [
            self._param((h, h), rp.weight_filler),
            self._param((h, h), rp.weight_filler),
            self._param((h,), rp.bias_filler),
        ]
        return blobs

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        x, cont = bottom[0].data, bottom[1].data
        xp = backend.array_module(x)
        steps, n = x.shape[:2]
        k = 2 + self.static_input
        w_static = self.blobs[2].data if self.static_input else None
        w_hh, w_ho, b_o = self.blobs[k].data, self.blobs[k + 1].data, self.blobs[k + 2].data
        xw, static = self.project_inputs(bottom, self.blobs[0].data, self.blobs[1].data, w_static)
        (h,) = self.initial_state(xp, bottom, n, x.dtype)
        hs = xp.empty((steps, n, self.num_output), dtype=x.dtype)
        h_conted = xp.empty_like(hs)
        for t in range(steps):
            h_conted[t] = cont[t][:, None] * h
            h = xp.tanh(xw[t] + static + h_conted[t] @ w_hh.T)
            hs[t] = h
        self._hs, self._h_conted = hs, h_conted
        o = xp.tanh((ort_kernels.matmul(hs.reshape(steps * n, -1), w_ho.T) + b_o).reshape(steps, n, -1))
        self._o = o
        self.log_debug("h", hs)
        top[0].data = o
        self.finish_forward(top, [h])

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        x, cont = bottom[0].data, bottom[1].data
        xp = backend.array_module(x)
        steps, n = x.shape[:2]
        k = 2 + self.static_input
        w_hh_blob, w_ho_blob, b_o_blob = self.blobs[k], self.blobs[k + 1], self.blobs[k + 2]
        pdown = list(self.param_propagate_down)
        hs, o = self._hs, self._o
        do = (top[0].diff * (1.0 - o * o)).reshape(steps * n, -1)
        if pdown[k + 1]:
            w_ho_blob.diff += ort_kernels.matmul(do.T, hs.reshape(steps * n, -1))
        if pdown[k + 2]:
            b_o_blob.diff += do.sum(axis=0)
        dh_out = ort_kernels.matmul(do, w_ho_blob.data).reshape(steps, n, -1)
        w_hh = w_hh_blob.data
        dpre = xp.empty_like(hs)
        # The diff of an exposed h_T top is not used: Caffe cuts gradients at batch boundaries.
        dh_next = xp.zeros((n, self.num_output), dtype=x.dtype)
        for t in reversed(range(steps)):
            dpre[t] = (dh_out[t] + dh_next) * (1.0 - hs[t] * hs[t])
            dh_next = (dpre[t] @ w_hh) * cont[t][:, None]
        if pdown[k]:
            w_hh_blob.diff += ort_kernels.matmul(dpre.reshape(steps * n, -1).T, self._h_conted.reshape(steps * n, -1))
        self.log_debug("hidden pre-activation diffs", dpre)
        self.backward_inputs(
            propagate_down,
            bottom,
            dpre,
            self.blobs[0],
            self.blobs[1],
            self.blobs[2] if self.static_input else None,
            pdown,
        )
        self.zero_state_diffs(propagate_down, bottom)


__all__ = ["LSTMLayer", "LSTMUnitLayer", "RNNLayer"]
