"""ReLU -> MaxPool run as one unit by the engine (engine/fusion.py, ``ReluPoolUnit``): the layers' numbers, bit for bit.

References: the layers' own ``forward``/``backward`` one by one (``engine=False``, which the
TensorFlow cross-checks and finite-difference tests hold), and the engine with the fusion off
(``fusion.ENABLED = False``: every layer by its own unit, the convolution by the same arrangement
as with the fusion on).  Inputs and weights are small integers so that windows hold ties - at
zero after the ReLU, and between positive values - which is where pooling before the ReLU could
route a gradient differently.  With a random upstream gradient the convolution's gradient sums
are not exact, so the layers' own im2col and the engine's arrangements may round them apart:
bit for bit against ``fusion.ENABLED = False`` then, and against ``engine=False`` with integer
upstream gradients and weights (every sum exact in any order).
"""
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine import fusion
from nn_from_scratch.engine.conv import ConvUnit
from nn_from_scratch.engine.pooling import MaxPoolUnit
from nn_from_scratch.layers.base import NotReadyError, ShapeError
from engine_helpers import record_processes

GEOMETRIES = [
    (1, dict(pool_size=2), (3, 2, 9)),                                    # 1-D, odd length
    (2, dict(pool_size=2), (3, 2, 8, 6)),                                 # LeNet's 2x2
    (2, dict(pool_size=3, stride=2), (2, 2, 9, 7)),                       # overlapping windows
    (2, dict(pool_size=(2, 3), padding="same"), (2, 2, 7, 8)),            # padded (-inf) windows
    (3, dict(pool_size=2), (2, 2, 4, 6, 4)),
]


def _layers(backend, nd, pool_kw, x_shape, seed=0, integer_linear=False):
    """Conv (integer weights) -> ReLU -> MaxPool -> ReLU -> MaxPool(1) -> flatten -> Linear."""
    rng = np.random.default_rng(seed)
    conv = nf.Convolution(in_channels=2, out_channels=3, kernel_size=3, padding="same", ndim=nd, seed=seed,
                          dtype=np.float64)
    for p in conv.params.values():
        p[...] = backend.asarray(rng.integers(-1, 2, p.shape).astype(np.float64))
    layers = [conv, nf.ReLU(), nf.MaxPool(ndim=nd, **pool_kw), nf.ReLU(), nf.MaxPool(ndim=nd, pool_size=1),
              nf.Vectorization()]
    h = backend.asarray(np.zeros((1,) + x_shape[1:]))
    for layer in layers:
        h = layer.forward(h)
    linear = nf.Linear(h.shape[1], 4, seed=seed + 1, dtype=np.float64)
    if integer_linear:
        linear.params["W"][...] = backend.asarray(rng.integers(-2, 3, linear.params["W"].shape).astype(np.float64))
    return layers + [linear]


def _data(backend, x_shape, seed=0):
    rng = np.random.default_rng(seed + 10)
    x = rng.integers(-2, 3, x_shape).astype(np.float64)
    return backend.asarray(x), rng


def _through_network(layers, x, g, engine=True):
    """``NeuralNetwork.forward`` then ``backward``: output, dL/dx, every parameter gradient, and
    the units the engine ran (``{first layer index: unit class or None}``; None with ``engine=False``)."""
    net = nf.NeuralNetwork(layers, engine=engine)
    y = net.forward(x)
    dx = net.backward(g)
    grads = {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()}
    return y, dx, grads, _units(net)


def _units(net):
    """``{first layer index: unit class or None}`` of the network's last forward (None: not through the engine)."""
    tape = net._runner._tape
    return None if tape is None else {i: (type(u) if u is not None else None) for i, u in tape[1]}


def _assert_same(backend, got, want):
    (y, dx, grads), (y0, dx0, grads0) = got[:3], want[:3]
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(y0))
    np.testing.assert_array_equal(backend.to_numpy(dx), backend.to_numpy(dx0))
    assert grads.keys() == grads0.keys()
    for k in grads:
        np.testing.assert_array_equal(backend.to_numpy(grads[k]), backend.to_numpy(grads0[k]), err_msg=str(k))


