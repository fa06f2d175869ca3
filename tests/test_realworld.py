"""Published deploy nets (``shared/realworld/nets``) build in TEST phase and run forward with random weights.

The corpus is real files from public repositories, written for BVLC Caffe and for its forks
(its ``MANIFEST.tsv`` names each file's repository; the deploy nets have a kind ``deploy:*``).
Each net gets batch 1 (and a smaller spatial size where the net allows one and its full size
is slow), random weights scaled by fan-in, and a forward pass whose every top must be finite.
The nets netdef cannot run are listed in ``NOT_RUNNABLE`` with the reason and the error they
give, and the test checks that exactly those fail that way. Nets that read data files
(``READS_FILES``) and nets that need an opt-in switch have tests of their own. Everything skips cleanly when the
corpus is absent.
"""

from __future__ import annotations

import numpy
import pytest

import netdef
from netdef.errors import InvalidParameterError, NetdefError, ShapeMismatchError
from netdef.layers.pooling import using_pooling_rule
from netdef.layers.python_layer import python_layers_allowed
from netdef.proto import load_net
from netdef.proto import netdef_pb2 as pb
from netdef.testing.parity import assert_finite_tops, random_weights, read_tsv, realworld_nets

NETS = realworld_nets()

#: deploy nets that do not run, why, and the error (class, message pattern) each gives
NOT_RUNNABLE = {
    "faster_rcnn_vgg16_end2end_test.prototxt": (
        "its Python layer rpn.proposal_layer comes from py-faster-rcnn's own code (lib/rpn), not from the net",
        InvalidParameterError,
        r'Layer "proposal" \(type Python\).*"rpn\.proposal_layer"',
    ),
    "faster_rcnn_vgg_cnn_m_1024_rpn_test.pt": (
        "its Python layer rpn.proposal_layer comes from py-faster-rcnn's own code (lib/rpn), not from the net",
        InvalidParameterError,
        r'Layer "proposal" \(type Python\).*"rpn\.proposal_layer"',
    ),
    "yolov3-tiny.prototxt": (
        "under BVLC's pooling rule (the default): the port (ChenYingpeng/caffe-yolov3) patches Caffe's Pooling to "
        "add one output row and column whenever kernel - stride is odd, so its 2x2 stride-1 max pool keeps 13x13; "
        "BVLC's rule (and every PoolingParameter field) gives 12x12, so the Concat after the upsampled branch does "
        "not fit. It runs with the pooling rule caffe-yolov3 (test_yolov3_tiny_runs_with_the_ports_pooling_rule)",
        ShapeMismatchError,
        r'Layer "layer21-route" \(type Concat\).*\(1, 128, 24, 24\)',
    ),
}

#: nets that read files; their own tests write what they read into a temporary folder
READS_FILES = {"deeplab_vgg128_noup_test.prototxt"}

#: DeepLab v1 gives Padding's parameters only in its V1 format; the schema may lack a place to keep them
HAS_PADDING_PARAM = "padding_param" in pb.LayerParameter.DESCRIPTOR.fields_by_name

#: smaller inputs (height = width) for nets that take any size and are slow at their own
SPATIAL = {
    "fcn_voc-fcn8s_deploy.prototxt": 64,
    "hed_deploy.prototxt": 64,
    "unet_cascadedfcn_step1_deploy.prototxt": 188,  # the smallest size its valid convolutions and crops allow
    "cpm_mpi_pose_deploy_resize.prototxt": 96,
    "openpose_coco_pose_deploy_linevec.prototxt": 64,  # the file's input is a 1x1 placeholder
    "openpose_body25_pose_deploy.prototxt": 64,  # the file's input is a 16x16 placeholder
    "DenseNet_161.prototxt": 112,  # global pooling before the classifier
    "soeaver_resnext50-32x4d_deploy.prototxt": 112,
}

#: nets that take several seconds even at batch 1 (big fully connected layers, or a size they need)
SLOW = {
    "VGG_ILSVRC_16_layers_deploy.prototxt",
    "VGG_CNN_S_deploy.prototxt",
    "VGG_FACE_deploy.prototxt",
    "soeaver_vgg16bn-pytorch_deploy.prototxt",
    "places205CNN_deploy.prototxt",
    "bvlc_rcnn_ilsvrc13_deploy.prototxt",
    "soeaver_inception-v3_deploy.prototxt",
    "soeaver_inception-resnet-v2_deploy.prototxt",
    "soeaver_xception-dw_deploy.prototxt",
    "SE-BN-Inception.prototxt",
    "SE-ResNet-50.prototxt",
    "pelee_ssd304_deploy.prototxt",
    "fcn_voc-fcn8s_deploy.prototxt",  # fc6 as a 7x7 convolution: 100 M weights to fill
    "cpm_mpi_pose_deploy_resize.prototxt",
    "openpose_coco_pose_deploy_linevec.prototxt",
    "segnet_model_driving_webdemo.prototxt",  # its Upsample layers name fixed output sizes
    "pspnet50_ADE20K_473.prototxt",  # its pyramid pooling needs the 473x473 input
    "pspnet101_VOC2012_473.prototxt",
    "pspnet101_cityscapes_713.prototxt",
}


def deploy_nets() -> list[str]:
    """The deploy nets of the corpus (MANIFEST kind ``deploy:*``), in manifest order."""
    if NETS is None:
        return []
    return [r["file"] for r in read_tsv(NETS.parent / "MANIFEST.tsv") if r["kind"].startswith("deploy:")]


def _params(names):
    picked = [pytest.param(n, id=n, marks=[pytest.mark.slow] if n in SLOW else []) for n in names]
    return picked or [pytest.param(None, id="no-realworld-data")]


