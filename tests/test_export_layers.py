"""ONNX export, one small net per layer type and option: exported, run in ONNX Runtime, compared with
netdef's forward. This is where the exporter's exactness is proven (Caffe's pooling geometry, LRN
variants, coefficients, the fork layers); tests/test_export.py covers whole nets and the command."""

from __future__ import annotations

import numpy
import pytest

import netdef
from netdef.proto import net_from_text

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from netdef.export import export_onnx  # noqa: E402  (after the skips: needs onnx)
from netdef.export.verify import compare_with_onnxruntime, random_weights  # noqa: E402

#: per-layer nets must agree to within float32 rounding of a few operations
LAYER_TOLERANCE = 2e-6


def input_layer(name: str, shape) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def build(layers: str, shapes=None) -> netdef.Net:
    shapes = shapes or {"data": (2, 3, 7, 7)}
    text = 'name: "case"\n' + "".join(input_layer(n, s) for n, s in shapes.items()) + layers
    return netdef.Net(net_from_text(text), netdef.TEST)


def feeds_for(net: netdef.Net, kind: str | None, seed: int = 3) -> dict:
    rng = numpy.random.default_rng(seed)
    out = {}
    for name in net.inputs:
        shape = net.blobs[name].shape
        if kind == "positive":
            value = rng.uniform(0.1, 2.0, shape)
        elif kind == "ties":
            value = rng.integers(0, 3, shape)
        elif kind == "indices":
            value = rng.integers(0, 5, shape)
        elif kind == "select" and name == "sel":
            value = numpy.array([1, 0, 1, 1, 0], dtype=float).reshape(shape)
        elif kind == "select" and name == "idx":
            value = numpy.array([2, 0, 2], dtype=float).reshape(shape)
        else:
            value = rng.standard_normal(shape)
        out[name] = value.astype(numpy.float32)
    return out


def export_error(net: netdef.Net, kind: str | None = None, **options) -> float:
    random_weights(net, seed=1)
    model = export_onnx(net, **options)
    errors = compare_with_onnxruntime(net, model, feeds_for(net, kind))
    assert len(errors) == len(options.get("outputs") or net.outputs)
    return max(errors.values())


def L(name: str, kind: str, bottoms, tops=None, params: str = "") -> str:
    """One layer's prototxt."""
    bottoms = [bottoms] if isinstance(bottoms, str) else list(bottoms)
    tops = [name] if tops is None else ([tops] if isinstance(tops, str) else list(tops))
    text = f'layer {{ name: "{name}" type: "{kind}" '
    text += "".join(f'bottom: "{b}" ' for b in bottoms) + "".join(f'top: "{t}" ' for t in tops)
    return text + params + " }\n"


def conv(params: str, kind: str = "Convolution", bottoms="data", name="conv") -> str:
    return L(name, kind, bottoms, None, f"convolution_param {{ {params} }}")


def pool(params: str, tops=None) -> str:
    return L("pool", "Pooling", "data", tops, f"pooling_param {{ {params} }}")


