"""Fork layer types are registered, kept apart from BVLC's, and say where they come from."""

import pytest

import netdef
from netdef.errors import DuplicateLayerTypeError
from netdef.layers import layer_class
from netdef.layers.forks import FORK_ORIGIN, fork_hint, fork_layer_types, register_fork_layer

BVLC_COUNT = 61
FORK_TYPES = {
    "Axpy",
    "BN",
    "ConvolutionDepthwise",
    "DepthwiseConvolution",
    "DetectionEvaluate",
    "DetectionOutput",
    "ImageSegData",
    "Interp",
    "MatWrite",
    "MultiBoxLoss",
    "Normalize",
    "PSROIPooling",
    "Padding",
    "Permute",
    "PriorBox",
    "ROIPooling",
    "ReLU6",
    "ShuffleChannel",
    "SmoothL1Loss",
    "Upsample",
    "Yolov3DetectionOutput",
}


def test_default_list_is_bvlc_and_forks_are_listed_apart():
    bvlc = netdef.layer_type_list()
    assert len(bvlc) == BVLC_COUNT and "Convolution" in bvlc and not FORK_TYPES & set(bvlc)
    assert set(netdef.layer_type_list(forks=True)) == set(bvlc) | FORK_TYPES
    assert set(fork_layer_types()) == FORK_TYPES
    assert fork_layer_types()["PriorBox"] == ("SSD",)
    assert set(fork_layer_types()["BN"]) == {"SegNet", "PSPNet"}
    for name in FORK_TYPES:
        assert layer_class(name).forks == FORK_ORIGIN[name]
    assert layer_class("Convolution").forks == ()


def test_registration_needs_an_origin_and_a_free_name():
    with pytest.raises(ValueError, match="needs the fork"):
        register_fork_layer("Anything")
    with pytest.raises(DuplicateLayerTypeError, match='"Permute" is already registered'):
        register_fork_layer("Permute", "SSD")(type("Again", (), {}))


def test_hint_for_types_from_forks_netdef_lacks():
    assert "SSD fork" in fork_hint("AnnotatedData")
    assert fork_hint("Convolution") == ""
