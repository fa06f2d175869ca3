"""Pictures of a net's graph: Graphviz DOT text, rendered by Graphviz's ``dot`` program when present.

The functions keep pycaffe's ``caffe.draw`` signatures, so pycaffe scripts work::

    from netdef.draw import draw_net_to_file
    draw_net_to_file(net_param, "lenet.png", rankdir="LR", phase=netdef.TEST)

As in Caffe's ``draw_net.py``, layers are boxes (Convolution red, Pooling orange,
InnerProduct purple, others blue) labelled with name, type and the main settings, blobs
are octagons, and edges into a top blob carry the layer's output size (``num_output``,
batch size). With ``blobs=False`` each blob becomes an edge from the layer that writes it
to the layers that read it, labelled with the blob's name; in-place layers then sit in
the chain. DOT needs nothing installed; ``.png``, ``.svg``, ``.pdf`` and the other
formats Graphviz knows need its ``dot`` program on the PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .errors import MissingDependencyError, NetdefError
from .net import filter_net
from .proto import netdef_pb2 as pb

LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900", "InnerProduct": "#CC33FF"}
DEFAULT_COLOR = "#6495ED"
BLOB_COLOR = "#E0E0E0"
RANKDIRS = ("LR", "TB", "BT", "RL")


def choose_color_by_layertype(layertype: str) -> str:
    """The fill colour of a layer box (pycaffe's name)."""
    return LAYER_COLORS.get(layertype, DEFAULT_COLOR)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _first(values, default=None):
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir: str = "LR", display_lrm: bool = False) -> str:
    """A layer's box text: name, type and (convolution, pooling) kernel, stride and pad (pycaffe's name)."""
    sep = " " if rankdir in ("TB", "BT") else "\n"
    label = f"{layer.name}{sep}({layer.type})"
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel = _first(p.kernel_size, p.kernel_h or 1)
        stride = _first(p.stride, p.stride_h or 1)
        pad = _first(p.pad, p.pad_h or 0)
        label += f"{sep}kernel size: {kernel}{sep}stride: {stride}{sep}pad: {pad}"
    elif layer.type == "Pooling":
        p = layer.pooling_param
        kind = pb.PoolingParameter.PoolMethod.Name(p.pool)
        size = "global" if p.global_pooling else p.kernel_size or p.kernel_h
        label += f"{sep}pool: {kind}{sep}kernel size: {size}{sep}stride: {p.stride or p.stride_h or 1}"
        label += f"{sep}pad: {p.pad or p.pad_h}"
    if display_lrm and layer.param:
        lrs = ", ".join(f"{s.lr_mult:g}" for s in layer.param)
        label += f"{sep}lr mult: {lrs}"
    return label


def get_edge_label(layer) -> str:
    """The label on the edges out of a layer: its batch size or number of outputs (pycaffe's name)."""
    if layer.type in ("Data", "ImageData", "HDF5Data", "WindowData"):
        for field in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param"):
            if layer.HasField(field):
                return f"Batch {getattr(layer, field).batch_size}"
        return ""
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def _net_param(net_param, phase):
    """(NetParameter, phase) from a NetParameter, a definition file or a built Net."""
    if isinstance(net_param, (str, os.PathLike)):
        from .proto import load_net

        return load_net(str(net_param)), phase
    if hasattr(net_param, "records") and hasattr(net_param, "param"):
        return net_param.param, net_param.phase if phase is None else phase
    if not isinstance(net_param, pb.NetParameter):
        raise NetdefError(f"draw takes a NetParameter, a net definition file or a Net. Received: {type(net_param)}")
    return net_param, phase


