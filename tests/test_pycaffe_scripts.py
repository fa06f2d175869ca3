"""Classic pycaffe scripts, unchanged but for their import lines, run on the bundled digits model.

Each script below is written as pycaffe users wrote them (after Caffe's example
notebooks: classification, net surgery, learning LeNet from Python) with
``import caffe`` replaced by ``import netdef as caffe`` and ``from caffe ...`` by
``from netdef ...``. They run in a scratch folder holding a copy of
``models/digits``, as a user's scripts run from a project folder.
"""

import os
from pathlib import Path

import numpy
import pytest

from tests.solver_helpers import copy_digits

REPO = Path(__file__).resolve().parents[1]


def run_script(source: str, folder: Path) -> dict:
    """Run ``source`` as ``__main__`` with ``folder`` as the working directory; return its globals."""
    namespace = {"__name__": "__main__"}
    previous = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(source, "<pycaffe script>", "exec"), namespace)
    finally:
        os.chdir(previous)
    return namespace


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pycaffe_scripts")
    copy_digits(path)
    return path


# --- solving with solver.step, reading solver.net.blobs (after 01-learning-lenet) ------------
SOLVE = """
import numpy as np
import netdef as caffe

caffe.set_mode_cpu()
solver = caffe.SGDSolver('models/digits/solver.prototxt')

# each output is (batch size, feature dim, spatial dim)
blob_shapes = [(k, v.data.shape) for k, v in solver.net.blobs.items()]
# just the weight sizes (we'll omit the biases)
param_shapes = [(k, v[0].data.shape) for k, v in solver.net.params.items()]

solver.net.forward()  # train net
solver.test_nets[0].forward()  # test net (there can be more than one)

niter = 60
test_interval = 20
train_loss = np.zeros(niter)
test_acc = np.zeros(int(np.ceil(niter / test_interval)))
output = np.zeros((niter, 8, 10))

for it in range(niter):
    solver.step(1)  # SGD by Caffe
    # store the train loss
    train_loss[it] = solver.net.blobs['loss'].data
    # store the output on the first test batch
    # (start the forward pass at conv1 to avoid loading new data)
    solver.test_nets[0].forward(start='conv1')
    output[it] = solver.test_nets[0].blobs['ip2'].data[:8]
    # run a full test every so often
    if it % test_interval == 0:
        print('Iteration', it, 'testing...')
        correct = 0
        for test_it in range(3):
            solver.test_nets[0].forward()
            correct += sum(solver.test_nets[0].blobs['ip2'].data.argmax(1)
                           == solver.test_nets[0].blobs['label'].data)
        test_acc[it // test_interval] = correct / 360.0

final_correct = 0
for test_it in range(3):
    solver.test_nets[0].forward()
    final_correct += sum(solver.test_nets[0].blobs['ip2'].data.argmax(1) == solver.test_nets[0].blobs['label'].data)
final_acc = final_correct / 360.0
solver.net.save('digits_quick.caffemodel')
"""


@pytest.fixture(scope="module")
def trained(folder):
    return run_script(SOLVE, folder)


def test_solving_with_step_and_reading_the_nets_blobs(trained, folder):
    ns = trained
    assert ns["blob_shapes"][:3] == [("data", (64, 1, 8, 8)), ("label", (64,)), ("conv1", (64, 20, 8, 8))]
    assert ns["blob_shapes"][-1] == ("loss", ())
    assert ns["param_shapes"] == [
        ("conv1", (20, 1, 3, 3)),
        ("conv2", (50, 20, 3, 3)),
        ("ip1", (128, 200)),
        ("ip2", (10, 128)),
    ]
    assert ns["solver"].iter == 60
    loss = ns["train_loss"]
    assert numpy.all(numpy.isfinite(loss)) and loss[-10:].mean() < 0.5 * loss[:5].mean()
    assert ns["test_acc"][0] < ns["final_acc"]
    assert ns["final_acc"] > 0.75  # chance is 0.1; about 0.9 after these 60 steps
    assert not numpy.array_equal(ns["output"][0], ns["output"][-1])
    assert (folder / "digits_quick.caffemodel").is_file()


