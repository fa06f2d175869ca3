"""Fields and messages from Caffe forks in netdef's schema.

Numbers and defaults below are the forks' own (from their caffe.proto), except
where a fork number clashes with BVLC's: those fields live in 9000-9999
(see the header of proto/netdef.proto and docs/forks_proto.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import text_format

from netdef.errors import NetdefError, PrototxtSyntaxError, UnknownFieldError
from netdef.proto import load_net, load_solver, parse_mapping, parse_text, suggest_field
from netdef.proto import netdef_pb2 as pb
from netdef.testing.parity import parity_root

# --------------------------------------------------------------------------
# Published nets and solvers (shared/realworld)
# --------------------------------------------------------------------------


def _realworld_nets() -> Path | None:
    env = os.environ.get("NETDEF_REALWORLD_DIR")
    candidates = [Path(env)] if env else []
    root = parity_root()
    if root is not None:
        candidates.append(root.parent / "realworld")
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "realworld")
    for c in candidates:
        if (c / "nets").is_dir():
            return c / "nets"
    return None


REALWORLD = _realworld_nets()
REALWORLD_FILES = sorted(p.name for p in REALWORLD.iterdir()) if REALWORLD else []
needs_realworld = pytest.mark.skipif(
    REALWORLD is None, reason="shared/realworld not found (set NETDEF_REALWORLD_DIR or NETDEF_PARITY_DIR)"
)


def _is_solver(name: str) -> bool:
    return name.startswith("solver")


@needs_realworld
@pytest.mark.parametrize("name", REALWORLD_FILES or ["<none>"])
def test_realworld_file_parses(name):
    path = REALWORLD / name
    message = pb.SolverParameter() if _is_solver(name) else pb.NetParameter()
    parse_text(path.read_text(encoding="utf-8"), message, str(path))
    assert message.ByteSize() > 0


@needs_realworld
@pytest.mark.parametrize("name", REALWORLD_FILES or ["<none>"])
def test_realworld_file_loads_without_unknown_fields(name):
    path = str(REALWORLD / name)
    try:
        (load_solver if _is_solver(name) else load_net)(path)
    except (UnknownFieldError, PrototxtSyntaxError):
        raise
    except NetdefError as err:
        # A fork layer *type* that the legacy upgrade cannot name (DeepLab v1's V1 enum
        # values) is not a schema matter; its fields were parsed before the upgrade ran.
        assert "type" in str(err), err


# --------------------------------------------------------------------------
# Field numbers
# --------------------------------------------------------------------------


def _number(message_cls, name) -> int:
    return message_cls.DESCRIPTOR.fields_by_name[name].number


@pytest.mark.parametrize(
    "name,number",
    [
        # kept from the fork that defined them
        ("upsample_param", 150),
        ("bn_param", 152),
        ("shuffle_channel_param", 164),
        ("annotated_data_param", 200),
        ("multibox_loss_param", 201),
        ("permute_param", 202),
        ("prior_box_param", 203),
        ("detection_output_param", 204),
        ("detection_evaluate_param", 205),
        ("norm_param", 206),
        ("video_data_param", 207),
        ("relu6_param", 211),
        ("yolov3_detection_output_param", 602),
        ("box_annotator_ohem_param", 10000),
        ("psroi_pooling_param", 10001),
        ("roi_pooling_param", 8266711),
        ("smooth_l1_loss_param", 8266712),
        # relocated: the fork's number means something else in BVLC
        ("interp_param", 9001),
        ("dense_image_data_param", 9002),
        ("cpm_transform_param", 9003),
        ("margin_inner_product_param", 9004),
    ],
)
def test_layer_parameter_fork_numbers(name, number):
    assert _number(pb.LayerParameter, name) == number


@pytest.mark.parametrize(
    "message_cls,name,number",
    [
        (pb.SolverParameter, "plateau_winsize", 43),
        (pb.SolverParameter, "show_per_class_result", 44),
        (pb.SolverParameter, "eval_type", 9001),
        (pb.SolverParameter, "ap_version", 9002),
        (pb.PoolingParameter, "ceil_mode", 9001),
        (pb.ConvolutionParameter, "hole", 9001),
        (pb.ConvolutionParameter, "hole_h", 9002),
        (pb.ConvolutionParameter, "hole_w", 19),
        (pb.LossParameter, "class_weighting", 4),
        (pb.LossParameter, "weight_by_label_freqs", 9001),
        (pb.DropoutParameter, "sample_weights_test", 2),
        (pb.ImageDataParameter, "has_label", 13),
        (pb.TransformationParameter, "resize_param", 8),
        (pb.TransformationParameter, "noise_param", 9),
        (pb.TransformationParameter, "emit_constraint", 10),
        (pb.TransformationParameter, "distort_param", 13),
        (pb.TransformationParameter, "expand_param", 14),
        (pb.V1LayerParameter, "interp_param", 43),
        (pb.V1LayerParameter, "padding_param", 45),
        (pb.V1LayerParameter, "strict_dim", 1003),
        (pb.V1LayerParameter, "seg_accuracy_param", 9001),
        (pb.BNParameter, "slope_filler", 1),
        (pb.BNParameter, "momentum", 3),
        (pb.BNParameter, "frozen", 5),
        (pb.BNParameter, "scale_filler", 9001),
        (pb.BNParameter, "shift_filler", 9002),
        (pb.BNParameter, "bn_mode", 9003),
        (pb.ROIPoolingParameter, "pooled_h", 1),
        (pb.ROIPoolingParameter, "pooled_w", 2),
        (pb.ROIPoolingParameter, "spatial_scale", 3),
        (pb.SmoothL1LossParameter, "sigma", 1),
        (pb.DetectionOutputParameter, "keep_top_k", 7),
        (pb.DetectionOutputParameter, "variance_encoded_in_target", 8),
        (pb.MultiBoxLossParameter, "encode_variance_in_target", 16),
    ],
)
def test_nested_fork_numbers(message_cls, name, number):
    assert _number(message_cls, name) == number


def test_relocated_fields_use_the_reserved_range():
    for message in (pb.LayerParameter, pb.SolverParameter, pb.PoolingParameter, pb.ConvolutionParameter):
        relocated = [f for f in message.DESCRIPTOR.fields if 1000 <= f.number < 10000 and f.number != 1003]
        assert all(9000 <= f.number < 10000 for f in relocated), [f.name for f in relocated]


def test_fork_enum_values():
    assert pb.PriorBoxParameter.CORNER == 1
    assert pb.PriorBoxParameter.CENTER_SIZE == 2
    assert pb.PriorBoxParameter.CORNER_SIZE == 3
    assert pb.MultiBoxLossParameter.L2 == 0 and pb.MultiBoxLossParameter.SMOOTH_L1 == 1
    assert pb.MultiBoxLossParameter.BIPARTITE == 0 and pb.MultiBoxLossParameter.PER_PREDICTION == 1
    assert pb.MultiBoxLossParameter.HARD_EXAMPLE == 2
    assert pb.BNParameter.LEARN == 0 and pb.BNParameter.INFERENCE == 1
    assert pb.ResizeParameter.WARP == 1 and pb.ResizeParameter.FIT_LARGE_SIZE_AND_PAD == 3
    assert pb.EmitConstraint.CENTER == 0 and pb.EmitConstraint.MIN_OVERLAP == 1
    assert pb.V1LayerParameter.INTERP == 41 and pb.V1LayerParameter.PADDING == 42
    assert pb.V1LayerParameter.IMAGE_SEG_DATA == 9001
    assert pb.V1LayerParameter.DECONVOLUTION == 39


# --------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------


def test_bn_parameter_defaults_from_both_forks():
    bn = pb.BNParameter()
    assert bn.momentum == pytest.approx(0.9)
    assert bn.eps == pytest.approx(1e-5)
    assert bn.frozen is False
    assert bn.engine == pb.BNParameter.DEFAULT
    assert bn.bn_mode == pb.BNParameter.LEARN
    assert not bn.HasField("slope_filler") and not bn.HasField("scale_filler")


def test_detection_defaults():
    prior = pb.PriorBoxParameter()
    assert prior.flip is True and prior.clip is False
    assert prior.offset == pytest.approx(0.5)
    assert list(prior.variance) == [] and prior.step == 0
    norm = pb.NormalizeParameter()
    assert norm.across_spatial is True and norm.channel_shared is True
    assert norm.eps == pytest.approx(1e-10)
    out = pb.DetectionOutputParameter()
    assert out.share_location is True
    assert out.background_label_id == 0
    assert out.keep_top_k == -1
    assert out.code_type == pb.PriorBoxParameter.CORNER
    assert out.variance_encoded_in_target is False
    nms = pb.NonMaximumSuppressionParameter()
    assert nms.nms_threshold == pytest.approx(0.3) and nms.eta == pytest.approx(1.0) and nms.top_k == 0
    mbox = pb.MultiBoxLossParameter()
    assert mbox.loc_loss_type == pb.MultiBoxLossParameter.SMOOTH_L1
    assert mbox.conf_loss_type == pb.MultiBoxLossParameter.SOFTMAX
    assert mbox.match_type == pb.MultiBoxLossParameter.PER_PREDICTION
    assert mbox.mining_type == pb.MultiBoxLossParameter.MAX_NEGATIVE
    assert mbox.loc_weight == pytest.approx(1.0)
    assert mbox.neg_pos_ratio == pytest.approx(3.0)
    assert mbox.overlap_threshold == pytest.approx(0.5) and mbox.neg_overlap == pytest.approx(0.5)
    assert mbox.use_prior_for_matching is True and mbox.use_difficult_gt is True
    assert mbox.sample_size == 64 and mbox.do_neg_mining is False


def test_other_fork_defaults():
    roi = pb.ROIPoolingParameter()
    assert roi.spatial_scale == 1.0 and roi.pooled_h == 0 and roi.pooled_w == 0
    assert pb.SmoothL1LossParameter().sigma == 1.0
    assert pb.ShuffleChannelParameter().group == 1
    up = pb.UpsampleParameter()
    assert up.scale == 2 and up.pad_out_h is False and not up.HasField("upsample_h")
    interp = pb.InterpParameter()
    assert (interp.height, interp.width, interp.zoom_factor, interp.shrink_factor) == (0, 0, 1, 1)
    assert (interp.pad_beg, interp.pad_end) == (0, 0)
    conv = pb.ConvolutionParameter()
    assert (conv.hole, conv.hole_h, conv.hole_w) == (1, 1, 1)
    assert pb.PoolingParameter().ceil_mode is True
    assert pb.DropoutParameter().sample_weights_test is False
    assert pb.ImageDataParameter().has_label is True
    solver = pb.SolverParameter()
    assert solver.eval_type == "classification" and solver.ap_version == "Integral"
    assert solver.show_per_class_result is False
    assert pb.ResizeParameter().resize_mode == pb.ResizeParameter.WARP
    assert pb.ResizeParameter().prob == 1.0
    assert pb.BatchSampler().max_trials == 100 and pb.BatchSampler().use_original_image is True
    assert pb.Yolov3DetectionOutputParameter().num_classes == 20


# --------------------------------------------------------------------------
# Text and wire
# --------------------------------------------------------------------------

SSD_HEAD = """
layer {
  name: "conv11_mbox_priorbox" type: "PriorBox" bottom: "conv11" bottom: "data" top: "p"
  prior_box_param { min_size: 60.0 aspect_ratio: 2.0 flip: true clip: false
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 }
}
layer { name: "perm" type: "Permute" bottom: "x" top: "y" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer {
  name: "detection_out" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "p" top: "out"
  detection_output_param {
    num_classes: 21 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 100 }
    code_type: CENTER_SIZE keep_top_k: 100 confidence_threshold: 0.25
  }
}
layer { name: "bn" type: "BN" bottom: "a" top: "a" bn_param { momentum: 0.95 frozen: true } }
layer { name: "bn2" type: "BN" bottom: "b" top: "b"
        bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 1 } } }
