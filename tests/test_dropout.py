"""``Dropout``: formula, seeded masks, the split step, gradient check, save/load, bad input.

References: the formula ``y = x * m / (1 - rate)`` written here with the layer's own mask
(``draw_mask``, itself held to a Philox draw made here), float64 finite differences
(``gradcheck`` inside ``fixed_randomness``), the one-process run for the split step, a
binomial band for the drop rate, and Keras's own ``Dropout`` for the scaling (its kept
entries are ``x / (1 - rate)`` exactly as ours).
"""
import math
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.checks import gradcheck as gc
from nn_from_scratch.engine import parallel
from nn_from_scratch.training.serialization import ModelFileError


def test_training_forward_is_the_inverted_dropout_formula(rng):
    layer = nf.Dropout(0.3, seed=7)
    x = rng.standard_normal((5, 4, 3))
    x0 = x.copy()
    m = layer.draw_mask(x.shape)                   # the mask the next forward uses
    y = layer.forward(x)
    np.testing.assert_array_equal(x, x0)           # the input is not modified
    np.testing.assert_allclose(y, np.where(m, x / 0.7, 0.0), rtol=1e-15)
    np.testing.assert_array_equal(layer.mask, m)
    g = rng.standard_normal(y.shape)
    g0 = g.copy()
    np.testing.assert_allclose(layer.backward(g), np.where(m, g / 0.7, 0.0), rtol=1e-15)
    np.testing.assert_array_equal(g, g0)


def test_the_mask_is_a_philox_draw_keyed_by_seed_and_step():
    """Written out here: u ~ Philox(key=(seed, step)), samples laid out in blocks of 4 numbers."""
    layer = nf.Dropout(0.5, seed=12345)
    shape = (3, 5)                                 # 5 numbers per sample -> 8 (two blocks)
    u = np.random.Generator(np.random.Philox(key=np.array([12345, 2], dtype=np.uint64))).random((3, 8))[:, :5]
    np.testing.assert_array_equal(layer.draw_mask(shape, step=2), u >= 0.5)
    # any run of samples on its own: rows a..b of the batch's draw
    full = layer.draw_mask((10, 5), step=4)
    np.testing.assert_array_equal(layer.draw_mask((3, 5), step=4, sample_offset=6), full[6:9])


def test_inference_and_rate_zero_are_the_identity(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    layer = nf.Dropout(0.5, seed=0)
    layer.training = False
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x)
    assert y.dtype == np.float32 and layer.mask is None and layer.step == 0
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.ones_like(x))
    zero = nf.Dropout(0.0, seed=0)
    np.testing.assert_array_equal(zero.forward(x), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype, rng):
    x = rng.standard_normal((3, 8)).astype(dtype)
    layer = nf.Dropout(0.25, seed=1)
    y = layer.forward(x)
    assert y.dtype == dtype and layer.backward(np.ones_like(y)).dtype == dtype
    kept = layer.mask
    np.testing.assert_array_equal(y[kept], (x * dtype(1 / 0.75))[kept])


def test_drop_fraction_is_inside_its_binomial_band():
    n, rate = 200_000, 0.3
    m = nf.Dropout(rate, seed=3).draw_mask((n, 1))
    dropped = int((~m).sum())
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(dropped - n * rate) < 4.5 * sd, dropped


def test_seeded_reproducible_and_distinct_per_step_and_row():
    x = np.ones((16, 64))
    a, b, c = nf.Dropout(0.5, seed=5), nf.Dropout(0.5, seed=5), nf.Dropout(0.5, seed=6)
    ya1, ya2 = a.forward(x), a.forward(x)
    yb1, yb2 = b.forward(x), b.forward(x)
    np.testing.assert_array_equal(ya1, yb1)        # same seed: same masks, step after step
    np.testing.assert_array_equal(ya2, yb2)
    assert not np.array_equal(ya1, ya2)            # the next step draws a new mask
    assert not np.array_equal(ya1, c.forward(x))   # another seed, other masks
    rows = {r.tobytes() for r in ya1}
    assert len(rows) == 16                         # no two samples share a mask
    assert a.step == 2


def test_seed_none_follows_set_seed():
    nf.set_seed(11)
    s1 = nf.Dropout(0.5).seed
    nf.set_seed(11)
    s2 = nf.Dropout(0.5).seed
    assert s1 == s2 and nf.Dropout(0.5).seed != s1


def test_fixed_randomness_reuses_one_mask_then_moves_on(rng):
    layer = nf.Dropout(0.5, seed=2)
    x = rng.standard_normal((4, 10))
    with layer.fixed_randomness():
        y1 = layer.forward(x)
        y2 = layer.forward(x + 1.0)
        np.testing.assert_array_equal(y1 != 0, y2 != 0)
        assert layer.step == 0
    assert layer.step == 1
    assert not np.array_equal(layer.forward(x) != 0, y1 != 0)


