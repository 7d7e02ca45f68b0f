"""``BatchNorm``: formulas, Keras's ``BatchNormalization`` (both modes, moving statistics,
gradients), float64 finite differences, save/load, the split step, bad input.

References: the formulas written here in float64, Keras's own layer under a GradientTape
(channels-last: our axis 1 is its axis -1), ``gradcheck``'s centred differences.
"""
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.checks import gradcheck as gc
from nn_from_scratch.engine import parallel
from nn_from_scratch.training.serialization import ModelFileError

#: a few epochs of random problems: "not learning" is expected there
pytestmark = pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")

SHAPES = [(6, 5), (4, 3, 5), (3, 2, 4, 5), (2, 2, 3, 3, 2)]


def reference(x, gamma, beta, mean, var, eps):
    col = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(col)) / np.sqrt(var.reshape(col) + eps) * gamma.reshape(col) + beta.reshape(col)


def layer_for(shape, rng, **kw):
    layer = nf.BatchNorm((None,) + shape[1:], dtype=np.float64, **kw)
    c = shape[1]
    layer.set_params(gamma=rng.uniform(0.5, 2, c), beta=rng.standard_normal(c))
    layer.set_buffers(moving_mean=rng.standard_normal(c), moving_variance=rng.uniform(0.5, 2, c))
    return layer


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_and_moving_statistics(shape, rng):
    layer = layer_for(shape, rng, momentum=0.9, epsilon=1e-3)
    x = 3 + 2 * rng.standard_normal(shape)
    x0 = x.copy()
    mm0, mv0 = layer.moving_mean.copy(), layer.moving_variance.copy()
    y = layer.forward(x)
    np.testing.assert_array_equal(x, x0)
    axes = (0,) + tuple(range(2, x.ndim))
    mu, var = x.mean(axis=axes), x.var(axis=axes)          # biased (ddof=0), as Keras
    np.testing.assert_allclose(y, reference(x, layer.gamma, layer.beta, mu, var, 1e-3), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.moving_mean, 0.9 * mm0 + 0.1 * mu, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(layer.moving_variance, 0.9 * mv0 + 0.1 * var, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
def test_inference_uses_the_moving_statistics(shape, rng):
    layer = layer_for(shape, rng)
    layer.training = False
    x = rng.standard_normal(shape)
    mm0 = layer.moving_mean.copy()
    y = layer.forward(x)
    np.testing.assert_allclose(y, reference(x, layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance,
                                            1e-3), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(layer.moving_mean, mm0)              # no update when inferring
    one = layer.forward(x[:1])                                         # a single sample is fine here
    np.testing.assert_allclose(one, y[:1], rtol=1e-15)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradient_check(shape, training, rng):
    layer = layer_for(shape, rng)
    layer.training = training
    res = gc.check_layer(layer, rng.standard_normal(shape), kink_tol=None)
    assert set(res.per_array) == {"x", "gamma", "beta"}
    assert res.max_rel_error <= 1e-7, res


def test_gradient_check_of_a_network(rng):
    layers = [nf.Convolution((None, 1, 6, 6), kernel_size=3, output_layers=3, dtype=np.float64, seed=1),
              nf.BatchNorm((None, 3, 4, 4), dtype=np.float64), nf.Tanh(), nf.Vectorization(),
              nf.Linear(48, 5, dtype=np.float64, seed=2), nf.BatchNorm(5, dtype=np.float64),
              nf.Linear(5, 3, dtype=np.float64, seed=3)]
    layers[1].set_params(gamma=rng.uniform(0.5, 2, 3), beta=rng.standard_normal(3))
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss())
    # the biases right before a BatchNorm have gradient exactly 0 (the batch mean takes them out):
    # float64 gives ~1e-17 there, so the floor of the relative error is raised above that noise
    res = gc.check_network(net, rng.standard_normal((4, 1, 6, 6)), rng.integers(0, 3, 4), kink_tol=None, floor=1e-9)
    assert res.max_rel_error <= 1e-7, res
    np.testing.assert_allclose(layers[4].W_grad[0], 0, atol=1e-15)


# ------------------------------------------------------------------ against Keras
def _keras_bn(layer, momentum, eps, ndim):
    keras = pytest.importorskip("keras")
    kl = keras.layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=eps, dtype="float64")
    kl.build((None,) * (ndim - 1) + (layer.channels,))
    kl.gamma.assign(layer.gamma)
    kl.beta.assign(layer.beta)
    kl.moving_mean.assign(layer.moving_mean)
    kl.moving_variance.assign(layer.moving_variance)
    return kl


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_keras_batchnormalization(shape, training, rng):
    tf = pytest.importorskip("tensorflow")
    layer = layer_for(shape, rng, momentum=0.8, epsilon=1e-3)
    layer.training = training
    kl = _keras_bn(layer, 0.8, 1e-3, len(shape))
    x = 1 + 2 * rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    xk = tf.constant(np.moveaxis(x, 1, -1))
    with tf.GradientTape() as tape:
        tape.watch(xk)
        yk = kl(xk, training=training)
    dxk, dgk, dbk = tape.gradient(yk, [xk, kl.gamma, kl.beta], output_gradients=tf.constant(np.moveaxis(g, 1, -1)))
    y = layer.forward(x)
    dx = layer.backward(g)
    np.testing.assert_allclose(y, np.moveaxis(yk.numpy(), -1, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, np.moveaxis(dxk.numpy(), -1, 1), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(layer.grads["gamma"], dgk.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["beta"], dbk.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.moving_mean, kl.moving_mean.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.moving_variance, kl.moving_variance.numpy(), rtol=1e-12, atol=1e-14)


def test_defaults_are_keras_defaults():
    keras = pytest.importorskip("keras")
    k = keras.layers.BatchNormalization()
    ours = nf.BatchNorm(4)
    assert (ours.momentum, ours.epsilon) == (k.momentum, k.epsilon) == (0.99, 1e-3)
    np.testing.assert_array_equal(ours.gamma, np.ones(4))
    np.testing.assert_array_equal(ours.beta, np.zeros(4))
    np.testing.assert_array_equal(ours.moving_mean, np.zeros(4))
    np.testing.assert_array_equal(ours.moving_variance, np.ones(4))
    assert ours.gamma.dtype == np.float32


# ------------------------------------------------------------------ network integration
def bn_net(workers=1, seed=0):
    layers = [nf.Linear(6, 8, seed=seed, dtype=np.float64), nf.BatchNorm(8, dtype=np.float64, momentum=0.9),
              nf.ReLU(), nf.Linear(8, 3, seed=seed + 1, dtype=np.float64)]
    return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=nf.Adam(1e-2), workers=workers)


def test_fit_trains_the_statistics_and_predict_uses_them(rng):
    X, y = rng.standard_normal((40, 6)) * 3 + 1, rng.integers(0, 3, 40)
    net = bn_net()
    net.fit(X, y, epochs=2, batch_size=10, verbose=0)
    bn = net.layers[1]
    assert not np.allclose(bn.moving_mean, 0)
    mm = bn.moving_mean.copy()
    out = net.predict(X)
    np.testing.assert_array_equal(bn.moving_mean, mm)                  # inference leaves them alone
    h = X @ net.layers[0].weight + net.layers[0].bias
    h = np.maximum(reference(h, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, 1e-3), 0)
    np.testing.assert_allclose(out, h @ net.layers[3].weight + net.layers[3].bias, rtol=1e-10, atol=1e-12)


def test_save_load_round_trip_keeps_the_moving_statistics(tmp_path, rng):
    X, y = rng.standard_normal((20, 6)), rng.integers(0, 3, 20)
    net = bn_net()
    net.fit(X, y, epochs=1, batch_size=10, verbose=0)
    path = str(tmp_path / "bn.npz")
    net.save(path)
    back = nf.NeuralNetwork.load(path)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_array_equal(back.layers[1].buffers[name], net.layers[1].buffers[name])
        assert back.layers[1].buffers[name].dtype == np.float64
    assert (back.layers[1].momentum, back.layers[1].epsilon) == (0.9, 1e-3)
    np.testing.assert_array_equal(back.predict(X), net.predict(X))
    fresh = bn_net(seed=5)
    fresh.load(path)
    np.testing.assert_array_equal(fresh.layers[1].moving_variance, net.layers[1].moving_variance)
    np.testing.assert_array_equal(fresh.predict(X), net.predict(X))


def test_a_file_without_the_statistics_is_refused(tmp_path, rng):
    net = bn_net()
    arrays = {k: v for k, v in net._param_arrays().items() if not k.endswith("moving_mean")}
    path = str(tmp_path / "bad.npz")
    import json

    from nn_from_scratch.training.serialization import FORMAT, write_npz_atomic
    write_npz_atomic(path, {"__format__": np.array(FORMAT), "__config__": np.array(json.dumps(net.get_config())),
                            **arrays})
    with pytest.raises(ModelFileError):
        bn_net().load(path)


def test_moving_statistics_of_the_wrong_shape_are_refused_before_building(tmp_path):
    """C7: the buffers go through the model file's schema check like the weights."""
    import json

    from nn_from_scratch.training.serialization import FORMAT, write_npz_atomic
    net = bn_net()
    arrays = dict(net._param_arrays())
    arrays["layer1/moving_variance"] = np.ones(9)
    path = str(tmp_path / "bad.npz")
    write_npz_atomic(path, {"__format__": np.array(FORMAT), "__config__": np.array(json.dumps(net.get_config())),
                            **arrays})
    with pytest.raises(ModelFileError, match=r"layer 1 \(BatchNorm\) is described with parameters .*"
                                             r"'moving_variance': \(8,\).* but the file holds .*\(9,\)"):
        nf.NeuralNetwork.load(path)
    arrays["layer1/moving_variance"] = np.ones(8, dtype=np.int64)
    write_npz_atomic(path, {"__format__": np.array(FORMAT), "__config__": np.array(json.dumps(net.get_config())),
                            **arrays})
    with pytest.raises(ModelFileError, match=r"layer1/moving_variance .* has dtype int64"):
        nf.NeuralNetwork.load(path)


def test_weights_and_summary_count_the_statistics():
    net = bn_net()
    w = net.get_weights()
    assert len(w) == 2 + 4                       # Linear W, gamma, beta, moving mean/variance, Linear W
    w[3] = np.full(8, 2.0)                       # the moving mean through set_weights
    net.set_weights(w)
    np.testing.assert_array_equal(net.layers[1].moving_mean, np.full(8, 2.0))
    text = net.summary(print_fn=None)
    assert "Non-trainable params: 16" in text    # 2 x 8 moving statistics, as Keras counts them


KINDS = ["threads"] + (["processes"] if hasattr(os, "fork") else [])


@pytest.mark.parametrize("kind", KINDS)
def test_networks_with_batchnorm_split_with_the_whole_batch_statistics(kind, monkeypatch, rng):
    """Each shard normalising with its own statistics would be wrong (below); the split exchanges
    them so that every shard uses the whole batch's (engine/parallel/sync.py): the one-worker run's
    numbers to rounding (tests/test_parallel_batchnorm.py has the deeper checks)."""
    monkeypatch.setattr(parallel, "SPLIT_WITH", kind)
    monkeypatch.setattr(parallel, "MIN_SHARD", 2)
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 2)
    if not parallel.split_allowed():
        pytest.skip("another non-daemon thread is alive: splits are off here (as designed)")
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    split, one = bn_net(workers=2), bn_net(workers=1)
    assert parallel.shard_count(split, 20) == 2
    h2 = split.fit(X, y, epochs=2, batch_size=20, seed=1, verbose=0)
    h1 = one.fit(X, y, epochs=2, batch_size=20, seed=1, verbose=0)
    assert split._sharded is not None and split._sharded.kind == kind
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-12)
    for la, lb in zip(one.layers, split.layers):
        for k in la.params:
            np.testing.assert_allclose(lb.params[k], la.params[k], rtol=1e-9, atol=1e-12)
        for k in la.buffers:
            np.testing.assert_allclose(lb.buffers[k], la.buffers[k], rtol=1e-9, atol=1e-12)
    split.stop_workers()
    # the whole-batch result: what one forward of the whole batch gives
    bn = nf.BatchNorm(6, dtype=np.float64)
    x = rng.standard_normal((20, 6))
    halves = np.concatenate([nf.BatchNorm(6, dtype=np.float64).forward(x[:10]),
                             nf.BatchNorm(6, dtype=np.float64).forward(x[10:])])
    assert not np.allclose(bn.forward(x), halves)                       # why: shards' statistics differ


