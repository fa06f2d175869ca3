"""The layer contract and the registry of layer types."""

from __future__ import annotations

from collections.abc import Sequence

import numpy

from .. import backend, fillers
from ..blob import Blob, canonical_axis_index
from ..errors import (
    BlobCountError,
    DuplicateLayerTypeError,
    InvalidParameterError,
    UnknownLayerTypeError,
    did_you_mean,
    layer_prefix,
)

_REGISTRY: dict[str, type[Layer]] = {}


def register_layer(type_name: str):
    """Class decorator: make ``type_name`` in a net definition build this class."""

    def wrap(cls):
        if type_name in _REGISTRY:
            raise DuplicateLayerTypeError(
                f'layer type "{type_name}" is already registered by {_REGISTRY[type_name].__module__}.'
                f"{_REGISTRY[type_name].__name__}; cannot register {cls.__module__}.{cls.__name__}"
            )
        _REGISTRY[type_name] = cls
        cls.type_name = type_name
        return cls

    return wrap


def layer_class(type_name: str) -> type[Layer]:
    """The class registered for ``type_name``; a named error listing known types otherwise."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = sorted(_REGISTRY)
        raise UnknownLayerTypeError(
            f'Unknown layer type "{type_name}".{did_you_mean(type_name, known)} Known types: {", ".join(known)}'
        ) from None


def layer_type_list(forks: bool = False) -> list[str]:
    """Every registered layer type, sorted: BVLC's and any registered from Python; the types from
    Caffe's forks only with ``forks=True`` (see :func:`netdef.layers.forks.fork_layer_types`)."""
    return sorted(name for name, cls in _REGISTRY.items() if forks or not cls.forks)


