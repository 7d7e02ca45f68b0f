"""``predict`` and ``evaluate`` (the engine's inference paths: folded BatchNorm, pooling-phase blocks,
chunks of a batch) equal the layers' own forward one by one, in float64, for the networks the
inference benchmark times (benchmarks/bench_inference.py): the lab CNN, LeNet-5, and LeNet-5 with
BatchNorm and Dropout.  The reference is ``engine=False`` in inference mode on the whole data at once
(no batches), and for ``evaluate`` the softmax cross-entropy and accuracy computed here from it.
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine.batchnorm_fold import FoldedPhaseUnit
from nn_from_scratch.layers.base import NotReadyError
from nn_from_scratch.examples import networks


def _lenet5_bn(seed=0):
    rng = np.random.default_rng(seed)
    layers = [
        nf.Convolution((None, 1, 28, 28), kernel_size=5, output_layers=6, padding=2, use_bias=False, seed=rng),
        nf.BatchNorm((None, 6, 28, 28)), nf.ReLU(), nf.MaxPool(pool_size=2),
        nf.Convolution((None, 6, 14, 14), kernel_size=5, output_layers=16, use_bias=False, seed=rng),
        nf.BatchNorm((None, 16, 10, 10)), nf.ReLU(), nf.MaxPool(pool_size=2),
        nf.Vectorization(),
        nf.Linear(400, 120, seed=rng), nf.ReLU(), nf.Dropout(0.3, seed=seed),
        nf.Linear(120, 84, seed=rng), nf.ReLU(), nf.Dropout(0.3, seed=seed + 1),
        nf.Linear(84, 10, seed=rng),
    ]
    for layer in layers:                     # moving statistics as after training
        if isinstance(layer, nf.BatchNorm):
            c = layer.channels
            layer.set_buffers(moving_mean=rng.normal(0, 0.5, c), moving_variance=rng.uniform(0.3, 2.0, c))
            layer.params["gamma"][...] = rng.uniform(-1.5, 1.5, c)
            layer.params["beta"][...] = rng.normal(0, 0.2, c)
    return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=nf.Adam(1e-3), input_shape=(1, 28, 28))


NETWORKS = {
    "lab_cnn": lambda: networks.seed_lab_cnn(batch_size=50, seed=0),
    "lenet5": lambda: nf.NeuralNetwork(networks.lenet5_layers(seed=0), loss_fn=nf.SoftMaxLoss(),
                                       input_shape=(1, 28, 28)),
    "lenet5_bn": _lenet5_bn,
}


def _reference(net, X):
    """Every layer's own forward, whole data, inference mode."""
    with net.inference():
        h = X
        for layer in net.layers:
            h = layer.forward(h)
    for layer in net.layers:
        layer.clear_cache()
    return h


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("batch_size", [64, 256, 1000])
def test_predict_equals_the_layers_in_float64(name, batch_size):
    net = NETWORKS[name]().astype(np.float64)
    X = np.random.default_rng(1).uniform(0, 1, (300, 1, 28, 28))
    want = _reference(net, X)
    got = net.predict(X, batch_size=batch_size)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert net.training                      # the mode it had before comes back


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_evaluate_equals_the_layers_in_float64(name):
    net = NETWORKS[name]().astype(np.float64)
    rng = np.random.default_rng(2)
    X, y = rng.uniform(0, 1, (300, 1, 28, 28)), rng.integers(0, 10, 300)
    logits = _reference(net, X)
    z = logits - logits.max(axis=1, keepdims=True)
    xent = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(300), y])
    acc = np.mean(logits.argmax(axis=1) == y)
    loss, accuracy = net.evaluate(X, y, batch_size=128)
    assert loss == pytest.approx(xent, rel=1e-12)
    assert accuracy == acc


