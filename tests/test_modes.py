"""Training / inference mode (``Node.training``, ``NeuralNetwork.train/eval/inference``).

The reference is the contract itself (CONTRACTS.md C2, issue 24): a probe layer records the
mode it sees in every forward; its output also depends on the mode (``x + 1`` training,
``x`` inference), so a mode that did not reach a forked worker shows in the numbers.
"""
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine import parallel
from nn_from_scratch.interfaces import Node
from nn_from_scratch.training.serialization import ModelFileError


class ModeProbe(Node):
    """``y = x + [training]``; remembers the modes its forwards ran in (in this process)."""

    per_sample = True

    def __init__(self, shape=None, name=None):
        super().__init__(shape, name)
        self._seen = []          # private: a public list would count as configuration (parallel.config_key)

    @property
    def seen(self):
        return self._seen

    def _forward(self, x):
        self._seen.append(self.training)
        return x + (1.0 if self.training else 0.0)

    def _backward(self, dy):
        return dy


def net_with_probe(workers=1):
    probe = ModeProbe()
    lin = nf.Linear(4, 3, seed=0, dtype=np.float64)
    return nf.NeuralNetwork([probe, lin], loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=workers), probe


def data(n=12):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def test_layers_train_by_default_as_in_a_students_loop():
    """The seed lab calls layer.forward directly: that is training."""
    probe = ModeProbe()
    assert probe.training is True and nf.ReLU().training is True and nf.Linear(2, 2).training is True
    probe.forward(np.zeros((2, 3)))
    assert probe.seen == [True]
    net, probe = net_with_probe()
    assert net.training is True
    net.forward(np.zeros((2, 4)))          # a manual loop on the network: the mode set (training)
    assert probe.seen == [True]


def test_train_and_eval_set_every_layer():
    net, probe = net_with_probe()
    assert net.eval() is net
    assert net.training is False and all(layer.training is False for layer in net.layers)
    assert net.loss_fn.training is False
    net.train()
    assert net.training is True and all(layer.training for layer in net.layers)
    net.train(False)
    assert net.training is False
    with pytest.raises(TypeError, match=r"network.train: mode must be True .* received 'eval'"):
        net.train("eval")


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")     # 2 epochs of a random problem
def test_fit_trains_validation_infers_and_the_mode_comes_back():
    X, y = data()
    net, probe = net_with_probe()
    net.eval()
    net.fit(X, y, epochs=2, batch_size=6, validation_data=(X[:4], y[:4]), verbose=0)
    # per epoch: two training batches, then one validation pass
    assert probe.seen == [True, True, False, True, True, False]
    assert net.training is False and probe.training is False     # the previous mode, restored
    net.train()
    probe.seen.clear()
    net.fit(X, y, epochs=1, batch_size=12, verbose=0)
    assert probe.seen == [True] and net.training is True


def test_fit_restores_each_layers_own_mode():
    X, y = data()
    net, probe = net_with_probe()
    probe.training = False                   # one layer put in inference mode by hand
    net.fit(X, y, epochs=1, batch_size=12, verbose=0)
    assert probe.seen == [True]              # fit trains every layer ...
    assert probe.training is False and net.layers[1].training is True   # ... and gives each its own back


@pytest.mark.parametrize("call", ["predict", "evaluate", "layer_outputs", "input_gradient", "gradients"])
def test_analysis_methods_infer_and_restore(call):
    X, y = data(5)
    net, probe = net_with_probe()
    expected_out = X @ net.layers[1].weight + net.layers[1].bias       # probe is the identity when inferring
    args = {"predict": (X,), "evaluate": (X, y), "layer_outputs": (X,), "input_gradient": (X, y),
            "gradients": (X, y)}[call]
    result = getattr(net, call)(*args)
    assert probe.seen == [False] and net.training is True and probe.training is True
    if call == "predict":
        np.testing.assert_allclose(result, expected_out, rtol=1e-13)
    if call == "layer_outputs":
        np.testing.assert_array_equal(result[probe.name], X)


def test_inference_context_restores_even_after_an_error():
    net, probe = net_with_probe()
    probe.training = False
    net.layers[1].training = True
    with pytest.raises(RuntimeError, match="inside"):
        with net.inference() as same:
            assert same is net and net.training is False
            assert all(layer.training is False for layer in net.layers)
            net.forward(np.zeros((1, 4)))
            raise RuntimeError("inside")
    assert probe.seen == [False]
    assert probe.training is False and net.layers[1].training is True and net.training is True


def test_modes_are_saved_with_the_model(tmp_path):
    net, probe = net_with_probe()
    net.eval()
    net.layers[1].training = True            # a mixed state survives too
    path = str(tmp_path / "m.npz")
    net.save(path)
    back = nf.NeuralNetwork.load(path)
    assert back.training is False
    assert [layer.training for layer in back.layers] == [False, True]
    other, _ = net_with_probe()
    other.load(path)                          # weights into an existing network: its modes too
    assert other.training is False and [layer.training for layer in other.layers] == [False, True]


def test_damaged_modes_in_a_file_are_named(tmp_path, monkeypatch):
    net, _ = net_with_probe()
    cfg = net.get_config()
    monkeypatch.setattr(type(net), "get_config", lambda self: {**cfg, "layer_training": [True]})
    path = str(tmp_path / "m.npz")
    net.save(path)
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match=r"saved training modes are damaged: expected 2 booleans, received \[True\]"):
        nf.NeuralNetwork.load(path)


KINDS = ["threads"] + (["processes"] if hasattr(os, "fork") else [])


@pytest.mark.parametrize("kind", KINDS)
def test_the_split_step_and_its_inference_passes_see_the_mode(kind, monkeypatch):
    """Forked workers copy the layers once: the mode must reach them with every message."""
    monkeypatch.setattr(parallel, "SPLIT_WITH", kind)
    monkeypatch.setattr(parallel, "MIN_SHARD", 2)
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 2)
    X, y = data(8)
    split, _ = net_with_probe(workers=2)
    one, _ = net_with_probe(workers=1)
    try:
        l2, out2 = split._forward_backward(X, y)          # training (the default mode)
        assert split._sharded is not None
        l1, out1 = one._forward_backward(X, y)
        np.testing.assert_allclose(out2, out1, rtol=1e-14)
        # predict on the workers kept by the split: inference mode there too (the shift is gone)
        np.testing.assert_allclose(split.predict(X, batch_size=8), one.predict(X, batch_size=8), rtol=1e-14)
        np.testing.assert_allclose(split.predict(X, batch_size=8), out1 - split.layers[1].weight.sum(axis=0),
                                   rtol=1e-12, atol=1e-12)
        # a mode switch does not re-fork the workers (the flag is not part of the configuration key)
        before = split._sharded
        split.eval()
        l3, out3 = split._forward_backward(X, y)         # a step in inference mode: the workers infer too
        assert split._sharded is before
        np.testing.assert_allclose(out3, split.predict(X, batch_size=8), rtol=1e-14)
    finally:
        split.stop_workers()
