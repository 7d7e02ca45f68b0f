"""input_gradients and the gradient statistics (analysis/gradients.py).

References: float64 central finite differences of f(x_i) (5-point stencil), the network's
per-sample ``input_gradient`` loop, closed-form identities of a linear network, NumPy's mean/var.
"""
import numpy as np
import pytest

from nn_from_scratch import Convolution, Linear, MSELoss, NeuralNetwork, ReLU, SoftMaxLoss, Tanh, Vectorization
from nn_from_scratch.analysis import permutation as pt
from jacobians import finite_difference


def dense_net():
    return NeuralNetwork([Linear(5, 7, seed=0), Tanh(), Linear(7, 4, seed=1)], SoftMaxLoss()).astype(np.float64)


def conv_net(act=Tanh):
    return NeuralNetwork([Convolution((None, 1, 7, 7), kernel_size=3, output_layers=2, seed=0), act(),
                          Vectorization(), Linear(50, 4, seed=1)], SoftMaxLoss()).astype(np.float64)


def regression_net():
    return NeuralNetwork([Linear(5, 6, seed=3), Tanh(), Linear(6, 1, seed=4)], MSELoss()).astype(np.float64)


def data(shape, n=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + shape)


def scalar_f(net, mode, index=None, weights=None):
    """f(x) for one sample, from net.predict (the reference, computed independently)."""
    def f(x):
        z = net.predict(x[None])[0]
        if mode == "output":
            return z[0]
        if mode == "logit":
            return z[index]
        if mode == "max_logit":
            return z.max()
        if mode == "log_softmax":
            return z.max() - (np.log(np.exp(z - z.max()).sum()) + z.max())
        return float(z @ weights)
    return f


W_CALL = np.array([0.3, -1.2, 0.7, 2.0])

MODES = [("max_logit", None), ("log_softmax", None), ("logit", 2), ("callable", None)]


def _mode(mode):
    return (lambda out: np.broadcast_to(W_CALL, out.shape).copy()) if mode == "callable" else mode


@pytest.mark.parametrize("make,shape", [(dense_net, (5,)), (conv_net, (1, 7, 7))], ids=["dense", "conv"])
@pytest.mark.parametrize("mode,index", MODES, ids=[m for m, _ in MODES])
@pytest.mark.parametrize("engine", [True, False], ids=["engine", "layers"])
def test_input_gradients_equal_finite_differences(make, shape, mode, index, engine):
    net = make()
    net.engine = engine
    X = data(shape)
    D = pt.input_gradients(net, X, output=_mode(mode), index=index, batch_size=4)
    assert D.shape == X.shape and D.dtype == np.float64
    f = scalar_f(net, mode, index, W_CALL)
    for i in range(X.shape[0]):
        np.testing.assert_allclose(D[i], finite_difference(f, X[i]), rtol=0, atol=1e-10)


