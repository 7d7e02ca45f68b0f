"""Every layer and loss against float64 centred finite differences.

Reference: ``nn_from_scratch.gradcheck`` perturbs one coordinate at a time and
differentiates ``<f(x), r>`` for a RANDOM upstream gradient ``r`` (never all
ones).  Thresholds: relative error <= 1e-7 for smooth layers (float64 centred
differences with eps = 1e-5 are accurate to ~1e-10 here), <= 1e-5 where kinks
are skipped (ReLU, max-pool).

Every test runs on NumPy and, with a GPU, on CuPy (the ``backend`` fixture): the
same float64 checks hold on both.
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.checks import gradcheck as gc
from nn_from_scratch.backend import is_device_array

SMOOTH_TOL = 1e-7
KINK_TOL = 1e-5


def _check(backend, layer, x, tol, smooth=True, **kw):
    res = gc.check_layer(layer, backend.asarray(x), kink_tol=None if smooth else 1e-3, **kw)
    assert res.checked > 0, res
    assert res.max_rel_error <= tol, f"{layer!r}: {res} per array {res.per_array}"
    return res


# ---------------------------------------------------------------- activations
def test_relu(backend, rng):
    x = rng.standard_normal((4, 3, 5))
    res = _check(backend, nf.ReLU(), x, KINK_TOL, smooth=False)
    assert res.skipped == 0  # no entry lies within eps of the kink


def test_sigmoid(backend, rng):
    _check(backend, nf.Sigmoid(), 3 * rng.standard_normal((4, 7)), SMOOTH_TOL)


def test_tanh(backend, rng):
    _check(backend, nf.Tanh(), 2 * rng.standard_normal((4, 2, 5)), SMOOTH_TOL)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(backend, rng, axis):
    _check(backend, nf.Softmax(axis=axis), 2 * rng.standard_normal((3, 4, 5)), SMOOTH_TOL)


def test_vectorization(backend, rng):
    layer = nf.Vectorization((None, 2, 3, 4))
    x = rng.standard_normal((3, 2, 3, 4))
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    assert y.shape == (3, 24)
    # C order: y[n, (c*H + h)*W + w] == x[n, c, h, w]
    assert y[1, (1 * 3 + 2) * 4 + 3] == x[1, 1, 2, 3]
    _check(backend, layer, x, SMOOTH_TOL)


def test_reshape(backend, rng):
    layer = nf.Reshape((None, 2, 3, 4), target_shape=(6, 4))
    _check(backend, layer, rng.standard_normal((3, 2, 3, 4)), SMOOTH_TOL)


# ---------------------------------------------------------------- neurons
@pytest.mark.parametrize("use_bias", [True, False])
def test_linear(backend, rng, use_bias):
    layer = nf.Linear(7, 5, use_bias=use_bias, dtype=np.float64, seed=1)
    if use_bias:  # a non-zero bias so that its gradient path matters
        W = backend.to_numpy(layer.W).copy()
        W[0] = rng.standard_normal(5)
        layer.W = W
    res = _check(backend, layer, rng.standard_normal((4, 7)), SMOOTH_TOL)
    assert set(res.per_array) == {"x", "W"}
    if not use_bias:
        # the bias row is not a parameter in use: its gradient is exactly 0
        assert np.all(backend.to_numpy(layer.W_grad)[0] == 0)


CONV_CONFIGS = [
    # (input shape, kwargs)
    ((2, 2, 7, 6), dict(kernel_size=3, output_layers=3, padding=1, stride=2, use_bias=True)),
    ((2, 3, 6, 5), dict(kernel_size=(2, 3), output_layers=2, padding="same", stride=1, use_bias=False)),
    ((1, 1, 8, 8), dict(kernel_size=3, output_layers=4, padding=0, stride=(1, 2), use_bias=True)),
]


@pytest.mark.parametrize("shape,kw", CONV_CONFIGS)
def test_convolution_2d(backend, rng, shape, kw):
    layer = nf.Convolution((None,) + shape[1:], dtype=np.float64, seed=3, **kw)
    if kw["use_bias"]:
        layer.set_params(b=rng.standard_normal(kw["output_layers"]))
    res = _check(backend, layer, rng.standard_normal(shape), SMOOTH_TOL)
    assert set(res.per_array) == ({"x", "W", "b"} if kw["use_bias"] else {"x", "W"})


def test_maxpool(backend, rng):
    layer = nf.MaxPool((None, 2, 6, 6), pool_size=2)
    # distinct values: no ties, so every window has one clear maximum
    x = rng.permutation(144).reshape(2, 2, 6, 6).astype(np.float64) / 7.0
    _check(backend, layer, x, KINK_TOL, smooth=False)


def test_avgpool(backend, rng):
    layer = nf.AvgPool((None, 2, 5, 5), pool_size=2, stride=1, padding="same")
    _check(backend, layer, rng.standard_normal((2, 2, 5, 5)), SMOOTH_TOL)


# ---------------------------------------------------------------- losses
def _logsumexp64(z):
    """float64 reference: log sum_k exp(z_k), stable by shifting the max out."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def test_softmax_loss_integer_labels(backend, rng):
    z = 2 * rng.standard_normal((6, 4))
    t = rng.integers(0, 4, 6)
    res = gc.check_loss(nf.SoftMaxLoss(), backend.asarray(z), backend.asarray(t))
    assert res.checked == z.size and res.max_rel_error <= SMOOTH_TOL, res


