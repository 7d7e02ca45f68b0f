"""forward/backward never modify their inputs or the upstream gradient.

Each layer gets an input and a random upstream gradient; copies taken before
are compared bitwise afterwards.  Repeating ``backward`` must give the same
result (a backward pass that edits its own caches would drift), and the whole
network API (fit, predict, evaluate, input_gradient) must leave the caller's
arrays alone.  Everything runs on NumPy and, with a GPU, on CuPy (``backend``).
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.backend import to_numpy

LAYERS = {
    "relu": (lambda: nf.ReLU(), (4, 3, 5)),
    "sigmoid": (lambda: nf.Sigmoid(), (4, 6)),
    "tanh": (lambda: nf.Tanh(), (4, 6)),
    "softmax": (lambda: nf.Softmax(), (4, 6)),
    "softmax_axis1": (lambda: nf.Softmax(axis=1), (2, 4, 3)),
    "vectorization": (lambda: nf.Vectorization((None, 2, 3, 4)), (3, 2, 3, 4)),
    "reshape": (lambda: nf.Reshape((None, 12), target_shape=(3, 4)), (3, 12)),
    "linear": (lambda: nf.Linear(6, 4, seed=0), (5, 6)),
    "linear_nobias": (lambda: nf.Linear(6, 4, use_bias=False, seed=0), (5, 6)),
    "linear_f64": (lambda: nf.Linear(6, 4, seed=0, dtype=np.float64), (5, 6)),
    "conv": (lambda: nf.Convolution((None, 2, 6, 6), kernel_size=3, output_layers=3, seed=0), (2, 2, 6, 6)),
    "conv_pad_stride": (lambda: nf.Convolution((None, 2, 7, 6), kernel_size=3, output_layers=3, padding=1,
                                               stride=2, use_bias=False, seed=0), (2, 2, 7, 6)),
    "conv_same": (lambda: nf.Convolution((None, 1, 5, 5), kernel_size=(2, 3), output_layers=2,
                                         padding="same", seed=0), (2, 1, 5, 5)),
    "maxpool": (lambda: nf.MaxPool((None, 2, 6, 6)), (2, 2, 6, 6)),
    "maxpool_same": (lambda: nf.MaxPool((None, 2, 5, 5), pool_size=2, stride=2, padding="same"), (2, 2, 5, 5)),
    "avgpool": (lambda: nf.AvgPool((None, 2, 6, 6)), (2, 2, 6, 6)),
    "avgpool_same": (lambda: nf.AvgPool((None, 2, 5, 5), pool_size=3, stride=1, padding="same"), (2, 2, 5, 5)),
}


def _same(a, b):
    """Bitwise-equal values (arrays on either backend)."""
    return np.array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_leaves_input_and_upstream_unchanged(backend, rng, name, dtype):
    make, shape = LAYERS[name]
    layer = make()
    x = backend.asarray(rng.standard_normal(shape).astype(dtype))
    x_copy = x.copy()
    y = layer.forward(x)
    assert _same(x, x_copy), f"{name}: forward modified its input"
    params_before = {k: v.copy() for k, v in layer.params.items()}
    g = backend.asarray(rng.standard_normal(y.shape).astype(dtype))
    g_copy = g.copy()
    dx = layer.backward(g)
    assert _same(x, x_copy), f"{name}: backward modified the forward input"
    assert _same(g, g_copy), f"{name}: backward modified the upstream gradient"
    assert dx.shape == x.shape
    for k, v in layer.params.items():
        assert _same(v, params_before[k]), f"{name}: backward changed parameter {k}"
    grads1 = {k: v.copy() for k, v in layer.grads.items()}
    # a second backward from the same caches gives the same answer
    dx2 = layer.backward(g)
    assert _same(dx, dx2), f"{name}: backward is not repeatable (caches modified?)"
    for k, v in layer.grads.items():
        assert _same(v, grads1[k]), f"{name}: parameter gradient {k} changed on a repeat"
    assert _same(g, g_copy)


def test_float32_layer_with_float64_upstream(backend, rng):
    # mixed dtypes take the cast paths (astype(copy=False) must not alias and then write)
    layer = nf.Linear(5, 3, seed=0)
    x = backend.asarray(rng.standard_normal((4, 5)))
    g = backend.asarray(rng.standard_normal((4, 3)))
    xc, gc_ = x.copy(), g.copy()
    layer.forward(x)
    layer.backward(g)
    assert _same(x, xc) and _same(g, gc_)


@pytest.mark.parametrize("kind", ["index", "onehot", "float_index"])
def test_softmax_loss_leaves_prediction_and_labels_unchanged(backend, rng, kind):
    z = backend.asarray(rng.standard_normal((5, 4)))
    idx = rng.integers(0, 4, 5)
    t = backend.asarray({"index": idx, "onehot": np.eye(4)[idx], "float_index": idx.astype(np.float64)}[kind])
    zc, tc = z.copy(), t.copy()
    loss = nf.SoftMaxLoss()
    loss.forward(z, t)
    g1 = loss.backward()
    g2 = loss.backward()
    assert _same(z, zc) and _same(t, tc)
    assert _same(g1, g2)
    g1[:] = 7  # the returned gradient is the caller's to modify: the next backward is unaffected
    assert _same(loss.backward(), g2)


def test_mse_loss_leaves_prediction_and_targets_unchanged(backend, rng):
    y = rng.standard_normal((5, 3))
    t = rng.standard_normal((5, 3))
    yd, td = backend.asarray(y), backend.asarray(t)
    loss = nf.MSELoss()
    loss.forward(yd, td)
    g1 = loss.backward(2.0)
    g1[:] = 0
    g2 = loss.backward(2.0)
    assert _same(yd, y) and _same(td, t)
    np.testing.assert_allclose(to_numpy(g2), 2.0 * 2 * (y - t) / y.size, rtol=1e-14)


def _small_cnn():
    nf.set_seed(3)
    layers = [nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2), nf.ReLU(),
              nf.MaxPool((None, 2, 6, 6)), nf.Vectorization(), nf.Linear(18, 3)]
    return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=nf.GradientDescent(0.1))


@pytest.mark.parametrize("data_on_device", [False, True], ids=["host_data", "backend_data"])
def test_network_api_leaves_callers_arrays_unchanged(backend, rng, data_on_device):
    net = _small_cnn()
    move = backend.asarray if data_on_device else (lambda a: a)
    X = move(rng.standard_normal((12, 1, 8, 8)))
    y = move(rng.integers(0, 3, 12))
    Y = move(np.eye(3)[to_numpy(y)])
    copies = [a.copy() for a in (X, y, Y)]
    net.fit(X, y, epochs=1, batch_size=5, verbose=0)
    net.fit(X, Y, epochs=1, batch_size=5, verbose=0)
    net.predict(X)
    net.evaluate(X, y)
    net.layer_outputs(X[:3])
    net.input_gradient(X[:3], y=y[:3])
    up = move(rng.standard_normal((3, 3)))
    upc = up.copy()
    net.input_gradient(X[:3], upstream=up)
    for a, c in zip((X, y, Y), copies):
        assert type(a) is type(c) and _same(a, c)
    assert _same(up, upc)


def test_prebatched_fit_leaves_arrays_unchanged(backend, rng):
    net = _small_cnn()
    Xb = rng.standard_normal((3, 4, 1, 8, 8))
    Yb = np.eye(3)[rng.integers(0, 3, (3, 4))]
    Xc, Yc = Xb.copy(), Yb.copy()
    net.fit(Xb, Yb, n_epochs=1, verbose=0)
    assert np.array_equal(Xb, Xc) and np.array_equal(Yb, Yc)
