"""Weight penalties (kernel_regularizer / bias_regularizer) and frozen layers (trainable = False).

References: Keras's L1/L2/L1L2 and their TensorFlow gradients; float64 finite differences of the
loss ``evaluate`` reports; whole training runs against Keras models carrying the same penalties
and the same frozen layers (``compare_training``); a loop over the weights in the test for the
reported loss.
"""
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.checks import gradcheck as gc
from nn_from_scratch.layers import regularizers as reg

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def blobs(rng, n=60, d=5, k=3):
    centres = 2.0 * rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    return centres[y] + 0.8 * rng.standard_normal((n, d)), y


@pytest.mark.parametrize("ours,theirs", [
    (reg.L1(0.03), keras.regularizers.L1(0.03)), (reg.L2(0.02), keras.regularizers.L2(0.02)),
    (reg.L1L2(0.01, 0.05), keras.regularizers.L1L2(0.01, 0.05)), (reg.L1(), keras.regularizers.L1()),
    (reg.L2(), keras.regularizers.L2()), (reg.L1L2(), keras.regularizers.L1L2())])
def test_penalty_and_gradient_match_keras(rng, ours, theirs):
    w = rng.standard_normal((6, 4))
    w[0, 0] = 0.0                                  # |w| at its kink: gradient 0, as TensorFlow's
    v = tf.Variable(w)
    with tf.GradientTape() as tape:
        p = theirs(v)
    np.testing.assert_allclose(float(ours(w)), float(p), rtol=1e-6)   # Keras casts its factor to float32
    g = tape.gradient(p, v)                        # None: the penalty does not depend on w (zero factors)
    np.testing.assert_allclose(ours.gradient(w), np.zeros_like(w) if g is None else g.numpy(), rtol=1e-6,
                               atol=1e-12)


def _regularized_net(dtype=np.float64, frozen=None):
    layers = [nf.Convolution((None, 1, 6, 6), kernel_size=3, output_layers=2, seed=1, dtype=dtype, name="conv",
                             kernel_regularizer=reg.L1L2(0.01, 0.02), bias_regularizer="l2"),
              nf.ReLU(name="relu"), nf.Vectorization(name="flat"),
              nf.Linear(32, 3, seed=2, dtype=dtype, name="out", kernel_regularizer=reg.L1(0.02),
                        bias_regularizer=reg.L2(0.05))]
    if frozen is not None:
        layers[frozen].trainable = False
    return nf.NeuralNetwork(layers, optimizer=nf.GradientDescent(0.1))


def _penalty_by_hand(net):
    conv, out = net.layers[0], net.layers[3]
    W, b = conv.W.astype(np.float64), conv.b.astype(np.float64)
    K, c = out.W[1:].astype(np.float64), out.W[0].astype(np.float64)
    return (0.01 * np.abs(W).sum() + 0.02 * (W ** 2).sum() + 0.01 * (b ** 2).sum()
            + 0.02 * np.abs(K).sum() + 0.05 * (c ** 2).sum())


def test_reported_loss_includes_the_penalties(rng):
    X = rng.standard_normal((24, 1, 6, 6))
    y = rng.integers(0, 3, 24)
    net = _regularized_net()
    plain = nf.NeuralNetwork([nf.Convolution((None, 1, 6, 6), kernel_size=3, output_layers=2, seed=1,
                                             dtype=np.float64), nf.ReLU(), nf.Vectorization(),
                              nf.Linear(32, 3, seed=2, dtype=np.float64)])
    pen = _penalty_by_hand(net)
    assert pen > 0.05
    assert net.evaluate(X, y)[0] == pytest.approx(plain.evaluate(X, y)[0] + pen, rel=1e-12)
    # one step of a full batch: the reported loss is that of the weights before the step
    hist = net.fit(X, y, epochs=1, batch_size=24, shuffle=False, verbose=0)
    assert hist.history["loss"][0] == pytest.approx(plain.evaluate(X, y)[0] + pen, rel=1e-12)


