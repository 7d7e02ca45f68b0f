"""BatchNorm networks split over workers with the whole batch's statistics (engine/parallel/sync.py).

The reference is the same training run in one process (``workers=1``: the layer's own code on the
whole batch), float64: losses, parameters after several steps, moving mean and variance, and the
predictions, for the processes and the threads split, with Dropout in the network and uneven
shards.  The combination formula itself is checked against NumPy on the concatenated data.
"""
import os
import signal
import warnings

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine import parallel
from nn_from_scratch.engine.parallel import policy, sync

KINDS = ["processes", "threads"]


@pytest.fixture(params=KINDS)
def kind(request, monkeypatch):
    if request.param == "processes" and not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    monkeypatch.setattr(parallel, "SPLIT_WITH", request.param)
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 5)
    monkeypatch.setattr(parallel, "MIN_SHARD", 5)
    if not parallel.split_allowed():
        pytest.skip("another non-daemon thread is alive: splits are off here (as designed)")
    return request.param


def bn_net(workers, optimizer, dtype=np.float64):
    layers = [nf.Conv2D(1, 4, 3, seed=0), nf.BatchNorm((None, 4, None, None), momentum=0.9), nf.ReLU(),
              nf.MaxPool(pool_size=2), nf.Flatten(), nf.Dropout(0.25, seed=2), nf.Linear(100, 16, seed=1),
              nf.BatchNorm(16, momentum=0.8), nf.ReLU(), nf.Linear(16, 10, seed=4)]
    return nf.NeuralNetwork(layers, nf.SoftMaxLoss(), optimizer=optimizer, workers=workers).astype(dtype)


def data(n=123, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 12, 12)) * 2 + 0.5, rng.integers(0, 10, n)


def fit(net, X, y, epochs=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nf.TrainingWarning)
        return net.fit(X, y, epochs=epochs, batch_size=41, seed=0, verbose=0).history["loss"]


@pytest.mark.parametrize("optimizer, rtol", [(lambda: nf.SGD(0.1), 1e-12), (lambda: nf.Adam(1e-2), 1e-9)],
                         ids=["sgd", "adam"])
def test_split_batchnorm_training_equals_the_whole_batch(kind, optimizer, rtol):
    X, y = data()
    net, ref = bn_net(3, optimizer()), bn_net(1, optimizer())
    assert policy.shard_count(net, 41) == 3                     # 13 + 14 + 14 samples: uneven shards
    loss, ref_loss = fit(net, X, y), fit(ref, X, y)
    split = net.batch_split.current
    assert split is not None and split.kind == kind and split.shards == 3
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=0)
    for a, b in zip(net.layers, ref.layers):
        for name in a.params:
            np.testing.assert_allclose(a.params[name], b.params[name], rtol=rtol, atol=rtol * 1e-2, err_msg=name)
        for name in a.buffers:                                  # updated once per step, as unsplit
            np.testing.assert_allclose(a.buffers[name], b.buffers[name], rtol=rtol, atol=rtol * 1e-2, err_msg=name)
    # inference over the workers: they read the network's moving statistics
    net.batch_split.begin_inference(net)
    assert net.batch_split._inference_split is split
    net.batch_split.end_inference()
    np.testing.assert_allclose(net.predict(X), ref.predict(X), rtol=rtol, atol=rtol * 1e-2)
    net.stop_workers()


def test_one_split_step_gives_the_whole_batch_gradients(kind):
    X, y = data(60)
    net, ref = bn_net(2, nf.SGD(0.1)), bn_net(1, nf.SGD(0.1))
    loss, out = net.train_step(X, y)
    loss1, out1 = ref.train_step(X, y)
    assert net.batch_split.current is not None
    np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-13)
    np.testing.assert_allclose(out, out1, rtol=1e-12, atol=1e-13)
    for a, b in zip(net.layers, ref.layers):
        for name in a.params:
            np.testing.assert_allclose(a.grads[name], b.grads[name], rtol=1e-11, atol=1e-14, err_msg=f"{a.name}.{name}")
    net.stop_workers()


def test_float32_split_agrees_with_the_whole_batch_to_float32_rounding(kind):
    X, y = data()
    net, ref = bn_net(3, nf.SGD(0.05), np.float32), bn_net(1, nf.SGD(0.05), np.float32)
    np.testing.assert_allclose(fit(net, X, y, 2), fit(ref, X, y, 2), rtol=2e-5)
    for a, b in zip(net.layers, ref.layers):
        for name in a.buffers:
            np.testing.assert_allclose(a.buffers[name], b.buffers[name], rtol=1e-4, atol=1e-6)
    net.stop_workers()