class Layer:
    """Base class of all layers (the shape of Caffe's Layer, kept Pythonic).

    Subclasses set the bottom/top count limits as class attributes and implement
    ``setup`` (read ``self.param``, create ``self.blobs``), ``reshape`` (shapes
    only), ``forward`` and ``backward``. ``backward`` writes ``bottom[i].diff``
    for every ``propagate_down[i]`` and ADDS into parameter diffs.
    """

    type_name = ""
    #: the Caffe forks that defined this type (empty for BVLC's types)
    forks: tuple[str, ...] = ()
    exact_num_bottom: int | None = None
    min_num_bottom: int | None = None
    max_num_bottom: int | None = None
    exact_num_top: int | None = None
    min_num_top: int | None = None
    max_num_top: int | None = None
    equal_num_bottom_top = False
    #: loss layers put a default loss weight of 1 on their first top
    is_loss = False

    def __init__(self, param, phase: int = 0, dtype=numpy.float32, xp=None, rng: backend.RandomStreams | None = None):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.dtype = numpy.dtype(dtype)
        self.xp = xp or backend.default_xp()
        #: the random streams this layer draws from (its net's; a lone layer gets its own)
        self.rng = rng if rng is not None else backend.new_streams()
        self.blobs: list[Blob] = []
        self.loss_weights: list[float] = []
        self.param_propagate_down: list[bool] = []

    # --- helpers for subclasses -------------------------------------------------
    def describe(self) -> str:
        """How every message about this layer begins: ``Layer "conv1" (type Convolution)`` (logs use it too)."""
        return layer_prefix(self.name, self.type_name)

    def error(self, message: str, cls=InvalidParameterError) -> Exception:
        """An error whose message starts with this layer's name and type."""
        return cls(f"{self.describe()}: {message}")

    def canonical_axis(self, axis: int, num_axes: int, field: str = "axis") -> int:
        """Caffe's CanonicalAxisIndex for parameter ``field`` of a ``num_axes``-axis bottom.

        Negative axes count from the end; out of range is an InvalidParameterError naming this
        layer, the field, the received value and the valid range.
        """
        try:
            return canonical_axis_index(axis, num_axes, field)
        except InvalidParameterError as err:
            raise self.error(str(err)) from None

    def new_blob(self, shape: Sequence[int]) -> Blob:
        return Blob(shape, dtype=self.dtype, xp=self.xp, name=f"{self.name}.param")

    def filled_blob(self, shape: Sequence[int], filler) -> Blob:
        """A new parameter blob of ``shape`` filled by ``filler`` (a FillerParameter) from this layer's stream."""
        return fillers.fill(self.new_blob(shape), filler, self.rng.numpy)

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether ``force_backward`` may ask for this bottom's gradient (not for labels)."""
        return True

    def check_blob_counts(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        def check(kind, n, exact, lo, hi):
            if exact is not None and n != exact:
                want = f"exactly {exact}"
            elif lo is not None and n < lo:
                want = f"at least {lo}"
            elif hi is not None and n > hi:
                want = f"at most {hi}"
            else:
                return
            raise self.error(f"takes {want} {kind} blob(s). Received: {n}", BlobCountError)

        check("bottom", len(bottom), self.exact_num_bottom, self.min_num_bottom, self.max_num_bottom)
        check("top", len(top), self.exact_num_top, self.min_num_top, self.max_num_top)
        if self.equal_num_bottom_top and len(bottom) != len(top):
            raise self.error(
                f"needs as many tops as bottoms. Received: {len(bottom)} bottoms, {len(top)} tops",
                BlobCountError,
            )

    def layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """The fixed set-up sequence: counts -> setup -> reshape -> loss weights."""
        self.check_blob_counts(bottom, top)
        self.setup(bottom, top)
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def set_loss_weights(self, top: Sequence[Blob]) -> None:
        weights = list(self.param.loss_weight)
        if weights and len(weights) != len(top):
            raise self.error(f"loss_weight must be given once per top ({len(top)}). Received: {len(weights)} values")
        if not weights:
            weights = [1.0 if (self.is_loss and i == 0) else 0.0 for i in range(len(top))]
        self.loss_weights = weights
        self.seed_loss_diffs(top)

    def forward_step(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> float:
        """Reshape, run forward and return this layer's weighted loss (Caffe's non-virtual Layer::Forward).

        Everything that runs a layer (the net, ``netdef time``, the gradient checker)
        goes through this one step.
        """
        self.reshape(bottom, top)
        self.forward(bottom, top)
        return self.weighted_loss(top)

    def weighted_loss(self, top: Sequence[Blob]) -> float:
        """This layer's loss from its tops as they hold now: each top's sum times its loss weight."""
        loss = 0.0
        for w, t in zip(self.loss_weights, top):
            if w:
                loss += w * float(t.data.sum())
        return loss

    def seed_loss_diffs(self, top: Sequence[Blob]) -> None:
        """Put each top's loss weight into its diff, as Caffe does once at set-up."""
        for w, t in zip(self.loss_weights, top):
            if w:
                t.diff[...] = w

    # --- the contract ---------------------------------------------------------------
    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Read parameters and create learnable blobs. Default: nothing."""

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        raise NotImplementedError

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        raise NotImplementedError

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        """Default for layers without a gradient: nothing flows back."""

    def close(self) -> None:
        """End work this layer runs in the background (a data layer's prefetch thread). Default: nothing.

        The layer stays usable: a later forward starts what it needs again, where it left off.
        """

    def __repr__(self) -> str:
        return f"<{self.type_name} layer {self.name!r}>"


class LossLayer(Layer):
    """Base of loss layers: two bottoms by default, a scalar top weighted 1."""

    is_loss = True
    min_num_bottom = 2
    max_num_bottom = 2
    min_num_top = 1
    max_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(
                f"the data and label bottoms need the same first dimension (batch size). "
                f"Received: {bottom[0].shape} and {bottom[1].shape}",
            )
        top[0].reshape(())


class NeuronLayer(Layer):
    """Base of element-wise layers: one bottom, one top of the same shape (in-place allowed)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)