def test_gradients_include_the_penalties_finite_differences(rng):
    X = rng.standard_normal((10, 1, 6, 6))
    y = rng.integers(0, 3, 10)
    net = _regularized_net()
    grads = net.gradients(X, y)
    for layer, pname in ((net.layers[0], "W"), (net.layers[0], "b"), (net.layers[3], "W")):
        P0 = layer.params[pname].copy()

        def loss_at(P):
            layer.set_params(**{pname: P})
            return net.evaluate(X, y)[0]
        num = gc.numerical_gradient(loss_at, P0)
        layer.set_params(**{pname: P0})
        np.testing.assert_allclose(grads[(layer.name, pname)], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("opt", [lambda: nf.GradientDescent(0.1, momentum=0.5), lambda: nf.Adam(3e-3)],
                         ids=["momentum", "adam"])
@pytest.mark.parametrize("frozen", [None, 0, 3], ids=["all", "conv_frozen", "dense_frozen"])
def test_training_with_penalties_and_frozen_layers_matches_keras(rng, opt, frozen):
    from nn_from_scratch.checks.crosscheck import TOLERANCES, compare_training
    X = rng.standard_normal((96, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    net = _regularized_net(np.float32, frozen)
    before = [p.copy() for p in net.get_weights()]
    r = compare_training(net, X, y, steps=30, optimizer=opt(), batch_size=16, seed=0)
    assert r.passed, str(r)
    assert r.max_loss_rel <= TOLERANCES["training"]
    # the compared loss includes the penalties of the trainable layers (Keras: a frozen layer's count
    # for nothing); they are a visible part of it here
    assert r.losses_ours[0] > 1.0 + (0.5 * _penalty_by_hand(net) if frozen is None else 0.0)
    np.testing.assert_array_equal(np.concatenate([p.ravel() for p in net.get_weights()]),
                                  np.concatenate([p.ravel() for p in before]))   # ours is left alone


def test_frozen_layers_are_not_updated_counted_or_forgotten(rng, tmp_path):
    from nn_from_scratch.checks.crosscheck import to_keras
    X, y = blobs(rng)
    net = nf.NeuralNetwork([nf.Linear(5, 8, seed=0, name="a"), nf.ReLU(), nf.Linear(8, 3, seed=1, name="b")],
                           optimizer=nf.Adam(0.01))
    net.layers[0].trainable = False
    frozen = net.layers[0].W.copy()
    trained = net.layers[2].W.copy()
    net.fit(X, y, epochs=2, batch_size=10, verbose=0)
    np.testing.assert_array_equal(net.layers[0].W, frozen)
    assert np.abs(net.layers[2].W - trained).max() > 1e-3
    text = net.summary(print_fn=None)
    assert "Total params: 75" in text and "Trainable params: 27" in text and "Non-trainable params: 48" in text
    km = to_keras(net)
    assert sum(int(np.prod(v.shape)) for v in km.trainable_weights) == 27
    back = nf.NeuralNetwork.load(net.save(str(tmp_path / "f.npz")))
    assert [getattr(layer, "trainable", None) for layer in back.layers] == [False, False, True]
    other = nf.NeuralNetwork([nf.Linear(5, 8, name="a"), nf.ReLU(), nf.Linear(8, 3, name="b")])
    other.load(str(tmp_path / "f.npz"))
    assert other.layers[0].trainable is False and other.layers[2].trainable is True


def test_frozen_layer_in_the_split_step(rng):
    X, y = blobs(rng, n=512)
    nets = []
    for workers in (1, 2):
        net = nf.NeuralNetwork([nf.Linear(5, 16, seed=0), nf.ReLU(), nf.Linear(16, 3, seed=1)], workers=workers,
                               optimizer=nf.GradientDescent(0.1))
        net.layers[0].trainable = False
        net.fit(X, y, epochs=1, batch_size=256, seed=0, verbose=0)
        net.stop_workers()
        nets.append(net)
    for a, b in zip(nets[0].get_weights(), nets[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(nets[1].layers[0].W, nf.Linear(5, 16, seed=0).W)


def test_regularizers_are_saved_and_bad_ones_refused(tmp_path):
    net = _regularized_net(np.float32)
    back = nf.NeuralNetwork.load(net.save(str(tmp_path / "r.npz")))
    assert back.layers[0].kernel_regularizer == reg.L1L2(0.01, 0.02)
    assert back.layers[0].bias_regularizer == reg.L2(0.01)
    assert back.layers[3].kernel_regularizer == reg.L1(0.02) and back.layers[3].bias_regularizer == reg.L2(0.05)
    with pytest.raises(ValueError, match=r"kernel_regularizer: unknown regularizer 'l3'; give one of \['l1', 'l1_l2'"):
        nf.Linear(3, 2, kernel_regularizer="l3")
    with pytest.raises(ValueError, match=r"L2: l2 must be a finite number >= 0, received -1"):
        reg.L2(-1)
    assert nf.L1 is reg.L1 and nf.L2 is reg.L2 and nf.L1L2 is reg.L1L2