def _need_corpus(name):
    if name is None or NETS is None:
        pytest.skip("shared/realworld not available")


def build(name: str) -> netdef.Net:
    """The net in TEST phase, inputs cut to batch 1 (and to ``SPATIAL``), reshaped."""
    net = netdef.Net(str(NETS / name), netdef.TEST)
    for blob_name in net.inputs:
        shape = list(net.blobs[blob_name].shape)
        shape[0] = 1
        if name in SPATIAL and len(shape) == 4:
            shape[2:] = [SPATIAL[name]] * 2
        net.blobs[blob_name].reshape(*shape)
    net.reshape()
    return net


@pytest.mark.parametrize("name", _params([n for n in deploy_nets() if n not in NOT_RUNNABLE and n not in READS_FILES]))
def test_deploy_net_runs_forward_with_finite_outputs(name):
    _need_corpus(name)
    net = build(name)
    random_weights(net)
    net.forward()
    assert assert_finite_tops(net) == len(net.layers)
    for output in net.outputs:
        data = netdef.backend.to_numpy(net.blobs[output].data)
        assert data.size > 0 and numpy.isfinite(data).all(), output
    assert all(net.blobs[k].shape[0] == 1 for k in net.inputs)


@pytest.mark.parametrize("name", _params(sorted(NOT_RUNNABLE)))
def test_listed_nets_fail_with_the_listed_error(name):
    _need_corpus(name)
    reason, error, pattern = NOT_RUNNABLE[name]
    assert reason
    with python_layers_allowed(), using_pooling_rule("bvlc"), pytest.raises(error, match=pattern) as info:
        net = build(name)
        net.forward()
    assert isinstance(info.value, NetdefError)


def test_the_list_of_nets_that_do_not_run_names_deploy_nets():
    if NETS is None:
        pytest.skip("shared/realworld not available")
    deploy = deploy_nets()
    assert len(deploy) == 35
    assert set(NOT_RUNNABLE) | READS_FILES <= set(deploy)
    assert set(SPATIAL) | SLOW <= set(deploy) - set(NOT_RUNNABLE) - READS_FILES


def test_yolov3_tiny_runs_with_the_ports_pooling_rule():
    name = "yolov3-tiny.prototxt"
    _need_corpus(name if NETS is not None and (NETS / name).is_file() else None)
    with using_pooling_rule("caffe-yolov3"):
        net = build(name)
    assert net.blobs["layer12-maxpool"].shape == (1, 512, 13, 13)  # 12 x 12 under BVLC's rule
    assert [net.blobs[k].shape for k in net.outputs] == [(1, 255, 13, 13), (1, 255, 26, 26)]
    random_weights(net)
    net.forward()
    assert assert_finite_tops(net) == len(net.layers)


def test_deeplab_v1_net_reads_its_list_and_runs_forward(tmp_path, monkeypatch):
    """The net's ImageSegData reads ``voc12/list/${TEST_SET}.txt`` (relative) under an absolute
    root_folder, and its MatWrite writes below ``${FEATURE_DIR}/${TEST_SET}/fc8/`` (relative):
    both are made in a temporary folder, root_folder points there, and crop_size becomes 82
    (DeepLab's alignment needs 16 k + 2; the file's 514 only costs time)."""
    name = "deeplab_vgg128_noup_test.prototxt"
    _need_corpus(name if NETS is not None and (NETS / name).is_file() else None)
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    param = load_net(str(NETS / name))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "voc12" / "list").mkdir(parents=True)
    (tmp_path / "${FEATURE_DIR}" / "${TEST_SET}" / "fc8").mkdir(parents=True)
    rgb = numpy.zeros((20, 30, 3), dtype=numpy.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    image.fromarray(rgb).save(tmp_path / "JPEGImages" / "2008_000006.png")
    (tmp_path / "voc12" / "list" / "${TEST_SET}.txt").write_text("/JPEGImages/2008_000006.png\n")
    (tmp_path / "voc12" / "list" / "${TEST_SET}_id.txt").write_text("2008_000006\n")
    (data_layer,) = [layer for layer in param.layer if layer.type == "ImageSegData"]
    data_layer.image_data_param.root_folder = str(tmp_path)
    data_layer.transform_param.crop_size = 82
    if not HAS_PADDING_PARAM:
        with pytest.raises(InvalidParameterError, match=r'Layer "fc8_crop" \(type Padding\).*padding_param'):
            netdef.Net(param, netdef.TEST)
        pytest.skip("this schema has no LayerParameter.padding_param, so DeepLab's V1 Padding loses its parameters")
    net = netdef.Net(param, netdef.TEST)
    assert net.blobs["fc8_interp"].shape == (1, 21, 97, 97)  # 8 * 13 - 7
    assert net.blobs["fc8_crop"].shape == (1, 21, 82, 82)  # 7 cut before, 8 after: the input's size again
    random_weights(net)
    net.forward()
    assert assert_finite_tops(net) == len(net.layers)
    data = net.blobs["data"].data[0]
    # BGR minus the file's mean values; the padding up to 82 x 82 holds the mean, so it is 0
    numpy.testing.assert_allclose(data[:, 0, 0], [50 - 104.008, 100 - 116.669, 200 - 122.675], rtol=1e-6)
    assert not data[:, 20:, :].any() and not data[:, :, 30:].any()
    written = tmp_path / "${FEATURE_DIR}" / "${TEST_SET}" / "fc8" / "2008_000006_blob_0.mat"
    assert written.stat().st_size == 128 + 8 + 16 + 24 + 16 + 8 + 21 * 82 * 82 * 4