def test_regression_output_equals_finite_differences():
    net = regression_net()
    X = data((5,))
    D = pt.input_gradients(net, X, output="output")
    f = scalar_f(net, "output")
    for i in range(X.shape[0]):
        np.testing.assert_allclose(D[i], finite_difference(f, X[i]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode,index", MODES, ids=[m for m, _ in MODES])
def test_input_gradients_equal_a_per_sample_loop_relu_conv(mode, index):
    """ReLU network (kinks: no finite differences): each sample alone through net.input_gradient."""
    net = conv_net(ReLU)
    X = data((1, 7, 7), n=9, seed=2)
    D = pt.input_gradients(net, X, output=_mode(mode), index=index, batch_size=4)
    for i in range(X.shape[0]):
        z = net.predict(X[i:i + 1])[0]
        if mode == "max_logit":
            up = np.eye(4)[z.argmax()]
        elif mode == "logit":
            up = np.eye(4)[index]
        elif mode == "log_softmax":
            up = np.eye(4)[z.argmax()] - np.exp(z) / np.exp(z).sum()
        else:
            up = W_CALL
        ref = net.input_gradient(X[i:i + 1], upstream=up[None])[0]
        np.testing.assert_allclose(D[i], ref, rtol=0, atol=1e-10)


def test_batch_size_does_not_change_the_gradients():
    net = conv_net(ReLU)
    X = data((1, 7, 7), n=11)
    a = pt.input_gradients(net, X, batch_size=1)
    b = pt.input_gradients(net, X, batch_size=1000)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_linear_network_identities_exact():
    """f = w.x + b: D_ij = w_j for every sample, T_j = w_j^2, V_j = 0, exactly (float64)."""
    lin = Linear(6, 1, seed=5)
    net = NeuralNetwork([lin], MSELoss()).astype(np.float64)
    w = lin.weight[:, 0].copy()
    X = data((6,), n=1000, seed=1)
    D = pt.input_gradients(net, X, output="output", batch_size=97)
    np.testing.assert_array_equal(D, np.broadcast_to(w, D.shape))
    np.testing.assert_array_equal(pt.association_statistic(D), w * w)
    np.testing.assert_array_equal(pt.nonlinearity_statistic(D), np.zeros(6))
    s = pt.gradient_statistics(net, X, output="output", batch_size=97)
    np.testing.assert_array_equal(s["association"], w * w)
    np.testing.assert_array_equal(s["nonlinearity"], np.zeros(6))
    np.testing.assert_array_equal(s["mean"], w)
    assert s["n"] == 1000


def test_linear_classifier_logit_gradient_is_its_weight_column():
    lin = Linear(5, 3, seed=2)
    net = NeuralNetwork([lin], SoftMaxLoss()).astype(np.float64)
    D = pt.input_gradients(net, data((5,), n=40), output="logit", index=1)
    np.testing.assert_array_equal(D, np.broadcast_to(lin.weight[:, 1], D.shape))


def test_statistics_stream_and_match_numpy():
    net = conv_net()
    X = data((1, 7, 7), n=50, seed=4)
    D = pt.input_gradients(net, X)
    T, V = np.mean(D ** 2, axis=0), np.var(D, axis=0)
    np.testing.assert_allclose(pt.association_statistic(D), T, rtol=1e-12, atol=0)
    np.testing.assert_allclose(pt.nonlinearity_statistic(D), V, rtol=1e-10, atol=1e-18)
    batches = (D[a:a + 7] for a in range(0, 50, 7))            # an iterator: never all of D at once
    np.testing.assert_allclose(pt.association_statistic(batches), T, rtol=1e-12, atol=0)
    s = pt.gradient_statistics(net, X, batch_size=8)           # from (net, X), batch by batch
    np.testing.assert_allclose(s["association"], T, rtol=1e-12, atol=0)
    np.testing.assert_allclose(s["nonlinearity"], V, rtol=1e-10, atol=1e-18)
    np.testing.assert_allclose(pt.nonlinearity_statistic(pt.iter_input_gradients(net, X, batch_size=8)), V,
                               rtol=1e-10, atol=1e-18)


def test_parameters_caches_and_gradients_left_as_they_were():
    net = conv_net(ReLU)
    X = data((1, 7, 7), n=8, seed=5)
    y = np.arange(8) % 4
    out = net.forward(X)
    net.loss_fn.forward(out, y)
    net.backward(net.loss_fn.backward())
    before = [(dict(layer._cache), layer._out_shape, {k: v.copy() for k, v in layer.grads.items()},
               {k: v.copy() for k, v in layer.params.items()}) for layer in net.layers]
    cache_objs = [layer._cache for layer in net.layers]
    pt.input_gradients(net, data((1, 7, 7), n=5, seed=6), batch_size=2)
    for layer, obj, (cache, shape, grads, params) in zip(net.layers, cache_objs, before):
        assert layer._cache is obj and layer._cache.keys() == cache.keys()
        assert all(layer._cache[k] is cache[k] for k in cache)
        assert layer._out_shape == shape
        for k in params:
            np.testing.assert_array_equal(layer.params[k], params[k])
        for k in grads:
            np.testing.assert_array_equal(layer.grads[k], grads[k])
    # the interrupted training step can go on: its backward gives the same gradients again
    net.backward(net.loss_fn.backward())
    for layer, (_, _, grads, _) in zip(net.layers, before):
        for k in grads:
            np.testing.assert_array_equal(layer.grads[k], grads[k])


def test_float32_network_gives_float32_gradients_near_float64():
    net32 = NeuralNetwork([Linear(5, 7, seed=0), Tanh(), Linear(7, 4, seed=1)], SoftMaxLoss())
    X = data((5,), n=20)
    D32 = pt.input_gradients(net32, X.astype(np.float32))
    D64 = pt.input_gradients(dense_net(), X)
    assert D32.dtype == np.float32
    np.testing.assert_allclose(D32, D64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"output": "output"}, "output='output' needs a network with a single output"),
    ({"output": "logit"}, "needs index=k"),
    ({"output": "logit", "index": 4}, r"index must be in \[0, 4\)"),
    ({"output": "max_logit", "index": 1}, "index= is used only with output='logit'"),
    ({"output": "argmax"}, "output must be one of"),
    ({"output": lambda out: out[:, :2]}, "must return an upstream gradient of the output's shape"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
])
def test_bad_output_modes_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pt.input_gradients(dense_net(), data((5,)), **kwargs)


def test_log_softmax_needs_two_logits_and_wrong_data_shape_is_named():
    with pytest.raises(ValueError, match="log_softmax' needs at least 2 logits"):
        pt.input_gradients(regression_net(), data((5,)), output="log_softmax")
    with pytest.raises(ValueError, match=r"takes samples of shape \(5,\)"):
        pt.input_gradients(dense_net(), data((6,)))
    with pytest.raises(TypeError, match="net must be a NeuralNetwork"):
        pt.input_gradients(object(), data((5,)))
    with pytest.raises(ValueError, match="no samples"):
        pt.association_statistic(np.zeros((0, 3)))
