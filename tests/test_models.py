"""Model zoo (models/*): exact structure, one training step of the small nets, files that parse.

Structure is checked twice where Caffe's own numbers exist: against the reference JSON files in
shared/parity/shapes (every blob, every parameter blob, the outputs; skipped when that folder is
absent) and against literal parameter totals that hold without it. Nets with no Caffe reference
are checked against literal tables of every blob and parameter shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest

import netdef
from netdef.proto import load_net, load_solver
from netdef.proto import netdef_pb2 as pb
from netdef.testing.parity import compare, parity_root

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DATA_LAYER_TYPES = {"HDF5Data", "Data", "ImageData", "WindowData", "MemoryData"}

# Parameter totals of each deploy net as netdef builds it: (every stored blob, learnable blobs only).
# The difference is BatchNorm's running statistics (mean, variance, scale factor).
PARAM_COUNTS = {
    "lenet": (431_080, 431_080),
    "cifar10_quick": (145_578, 145_578),
    "cifar10_full": (89_578, 89_578),
    "mnist_autoencoder": (2_837_314, 2_837_314),
    "mnist_siamese": (431_102, 431_102),
    "alexnet": (60_965_224, 60_965_224),
    "caffenet": (60_965_224, 60_965_224),
    "googlenet": (6_998_552, 6_998_552),
    "vgg16": (138_357_544, 138_357_544),
    "resnet50": (25_610_269, 25_557_096),
    "mlp_sigmoid": (39_760, 39_760),
    "mlp_tanh": (39_760, 39_760),
    "mlp_deep": (89_610, 89_610),
    "cifar10_bn_dropout": (145_965, 145_706),
    "inception_mini": (139_234, 139_234),
    "resnet_mini": (83_461, 82_714),
}

# The deploy output: name and shape.
OUTPUTS = {
    "lenet": ("prob", (64, 10)),
    "cifar10_quick": ("prob", (1, 10)),
    "cifar10_full": ("prob", (1, 10)),
    "mnist_autoencoder": ("decode1neuron", (100, 784)),
    "mnist_siamese": ("feat", (100, 2)),
    "alexnet": ("prob", (10, 1000)),
    "caffenet": ("prob", (10, 1000)),
    "googlenet": ("prob", (10, 1000)),
    "vgg16": ("prob", (10, 1000)),
    "resnet50": ("prob", (1, 1000)),
    "mlp_sigmoid": ("prob", (64, 10)),
    "mlp_tanh": ("prob", (64, 10)),
    "mlp_deep": ("prob", (64, 10)),
    "cifar10_bn_dropout": ("prob", (1, 10)),
    "inception_mini": ("prob", (1, 10)),
    "resnet_mini": ("prob", (1, 10)),
}

# Caffe's structure files (shared/parity/shapes) for our deploy and train_val (TEST phase) nets.
REFERENCES = {
    "lenet": ("lenet.json", "lenet_train_test.TEST.json"),
    "cifar10_quick": ("cifar10_quick.json", "cifar10_quick_train_test.TEST.json"),
    "cifar10_full": ("cifar10_full.json", "cifar10_full_train_test.TEST.json"),
    "mnist_siamese": ("mnist_siamese.json", "mnist_siamese_train_test.TEST.json"),
    "alexnet": ("bvlc_alexnet__deploy.json", "bvlc_alexnet__train_val.TEST.json"),
    "caffenet": ("bvlc_reference_caffenet__deploy.json", "bvlc_reference_caffenet__train_val.TEST.json"),
    "googlenet": ("bvlc_googlenet__deploy.json", "bvlc_googlenet__train_val.TEST.json"),
    "resnet50": ("resnet50-deploy.json", None),
}


# --- helpers -------------------------------------------------------------------------------------
def net_param(model: str, which: str = "deploy") -> pb.NetParameter:
    return load_net(str(MODELS / model / f"{which}.prototxt"))


def feed_inputs(param: pb.NetParameter, shapes: dict[str, tuple[int, ...]]) -> pb.NetParameter:
    """A copy whose data layers (and Input layers) become Input layers with the given top shapes.

    Include/exclude rules stay, so the phase still picks one of a TRAIN/TEST pair.
    """
    out = pb.NetParameter()
    out.CopyFrom(param)
    replaced = 0
    for layer in out.layer:
        if layer.type not in DATA_LAYER_TYPES | {"Input"}:
            continue
        tops = list(layer.top)
        name, include, exclude = layer.name, list(layer.include), list(layer.exclude)
        layer.Clear()
        layer.name, layer.type = name, "Input"
        layer.top.extend(tops)
        layer.include.extend(include)
        layer.exclude.extend(exclude)
        for t in tops:
            layer.input_param.shape.add().dim.extend(shapes[t])
        replaced += 1
    assert replaced, "the net has no data or Input layer to feed"
    return out


def count_params(net: netdef.Net) -> tuple[int, int]:
    """(every parameter blob, learnable ones only), each shared blob counted once."""
    unique = {id(b): b for blobs in net.params.values() for b in blobs}
    total = sum(b.count for b in unique.values())
    learnable = sum(spec.blob.count for spec in net.param_specs if spec.lr_mult != 0)
    return total, learnable


def param_shapes(net: netdef.Net) -> dict[str, list[tuple[int, ...]]]:
    return {name: [b.shape for b in blobs] for name, blobs in net.params.items()}


def blob_shapes(net: netdef.Net) -> dict[str, tuple[int, ...]]:
    return {name: b.shape for name, b in net.blobs.items()}


def load_reference(fname: str) -> dict:
    root = parity_root()
    if root is None:
        pytest.skip("shared/parity not available")
    return json.loads((root / "shapes" / fname).read_text())


def assert_matches_reference(net: netdef.Net, ref: dict) -> None:
    """Same blobs (Caffe's split blobs included), same parameter blobs per layer, same outputs."""
    want_blobs = {b["name"]: tuple(b["shape"]) for b in ref["blobs"]}
    assert blob_shapes(net) == want_blobs
    want_params = {l["name"]: [tuple(s) for s in l["params"]] for l in ref["layers"] if l["params"]}
    assert param_shapes(net) == want_params
    assert list(net.outputs) == list(ref["outputs"])


def reference_input_shapes(ref: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the tops of the reference's input/data layers."""
    shapes = {b["name"]: tuple(b["shape"]) for b in ref["blobs"]}
    first = [l for l in ref["layers"] if not l["bottoms"]]
    return {t: shapes[t] for l in first for t in l["tops"]}


# --- 1. structure --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(PARAM_COUNTS))
def test_deploy_parameter_count_and_output(model):
    net = netdef.Net(str(MODELS / model / "deploy.prototxt"), netdef.TEST)
    assert count_params(net) == PARAM_COUNTS[model]
    name, shape = OUTPUTS[model]
    assert net.outputs == [name]
    assert net.blobs[name].shape == shape


@pytest.mark.parametrize("model", sorted(REFERENCES))
def test_deploy_matches_caffe(model):
    ref = load_reference(REFERENCES[model][0])
    # Build with Caffe's input shape (e.g. 10,000 images for the siamese deploy): blobs are only allocated.
    net = netdef.Net(feed_inputs(net_param(model), reference_input_shapes(ref)), netdef.TEST)
    assert_matches_reference(net, ref)


@pytest.mark.parametrize("model", sorted(m for m, (_, tv) in REFERENCES.items() if tv))
def test_train_val_test_phase_matches_caffe(model):
    ref = load_reference(REFERENCES[model][1])
    net = netdef.Net(feed_inputs(net_param(model, "train_val"), reference_input_shapes(ref)), netdef.TEST)
    assert_matches_reference(net, ref)
    assert net.loss_weights() == ref["loss_weights"]


def test_resnet50_parameter_total_matches_caffe_reference():
    ref = load_reference("resnet50-deploy.json")
    total = sum(int(numpy.prod(s)) for l in ref["layers"] for s in l["params"])
    assert total == PARAM_COUNTS["resnet50"][0]


@pytest.mark.parametrize("model", ["lenet", "cifar10_quick", "cifar10_full"])
def test_caffe_trained_weights_load_by_name_and_give_caffes_activations(model):
    """Weights written by Caffe (shared/parity/nets, full-size layers) load into our deploy net by layer name,
    and every activation matches the one Caffe computed from the same input."""
    root = parity_root()
    if root is None:
        pytest.skip("shared/parity not available")
    folder = root / "nets" / model
    x = numpy.load(folder / "inputs.npz")["data"]
    want = numpy.load(folder / "outputs.npz")
    net = netdef.Net(feed_inputs(net_param(model), {"data": x.shape}), netdef.TEST)
    net.copy_from(str(folder / "weights.caffemodel"))
    net.forward(data=x)
    compared = [name for name in net.blobs if name != "data" and f"blob_{name}" in want]
    assert len(compared) >= 5
    for name in compared:
        compare(numpy.asarray(net.blobs[name].data), want[f"blob_{name}"], rtol=1e-3, atol=1e-4)


# Literal tables for the nets that have no Caffe reference file.
MLP_BLOBS = {"data": (64, 1, 28, 28), "ip1": (64, 50), "ip2": (64, 10), "prob": (64, 10)}
MLP_PARAMS = {"ip1": [(50, 784), (50,)], "ip2": [(10, 50), (10,)]}


def _bn(c):
    return [(c,), (c,), (1,)]


def _scale(c):
    return [(c,), (c,)]


def _vgg_tables():
    blobs = {"data": (10, 3, 224, 224)}
    params = {}
    cin, size = 3, 224
    for b, (n, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for r in range(1, reps + 1):
            blobs[f"conv{b}_{r}"] = (10, n, size, size)
            params[f"conv{b}_{r}"] = [(n, cin, 3, 3), (n,)]
            cin = n
        size //= 2
        blobs[f"pool{b}"] = (10, n, size, size)
    blobs.update({"fc6": (10, 4096), "fc7": (10, 4096), "fc8": (10, 1000), "prob": (10, 1000)})
    params.update({"fc6": [(4096, 25088), (4096,)], "fc7": [(4096, 4096), (4096,)], "fc8": [(1000, 4096), (1000,)]})
    return blobs, params


AE_SIZES = [
    ("encode1", 784, 1000),
    ("encode2", 1000, 500),
    ("encode3", 500, 250),
    ("encode4", 250, 30),
    ("decode4", 30, 250),
    ("decode3", 250, 500),
    ("decode2", 500, 1000),
    ("decode1", 1000, 784),
]


def _autoencoder_tables():
    blobs = {"data": (100, 1, 28, 28)}
    for name, _, n in AE_SIZES:
        blobs[name] = (100, n)
        if name != "encode4":
            blobs[f"{name}neuron"] = (100, n)
    params = {name: [(n, k), (n,)] for name, k, n in AE_SIZES}
    return blobs, params


def _inception_tables():
    b = {"data": (1, 3, 32, 32), "conv1": (1, 64, 32, 32), "pool1": (1, 64, 16, 16)}
    b.update({f"pool1_pool1_0_split_{k}": (1, 64, 16, 16) for k in range(4)})
    p = {"conv1": [(64, 3, 3, 3), (64,)]}
    for m, cin, sizes in (("a", 64, (32, 48, 64, 8, 16, 16)), ("b", 128, (64, 64, 96, 16, 48, 32))):
        n1, n3r, n3, n5r, n5, npp = sizes
        pre = f"inception_{m}"
        for name, n, k, c in (
            ("1x1", n1, 1, cin),
            ("3x3_reduce", n3r, 1, cin),
            ("3x3", n3, 3, n3r),
            ("5x5_reduce", n5r, 1, cin),
            ("5x5", n5, 5, n5r),
            ("pool_proj", npp, 1, cin),
        ):
            b[f"{pre}/{name}"] = (1, n, 16, 16)
            p[f"{pre}/{name}"] = [(n, c, k, k), (n,)]
        b[f"{pre}/pool"] = (1, cin, 16, 16)
        b[f"{pre}/output"] = (1, n1 + n3 + n5 + npp, 16, 16)
    b.update({f"inception_a/output_inception_a/output_0_split_{k}": (1, 128, 16, 16) for k in range(4)})
    b.update({"pool2": (1, 240, 8, 8), "pool3": (1, 240, 1, 1), "classifier": (1, 10), "prob": (1, 10)})
    p["classifier"] = [(10, 240), (10,)]
    return b, p


def _resnet_mini_tables():
    b = {"data": (1, 3, 32, 32), "conv1": (1, 16, 32, 32)}
    b.update({f"conv1_conv1_relu_0_split_{k}": (1, 16, 32, 32) for k in range(2)})
    p = {"conv1": [(16, 3, 3, 3)], "bn_conv1": _bn(16), "scale_conv1": _scale(16)}
    for name, cin, c, hw, project in (
        ("2a", 16, 16, 32, False),
        ("2b", 16, 16, 32, False),
        ("3a", 16, 32, 16, True),
        ("4a", 32, 64, 8, True),
    ):
        branches = [("branch1", cin, 1)] if project else []
        branches += [("branch2a", cin, 3), ("branch2b", c, 3)]
        for br, ci, k in branches:
            b[f"res{name}_{br}"] = (1, c, hw, hw)
            p[f"res{name}_{br}"] = [(c, ci, k, k)]
            p[f"bn{name}_{br}"] = _bn(c)
            p[f"scale{name}_{br}"] = _scale(c)
        b[f"res{name}"] = (1, c, hw, hw)
        if name != "4a":
            b.update({f"res{name}_res{name}_relu_0_split_{k}": (1, c, hw, hw) for k in range(2)})
    b.update({"pool5": (1, 64, 1, 1), "fc10": (1, 10), "prob": (1, 10)})
    p["fc10"] = [(10, 64), (10,)]
    return b, p


LITERAL = {
    "mlp_sigmoid": (MLP_BLOBS, MLP_PARAMS),
    "mlp_tanh": (MLP_BLOBS, MLP_PARAMS),
    "mlp_deep": (
        {"data": (64, 1, 28, 28), "ip1": (64, 100), "ip2": (64, 100), "ip3": (64, 10), "prob": (64, 10)},
        {"ip1": [(100, 784), (100,)], "ip2": [(100, 100), (100,)], "ip3": [(10, 100), (10,)]},
    ),
    "cifar10_bn_dropout": (
        {
            "data": (1, 3, 32, 32),
            "conv1": (1, 32, 32, 32),
            "pool1": (1, 32, 16, 16),
            "conv2": (1, 32, 16, 16),
            "pool2": (1, 32, 8, 8),
            "conv3": (1, 64, 8, 8),
            "pool3": (1, 64, 4, 4),
            "ip1": (1, 64),
            "ip2": (1, 10),
            "prob": (1, 10),
        },
        {
            "conv1": [(32, 3, 5, 5)],
            "bn1": _bn(32),
            "scale1": _scale(32),
            "conv2": [(32, 32, 5, 5)],
            "bn2": _bn(32),
            "scale2": _scale(32),
            "conv3": [(64, 32, 5, 5)],
            "bn3": _bn(64),
            "scale3": _scale(64),
            "ip1": [(64, 1024), (64,)],
            "ip2": [(10, 64), (10,)],
        },
    ),
    "vgg16": _vgg_tables(),
    "mnist_autoencoder": _autoencoder_tables(),
    "inception_mini": _inception_tables(),
    "resnet_mini": _resnet_mini_tables(),
}


@pytest.mark.parametrize("model", sorted(LITERAL))
def test_deploy_shapes_literal(model):
    net = netdef.Net(str(MODELS / model / "deploy.prototxt"), netdef.TEST)
    blobs, params = LITERAL[model]
    assert blob_shapes(net) == blobs
    assert param_shapes(net) == params
    total = sum(int(numpy.prod(s)) for shapes in params.values() for s in shapes)
    assert total == PARAM_COUNTS[model][0]


# --- 2. one training step of the small nets ----------------------------------------------------
MNIST_IN = {"data": (4, 1, 28, 28), "label": (4,)}
CIFAR_IN = {"data": (4, 3, 32, 32), "label": (4,)}
SMALL = {
    "lenet": MNIST_IN,
    "mlp_sigmoid": MNIST_IN,
    "mlp_tanh": MNIST_IN,
    "mlp_deep": MNIST_IN,
    "cifar10_quick": CIFAR_IN,
    "cifar10_full": CIFAR_IN,
    "cifar10_bn_dropout": CIFAR_IN,
    "inception_mini": CIFAR_IN,
    "resnet_mini": CIFAR_IN,
    "mnist_autoencoder": {"data": (4, 1, 28, 28)},
    "mnist_siamese": {"pair_data": (4, 2, 28, 28), "sim": (4,)},
}


# The loss of the siamese net sees only feat - feat_p, so biases shared by the two branches after their last
# non-linearity (ip2, feat) cancel exactly: their gradient is zero by construction.
ZERO_GRADIENT = {"mnist_siamese": {("ip2", 1), ("feat", 1)}}


def random_inputs(shapes: dict[str, tuple[int, ...]], rng) -> dict[str, numpy.ndarray]:
    out = {}
    for name, shape in shapes.items():
        if name == "label":
            out[name] = numpy.array([0, 3, 7, 9], dtype=numpy.float32)[: shape[0]]
        elif name == "sim":
            out[name] = numpy.array([1, 0, 1, 0], dtype=numpy.float32)[: shape[0]]
        elif shape[1:] == (3, 32, 32):  # mean-subtracted 0..255 pixels
            out[name] = rng.normal(0.0, 50.0, shape).astype(numpy.float32)
        else:  # MNIST grey levels in [0, 1)
            out[name] = rng.random(shape, dtype=numpy.float32)
    return out


@pytest.mark.parametrize("model", sorted(SMALL))
def test_train_step_gives_finite_loss_and_gradients(model):
    param = net_param(model, "train_val")
    assert any(layer.type == "HDF5Data" for layer in param.layer)
    net = netdef.Net(feed_inputs(param, SMALL[model]), netdef.TRAIN)
    net.forward(**random_inputs(SMALL[model], numpy.random.default_rng(0)))
    loss = net.loss
    assert numpy.isfinite(loss) and loss > 0
    net.backward()
    learnable = [(spec.layer, spec.index, spec.blob) for spec in net.param_specs if spec.lr_mult != 0]
    assert learnable
    for layer, k, blob in learnable:
        diff = numpy.asarray(blob.diff)
        assert numpy.all(numpy.isfinite(diff)), f"{layer}[{k}] has a non-finite gradient"
        if (layer, k) in ZERO_GRADIENT.get(model, ()):
            numpy.testing.assert_allclose(diff, 0, atol=1e-6)
        else:
            assert numpy.any(diff != 0), f"{layer}[{k}] got no gradient"


@pytest.mark.parametrize("model", sorted(m for m in SMALL if m not in ("mnist_autoencoder", "mnist_siamese")))
def test_test_phase_reports_accuracy(model):
    net = netdef.Net(feed_inputs(net_param(model, "train_val"), SMALL[model]), netdef.TEST)
    out = net.forward(**random_inputs(SMALL[model], numpy.random.default_rng(1)))
    assert sorted(out) == ["accuracy", "loss"]
    assert 0.0 <= float(out["accuracy"]) <= 1.0
    assert numpy.isfinite(float(out["loss"]))


@pytest.mark.parametrize("stage", ["test-on-train", "test-on-test"])
def test_autoencoder_test_stages_pick_one_data_layer(stage):
    param = net_param("mnist_autoencoder", "train_val")
    net = netdef.Net(feed_inputs(param, {"data": (2, 1, 28, 28)}), netdef.TEST, stages=[stage])
    assert net.inputs == ["data"]
    assert net.outputs == ["cross_entropy_loss", "l2_error"]


def test_siamese_branches_share_every_parameter():
    net = netdef.Net(feed_inputs(net_param("mnist_siamese", "train_val"), SMALL["mnist_siamese"]), netdef.TRAIN)
    for name in ("conv1", "conv2", "ip1", "ip2", "feat"):
        for a, b in zip(net.params[name], net.params[f"{name}_p"], strict=True):
            assert a is b
    assert count_params(net) == PARAM_COUNTS["mnist_siamese"]


def test_mlp_solver_trains_on_hdf5_files_made_as_the_readme_says(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    rng = numpy.random.default_rng(0)
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "models").symlink_to(MODELS)
    for split, n in (("train", 64), ("test", 100)):
        with h5py.File(tmp_path / "data" / "mnist" / f"mnist_{split}.h5", "w") as f:
            f["data"] = rng.random((n, 1, 28, 28), dtype=numpy.float32)
            f["label"] = rng.integers(0, 10, n).astype(numpy.float32)
        (tmp_path / "data" / "mnist" / f"mnist_{split}_h5.txt").write_text(f"data/mnist/mnist_{split}.h5\n")
    monkeypatch.chdir(tmp_path)
    param = load_solver("models/mlp_sigmoid/solver.prototxt")
    param.test_iter[0] = 1
    param.snapshot = 0
    param.snapshot_prefix = str(tmp_path / "mlp_sigmoid")
    solver = netdef.get_solver(param)
    w0 = numpy.array(solver.net.params["ip1"][0].data)
    solver.step(2)
    assert solver.iter == 2
    assert numpy.isfinite(float(solver.net.blobs["loss"].data))
    assert not numpy.array_equal(w0, solver.net.params["ip1"][0].data)


# --- 3. every folder is documented and parses ---------------------------------------------------
FOLDERS = sorted(p.name for p in MODELS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def test_zoo_lists_every_model_tested_here():
    assert set(PARAM_COUNTS) <= set(FOLDERS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_model_folder_has_readme_and_parsing_prototxt(folder):
    path = MODELS / folder
    readme = path / "README.md"
    assert readme.is_file() and readme.read_text().strip(), f"models/{folder}/README.md is missing or empty"
    files = sorted(path.glob("*.prototxt"))
    assert files, f"models/{folder} has no .prototxt file"
    for f in files:
        if "solver" in f.stem:
            solver = load_solver(str(f))
            net_path = solver.net or solver.train_net
            assert net_path, f"{f} names no train net"
            assert (REPO / net_path).is_file() or (path / net_path).is_file(), f"{f}: net {net_path} not found"
        else:
            assert load_net(str(f)).layer, f"{f} has no layers"


@pytest.mark.parametrize("model", sorted(PARAM_COUNTS))
def test_readme_states_the_parameter_count(model):
    text = (MODELS / model / "README.md").read_text()
    assert f"{PARAM_COUNTS[model][1]:,}" in text
