"""The update rules: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta and Adam.

``SGDSolver.apply_update`` is Caffe's ``SGDSolver::ApplyUpdate``: take the
learning rate for this iteration, clip the gradients by their global L2 norm,
then for each learnable parameter normalise by ``iter_size``, add the
regularisation term, compute the update value (which the subclasses define),
and finally subtract it from the weights: ``w -= diff``.

All arithmetic stays in the parameters' dtype (float32 in nets), with the
hyper-parameters rounded to that dtype first, as Caffe computes in ``Dtype``.
Every array is updated in place so parameter sharing (which may alias arrays)
keeps working, on NumPy and CuPy alike.
"""

from __future__ import annotations

import logging
import math

from ..errors import SolverError
from ..logs import format_g
from .lr_policy import learning_rate
from .solver import Solver

log = logging.getLogger("netdef")


def _num(value: float) -> str:
    """A float32 hyper-parameter as written in the file (0.9, not 0.8999999761581421)."""
    return f"{value:.7g}"


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum (Caffe type ``SGD``).

    ``h = lr * g + momentum * h``; ``w -= h``, where ``g`` is the normalised and
    regularised gradient and ``lr`` the policy rate times the parameter's ``lr_mult``.
    """

    type_name = "SGD"

    def apply_update(self) -> None:
        p = self.param
        step_before = self.current_step
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        if p.lr_policy == "multistep" and self.current_step != step_before:
            log.info("MultiStep Status: Iteration %d, step = %d", self.iter, self.current_step)
        self.last_lr = rate
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, format_g(rate))
        self.clip_gradients()
        for i in range(len(self.net.param_specs)):
            self.normalize(i)
            self.regularize(i)
            self.compute_update_value(i, rate)
        for blob in self.net.learnable_params:
            blob.data -= blob.diff
        # iter counts finished updates, as Caffe's iter_ does
        self.iter += 1

    def clip_gradients(self) -> None:
        """Scale all gradients down together when their global L2 norm exceeds ``clip_gradients``."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = 0.0
        for blob in self.net.learnable_params:
            d = blob.diff.ravel()
            sumsq += float(d.dot(d))
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            log.info(
                "Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                format_g(norm),
                format_g(clip),
                format_g(scale),
            )
            for blob in self.net.learnable_params:
                blob.diff *= blob.diff.dtype.type(scale)

    def normalize(self, index: int) -> None:
        """Divide the accumulated gradient by ``iter_size``."""
        if self.param.iter_size == 1:
            return
        blob = self.net.param_specs[index].blob
        dt = blob.diff.dtype.type
        blob.diff *= dt(1) / dt(self.param.iter_size)

    def regularize(self, index: int) -> None:
        """Add ``decay * decay_mult * w`` (L2) or ``decay * decay_mult * sign(w)`` (L1) to the gradient."""
        spec = self.net.param_specs[index]
        blob, decay_mult = spec.blob, spec.decay_mult
        dt = blob.diff.dtype.type
        local_decay = dt(self.param.weight_decay) * dt(decay_mult)
        if not local_decay:
            return
        if self.param.regularization_type == "L2":
            blob.diff += local_decay * blob.data
        else:
            blob.diff += local_decay * blob.xp.sign(blob.data)

    def _local_rate(self, index: int, rate: float):
        spec = self.net.param_specs[index]
        blob, lr_mult = spec.blob, spec.lr_mult
        dt = blob.diff.dtype.type
        return dt(dt(rate) * dt(lr_mult))

    def compute_update_value(self, index: int, rate: float) -> None:
        """Turn the gradient into the value subtracted from the weights (left in ``diff``)."""
        blob = self.net.param_specs[index].blob
        dt = blob.diff.dtype.type
        h = self.history[index]
        h *= dt(self.param.momentum)
        h += self._local_rate(index, rate) * blob.diff
        blob.diff[...] = h


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient (Caffe type ``Nesterov``).

    ``h' = momentum * h + lr * g``; the update is ``(1 + momentum) * h' - momentum * h``.
    """

    type_name = "Nesterov"

    def compute_update_value(self, index: int, rate: float) -> None:
        blob = self.net.param_specs[index].blob
        dt = blob.diff.dtype.type
        momentum = dt(self.param.momentum)
        h = self.history[index]
        previous = h.copy()
        h *= momentum
        h += self._local_rate(index, rate) * blob.diff
        blob.diff[...] = (dt(1) + momentum) * h - momentum * previous


class AdaGradSolver(SGDSolver):
    """AdaGrad (Caffe type ``AdaGrad``): ``h += g^2``; update ``lr * g / (sqrt(h) + delta)``."""

    type_name = "AdaGrad"

    def check_param(self) -> None:
        if self.param.momentum != 0:
            raise SolverError(f"Momentum cannot be used with AdaGrad. Received: momentum {_num(self.param.momentum)}")

    def compute_update_value(self, index: int, rate: float) -> None:
        blob = self.net.param_specs[index].blob
        xp, dt = blob.xp, blob.diff.dtype.type
        h = self.history[index]
        h += blob.diff * blob.diff
        denom = xp.sqrt(h)
        denom += dt(self.param.delta)
        blob.diff[...] = self._local_rate(index, rate) * (blob.diff / denom)


class RMSPropSolver(SGDSolver):
    """RMSProp (Caffe type ``RMSProp``).

    ``h = rms_decay * h + (1 - rms_decay) * g^2``; update ``lr * g / (sqrt(h) + delta)``.
    """

    type_name = "RMSProp"

    def check_param(self) -> None:
        p = self.param
        if p.momentum != 0:
            raise SolverError(f"Momentum cannot be used with RMSProp. Received: momentum {_num(p.momentum)}")
        if not 0 <= p.rms_decay < 1:
            raise SolverError(f"rms_decay should lie in [0, 1). Received: {_num(p.rms_decay)}")

    def compute_update_value(self, index: int, rate: float) -> None:
        blob = self.net.param_specs[index].blob
        xp, dt = blob.xp, blob.diff.dtype.type
        decay = dt(self.param.rms_decay)
        h = self.history[index]
        h *= decay
        h += (dt(1) - decay) * (blob.diff * blob.diff)
        denom = xp.sqrt(h)
        denom += dt(self.param.delta)
        blob.diff[...] = self._local_rate(index, rate) * (blob.diff / denom)


class AdaDeltaSolver(SGDSolver):
    """AdaDelta (Caffe type ``AdaDelta``; ``momentum`` is the decay rho, ``delta`` the epsilon).

    ``hg = rho * hg + (1 - rho) * g^2``; ``u = g * sqrt((hu + delta) / (hg + delta))``;
    ``hu = rho * hu + (1 - rho) * u^2``; update ``lr * u`` (Caffe keeps ``base_lr``, often 1).
    History: the gradient averages for all parameters, then the update averages.
    """

    type_name = "AdaDelta"
    history_sets = 2

    def check_param(self) -> None:
        p = self.param
        if not 0 <= p.momentum < 1:
            raise SolverError(f"AdaDelta needs momentum (its decay rate rho) in [0, 1). Received: {_num(p.momentum)}")
        if p.delta <= 0:
            raise SolverError(
                f"AdaDelta needs a positive delta (it divides by history + delta). Received: {_num(p.delta)}"
            )

    def compute_update_value(self, index: int, rate: float) -> None:
        blob = self.net.param_specs[index].blob
        xp, dt = blob.xp, blob.diff.dtype.type
        rho = dt(self.param.momentum)
        delta = dt(self.param.delta)
        grad_hist = self.history[index]
        update_hist = self.history[len(self.net.param_specs) + index]
        grad_hist *= rho
        grad_hist += (dt(1) - rho) * (blob.diff * blob.diff)
        ratio = (update_hist + delta) / (grad_hist + delta)
        blob.diff *= xp.sqrt(ratio)
        update_hist *= rho
        update_hist += (dt(1) - rho) * (blob.diff * blob.diff)
        blob.diff *= self._local_rate(index, rate)


class AdamSolver(SGDSolver):
    """Adam (Caffe type ``Adam``; ``momentum`` = beta1, ``momentum2`` = beta2, ``delta`` = epsilon).

    ``m = b1 * m + (1 - b1) * g``; ``v = b2 * v + (1 - b2) * g^2``; with ``t = iter + 1``
    the update is ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)`` (Caffe folds the
    bias correction into the step size; ``lr`` itself is the policy rate).
    History: ``m`` for all parameters, then ``v``.
    """

    type_name = "Adam"
    history_sets = 2

    def check_param(self) -> None:
        p = self.param
        if not 0 <= p.momentum < 1:
            raise SolverError(f"Adam needs momentum (beta1) in [0, 1). Received: {_num(p.momentum)}")
        if not 0 <= p.momentum2 < 1:
            raise SolverError(f"Adam needs momentum2 (beta2) in [0, 1). Received: {_num(p.momentum2)}")
        if p.delta < 0:
            raise SolverError(f"Adam needs delta (epsilon) >= 0. Received: {_num(p.delta)}")

    def compute_update_value(self, index: int, rate: float) -> None:
        blob = self.net.param_specs[index].blob
        xp, dt = blob.xp, blob.diff.dtype.type
        beta1, beta2 = dt(self.param.momentum), dt(self.param.momentum2)
        t = self.iter + 1
        # Caffe evaluates the correction in double (pow of a float by an int) and stores it as Dtype.
        correction = dt(math.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
        m = self.history[index]
        v = self.history[len(self.net.param_specs) + index]
        m *= beta1
        m += (dt(1) - beta1) * blob.diff
        v *= beta2
        v += (dt(1) - beta2) * (blob.diff * blob.diff)
        denom = xp.sqrt(v)
        denom += dt(self.param.delta)
        blob.diff[...] = (self._local_rate(index, rate) * correction) * (m / denom)