# ------------------------------------------------------------------ bad input, dtypes
def test_one_sample_in_training_mode_is_named():
    bn = nf.BatchNorm((None, 5))
    with pytest.raises(ValueError, match=r"BatchNorm layer 'batchnorm_\d+': training mode .* at least 2 values "
                                         r"per channel, received a batch of shape \(1, 5\) \(1 value per channel\)"):
        bn.forward(np.zeros((1, 5), np.float32))
    bn.training = False
    assert bn.forward(np.zeros((1, 5), np.float32)).shape == (1, 5)
    conv_bn = nf.BatchNorm((None, 2, 3, 3))           # one image still has 9 values per channel
    assert conv_bn.forward(np.ones((1, 2, 3, 3), np.float32)).shape == (1, 2, 3, 3)


def test_fit_refuses_a_last_batch_of_one_sample_before_training(rng):
    net = bn_net()
    w0 = net.get_weights()
    with pytest.raises(nf.DataError, match=r"fit \(21 samples, batch_size=10\): the last batch of every epoch "
                                           r"would hold 1 sample, and BatchNorm layer .* needs at least 2 values"):
        net.fit(rng.standard_normal((21, 6)), rng.integers(0, 3, 21), epochs=1, batch_size=10, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(w0, net.get_weights()))     # nothing trained
    net.fit(rng.standard_normal((22, 6)), rng.integers(0, 3, 22), epochs=1, batch_size=10, verbose=0)


