"""User-defined layers for net.prototxt: loaded by netdef's "Python" layer type."""

import json

import netdef


class ScaledSquaredErrorLoss(netdef.Layer):
    """loss = scale * sum((pred - target)^2) / N, with ``scale`` from param_str (JSON, default 0.5).

    Bottoms: pred and target of the same shape (N, ...). Top: a scalar.
    """

    def setup(self, bottom, top):
        if len(bottom) != 2 or len(top) != 1:
            raise self.error(f"needs 2 bottoms and 1 top. Received: {len(bottom)} and {len(top)}")
        options = json.loads(self.param_str) if self.param_str else {}
        self.scale = float(options.get("scale", 0.5))

    def reshape(self, bottom, top):
        if bottom[0].shape != bottom[1].shape:
            raise self.error(f"pred and target need one shape. Received: {bottom[0].shape} and {bottom[1].shape}")
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = netdef.backend.array_module(bottom[0].data)
        # Kept for backward: the residual is all the gradient needs.
        self.residual = bottom[0].data - bottom[1].data
        n = bottom[0].shape[0]
        top[0].data = xp.asarray(self.scale * xp.sum(self.residual * self.residual) / n, dtype=bottom[0].data.dtype)

    def backward(self, top, propagate_down, bottom):
        n = bottom[0].shape[0]
        grad = top[0].diff * (2.0 * self.scale / n) * self.residual
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                bottom[i].diff = sign * grad


class PycaffeStyleScale:
    """The same shape of class as a pycaffe layer (no netdef base): y = alpha * x, alpha from param_str."""

    def setup(self, bottom, top):
        self.alpha = float(self.param_str or 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.alpha * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.alpha * top[0].diff