def to_dot(
    caffe_net,
    rankdir: str = "LR",
    label_edges: bool = True,
    phase: int | None = None,
    display_lrm: bool = False,
    blobs: bool = True,
) -> str:
    """The DOT text of a net's graph.

    Args:
        caffe_net: a NetParameter, a net definition file, or a built Net (its phase by default).
        rankdir: Graphviz direction: ``LR``, ``TB``, ``BT`` or ``RL``.
        label_edges: put output sizes on the edges into top blobs.
        phase: ``netdef.TRAIN`` / ``netdef.TEST`` to draw only that phase's layers; None draws all.
        display_lrm: add each layer's learning-rate multipliers.
        blobs: draw blobs as nodes (Caffe's picture); False joins layers directly.
    """
    param, phase = _net_param(caffe_net, phase)
    if rankdir not in RANKDIRS:
        raise NetdefError(f"rankdir must be one of {', '.join(RANKDIRS)}. Received: {rankdir!r}")
    if phase is not None:
        state = pb.NetState()
        state.CopyFrom(param.state)
        state.phase = phase
        param = filter_net(param, state)
    lines = [f"digraph {_quote(param.name or 'net')} {{", f"  rankdir={rankdir};", '  graph [bgcolor="white"];']
    lines.append('  node [fontname="Helvetica", fontsize=10];')
    edges: list[str] = []
    writer: dict[str, str] = {}  # blob -> the node that last wrote it (blobs=False)
    for i, layer in enumerate(param.layer):
        node = f"layer{i}"
        lines.append(
            f"  {node} [label={_quote(get_layer_label(layer, rankdir, display_lrm))}, shape=record, "
            f'style=filled, fillcolor="{choose_color_by_layertype(layer.type)}"];'
        )
        edge_label = get_edge_label(layer) if label_edges else ""
        for bottom in layer.bottom:
            if blobs:
                edges.append(f"  {_quote('blob:' + bottom)} -> {node};")
            elif bottom in writer:
                edges.append(f"  {writer[bottom]} -> {node} [label={_quote(bottom)}];")
            else:
                lines.append(f"  {_quote('blob:' + bottom)} [label={_quote(bottom)}, shape=plaintext];")
                edges.append(f"  {_quote('blob:' + bottom)} -> {node};")
        for top in layer.top:
            if blobs:
                label = f" [label={_quote(edge_label)}]" if edge_label else ""
                edges.append(f"  {node} -> {_quote('blob:' + top)}{label};")
            writer[top] = node
    if blobs:
        names = list(dict.fromkeys(b for layer in param.layer for b in (*layer.bottom, *layer.top)))
        for name in names:
            lines.append(
                f"  {_quote('blob:' + name)} [label={_quote(name)}, shape=octagon, style=filled, "
                f'fillcolor="{BLOB_COLOR}"];'
            )
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_dot(dot: str, ext: str) -> bytes:
    """Render DOT text to ``ext`` (png, svg, pdf, ...) with Graphviz's ``dot``; ``dot`` itself needs nothing."""
    ext = ext.lower().lstrip(".")
    if ext in ("dot", "gv", "raw"):
        return dot.encode("utf-8")
    program = shutil.which("dot")
    if program is None:
        raise MissingDependencyError(
            f"Drawing a net as .{ext} needs Graphviz's `dot` program, which is not on the PATH. Install Graphviz "
            "(the `graphviz` package of apt, dnf, brew or conda; https://graphviz.org/download/), or write a "
            ".dot file instead, which needs nothing, and render it elsewhere"
        )
    try:
        done = subprocess.run([program, f"-T{ext}"], input=dot.encode("utf-8"), capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise NetdefError("Graphviz's dot took more than 5 minutes to lay out the net") from None
    if done.returncode != 0:
        raise NetdefError(
            f"Graphviz's dot could not render .{ext}: {done.stderr.decode(errors='replace').strip()[:300]}"
        )
    return done.stdout


def draw_net(caffe_net, rankdir: str = "LR", ext: str = "png", phase: int | None = None, display_lrm: bool = False):
    """The picture of a net as bytes in format ``ext`` (pycaffe's ``caffe.draw.draw_net``)."""
    return render_dot(to_dot(caffe_net, rankdir, phase=phase, display_lrm=display_lrm), ext)


def draw_net_to_file(
    caffe_net,
    filename: str,
    rankdir: str = "LR",
    phase: int | None = None,
    display_lrm: bool = False,
    blobs: bool = True,
) -> None:
    """Write the picture of a net to ``filename``; the format follows its extension (pycaffe's name).

    ``.dot``/``.gv`` write DOT text; other extensions render through Graphviz's ``dot``.
    """
    ext = os.path.splitext(filename)[1].lstrip(".") or "png"
    data = render_dot(to_dot(caffe_net, rankdir, phase=phase, display_lrm=display_lrm, blobs=blobs), ext)
    with open(filename, "wb") as f:
        f.write(data)


__all__ = [
    "choose_color_by_layertype",
    "draw_net",
    "draw_net_to_file",
    "get_edge_label",
    "get_layer_label",
    "render_dot",
    "to_dot",
]