def test_chan_combination_equals_numpy_on_the_whole_data():
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 5)) + 1000.0 for n in (7, 13, 1, 20)]   # a large mean: no cancellation
    whole = np.concatenate(parts)
    stats = [[np.asarray(float(len(p))), p.mean(axis=0), ((p - p.mean(axis=0)) ** 2).sum(axis=0)] for p in parts]
    n, mean, var = sync.combine_stats(stats)
    assert float(n) == len(whole)
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(var, whole.var(axis=0), rtol=1e-11)
    # float32: the shards' M2 keep the variance; sum x^2 - n mu^2 would lose it entirely at this mean
    stats32 = [[n_, m.astype(np.float32), m2.astype(np.float32)] for n_, m, m2 in stats]
    _, _, var32 = sync.combine_stats(stats32)
    np.testing.assert_allclose(var32, whole.var(axis=0), rtol=1e-4)
    x32 = whole.astype(np.float32)
    naive = (x32 * x32).sum(axis=0) / len(whole) - x32.mean(axis=0) ** 2
    assert np.max(np.abs(naive - whole.var(axis=0))) > 1e-2       # what the formula avoids
    sums = [[rng.standard_normal(3), rng.standard_normal(3)] for _ in range(3)]
    total = sync.combine_sums(sums)
    np.testing.assert_allclose(total[0], sums[0][0] + sums[1][0] + sums[2][0], rtol=1e-15)


def test_a_subclass_of_batchnorm_keeps_the_network_whole(kind):
    class MyNorm(nf.BatchNorm):
        pass
    net = nf.NeuralNetwork([nf.Linear(4, 6, seed=0), MyNorm(6), nf.Linear(6, 3, seed=1)], nf.SoftMaxLoss(), workers=2)
    assert policy.shard_count(net, 64) == 1
    net2 = nf.NeuralNetwork([nf.Linear(4, 6, seed=0), nf.BatchNorm(6), nf.Linear(6, 3, seed=1)], nf.SoftMaxLoss(),
                            workers=2)
    assert policy.shard_count(net2, 64) == 2


def test_the_network_layers_are_plain_again_after_a_split_step(kind):
    X, y = data(60)
    net = bn_net(2, nf.SGD(0.1))
    net.train_step(X, y)
    assert net.batch_split.current is not None
    for layer in net.layers:
        assert "_forward" not in vars(layer) and "_backward" not in vars(layer)
    net.stop_workers()


def test_a_stopped_worker_mid_exchange_reruns_the_step_and_updates_moving_stats_once(monkeypatch):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    monkeypatch.setattr(parallel, "SPLIT_WITH", "processes")
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 5)
    monkeypatch.setattr(parallel, "WAIT_MIN_S", 0.5)
    monkeypatch.setattr(parallel, "WAIT_FACTOR", 1.0)
    if not parallel.split_allowed():
        pytest.skip("splits are off here")
    X, y = data(60)
    net, ref = bn_net(2, nf.SGD(0.1)), bn_net(1, nf.SGD(0.1))
    net.train_step(X, y)
    ref.train_step(X, y)
    (pid,) = net.batch_split.current.pids
    os.kill(pid, signal.SIGSTOP)
    with pytest.warns(RuntimeWarning, match="WorkerTimeout"):
        loss, _ = net.train_step(X, y)
    loss1, _ = ref.train_step(X, y)
    np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-12)
    for a, b in zip(net.layers, ref.layers):
        for name in a.buffers:
            np.testing.assert_allclose(a.buffers[name], b.buffers[name], rtol=1e-12, err_msg=name)
    net.stop_workers()


def test_no_fused_engine_unit_covers_a_synced_batchnorm(monkeypatch):
    """A fused block computing BatchNorm itself (Convolution -> BatchNorm -> ReLU -> MaxPool) would
    bypass the exchange: the split's runner takes the first layer's own unit instead, and runs the
    BatchNorm by its (hooked) code."""
    from nn_from_scratch.engine.runner import Runner

    class Unit:
        def __init__(self, size):
            self.size = size

    def fake(self, layers, i, x, fuse):
        return Unit(4 if fuse and i == 0 else 1)
    monkeypatch.setattr(Runner, "_unit", fake)
    layers = [nf.Conv2D(1, 4, 3, seed=0), nf.BatchNorm((None, 4, None, None)), nf.ReLU(), nf.MaxPool(pool_size=2)]
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert Runner()._unit(layers, 0, x, True).size == 4          # the plain runner fuses the four
    assert sync.SplitRunner()._unit(layers, 0, x, True).size == 1
    assert sync.SplitRunner()._unit(layers, 1, x, True) is None   # the BatchNorm: its own code
    assert sync.SplitRunner()._unit(layers, 2, x, True).size == 1