# --- classification with the Transformer (after 00-classification) ---------------------------
CLASSIFY_WITH_TRANSFORMER = """
import numpy as np
import netdef as caffe

caffe.set_mode_cpu()

model_def = 'models/digits/deploy.prototxt'
model_weights = 'digits_quick.caffemodel'

net = caffe.Net(model_def,      # defines the structure of the model
                model_weights,  # contains the trained weights
                caffe.TEST)     # use test mode (e.g., don't perform dropout)

# the digits model takes grey [0, 1] images: only the transpose, no mean, scale or channel swap
transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
transformer.set_transpose('data', (2, 0, 1))  # move image channels to outermost dimension

# set the size of the input (we can skip this if we're happy with the default)
net.blobs['data'].reshape(1,        # batch size
                          1,        # grey
                          8, 8)     # image size is 8x8

image = caffe.io.load_image('digit.png', color=False)
transformed_image = transformer.preprocess('data', image)

# copy the image data into the memory allocated for the net
net.blobs['data'].data[...] = transformed_image

### perform classification
output = net.forward()
output_prob = output['prob'][0]  # the output probability vector for the first image in the batch
print('predicted class is:', output_prob.argmax())

top_inds = output_prob.argsort()[::-1][:5]  # reverse sort and take five largest items
print('probabilities and labels:', list(zip(output_prob[top_inds], top_inds)))

layer_shapes = [(layer_name, blob.data.shape) for layer_name, blob in net.blobs.items()]
param_shapes = [(layer_name, param[0].data.shape, param[1].data.shape)
                for layer_name, param in net.params.items()]
"""


def test_classification_with_the_transformer(trained, folder):
    image_module = pytest.importorskip("PIL.Image", reason="writing the example PNG needs Pillow")
    import h5py

    with h5py.File(folder / "models" / "digits" / "test.h5", "r") as f:
        digit, label = f["data"][7, 0], int(f["label"][7])
    image_module.fromarray(numpy.round(digit * 255).astype(numpy.uint8)).save(folder / "digit.png")
    ns = run_script(CLASSIFY_WITH_TRANSFORMER, folder)
    numpy.testing.assert_allclose(ns["transformed_image"][0], digit, atol=0.5 / 255)
    prob = ns["output_prob"]
    assert prob.shape == (10,) and prob.sum() == pytest.approx(1.0, abs=1e-5)
    assert ns["top_inds"][0] == prob.argmax() and len(ns["top_inds"]) == 5
    assert ns["layer_shapes"][0] == ("data", (1, 1, 8, 8)) and ns["layer_shapes"][-1] == ("prob", (1, 10))
    assert ns["param_shapes"][0] == ("conv1", (20, 1, 3, 3), (20,))
    # the same net fed the stored array directly agrees with the script's result
    direct = ns["net"].forward(data=digit[None, None])["prob"][0]
    numpy.testing.assert_allclose(direct, prob, atol=1e-3)
    assert label in ns["top_inds"]


# --- batch classification with caffe.Classifier ----------------------------------------------
CLASSIFY_WITH_CLASSIFIER = """
import h5py
import numpy as np
import netdef as caffe

caffe.set_mode_cpu()
net = caffe.Classifier('models/digits/deploy.prototxt', 'digits_quick.caffemodel', image_dims=(8, 8))

with h5py.File('models/digits/test.h5', 'r') as f:
    images = [im.transpose(1, 2, 0) for im in f['data'][:]]  # H x W x K, as caffe.io.load_image gives
    labels = f['label'][:].astype(int)

scores = net.predict(images, oversample=False)
accuracy = np.mean(scores.argmax(1) == labels)
print('accuracy over', len(images), 'test digits:', accuracy)

mirrored = net.predict(images[:4])  # ten crops (corners, centre, mirrors), averaged
"""


