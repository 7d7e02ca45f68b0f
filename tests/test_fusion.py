"""ReLU -> MaxPool run fused (fusion.py): the same numbers as the layers one by one, bit for bit.

The reference is the unfused path (every layer's own ``forward``/``backward``, which the
TensorFlow cross-checks and finite-difference tests hold); inputs and weights are small
integers so that windows hold ties - at zero after the ReLU, and between positive values -
which is where pooling before the ReLU could route a gradient differently.
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine import fusion
from nn_from_scratch.layers.base import ShapeError

GEOMETRIES = [
    (1, dict(pool_size=2), (3, 2, 9)),                                    # 1-D, odd length
    (2, dict(pool_size=2), (3, 2, 8, 6)),                                 # LeNet's 2x2
    (2, dict(pool_size=3, stride=2), (2, 2, 9, 7)),                       # overlapping windows
    (2, dict(pool_size=(2, 3), padding="same"), (2, 2, 7, 8)),            # padded (-inf) windows
    (3, dict(pool_size=2), (2, 2, 4, 6, 4)),
]


def _layers(backend, nd, pool_kw, x_shape, seed=0):
    """Conv (integer weights) -> ReLU -> MaxPool -> ReLU -> MaxPool(1) -> flatten -> Linear."""
    rng = np.random.default_rng(seed)
    conv = nf.Convolution(in_channels=2, out_channels=3, kernel_size=3, padding="same", ndim=nd, seed=seed,
                          dtype=np.float64)
    for p in conv.params.values():
        p[...] = backend.asarray(rng.integers(-1, 2, p.shape).astype(np.float64))
    layers = [conv, nf.ReLU(), nf.MaxPool(ndim=nd, **pool_kw), nf.ReLU(), nf.MaxPool(ndim=nd, pool_size=1),
              nf.Vectorization()]
    h = np.zeros((1,) + x_shape[1:])
    for layer in layers:
        h = layer.forward(backend.asarray(h))
    return layers + [nf.Linear(h.shape[1], 4, seed=seed + 1, dtype=np.float64)]


def _data(backend, x_shape, seed=0):
    rng = np.random.default_rng(seed + 10)
    x = rng.integers(-2, 3, x_shape).astype(np.float64)
    return backend.asarray(x), rng


def _through_network(layers, x, g):
    """``NeuralNetwork.forward`` then ``backward``: output, dL/dx and every parameter gradient."""
    net = nf.NeuralNetwork(layers)
    y = net.forward(x)
    dx = net.backward(g)
    grads = {(i, k): v for i, layer in enumerate(layers) for k, v in layer.grads.items()}
    return y, dx, grads


def _assert_same(backend, got, want):
    (y, dx, grads), (y0, dx0, grads0) = got, want
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(y0))
    np.testing.assert_array_equal(backend.to_numpy(dx), backend.to_numpy(dx0))
    assert grads.keys() == grads0.keys()
    for k in grads:
        np.testing.assert_array_equal(backend.to_numpy(grads[k]), backend.to_numpy(grads0[k]))


@pytest.fixture
def unfused(monkeypatch):
    """Run ``body()`` with fusion off and return its result."""
    def run(body):
        with monkeypatch.context() as m:
            m.setattr(fusion, "ENABLED", False)
            return body()
    return run


@pytest.mark.parametrize("nd,pool_kw,x_shape", GEOMETRIES)
def test_fused_pairs_give_the_unfused_numbers_bit_for_bit(backend, unfused, nd, pool_kw, x_shape):
    layers = _layers(backend, nd, pool_kw, x_shape)
    x, rng = _data(backend, x_shape)
    g = backend.asarray(rng.standard_normal((x_shape[0], 4)))
    reference = unfused(lambda: _through_network(layers, x, g))
    relu = layers[1]
    assert relu._cache["y"] is not None                     # unfused: the ReLU computed its output
    fused = _through_network(layers, x, g)
    assert relu._cache["y"] is None and layers[3]._cache["y"] is None     # fused: both pairs ran as one
    _assert_same(backend, fused, reference)
    # the cases the fusion has to get right are there: many entries the ReLU zeroes, and few
    # distinct positive values (integers), so windows with tied positive maxima
    h = backend.to_numpy(layers[0].forward(x))
    assert (h <= 0).mean() > 0.2 and (h > 0).sum() > 5 * len(np.unique(h[h > 0]))


def test_a_students_loops_work_after_a_fused_forward_and_fused_after_unfused(backend, unfused):
    """``net.forward`` (fused) then the layers' ``backward`` in a hand-written loop; a layer-by-layer
    forward after a fused one (no stale mask left in the pool) and a fused one after that."""
    nd, pool_kw, x_shape = GEOMETRIES[1]
    layers = _layers(backend, nd, pool_kw, x_shape)
    x, rng = _data(backend, x_shape)
    g = backend.asarray(rng.standard_normal((x_shape[0], 4)))
    reference = unfused(lambda: _through_network(layers, x, g))

    def by_hand(forward):
        y = forward()
        d = g
        for i in range(len(layers) - 1, -1, -1):
            d = layers[i].backward(d)
        return y, d, {(i, k): v for i, layer in enumerate(layers) for k, v in layer.grads.items()}

    def one_by_one():
        h = x
        for layer in layers:
            h = layer.forward(h)
        return h

    _assert_same(backend, by_hand(lambda: nf.NeuralNetwork(layers).forward(x)), reference)
    nf.NeuralNetwork(layers).forward(_data(backend, x_shape, seed=5)[0])     # fused, other data: then
    _assert_same(backend, by_hand(one_by_one), reference)                     # one by one on x
    _assert_same(backend, _through_network(layers, x, g), reference)


def test_only_the_exact_classes_are_fused_and_a_declared_shape_is_still_checked():
    class ShiftedReLU(nf.ReLU):                               # a subclass may change the rule: never fused
        def _forward(self, x):
            return super()._forward(x) + 1.0

    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    layers = [ShiftedReLU(), nf.MaxPool(pool_size=2)]
    y = nf.NeuralNetwork(layers).forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, 1, 2, 2, 2, 2).max(axis=(3, 5)).clip(0) + 1.0)
    assert layers[0]._cache["y"] is not None
    declared = nf.NeuralNetwork([nf.ReLU((None, 1, 4, 5), name="act"), nf.MaxPool(pool_size=2)])
    with pytest.raises(ShapeError, match=r"ReLU layer 'act' expects input of shape \(N, 1, 4, 5\).*\(2, 1, 4, 4\)"):
        declared.forward(x)


def test_the_split_training_step_runs_the_pairs_fused_too(monkeypatch):
    """Forked workers and this process run their shards through the same fused forward: a split
    step's loss and gradients equal the unfused one-worker step's (float64, to rounding)."""
    X = np.random.default_rng(1).integers(-2, 3, (60, 1, 12, 12)).astype(np.float64)
    y = np.arange(60) % 4

    def net(workers):
        layers = [nf.Convolution(in_channels=1, out_channels=3, kernel_size=3, seed=2, dtype=np.float64), nf.ReLU(),
                  nf.MaxPool(pool_size=2), nf.Vectorization(), nf.Linear(75, 4, seed=3, dtype=np.float64)]
        return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=workers)

    with monkeypatch.context() as m:
        m.setattr(fusion, "ENABLED", False)
        one = net(1)
        loss1, _ = one.train_step(X, y)
    split = net(2)
    used = []
    monkeypatch.setattr(fusion, "forward", lambda layers, x, _f=fusion.forward: used.append(1) or _f(layers, x))
    loss2, _ = split.train_step(X, y)
    assert split._sharded is not None                       # the step was split
    split.stop_workers()
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-12)
    for a, b in zip(one.trainable_layers, split.trainable_layers):
        for k in a.params:
            np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-12, atol=1e-15)
    assert used                                              # this process's shard went through fusion