def test_softmax_loss_one_hot(backend, rng):
    z = 2 * rng.standard_normal((6, 4))
    t = np.eye(4)[rng.integers(0, 4, 6)]
    res = gc.check_loss(nf.SoftMaxLoss(), backend.asarray(z), backend.asarray(t))
    assert res.checked == z.size and res.max_rel_error <= SMOOTH_TOL, res


def test_softmax_loss_value_matches_reference(backend, rng):
    z = 3 * rng.standard_normal((5, 7))
    t = rng.integers(0, 7, 5)
    expected = np.mean(_logsumexp64(z) - z[np.arange(5), t])
    loss = nf.SoftMaxLoss()
    zd = backend.asarray(z)
    assert float(loss.forward(zd, backend.asarray(t))) == pytest.approx(expected, rel=1e-13)
    # one-hot labels give the same value
    assert float(loss.forward(zd, backend.asarray(np.eye(7)[t]))) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_loss_huge_logits(backend, dtype):
    # logits of 1e4: exp overflows unless the maximum is shifted out
    z = np.array([[1e4, 0.0, -1e4],
                  [0.0, 1e4, 1e4 - 1.0],
                  [-1e4, -1e4, -1e4 + 2.0],
                  [1e4, 1e4, 1e4]])
    t = np.array([1, 2, 2, 0])
    expected = np.mean(_logsumexp64(z) - z[np.arange(4), t])  # (1e4 + 1.3133 + 0 + 1.0986) / 4
    loss = nf.SoftMaxLoss()
    value = float(loss.forward(backend.asarray(z, dtype=dtype), backend.asarray(t)))
    grad = backend.to_numpy(loss.backward())
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    rel = 1e-12 if dtype == np.float64 else 1e-6
    assert value == pytest.approx(expected, rel=rel)
    p = np.exp(z - _logsumexp64(z)[:, None])
    expected_grad = (p - np.eye(3)[t]) / 4
    atol = 1e-15 if dtype == np.float64 else 1e-7
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=atol)


def test_softmax_loss_gradient_scales_with_upstream(backend, rng):
    z = rng.standard_normal((3, 4))
    t = rng.integers(0, 4, 3)
    loss = nf.SoftMaxLoss()
    loss.forward(backend.asarray(z), backend.asarray(t))
    g1 = backend.to_numpy(loss.backward())
    g3 = backend.to_numpy(loss.backward(3.0))
    np.testing.assert_allclose(g3, 3 * g1, rtol=1e-15)


def test_mse_loss(backend, rng):
    y = rng.standard_normal((5, 3, 2))
    t = rng.standard_normal((5, 3, 2))
    loss = nf.MSELoss()
    yd, td = backend.asarray(y), backend.asarray(t)
    assert float(loss.forward(yd, td)) == pytest.approx(np.mean((y - t) ** 2), rel=1e-14)
    res = gc.check_loss(nf.MSELoss(), yd, td)
    assert res.checked == y.size and res.max_rel_error <= SMOOTH_TOL, res


# ---------------------------------------------------------------- whole networks
def test_check_network_mlp(backend, rng):
    layers = [nf.Linear(6, 5, dtype=np.float64, seed=1), nf.Tanh(), nf.Linear(5, 4, dtype=np.float64, seed=2),
              nf.Sigmoid(), nf.Linear(4, 3, dtype=np.float64, seed=3)]
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss())
    x = rng.standard_normal((4, 6))
    y = rng.integers(0, 3, 4)
    res = gc.check_network(net, x, y, kink_tol=None)
    assert res.checked == x.size + sum(layer.W.size for layer in net.trainable_layers)
    assert all(is_device_array(layer.W) == backend.is_gpu for layer in net.trainable_layers)
    assert res.max_rel_error <= SMOOTH_TOL, res