def test_classification_with_the_classifier(trained, folder):
    ns = run_script(CLASSIFY_WITH_CLASSIFIER, folder)
    assert ns["scores"].shape == (360, 10)
    numpy.testing.assert_allclose(ns["scores"].sum(1), 1.0, rtol=1e-5)
    assert ns["accuracy"] == pytest.approx(trained["final_acc"], abs=1e-9)
    assert ns["mirrored"].shape == (4, 10)
    numpy.testing.assert_allclose(ns["mirrored"].sum(1), 1.0, rtol=1e-5)


# --- net surgery: fully connected to convolution (after net_surgery) -------------------------
FULL_CONV = """name: "DigitsFullConv"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 20 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 50 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1-conv" type: "Convolution" bottom: "pool2" top: "ip1-conv" convolution_param { num_output: 128 kernel_size: 2 } }
layer { name: "relu3" type: "ReLU" bottom: "ip1-conv" top: "ip1-conv" }
layer { name: "ip2-conv" type: "Convolution" bottom: "ip1-conv" top: "ip2-conv" convolution_param { num_output: 10 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "ip2-conv" top: "prob" }
"""  # noqa: E501

SURGERY = """
import h5py
import numpy as np
import netdef as caffe

# Load the original network and extract the fully connected layers' parameters.
net = caffe.Net('models/digits/deploy.prototxt', 'digits_quick.caffemodel', caffe.TEST)
params = ['ip1', 'ip2']
# fc_params = {name: (weights, biases)}
fc_params = {pr: (net.params[pr][0].data, net.params[pr][1].data) for pr in params}

for fc in params:
    print('{} weights are {} dimensional and biases are {} dimensional'.format(
        fc, fc_params[fc][0].shape, fc_params[fc][1].shape))

# Load the fully convolutional network to transplant the parameters.
net_full_conv = caffe.Net('digits_full_conv.prototxt', 'digits_quick.caffemodel', caffe.TEST)
params_full_conv = ['ip1-conv', 'ip2-conv']
# conv_params = {name: (weights, biases)}
conv_params = {pr: (net_full_conv.params[pr][0].data, net_full_conv.params[pr][1].data) for pr in params_full_conv}

for conv in params_full_conv:
    print('{} weights are {} dimensional and biases are {} dimensional'.format(
        conv, conv_params[conv][0].shape, conv_params[conv][1].shape))

for pr, pr_conv in zip(params, params_full_conv):
    conv_params[pr_conv][0].flat = fc_params[pr][0].flat  # flat unrolled arrays
    conv_params[pr_conv][1][...] = fc_params[pr][1]

net_full_conv.save('digits_full_conv.caffemodel')

with h5py.File('models/digits/test.h5', 'r') as f:
    digits = f['data'][:4, 0]

# a 16x16 canvas holding four digits: the net now gives a 3x3 map of class scores
canvas = np.zeros((16, 16), dtype=np.float32)
canvas[:8, :8], canvas[:8, 8:], canvas[8:, :8], canvas[8:, 8:] = digits
out = net_full_conv.forward_all(data=canvas[np.newaxis, np.newaxis])
score_map = out['prob'][0].argmax(axis=0)
print(score_map)

# on one 8x8 digit the fully convolutional net is the original classifier
net_full_conv.blobs['data'].reshape(1, 1, 8, 8)
net_full_conv.reshape()
single_conv = net_full_conv.forward(data=digits[:1, np.newaxis])['prob'].copy()
single_fc = net.forward(data=digits[:1, np.newaxis])['prob'].copy()

# editing parameters by hand: make conv1's first filter the identity
net.params['conv1'][0].data[0] = 0
net.params['conv1'][0].data[0, 0, 1, 1] = 1
net.params['conv1'][1].data[0] = 0
net.forward(data=digits[:1, np.newaxis])
first_map = net.blobs['conv1'].data[0, 0].copy()
"""