@pytest.mark.parametrize("kw,msg", [
    (dict(shape=(None, None)), "shape must be"), (dict(shape="x"), "shape must be"),
    (dict(shape=4, momentum=1.0), r"momentum must be a number with 0 <= momentum < 1, received 1.0"),
    (dict(shape=4, momentum=-0.1), "momentum must be"), (dict(shape=4, epsilon=0), r"epsilon > 0, received 0"),
    (dict(shape=4, epsilon=float("nan")), "epsilon must be")])
def test_bad_arguments_are_named(kw, msg):
    with pytest.raises((ValueError, nf.ShapeError), match=msg):
        nf.BatchNorm(**kw)


def test_wrong_input_shapes_are_named():
    bn = nf.BatchNorm((None, 3, None, None))
    with pytest.raises(nf.ShapeError, match=r"expects input of shape \(N, 3, N, N\) .*received \(2, 4, 5, 5\)"):
        bn.forward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(nf.ShapeError, match=r"received \(2, 3\)"):
        bn.forward(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_generic(dtype, rng):
    bn = nf.BatchNorm(4, dtype=dtype)
    x = rng.standard_normal((5, 4))
    y = bn.forward(x)
    assert y.dtype == dtype and bn.moving_mean.dtype == dtype
    assert bn.backward(np.ones_like(y)).dtype == dtype
    bn.astype(np.float64)
    assert bn.moving_variance.dtype == np.float64 and bn.gamma.dtype == np.float64