FUSED = {0: ConvUnit, 1: fusion.ReluPoolUnit, 3: fusion.ReluPoolUnit, 5: None, 6: None}
ONE_BY_ONE = {0: ConvUnit, 1: fusion.ElementwiseUnit, 2: MaxPoolUnit, 3: fusion.ElementwiseUnit, 4: MaxPoolUnit, 5: None, 6: None}


@pytest.fixture
def unfused(monkeypatch):
    """Run ``body()`` with the fusion off (``fusion.ENABLED = False``) and return its result."""
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
    assert reference[3] == ONE_BY_ONE                       # unfused: each ReLU and MaxPool by its own unit
    fused = _through_network(layers, x, g)
    assert fused[3] == FUSED                                # fused: both pairs ran as one
    _assert_same(backend, fused, reference)
    # and the layers' own code (engine=False): the same output; dL/dx and the gradients to rounding
    # (the convolution's sums in another order)
    own = _through_network(layers, x, g, engine=False)
    assert own[3] is None
    np.testing.assert_array_equal(backend.to_numpy(fused[0]), backend.to_numpy(own[0]))
    for got, want in [(fused[1], own[1])] + [(fused[2][k], own[2][k]) for k in own[2]]:
        got, want = backend.to_numpy(got), backend.to_numpy(want)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())
    # the cases the fusion has to get right are there: many entries the ReLU zeroes, and few
    # distinct positive values (integers), so windows with tied positive maxima
    h = backend.to_numpy(layers[0].forward(x))
    assert (h <= 0).mean() > 0.2 and (h > 0).sum() > 5 * len(np.unique(h[h > 0]))


@pytest.mark.parametrize("nd,pool_kw,x_shape", GEOMETRIES)
def test_fused_pairs_give_the_layers_own_numbers_bit_for_bit(backend, nd, pool_kw, x_shape):
    """Integer weights, data and upstream gradient: every sum exact, so the engine (fused pairs,
    its convolution) and the layers' own code (``engine=False``) must agree bit for bit."""
    layers = _layers(backend, nd, pool_kw, x_shape, integer_linear=True)
    x, rng = _data(backend, x_shape)
    g = backend.asarray(rng.integers(-3, 4, (x_shape[0], 4)).astype(np.float64))
    own = _through_network(layers, x, g, engine=False)
    fused = _through_network(layers, x, g)
    assert fused[3] == FUSED
    _assert_same(backend, fused, own)


def test_a_layer_the_engine_ran_has_no_cache_and_a_students_loop_runs_with_the_engine_off(backend):
    """After ``net.forward`` with the engine on, a layer the engine ran says, from its own
    ``backward``, that no forward ran (naming itself) - rather than use an older forward's cache.
    With ``engine=False``, ``net.forward`` then a hand-written loop over ``layer.backward`` gives
    exactly the engine's gradients; a layer-by-layer forward after a fused one (no stale mask
    left in the pool) and a fused one after that give them too."""
    nd, pool_kw, x_shape = GEOMETRIES[1]
    layers = _layers(backend, nd, pool_kw, x_shape, integer_linear=True)
    for i, layer in enumerate(layers):
        layer.name = f"layer{i}"
    x, rng = _data(backend, x_shape)
    g = backend.asarray(rng.integers(-3, 4, (x_shape[0], 4)).astype(np.float64))
    engine = _through_network(layers, x, g)                  # the engine's numbers
    assert engine[3] == FUSED

    def by_hand(forward):
        y = forward()
        d = g
        for i in range(len(layers) - 1, -1, -1):
            d = layers[i].backward(d)
        return y, d, {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()}

    def one_by_one():
        h = x
        for layer in layers:
            h = layer.forward(h)
        return h

    net = nf.NeuralNetwork(layers)
    y = net.forward(x)
    for i in (4, 3, 2, 1, 0):                               # every layer a unit ran
        with pytest.raises(NotReadyError, match=rf"layer '{layers[i].name}'.*before forward"):
            layers[i].backward(backend.asarray(np.ones((1,))))
    # the layers the engine left to their own code kept theirs: the student's loop runs from there
    d = layers[6].backward(g)
    assert layers[5].backward(d).shape == tuple(y.shape[:1]) + (3, 4, 3)

    off = nf.NeuralNetwork(layers, engine=False)
    _assert_same(backend, by_hand(lambda: off.forward(x)), engine)
    assert off._runner._tape is None                        # the engine kept no record: it did not run
    net.forward(_data(backend, x_shape, seed=5)[0])         # fused, other data: then
    _assert_same(backend, by_hand(one_by_one), engine)      # one by one on x
    _assert_same(backend, _through_network(layers, x, g), engine)


