"""What the network tells about its engine: ``engine_plan``, the summary's engine line, the switch's
checks, and what a layer the engine ran says when its own ``backward`` is called."""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.examples import networks
from nn_from_scratch.layers.base import NotReadyError


def lenet():
    return nf.NeuralNetwork(networks.lenet5_layers(seed=0), nf.SoftMaxLoss(), input_shape=(1, 28, 28))


def test_lenet5_plan_names_the_blocks_by_pooling_phase_and_the_relus():
    net = lenet()
    plan = net.engine_plan()
    kinds = [type(layer).__name__ for layer in net.layers]
    assert [(a, b) for a, b, _ in plan][:2] == [(0, 3), (3, 6)]
    assert all(kinds[a:b] == ["Convolution", "ReLU", "MaxPool"] for a, b, _ in plan[:2])
    assert all("pooling phase" in what for _, _, what in plan[:2])
    assert [kinds[a] for a, _, _ in plan[2:]] == ["ReLU", "ReLU"]           # after the dense layers
    line = net.summary(print_fn=None).splitlines()[-1]
    assert line.startswith("Engine: on") and "conv1 -> relu1 -> pool1 by pooling phase" in line


def test_seed_cnn_plan_and_a_subclass_runs_its_own_code():
    net = networks.seed_lab_cnn(seed=0)
    plan = net.engine_plan()
    assert [type(net.layers[a]).__name__ for a, _, _ in plan] == ["Convolution", "ReLU", "Convolution", "ReLU"]

    class MyReLU(nf.ReLU):
        pass
    layers = networks.seed_lab_layers(seed=0)
    layers[1] = MyReLU()
    net = nf.NeuralNetwork(layers, nf.SoftMaxLoss(), input_shape=(1, 28, 28))
    assert 1 not in [a for a, _, _ in net.engine_plan()]                   # not the exact class: its own code


def test_engine_off_plan_is_empty_and_the_summary_says_so():
    net = lenet()
    net.engine = False
    assert net.engine_plan() == []
    assert net.summary(print_fn=None).splitlines()[-1].startswith("Engine: off")
    net.engine = True
    assert net.engine_plan()


@pytest.mark.parametrize("bad", ["yes", 1, None, np.array([True])])
def test_the_switch_takes_only_a_bool(bad):
    with pytest.raises((TypeError, ValueError), match="engine"):
        nf.NeuralNetwork(networks.lenet5_layers(seed=0), nf.SoftMaxLoss(), engine=bad)
    net = lenet()
    with pytest.raises((TypeError, ValueError), match="engine"):
        net.engine = bad
    assert net.engine is True


def test_a_layer_the_engine_ran_says_so_from_its_own_backward():
    net = lenet()
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    y = net.forward(x)
    conv = net.layers[0]
    with pytest.raises(NotReadyError, match="conv1.*fast path"):
        conv.backward(np.ones((3, 6, 28, 28), np.float32))
    dx = net.backward(np.ones_like(y))                     # the network's backward works
    assert dx.shape == x.shape
    own = conv.forward(x)                                  # and so does the layer's own pair
    assert conv.backward(np.ones_like(own)).shape == x.shape