@pytest.mark.parametrize("training", [True, False])
def test_gradient_check(training, rng):
    layer = nf.Dropout(0.4, seed=9)
    layer.training = training
    x = rng.standard_normal((4, 3, 5))
    with layer.fixed_randomness():
        res = gc.check_layer(layer, x, kink_tol=None)
    assert res.checked == x.size and res.max_rel_error <= 1e-7, res


def test_gradient_check_of_a_network_with_dropout(rng):
    layers = [nf.Linear(6, 8, dtype=np.float64, seed=1), nf.Tanh(), nf.Dropout(0.5, seed=3),
              nf.Linear(8, 3, dtype=np.float64, seed=2)]
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss())
    with layers[2].fixed_randomness():
        res = gc.check_network(net, rng.standard_normal((5, 6)), rng.integers(0, 3, 5), kink_tol=None)
        assert layers[2].mask is not None and not layers[2].mask.all()
    assert res.checked > 0 and res.max_rel_error <= 1e-7, res


def test_gradcheck_freezes_the_mask_by_itself(rng):
    """C3: gradcheck enters every layer's fixed_randomness(); a Dropout then checks exactly."""
    layer = nf.Dropout(0.5, seed=1)
    res = gc.check_layer(layer, rng.standard_normal((4, 6)), kink_tol=None)
    assert res.max_rel_error <= 1e-7 and layer.mask is not None and not layer.mask.all(), res
    net = nf.NeuralNetwork([nf.Linear(5, 6, dtype=np.float64, seed=0), nf.Dropout(0.5, seed=2),
                            nf.Linear(6, 2, dtype=np.float64, seed=1)], loss_fn=nf.SoftMaxLoss())
    res = gc.check_network(net, rng.standard_normal((3, 5)), rng.integers(0, 2, 3), kink_tol=None)
    assert res.max_rel_error <= 1e-7, res


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan"), "0.5", True, None])
def test_bad_rate_is_named(rate):
    with pytest.raises(ValueError, match=r"Dropout layer 'dropout_\d+': rate .* 0 <= rate < 1, received"):
        nf.Dropout(rate)


@pytest.mark.parametrize("seed", [-1, 1.5, "3"])
def test_bad_seed_is_named(seed):
    with pytest.raises(ValueError, match=r"Dropout layer .*: seed must be an integer"):
        nf.Dropout(0.5, seed=seed)


def test_save_load_round_trip_continues_the_mask_sequence(tmp_path, rng):
    net = nf.NeuralNetwork([nf.Linear(4, 6, seed=0), nf.Dropout(0.5, seed=21), nf.Linear(6, 2, seed=1)],
                           loss_fn=nf.SoftMaxLoss())
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 2, 8)
    net.fit(X, y, epochs=1, batch_size=4, verbose=0)
    assert net.layers[1].step == 2
    path = str(tmp_path / "d.npz")
    net.save(path)
    back = nf.NeuralNetwork.load(path)
    d = back.layers[1]
    assert isinstance(d, nf.Dropout) and d.rate == 0.5 and d.seed == 21 and d.step == 2
    x = np.ones((3, 6), dtype=np.float32)
    np.testing.assert_array_equal(d.forward(x), net.layers[1].forward(x))
    np.testing.assert_array_equal(back.predict(X), net.predict(X))


def test_damaged_random_state_in_a_file_is_named(tmp_path, monkeypatch):
    net = nf.NeuralNetwork([nf.Dropout(0.5, seed=1), nf.Linear(3, 2, seed=0)], loss_fn=nf.SoftMaxLoss())
    cfg = net.get_config()
    monkeypatch.setattr(type(net), "get_config", lambda self: {**cfg, "layer_random_state": [-4, None]})
    path = str(tmp_path / "d.npz")
    net.save(path)
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match=r"layer 0: Dropout layer .* random state must be an integer >= 0"):
        nf.NeuralNetwork.load(path)


# ------------------------------------------------------------------ the split step
KINDS = ["threads"] + (["processes"] if hasattr(os, "fork") else [])


