"""A net at a glance: per layer its type, top shapes, parameters, multiply-adds and activation memory.

``summarize(net)`` returns a :class:`NetSummary`; ``str()`` of it is the table that
``netdef summary`` prints::

    from netdef.summary import summarize
    print(summarize(netdef.Net("models/lenet/deploy.prototxt", netdef.TEST)))

What the columns count:

- **learnable**: values of the parameter blobs the solver updates (``lr_mult`` not 0).
  A blob shared by name (``param { name: ... }``) counts once, under the layer that owns it.
- **fixed**: parameter values the solver leaves alone: BatchNorm's mean, variance and
  scale factor, and blobs frozen with ``lr_mult: 0``.
- **mult-adds**: forward multiply-adds at the net's built batch size, for Convolution,
  Deconvolution, InnerProduct (one per weight per output position), Scale and
  BatchNorm (one per value), Embed (none: a lookup). Other layers count 0.
- **activations**: bytes of the top blobs a layer creates; an in-place top (top equal to a
  bottom) reuses its bottom's memory and counts 0. Training holds as much again for diffs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy


@dataclass
class LayerSummary:
    """One row of the summary."""

    name: str
    type: str
    top_shapes: list[tuple[int, ...]]
    learnable: int
    fixed: int
    mult_adds: int
    activation_bytes: int
    shared: bool = False


@dataclass
class NetSummary:
    """The rows of a net and their totals; ``str()`` gives the table."""

    name: str
    rows: list[LayerSummary] = field(default_factory=list)
    batch: int = 1

    @property
    def learnable(self) -> int:
        return sum(r.learnable for r in self.rows)

    @property
    def fixed(self) -> int:
        return sum(r.fixed for r in self.rows)

    @property
    def mult_adds(self) -> int:
        return sum(r.mult_adds for r in self.rows)

    @property
    def activation_bytes(self) -> int:
        return sum(r.activation_bytes for r in self.rows)

    def as_dicts(self) -> list[dict]:
        """The rows as plain dictionaries (for JSON or pandas)."""
        return [dict(vars(r)) for r in self.rows]

    def lines(self) -> list[str]:
        """The table: one line per layer, then the totals."""
        head = ("layer", "type", "top shapes", "learnable", "fixed", "mult-adds", "activations")
        body = []
        for r in self.rows:
            shapes = ", ".join("x".join(map(str, s)) if s else "scalar" for s in r.top_shapes)
            body.append(
                (
                    r.name,
                    r.type,
                    shapes,
                    "shared" if r.shared and not r.learnable else f"{r.learnable:,}",
                    f"{r.fixed:,}" if r.fixed else "",
                    f"{r.mult_adds:,}" if r.mult_adds else "",
                    human_bytes(r.activation_bytes) if r.activation_bytes else "",
                )
            )
        total = (
            "total",
            "",
            "",
            f"{self.learnable:,}",
            f"{self.fixed:,}",
            f"{self.mult_adds:,}",
            human_bytes(self.activation_bytes),
        )
        widths = [max(len(row[k]) for row in [head, total, *body]) for k in range(len(head))]
        right = {3, 4, 5, 6}

        def fmt(row) -> str:
            return "  ".join(c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths)))

        rule = "-" * len(fmt(head))
        out = [f'Net "{self.name}" ({len(self.rows)} layers, batch {self.batch})', fmt(head), rule]
        out += [fmt(row) for row in body]
        out += [rule, fmt(total)]
        per = max(self.batch, 1)
        out.append(
            f"Parameters: {self.learnable + self.fixed:,} ({self.learnable:,} learnable, {self.fixed:,} fixed), "
            f"{human_bytes(4 * (self.learnable + self.fixed))} as float32. "
            f"Per sample: {self.mult_adds // per:,} mult-adds, "
            f"{human_bytes(self.activation_bytes // per)} of activations."
        )
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _count(shape) -> int:
    return int(numpy.prod(shape, dtype=numpy.int64)) if len(shape) else 1


def _mult_adds(rec) -> int:
    """Forward multiply-adds of one layer (see the module docstring for what counts)."""
    layer = rec.layer
    kind = layer.type_name
    if not layer.blobs and kind not in ("BatchNorm",):
        return 0
    if kind == "Convolution":
        w = layer.blobs[0].shape
        return _count(rec.top[0].shape) * _count(w[1:]) * len(rec.top)
    if kind == "Deconvolution":
        w = layer.blobs[0].shape
        return _count(rec.bottom[0].shape) * _count(w[1:]) * len(rec.bottom)
    if kind == "InnerProduct":
        num_output = int(layer.param.inner_product_param.num_output) or 1
        return layer.blobs[0].count * (_count(rec.top[0].shape) // num_output)
    if kind in ("Scale", "BatchNorm"):
        return _count(rec.top[0].shape)
    return 0


def summarize(net, input_shapes: dict[str, tuple[int, ...]] | None = None) -> NetSummary:
    """The summary of a built :class:`netdef.Net`.

    Args:
        net: the net; its blobs' current shapes are used.
        input_shapes: new shapes for input blobs (``{"data": (1, 3, 32, 32)}``); the net is
            reshaped to them first (its input blobs keep the new shapes afterwards).
    """
    if input_shapes:
        from .errors import NetdefError

        for name, shape in input_shapes.items():
            if name not in net.blobs:
                raise NetdefError(
                    f'--input-shape names blob "{name}", which the net does not have. '
                    f"Inputs: {', '.join(net.inputs) or '(none)'}"
                )
            net.blobs[name].reshape(tuple(shape))
        net.reshape()
    owned = {id(spec.blob): spec for spec in net.param_specs}
    counted: set[int] = set()
    rows = []
    for rec in net.records:
        layer = rec.layer
        learnable = fixed = 0
        shared = False
        for blob in layer.blobs:
            spec = owned.get(id(blob))
            if spec is None or id(blob) in counted:
                shared = True
                continue
            counted.add(id(blob))
            if spec.lr_mult != 0 and layer.type_name != "BatchNorm":
                learnable += blob.count
            else:
                fixed += blob.count
        bottoms = {id(b) for b in rec.bottom}
        activations = sum(t.count * t.data.itemsize for t in rec.top if id(t) not in bottoms)
        rows.append(
            LayerSummary(
                name=layer.name,
                type=layer.type_name,
                top_shapes=[t.shape for t in rec.top],
                learnable=learnable,
                fixed=fixed,
                mult_adds=_mult_adds(rec),
                activation_bytes=activations,
                shared=shared,
            )
        )
    batch = 1
    for rec in net.records:
        if not rec.bottom_names and rec.top and rec.top[0].shape:
            batch = int(rec.top[0].shape[0])
            break
    return NetSummary(net.name, rows, batch)


__all__ = ["LayerSummary", "NetSummary", "human_bytes", "summarize"]