layer { name: "roi" type: "ROIPooling" bottom: "f" bottom: "r" top: "pool5"
        roi_pooling_param { pooled_w: 7 pooled_h: 7 spatial_scale: 0.0625 } }
layer { name: "sh" type: "ShuffleChannel" bottom: "s" top: "t" shuffle_channel_param { group: 3 } }
"""


def test_fork_layers_parse_and_round_trip():
    net = parse_text(SSD_HEAD, pb.NetParameter(), "ssd.prototxt")
    prior = net.layer[0].prior_box_param
    assert list(prior.min_size) == [60.0] and list(prior.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert list(net.layer[1].permute_param.order) == [0, 2, 3, 1]
    det = net.layer[2].detection_output_param
    assert det.code_type == pb.PriorBoxParameter.CENTER_SIZE and det.nms_param.top_k == 100
    assert net.layer[3].bn_param.momentum == pytest.approx(0.95) and net.layer[3].bn_param.frozen
    assert net.layer[4].bn_param.bn_mode == pb.BNParameter.INFERENCE
    assert net.layer[5].roi_pooling_param.spatial_scale == pytest.approx(0.0625)
    assert net.layer[6].shuffle_channel_param.group == 3
    assert pb.NetParameter.FromString(net.SerializeToString()) == net
    assert text_format.Parse(text_format.MessageToString(net), pb.NetParameter()) == net


def test_roi_pooling_wire_tag_matches_the_fork():
    # Field 8266711, length-delimited: the tag is the varint of (8266711 << 3) | 2.
    layer = pb.LayerParameter()
    layer.roi_pooling_param.pooled_h = 7
    tag = (8266711 << 3) | 2
    encoded = bytearray()
    while True:
        byte, tag = tag & 0x7F, tag >> 7
        encoded.append(byte | (0x80 if tag else 0))
        if not tag:
            break
    assert layer.SerializeToString().startswith(bytes(encoded))


def test_ssd_solver_fields():
    solver = parse_text(
        'eval_type: "detection" ap_version: "11point" show_per_class_result: true', pb.SolverParameter()
    )
    assert solver.eval_type == "detection" and solver.ap_version == "11point"
    assert solver.show_per_class_result is True


def test_deeplab_v1_fields():
    net = parse_text(
        'layers { name: "c" type: CONVOLUTION strict_dim: false convolution_param { num_output: 2 hole: 2 } }'
        ' layers { name: "i" type: INTERP interp_param { zoom_factor: 8 } }'
        ' layers { name: "p" type: PADDING padding_param { pad_beg: -7 pad_end: -8 } }',
        pb.NetParameter(),
    )
    assert net.layers[0].convolution_param.hole == 2 and net.layers[0].strict_dim is False
    assert net.layers[1].type == pb.V1LayerParameter.INTERP
    assert net.layers[1].interp_param.zoom_factor == 8
    assert net.layers[2].padding_param.pad_end == -8


# --------------------------------------------------------------------------
# Did-you-mean for misspelt fields
# --------------------------------------------------------------------------

LAYER_FIELDS = [f.name for f in pb.LayerParameter.DESCRIPTOR.fields]


def _unknown_field_message(block: str) -> str:
    with pytest.raises(UnknownFieldError) as info:
        parse_text(f'layer {{ name: "x" type: "Convolution" {block} {{ }} }}', pb.NetParameter(), "n.prototxt")
    return str(info.value)


def test_misspelt_param_block_gets_the_close_suggestion():
    assert 'Did you mean "convolution_param"?' in _unknown_field_message("convolution_parm")
    assert 'Did you mean "convolution_param"?' in _unknown_field_message("convoluton_param")
    assert 'Did you mean "permute_param"?' in _unknown_field_message("permute_parm")
    assert 'Did you mean "batch_norm_param"?' in _unknown_field_message("batchnorm_param")


def test_unrelated_param_block_gets_no_suggestion():
    message = _unknown_field_message("foo_param")
    assert 'unknown field "foo_param"' in message and "n.prototxt:1" in message
    assert "Did you mean" not in message
    assert "Did you mean" not in _unknown_field_message("ip_param")


def test_fork_blocks_no_longer_suggest_unrelated_bvlc_blocks():
    # Against BVLC's fields alone these used to suggest parameter_param / mvn_param / slice_param.
    bvlc_only = [n for n in LAYER_FIELDS if pb.LayerParameter.DESCRIPTOR.fields_by_name[n].number < 150]
    assert suggest_field("permute_param", bvlc_only) == ""
    assert suggest_field("bn_param", bvlc_only) == ""
    assert suggest_field("shuffle_channel_param", bvlc_only) == ""
    for name in ("permute_param", "bn_param", "shuffle_channel_param"):
        assert name in LAYER_FIELDS


def test_plain_field_suggestions_unchanged():
    assert suggest_field("bottm", LAYER_FIELDS) == ' Did you mean "bottom"?'
    assert suggest_field("zzzz", LAYER_FIELDS) == ""


def test_mapping_input_uses_the_same_suggestions():
    with pytest.raises(UnknownFieldError, match='Did you mean "pooling_param"'):
        parse_mapping({"layer": [{"name": "p", "pooling_parm": {}}]}, pb.NetParameter(), "n.yaml")
    with pytest.raises(UnknownFieldError) as info:
        parse_mapping({"layer": [{"name": "p", "foo_param": {}}]}, pb.NetParameter(), "n.yaml")
    assert "Did you mean" not in str(info.value)