def test_only_the_exact_classes_are_fused_and_a_declared_shape_is_still_checked():
    class ShiftedReLU(nf.ReLU):                               # a subclass may change the rule: never fused
        def _forward(self, x):
            return super()._forward(x) + 1.0

    class MyPool(nf.MaxPool):
        pass

    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    layers = [ShiftedReLU(), nf.MaxPool(pool_size=2)]
    net = nf.NeuralNetwork(layers)
    y = net.forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, 1, 2, 2, 2, 2).max(axis=(3, 5)).clip(0) + 1.0)
    assert _units(net) == {0: None, 1: MaxPoolUnit}          # the subclass ran its own code
    assert layers[0]._cache["y"] is not None
    sub = nf.NeuralNetwork([nf.ReLU(), MyPool(pool_size=2)])
    np.testing.assert_array_equal(sub.forward(x), x.reshape(2, 1, 2, 2, 2, 2).max(axis=(3, 5)).clip(0))
    assert _units(sub) == {0: fusion.ElementwiseUnit, 1: None}
    declared = nf.NeuralNetwork([nf.ReLU((None, 1, 4, 5), name="act"), nf.MaxPool(pool_size=2)])
    with pytest.raises(ShapeError, match=r"ReLU layer 'act' expects input of shape \(N, 1, 4, 5\).*\(2, 1, 4, 4\)"):
        declared.forward(x)


def test_the_split_training_step_runs_the_pairs_fused_too(monkeypatch, tmp_path):
    """Forked workers and this process run their shards through the same fused unit: a split
    step's loss and gradients equal the one-worker step's of the layers' own code (float64, to
    rounding)."""
    X = np.random.default_rng(1).integers(-2, 3, (60, 1, 12, 12)).astype(np.float64)
    y = np.arange(60) % 4

    def net(workers, engine=True):
        layers = [nf.Convolution(in_channels=1, out_channels=3, kernel_size=3, seed=2, dtype=np.float64), nf.ReLU(),
                  nf.MaxPool(pool_size=2), nf.Vectorization(), nf.Linear(75, 4, seed=3, dtype=np.float64)]
        return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=workers,
                                engine=engine)

    one = net(1, engine=False)
    loss1, _ = one.train_step(X, y)
    seen = record_processes(monkeypatch, fusion.ReluPoolUnit, tmp_path / "pids")
    split = net(2)
    loss2, _ = split.train_step(X, y)
    assert split._sharded is not None                       # the step was split
    assert _units(split) == {0: ConvUnit, 1: fusion.ReluPoolUnit, 3: None, 4: None}   # this process's shard
    workers = set(split._sharded.pids) if split._sharded.kind == "processes" else set()
    split.stop_workers()
    pids = seen()
    assert os.getpid() in pids and workers <= pids          # and the workers' shards
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-12)
    for a, b in zip(one.trainable_layers, split.trainable_layers):
        for k in a.params:
            np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-12, atol=1e-15)