def test_batchnorm_network_predicts_through_the_fold():
    """The BatchNorm LeNet-5's two blocks run folded (not the layers one by one) in ``predict``."""
    net = _lenet5_bn()
    seen = []
    forward = FoldedPhaseUnit.forward

    def spy(self, x):
        seen.append(self.context.layer.name)
        return forward(self, x)
    FoldedPhaseUnit.forward = spy
    try:
        net.predict(np.zeros((5, 1, 28, 28), dtype=np.float32))
    finally:
        FoldedPhaseUnit.forward = forward
    assert seen == [net.layers[0].name, net.layers[4].name]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_forward_only_equals_the_recorded_forward_bit_for_bit(name):
    """``Runner.forward(for_backward=False)`` (what ``predict`` runs) skips the pooling phases the
    backward reads: the outputs are the same numbers; nothing is recorded for a backward."""
    net = NETWORKS[name]().eval()
    X = np.random.default_rng(3).uniform(0, 1, (70, 1, 28, 28)).astype(np.float32)
    kept = net.runner.forward(net.layers, X)
    assert net.runner._tape is not None
    only = net.runner.forward(net.layers, X, for_backward=False)
    np.testing.assert_array_equal(only, kept)
    assert net.runner._tape is None
    with pytest.raises(NotReadyError):                       # a layer the engine ran has no cache
        net.backward(np.ones_like(only))


def test_phase_pool_refuses_a_backward_after_a_forward_only_pass():
    from nn_from_scratch.engine import phase_pool
    conv = nf.Convolution(in_channels=1, out_channels=2, kernel_size=5, seed=0)
    plan = phase_pool.PhasePool(conv, (3, 1, 12, 12), np.float32)
    x = np.random.default_rng(0).normal(size=(3, 1, 12, 12)).astype(np.float32)
    y = plan.forward(x, conv.params["W"], conv.params["b"], for_backward=False)
    with pytest.raises(RuntimeError, match="for_backward=True"):
        plan.backward(np.ones_like(y), conv.params["W"], conv.params["b"])
    with pytest.raises(RuntimeError, match="for_backward=True"):
        plan.argmax()


def test_a_subclass_forward_is_what_predict_runs():
    """A network subclass that overrides ``forward`` gets it called by ``predict`` (not the engine's
    forward-only pass behind its back)."""
    class Doubling(nf.NeuralNetwork):
        def forward(self, x, return_all=False):
            return 2 * super().forward(x, return_all)

    layers = networks.lenet5_layers(seed=0)
    X = np.random.default_rng(4).uniform(0, 1, (10, 1, 28, 28)).astype(np.float32)
    plain = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), input_shape=(1, 28, 28)).predict(X)
    doubled = Doubling(layers, loss_fn=nf.SoftMaxLoss(), input_shape=(1, 28, 28)).predict(X)
    np.testing.assert_array_equal(doubled, 2 * plain)


def _blas_threads():
    from threadpoolctl import threadpool_info
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


class _Probe(nf.ReLU):
    """A ReLU subclass (runs its own code) that notes the BLAS thread counts its forward sees."""

    seen = []

    def forward(self, x):
        _Probe.seen.append(_blas_threads())
        return super().forward(x)


def test_predict_holds_blas_to_one_thread_in_the_main_thread_only():
    import threading
    from threadpoolctl import threadpool_limits
    from nn_from_scratch.training import inference
    assert inference.BLAS_THREADS == 1
    net = nf.NeuralNetwork([nf.Linear(4, 3, seed=0), _Probe()], loss_fn=nf.SoftMaxLoss())
    X = np.ones((8, 4), dtype=np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        _Probe.seen.clear()
        net.predict(X, batch_size=4)
        assert _Probe.seen and all(counts == [1] * len(before) for counts in _Probe.seen)
        assert _blas_threads() == before                     # given back
        _Probe.seen.clear()
        t = threading.Thread(target=net.predict, args=(X,))  # elsewhere the process's setting is left alone
        t.start()
        t.join()
        assert _Probe.seen == [before]