def test_check_network_tiny_cnn(backend, rng):
    layers = [
        nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2, padding=1, dtype=np.float64, seed=4),
        nf.ReLU(),
        nf.MaxPool((None, 2, 8, 8), pool_size=2),
        nf.Convolution((None, 2, 4, 4), kernel_size=2, output_layers=3, stride=2, dtype=np.float64, seed=5),
        nf.Tanh(),
        nf.Vectorization(),
        nf.Linear(12, 4, dtype=np.float64, seed=6),
    ]
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss())
    layers[0].set_params(b=rng.standard_normal(2) * 0.1)
    x = rng.standard_normal((3, 1, 8, 8))
    y = np.eye(4)[rng.integers(0, 4, 3)]
    res = gc.check_network(net, x, y, n_coords=40, seed=1)
    assert res.checked >= 100
    assert res.max_rel_error <= KINK_TOL, res


def test_check_network_mse(backend, rng):
    layers = [nf.Linear(3, 4, dtype=np.float64, seed=7), nf.Tanh(), nf.Linear(4, 2, dtype=np.float64, seed=8)]
    net = nf.NeuralNetwork(layers, loss_fn=nf.MSELoss())
    res = gc.check_network(net, rng.standard_normal((5, 3)), rng.standard_normal((5, 2)), kink_tol=None)
    assert res.checked > 0 and res.max_rel_error <= SMOOTH_TOL, res


# ---------------------------------------------------------------- forward values
# A gradient check proves backward is the derivative of forward, not that forward
# is the right function (a min-pool passes a gradient check too), so each forward
# is also compared with a plain formula or loop written here.
def test_forward_values_of_elementwise_layers(backend, rng):
    x = 3 * rng.standard_normal((4, 5))
    xd = backend.asarray(x)

    def fwd(layer):
        return backend.to_numpy(layer.forward(xd))

    np.testing.assert_array_equal(fwd(nf.ReLU()), np.where(x > 0, x, 0.0))
    np.testing.assert_allclose(fwd(nf.Sigmoid()), 1 / (1 + np.exp(-x)), rtol=1e-14)
    # 1e-15 is 4.5 float64 ulp: NumPy's tanh and CUDA's may round differently by an ulp or two
    np.testing.assert_allclose(fwd(nf.Tanh()), np.tanh(x), rtol=1e-15)
    e = np.exp(x)
    np.testing.assert_allclose(fwd(nf.Softmax()), e / e.sum(axis=1, keepdims=True), rtol=1e-14)


def _pool_loop(x, k, s, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(x[:, :, i * s:i * s + k, j * s:j * s + k], axis=(2, 3))
    return out


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
def test_forward_values_of_pooling(backend, rng, k, s):
    x = rng.standard_normal((2, 3, 7, 8))
    xd = backend.asarray(x)
    np.testing.assert_array_equal(backend.to_numpy(nf.MaxPool(pool_size=k, stride=s).forward(xd)),
                                  _pool_loop(x, k, s, np.max))
    np.testing.assert_allclose(backend.to_numpy(nf.AvgPool(pool_size=k, stride=s).forward(xd)),
                               _pool_loop(x, k, s, np.mean), rtol=1e-14)


def test_forward_values_of_convolution(backend, rng):
    layer = nf.Convolution((None, 2, 6, 7), kernel_size=(3, 2), output_layers=3, stride=(2, 1), padding=1,
                           dtype=np.float64, seed=0)
    layer.set_params(b=rng.standard_normal(3))
    W, b = backend.to_numpy(layer.W), backend.to_numpy(layer.b)
    x = rng.standard_normal((2, 2, 6, 7))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    oh, ow = (6 + 2 - 3) // 2 + 1, (7 + 2 - 2) // 1 + 1
    assert y.shape == (2, 3, oh, ow)
    ref = np.empty_like(y)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, 2 * i:2 * i + 3, j:j + 2]                       # (N, C, 3, 2)
            ref[:, :, i, j] = np.einsum("ncuv,fcuv->nf", patch, W) + b
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-14)