def test_net_surgery_moves_fully_connected_weights_into_convolutions(trained, folder):
    (folder / "digits_full_conv.prototxt").write_text(FULL_CONV)
    ns = run_script(SURGERY, folder)
    assert ns["conv_params"]["ip1-conv"][0].shape == (128, 50, 2, 2)
    numpy.testing.assert_array_equal(ns["conv_params"]["ip1-conv"][0].reshape(128, 200), ns["fc_params"]["ip1"][0])
    assert ns["out"]["prob"].shape == (1, 10, 3, 3)
    numpy.testing.assert_allclose(ns["out"]["prob"].sum(1), 1.0, rtol=1e-5)
    assert ns["score_map"].shape == (3, 3)
    assert ns["single_conv"].shape == (1, 10, 1, 1)
    numpy.testing.assert_allclose(ns["single_conv"].reshape(1, 10), ns["single_fc"], rtol=1e-4, atol=1e-6)
    numpy.testing.assert_allclose(ns["first_map"], ns["digits"][0], atol=1e-6)  # non-negative: ReLU keeps it
    saved = ns["caffe"].Net(str(folder / "digits_full_conv.prototxt"), str(folder / "digits_full_conv.caffemodel"), 1)
    numpy.testing.assert_array_equal(saved.params["ip2-conv"][1].data, ns["fc_params"]["ip2"][1])


# --- a NetSpec-written net trained from Python (after 01-learning-lenet) -----------------------
NETSPEC_TRAINING = """
import numpy as np
import netdef as caffe
from netdef import layers as L, params as P
from netdef.proto import caffe_pb2


def lenet(hdf5, batch_size):
    # our version of LeNet: a series of linear and simple nonlinear transformations
    n = caffe.NetSpec()

    n.data, n.label = L.HDF5Data(batch_size=batch_size, source=hdf5, ntop=2)

    n.conv1 = L.Convolution(n.data, kernel_size=3, pad=1, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool1, num_output=64, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)

    return n.to_proto()


with open('lenet_auto_train.prototxt', 'w') as f:
    f.write(str(lenet('models/digits/train_list.txt', 64)))

with open('lenet_auto_test.prototxt', 'w') as f:
    f.write(str(lenet('models/digits/test_list.txt', 120)))

s = caffe_pb2.SolverParameter()
s.random_seed = 0xCAFFE
s.train_net = 'lenet_auto_train.prototxt'
s.test_net.append('lenet_auto_test.prototxt')
s.test_interval = 500  # Test after every 500 training iterations.
s.test_iter.append(3)  # Test on 3 batches each time we test.
s.max_iter = 10000
s.type = 'SGD'
s.base_lr = 0.05
s.momentum = 0.9
s.weight_decay = 5e-4
s.lr_policy = 'inv'
s.gamma = 1e-4
s.power = 0.75
s.display = 1000
s.snapshot = 5000
s.snapshot_prefix = 'lenet'
s.solver_mode = caffe_pb2.SolverParameter.CPU

with open('lenet_auto_solver.prototxt', 'w') as f:
    f.write(str(s))

solver = caffe.get_solver('lenet_auto_solver.prototxt')
first_loss = float(solver.net.forward()['loss'])
solver.step(60)
last_loss = float(solver.net.blobs['loss'].data)

correct = 0
for test_it in range(3):
    solver.test_nets[0].forward()
    correct += sum(solver.test_nets[0].blobs['score'].data.argmax(1) == solver.test_nets[0].blobs['label'].data)
accuracy = correct / 360.0
print('accuracy after 60 iterations:', accuracy)
"""


def test_a_netspec_net_trained_from_python(folder):
    ns = run_script(NETSPEC_TRAINING, folder)
    written = (folder / "lenet_auto_train.prototxt").read_text()
    assert 'type: "HDF5Data"' in written and 'source: "models/digits/train_list.txt"' in written
    net = ns["caffe"].Net(str(folder / "lenet_auto_test.prototxt"), ns["caffe"].TEST)
    assert [layer.type for layer in net.layers] == [
        "HDF5Data",
        "Convolution",
        "Pooling",
        "InnerProduct",
        "ReLU",
        "InnerProduct",
        "SoftmaxWithLoss",
    ]
    assert ns["solver"].iter == 60
    assert ns["last_loss"] < 0.5 * ns["first_loss"]
    assert ns["accuracy"] > 0.7
    assert not list(folder.glob("lenet_iter_*"))  # no snapshot before iteration 5000