def dropout_net(workers, seed=4):
    lin = nf.Linear(64, 64, use_bias=False, dtype=np.float64, seed=0)
    lin.set_params(W=np.vstack([np.zeros((1, 64)), np.eye(64)]))       # y = x: the output is the mask
    return nf.NeuralNetwork([nf.Dropout(0.5, seed=seed), lin], loss_fn=nf.MSELoss(), optimizer=nf.SGD(0.1),
                            workers=workers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("workers", [2, 3])
def test_split_step_masks_differ_per_shard_and_equal_the_unsplit_ones(kind, workers, monkeypatch):
    """The bug of issue 24: both workers drew identical masks (rows 0-3 equal rows 32-35)."""
    monkeypatch.setattr(parallel, "SPLIT_WITH", kind)
    monkeypatch.setattr(parallel, "MIN_SHARD", 2)
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 2)
    n = 12
    x, t = np.ones((n, 64)), np.zeros((n, 64))
    split, one = dropout_net(workers), dropout_net(1)
    try:
        for step in range(3):
            _, out_split = split._forward_backward(x, t)
            assert split._sharded is not None and split._sharded.shards == workers
            _, out_one = one._forward_backward(x, t)
            np.testing.assert_array_equal(out_split, out_one)               # the unsplit masks, row for row
            np.testing.assert_array_equal(out_one != 0, one.layers[0].draw_mask((n, 64), step=step))
            bounds = [n * w // workers for w in range(workers + 1)]
            first = out_split[bounds[0]:bounds[1]]
            for w in range(1, workers):                                       # no shard repeats shard 0's masks
                other = out_split[bounds[w]:bounds[w] + len(first)]
                assert not np.array_equal(other, first[:len(other)])
            assert split.layers[0].step == one.layers[0].step == step + 1
    finally:
        split.stop_workers()


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")     # 3 epochs of a random problem
@pytest.mark.parametrize("kind", KINDS)
def test_fit_with_dropout_is_reproducible_whatever_the_split(kind, monkeypatch, rng):
    monkeypatch.setattr(parallel, "SPLIT_WITH", kind)
    monkeypatch.setattr(parallel, "MIN_SHARD", 2)
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 2)
    X, y = rng.standard_normal((40, 10)), rng.integers(0, 3, 40)

    def run(workers):
        net = nf.NeuralNetwork([nf.Linear(10, 16, dtype=np.float64, seed=1), nf.ReLU(), nf.Dropout(0.5, seed=8),
                                nf.Linear(16, 3, dtype=np.float64, seed=2)], loss_fn=nf.SoftMaxLoss(),
                               optimizer=nf.Adam(1e-2), workers=workers)
        hist = net.fit(X, y, epochs=3, batch_size=10, seed=0, verbose=0)
        net.stop_workers()
        return net, hist

    ref, h1 = run(1)
    for workers in (2, 3):
        net, h = run(workers)
        assert parallel.shard_count(net, 10) == workers
        np.testing.assert_allclose(h.history["loss"], h1.history["loss"], rtol=1e-12)
        for la, lb in zip(ref.trainable_layers, net.trainable_layers):
            np.testing.assert_allclose(lb.W, la.W, rtol=0, atol=1e-12)
        assert net.layers[2].step == ref.layers[2].step == 12
    again, h2 = run(2)
    assert h2.history["loss"] == run(2)[1].history["loss"]                  # bitwise, run after run


def test_a_stochastic_layer_without_the_split_protocol_stays_unsplit(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_SHARD", 2)
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 2)

    class MyNoise(nf.Node):
        per_sample = True
        stochastic = True

        def _forward(self, x):
            return x

        def _backward(self, dy):
            return dy

    net = nf.NeuralNetwork([MyNoise(), nf.Linear(3, 2)], workers=2)
    assert parallel.shard_count(net, 8) == 1
    assert parallel.shard_count(nf.NeuralNetwork([nf.Dropout(0.5), nf.Linear(3, 2)], workers=2), 8) == 2


# ------------------------------------------------------------------ Keras's Dropout
def test_kept_entries_are_scaled_as_keras_scales_them(rng):
    keras = pytest.importorskip("keras")
    x = rng.standard_normal((400, 50))
    kd = keras.layers.Dropout(0.3, seed=1, dtype="float64")
    yk = np.asarray(kd(x, training=True))
    ours = nf.Dropout(0.3, seed=1)
    yo = ours.forward(x)
    both = (yk != 0) & (yo != 0)
    assert both.sum() > 0.4 * x.size
    np.testing.assert_allclose(yo[both], yk[both], rtol=1e-15)
    for y in (yk, yo):                          # both drop 30 % (binomial band)
        dropped = (y == 0).sum()
        assert abs(dropped - 0.3 * x.size) < 4.5 * math.sqrt(x.size * 0.21)
    np.testing.assert_array_equal(np.asarray(kd(x, training=False)), x)


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")
def test_load_then_fit_continues_bitwise_with_dropout_and_batchnorm(tmp_path, rng):
    """The masks' position (and BatchNorm's statistics, and 24b's optimizer state) travel in the file."""
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)

    def build():
        return nf.NeuralNetwork([nf.Linear(6, 8, seed=0, use_bias=False), nf.BatchNorm(8), nf.ReLU(),
                                 nf.Dropout(0.5, seed=3), nf.Linear(8, 3, seed=1)],
                                loss_fn=nf.SoftMaxLoss(), optimizer=nf.Adam(1e-2))
    whole = build()
    whole.fit(X, y, epochs=4, batch_size=10, shuffle=False, verbose=0)
    half = build()
    half.fit(X, y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    path = str(tmp_path / "half.npz")
    half.save(path)
    resumed = nf.NeuralNetwork.load(path)
    resumed.fit(X, y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
