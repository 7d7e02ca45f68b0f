"""The example networks of ``examples/networks.py``, held to the studies' specifications (layer by
layer, parameter counts computed by hand), and the study command lines build theirs there."""
import numpy as np
import pytest

from nn_from_scratch import Convolution, GradientDescent, Linear, MaxPool, ReLU, SoftMaxLoss, Vectorization
from nn_from_scratch.examples import networks


def test_the_study_command_lines_build_the_example_networks():
    from nn_from_scratch.analysis.permutation_cli import build_seed_cnn
    from nn_from_scratch.analysis.separation_cli import separation_cnn
    assert separation_cnn is networks.separation_cnn
    a, b = build_seed_cnn(7, lr=0.01, momentum=0.5, batch_size=16), networks.permutation_cnn(7, 0.01, 0.5, 16)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("channels, hidden", [((8, 16), 64), ((32, 64), 512)])
def test_separation_cnn_is_the_specified_network(channels, hidden):
    c1, c2 = channels
    net = networks.separation_cnn(channels=channels, hidden=hidden, seed=3, batch_size=8)
    assert [layer.name for layer in net.layers] == ["conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2",
                                                    "flatten", "fc1", "relu3", "fc2"]
    assert [type(layer) for layer in net.layers] == [Convolution, ReLU, MaxPool, Convolution, ReLU, MaxPool,
                                                     Vectorization, Linear, ReLU, Linear]
    # 3x3 convolutions with padding 1 keep 28 and 14; each 2x2 pool halves
    counts = [c1 * 9 + c1, 0, 0, c2 * c1 * 9 + c2, 0, 0, 0, (c2 * 49 + 1) * hidden, 0, (hidden + 1) * 10]
    assert [layer.count_params() for layer in net.layers] == counts
    out = net.predict(np.zeros((2, 1, 28, 28), np.float32))
    assert out.shape == (2, 10) and net.name == "separation_cnn" and net.batch_size == 8
    assert isinstance(net.loss_fn, SoftMaxLoss) and net.optimizer.get_config()["lr"] == pytest.approx(1e-3)
    same, other = networks.separation_cnn(channels, hidden, seed=3), networks.separation_cnn(channels, hidden, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(net.get_weights(), same.get_weights()))
    assert not all(np.array_equal(x, y) for x, y in zip(net.get_weights(), other.get_weights()))


def test_permutation_cnn_is_the_specified_network():
    net = networks.permutation_cnn(5, lr=0.01, momentum=0.5, batch_size=16)
    assert [type(layer) for layer in net.layers] == [Convolution, ReLU, Vectorization, Linear]
    # 15x15 kernels, 2 filters on 28x28 -> (2, 14, 14) = 392 features -> 10 classes
    assert [layer.count_params() for layer in net.layers] == [2 * 225 + 2, 0, 0, 393 * 10]
    assert isinstance(net.optimizer, GradientDescent) and net.batch_size == 16
    assert net.optimizer.get_config()["lr"] == pytest.approx(0.01)
    assert net.optimizer.get_config()["momentum"] == pytest.approx(0.5)
    conv, dense = net.layers[0], net.layers[3]
    limit = np.sqrt(6 / (225 + 2 * 225))                   # Glorot-uniform: fan_in 1*225, fan_out 2*225
    assert np.abs(conv.W).max() <= limit and np.abs(conv.W).max() > 0.8 * limit
    assert not np.any(conv.b) and not np.any(dense.W[0])   # zero biases (the Linear's row 0)