CASES = {
    # --- convolutions
    "conv": (conv("num_output: 4 kernel_size: 3"), None, None),
    "conv_pad_stride": (conv("num_output: 5 kernel_size: 3 pad: 2 stride: 2"), None, None),
    "conv_rect": (conv("num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1"), None, None),
    "conv_dilation_group": (conv("num_output: 6 kernel_size: 3 dilation: 2 group: 3 pad: 1"), None, None),
    "conv_no_bias": (conv("num_output: 4 kernel_size: 1 bias_term: false"), None, None),
    "conv_1d": (conv("num_output: 4 kernel_size: 3 pad: 1"), {"data": (2, 3, 9)}, None),
    "conv_3d": (conv("num_output: 2 kernel_size: 2 stride: 2"), {"data": (1, 2, 4, 5, 6)}, None),
    "conv_axis_2": (conv("num_output: 4 kernel_size: 3 axis: 2"), {"data": (2, 2, 3, 7, 7)}, None),
    "conv_two_bottoms": (
        conv("num_output: 4 kernel_size: 3", bottoms=["data", "more"]).replace('top: "conv"', 'top: "c1" top: "c2"'),
        {"data": (1, 3, 6, 6), "more": (1, 3, 6, 6)},
        None,
    ),
    "deconv": (conv("num_output: 4 kernel_size: 4 stride: 2 pad: 1", "Deconvolution"), None, None),
    "deconv_group_dilation": (
        conv("num_output: 6 kernel_size: 3 stride: 2 dilation: 2 group: 3", "Deconvolution"),
        None,
        None,
    ),
    "conv_depthwise": (conv("num_output: 3 kernel_size: 3 pad: 1 stride: 2", "ConvolutionDepthwise"), None, None),
    "depthwise_convolution": (
        conv("num_output: 3 group: 3 kernel_size: 3 pad: 1", "DepthwiseConvolution"),
        None,
        None,
    ),
    "im2col": (conv("kernel_size: 3 pad: 1 stride: 2", "Im2col"), None, None),
    # --- pooling: Caffe's geometry
    "max_ceil": (pool("pool: MAX kernel_size: 3 stride: 2"), {"data": (2, 3, 8, 8)}, None),
    "max_pad_last_window_dropped": (pool("pool: MAX kernel_size: 2 stride: 2 pad: 1"), {"data": (1, 2, 5, 5)}, None),
    "max_pad_partial": (pool("pool: MAX kernel_size: 3 stride: 2 pad: 1"), {"data": (1, 2, 6, 6)}, None),
    "max_floor": (pool("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR"), {"data": (1, 2, 8, 8)}, None),
    "max_rect": (pool("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"), None, None),
    "max_mask": (pool("pool: MAX kernel_size: 3 stride: 2 pad: 1", ["pool", "mask"]), None, None),
    "ave_pad_counts": (pool("pool: AVE kernel_size: 3 stride: 2 pad: 1"), {"data": (1, 2, 6, 6)}, None),
    "ave_overhang": (pool("pool: AVE kernel_size: 3 stride: 2"), {"data": (1, 2, 6, 6)}, None),
    "ave_pad_dropped": (pool("pool: AVE kernel_size: 2 stride: 2 pad: 1"), {"data": (1, 2, 5, 5)}, None),
    "global_max": (pool("pool: MAX global_pooling: true"), None, None),
    "global_ave": (pool("pool: AVE global_pooling: true"), None, None),
    "stochastic_test": (pool("pool: STOCHASTIC kernel_size: 3 stride: 2"), {"data": (1, 2, 8, 8)}, "positive"),
    "spp_max": (L("spp", "SPP", "data", None, "spp_param { pyramid_height: 3 pool: MAX }"), None, None),
    "spp_ave_one_level": (L("spp", "SPP", "data", None, "spp_param { pyramid_height: 1 pool: AVE }"), None, None),
    "lrn_across": (L("lrn", "LRN", "data", None, "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"), None, None),
    "lrn_within": (
        L("lrn", "LRN", "data", None, "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }"),
        None,
        None,
    ),
    # --- neurons
    "relu": (L("r", "ReLU", "data"), None, None),
    "relu_leaky_in_place": (L("r", "ReLU", "data", "data", "relu_param { negative_slope: 0.1 }"), None, None),
    "prelu": (L("p", "PReLU", "data"), None, None),
    "prelu_shared": (L("p", "PReLU", "data", None, "prelu_param { channel_shared: true }"), None, None),
    "elu": (L("e", "ELU", "data", None, "elu_param { alpha: 0.7 }"), None, None),
    "sigmoid_tanh_abs_bnll": (
        L("s", "Sigmoid", "data") + L("t", "TanH", "data") + L("a", "AbsVal", "data") + L("b", "BNLL", "data"),
        None,
        None,
    ),
    "power": (L("p", "Power", "data", None, "power_param { power: 2 scale: 0.5 shift: 1 }"), None, None),
    "power_fraction": (L("p", "Power", "data", None, "power_param { power: 0.5 scale: 2 }"), None, "positive"),
    "power_affine": (L("p", "Power", "data", None, "power_param { scale: -2 shift: 3 }"), None, None),
    "power_constant": (L("p", "Power", "data", None, "power_param { power: 3 scale: 0 shift: 2 }"), None, None),
    "exp": (L("e", "Exp", "data", None, "exp_param { base: 2 scale: 0.5 shift: 1 }"), None, None),
    "log": (L("l", "Log", "data", None, "log_param { base: 10 scale: 2 shift: 0.5 }"), None, "positive"),
    "threshold": (L("t", "Threshold", "data", None, "threshold_param { threshold: 0.3 }"), None, None),
    "swish": (L("s", "Swish", "data", None, "swish_param { beta: 1.5 }"), None, None),
    "clip": (L("c", "Clip", "data", None, "clip_param { min: -0.5 max: 0.7 }"), None, None),
    "dropout": (L("d", "Dropout", "data", None, "dropout_param { dropout_ratio: 0.3 }"), None, None),
    # --- fully connected, softmax, element-wise
    "inner_product": (L("ip", "InnerProduct", "data", None, "inner_product_param { num_output: 5 }"), None, None),
    "inner_product_axis_2": (
        L("ip", "InnerProduct", "data", None, "inner_product_param { num_output: 5 axis: 2 bias_term: false }"),
        None,
        None,
    ),
    "inner_product_transpose": (
        L("ip", "InnerProduct", "data", None, "inner_product_param { num_output: 4 transpose: true }"),
        None,
        None,
    ),
    "softmax": (L("s", "Softmax", "data"), None, None),
    "softmax_axis_2": (L("s", "Softmax", "data", None, "softmax_param { axis: 2 }"), None, None),
    "eltwise_sum_coeff": (
        L("e", "Eltwise", ["a", "b", "c"], None, "eltwise_param { operation: SUM coeff: 0.5 coeff: -1 coeff: 2 }"),
        {"a": (2, 3, 4), "b": (2, 3, 4), "c": (2, 3, 4)},
        None,
    ),
    "eltwise_prod_max": (
        L("p", "Eltwise", ["a", "b"], None, "eltwise_param { operation: PROD }")
        + L("m", "Eltwise", ["a", "b"], None, "eltwise_param { operation: MAX }"),
        {"a": (2, 3, 4), "b": (2, 3, 4)},
        None,
    ),
    "reduction_sum_asum": (
        L("s", "Reduction", "data", None, "reduction_param { operation: SUM axis: 1 coeff: 0.5 }")
        + L("a", "Reduction", "data", None, "reduction_param { operation: ASUM axis: 2 }"),
        None,
        None,
    ),
    "reduction_sumsq_mean": (
        L("q", "Reduction", "data", None, "reduction_param { operation: SUMSQ axis: 0 }")
        + L("m", "Reduction", "data", None, "reduction_param { operation: MEAN axis: -1 coeff: 3 }"),
        None,
        None,
    ),
    "argmax_ties": (L("a", "ArgMax", "data", None, "argmax_param { top_k: 4 }"), None, "ties"),
    "argmax_values": (L("a", "ArgMax", "data", None, "argmax_param { top_k: 2 out_max_val: true }"), None, None),
    "argmax_axis_ties": (L("a", "ArgMax", "data", None, "argmax_param { axis: 1 top_k: 2 }"), None, "ties"),
    "argmax_axis_values": (
        L("a", "ArgMax", "data", None, "argmax_param { axis: 2 out_max_val: true }"),
        None,
        None,
    ),
    "embed": (
        L("e", "Embed", "data", None, "embed_param { num_output: 4 input_dim: 5 }"),
        {"data": (2, 3)},
        "indices",
    ),
    # --- normalisation
    "batch_norm_scale_folded": (
        L("bn", "BatchNorm", "data", "data") + L("sc", "Scale", "data", "data", "scale_param { bias_term: true }"),
        None,
        None,
    ),
    "batch_norm_alone_2d": (
        L("bn", "BatchNorm", "data", "bn", "batch_norm_param { eps: 0.01 }"),
        {"data": (4, 5)},
        None,
    ),
    "batch_norm_batch_statistics": (
        L("bn", "BatchNorm", "data", "bn", "batch_norm_param { use_global_stats: false }"),
        None,
        None,
    ),
    "batch_norm_then_shared_blob": (
        L("bn", "BatchNorm", "data", "bn") + L("sc", "Scale", "bn", "sc") + L("r", "ReLU", "bn", "r"),
        None,
        None,
    ),
    "scale_axis_0_two_bottoms": (
        L("sc", "Scale", ["data", "s"], None, "scale_param { axis: 0 bias_term: true }"),
        {"data": (2, 3, 4), "s": (2, 3)},
        None,
    ),
    "scale_num_axes_2": (L("sc", "Scale", "data", None, "scale_param { axis: 1 num_axes: 2 }"), None, None),
    "bias_two_bottoms": (L("bias", "Bias", ["data", "b"], None, ""), {"data": (2, 3, 4), "b": (3,)}, None),
    "bias_learned": (L("b", "Bias", "data", None, "bias_param { axis: 2 num_axes: -1 }"), None, None),
    "mvn": (L("m", "MVN", "data"), None, None),
    "mvn_across_no_variance": (
        L("m", "MVN", "data", None, "mvn_param { across_channels: true normalize_variance: false }"),
        None,
        None,
    ),
    "mvn_eps": (L("m", "MVN", "data", None, "mvn_param { eps: 0.5 }"), None, None),
    # --- structure
    "flatten_reshape": (
        L("f", "Flatten", "data", None, "flatten_param { axis: 2 }")
        + L("r", "Reshape", "data", None, "reshape_param { shape { dim: 0 dim: -1 dim: 7 } }"),
        None,
        None,
    ),
    "concat_slice": (
        L("c", "Concat", ["a", "b"], None, "concat_param { axis: 2 }")
        + L("s", "Slice", "c", ["s1", "s2", "s3"], "slice_param { axis: 2 slice_point: 1 slice_point: 4 }")
        + L("e", "Slice", "a", ["e1", "e2"], "slice_param { axis: 1 }"),
        {"a": (2, 4, 3), "b": (2, 4, 2)},
        None,
    ),
    "tile": (L("t", "Tile", "data", None, "tile_param { axis: 1 tiles: 3 }"), None, None),
    "crop": (
        L("c", "Crop", ["data", "ref"], None, "crop_param { axis: 2 offset: 1 offset: 2 }"),
        {"data": (2, 3, 7, 7), "ref": (1, 1, 4, 3)},
        None,
    ),
    "split_silence": (
        L("r", "ReLU", "data", "r")
        + L("a", "AbsVal", "r", "a")
        + L("s", "Sigmoid", "r", "s")
        + L("x", "Silence", "s", []),
        None,
        None,
    ),
    "filter": (L("f", "Filter", ["data", "sel"]), {"data": (5, 3), "sel": (5, 1)}, "select"),
    "batch_reindex": (L("b", "BatchReindex", ["data", "idx"]), {"data": (3, 2, 2), "idx": (3,)}, "select"),
    "parameter_dummy_data": (
        L("p", "Parameter", [], "p", "parameter_param { shape { dim: 2 dim: 3 } }")
        + L("d", "DummyData", [], "d", "dummy_data_param { shape { dim: 2 dim: 3 } data_filler { value: 1.5 } }")
        + L("s", "Eltwise", ["p", "d", "data"], None, ""),
        {"data": (2, 3)},
        None,
    ),
    "lstm_unit": (
        L("u", "LSTMUnit", ["c", "x", "cont"], ["c_new", "h"]),
        {"c": (1, 3, 4), "x": (1, 3, 16), "cont": (1, 3)},
        None,
    ),
    # --- fork layers
    "relu6": (
        L("r", "ReLU6", "data") + L("l", "ReLU6", "data", "l", "relu6_param { negative_slope: 0.2 }"),
        None,
        None,
    ),
    "shuffle_channel": (
        L("s", "ShuffleChannel", "data", None, "shuffle_channel_param { group: 2 }"),
        {"data": (2, 6, 3, 3)},
        None,
    ),
    "axpy": (L("a", "Axpy", ["s", "x", "y"]), {"s": (2, 3, 1, 1), "x": (2, 3, 4, 4), "y": (2, 3, 4, 4)}, None),
    "permute": (L("p", "Permute", "data", None, "permute_param { order: 0 order: 2 order: 3 order: 1 }"), None, None),
    "normalize": (L("n", "Normalize", "data"), None, None),
    "normalize_per_position": (
        L("n", "Normalize", "data", None, "norm_param { across_spatial: false channel_shared: false }"),
        None,
        None,
    ),
    "prior_box": (
        L(
            "p",
            "PriorBox",
            ["data", "image"],
            None,
            "prior_box_param { min_size: 10 max_size: 20 aspect_ratio: 2 flip: true clip: true variance: 0.1 "
            "variance: 0.1 variance: 0.2 variance: 0.2 }",
        ),
        {"data": (1, 2, 3, 4), "image": (1, 3, 30, 40)},
        None,
    ),
    "bn_pspnet": (L("bn", "BN", "data", None, "bn_param { eps: 0.001 }"), None, None),
    "bn_segnet_inference": (L("bn", "BN", "data", None, "bn_param { bn_mode: INFERENCE }"), None, None),
    "bn_segnet_learn": (L("bn", "BN", "data", ["bn", "mean", "var"], "bn_param { bn_mode: LEARN }"), None, None),
    "interp_zoom": (L("i", "Interp", "data", None, "interp_param { zoom_factor: 3 }"), None, None),
    "interp_shrink_crop": (
        L("i", "Interp", "data", None, "interp_param { shrink_factor: 2 pad_beg: -1 pad_end: -1 }"),
        None,
        None,
    ),
    "interp_size": (L("i", "Interp", "data", None, "interp_param { height: 5 width: 11 }"), None, None),
    "padding_pad_and_crop": (
        L("p", "Padding", "data", None, "padding_param { pad_beg: 2 pad_end: 1 }")
        + L("c", "Padding", "data", None, "padding_param { pad_beg: -1 pad_end: -2 }"),
        None,
        None,
    ),
    "upsample_nearest": (L("u", "Upsample", "data", None, "upsample_param { scale: 2 }"), None, None),
    "upsample_unpool": (
        pool("pool: MAX kernel_size: 2 stride: 2", ["pool", "mask"])
        + L("r", "ReLU", "pool", "pool")
        + L("u", "Upsample", ["pool", "mask"], None, "upsample_param { upsample_h: 8 upsample_w: 8 }"),
        {"data": (2, 3, 8, 8)},
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_exports_exactly(case):
    layers, shapes, kind = CASES[case]
    net = build(layers, shapes)
    assert export_error(net, kind) <= LAYER_TOLERANCE


@pytest.mark.parametrize("opset", [13, 21])
def test_every_case_at_the_oldest_and_a_newer_opset(opset):
    # Split, Squeeze and ReduceSum take axes as inputs from 13, the other Reduce* from 18
    worst = {}
    for case, (layers, shapes, kind) in sorted(CASES.items()):
        worst[case] = export_error(build(layers, shapes), kind, opset=opset)
    assert max(worst.values()) <= LAYER_TOLERANCE, {k: v for k, v in worst.items() if v > LAYER_TOLERANCE}


def test_pooling_geometry_matches_caffe_output_sizes():
    # the cases above rest on these sizes: rounded up, and a last window starting in the padding dropped
    assert build(pool("pool: MAX kernel_size: 2 stride: 2 pad: 1"), {"data": (1, 1, 5, 5)}).blobs["pool"].shape == (
        1,
        1,
        3,
        3,
    )
    assert build(pool("pool: AVE kernel_size: 3 stride: 2"), {"data": (1, 1, 6, 6)}).blobs["pool"].shape == (1, 1, 3, 3)


def test_argmax_ties_rank_the_larger_index_first():
    net = build(L("a", "ArgMax", "data", None, "argmax_param { top_k: 3 }"), {"data": (1, 4)})
    model = export_onnx(net)
    from netdef.export.verify import onnxruntime_session

    got = onnxruntime_session(model).run(None, {"data": numpy.array([[1, 3, 3, 1]], dtype=numpy.float32)})[0]
    assert got.reshape(-1).tolist() == [2.0, 1.0, 3.0]


def test_ave_pooling_divides_by_caffe_window_sizes():
    # 6x6 ones, kernel 3, stride 2, no padding: the last window covers 2 columns, so Caffe divides by 2 there
    net = build(pool("pool: AVE kernel_size: 3 stride: 2"), {"data": (1, 1, 6, 6)})
    from netdef.export.verify import onnxruntime_session

    x = numpy.ones((1, 1, 6, 6), dtype=numpy.float32)
    got = onnxruntime_session(export_onnx(net)).run(None, {"data": x})[0]
    assert got.shape == (1, 1, 3, 3)
    numpy.testing.assert_allclose(got, numpy.ones((1, 1, 3, 3)), rtol=1e-6)
