"""``BatchNorm -> ReLU -> MaxPool`` in training mode run as one unit, pooled first
(engine/batchnorm_block.py), after a ``Convolution`` as in LeNet-5 with BatchNorm.

References: the layers' own ``forward``/``backward`` one by one (``engine=False``): output, dL/dx,
the convolution's and the BatchNorm's gradients (gamma, beta) and the moving statistics, in float64
to ~1e-12; float64 finite differences of the unit's path; ``BLOCK = False`` runs the layers.
Data are continuous (no ties: see the module docstring for what ties may route differently).
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine import batchnorm_block
from nn_from_scratch.engine.batchnorm_block import BatchNormPoolUnit
from jacobians import finite_difference

# (ndim, pool keywords, input shape)
CASES = [
    (2, dict(pool_size=2), (4, 2, 8, 8)),                          # LeNet-5's blocks
    (2, dict(pool_size=3, stride=2), (3, 2, 9, 7)),                # overlapping windows
    (2, dict(pool_size=(2, 3), padding="same"), (3, 2, 7, 8)),     # padded windows
    (1, dict(pool_size=2), (4, 2, 9)),
    (3, dict(pool_size=2), (2, 2, 4, 4, 4)),
]


def _layers(nd, pool_kw, x_shape, gamma_signs=(1, 1, 1), seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    F = 3
    conv = nf.Convolution(in_channels=x_shape[1], out_channels=F, kernel_size=3, padding="same", ndim=nd,
                          seed=seed, dtype=dtype)
    conv.params["b"][...] = rng.normal(0, 0.3, F)
    bn = nf.BatchNorm((None, F) + (None,) * nd, momentum=0.8, dtype=dtype)
    bn.set_buffers(moving_mean=rng.normal(0, 0.5, F), moving_variance=rng.uniform(0.2, 2.0, F))
    bn.params["gamma"][...] = rng.uniform(0.5, 1.5, F) * np.array(gamma_signs)
    bn.params["beta"][...] = rng.normal(0, 0.3, F)
    return [conv, bn, nf.ReLU(), nf.MaxPool(ndim=nd, **pool_kw), nf.Vectorization()]


def _run(layers, x, g, engine=True, need_input_grad=True):
    net = nf.NeuralNetwork(layers, engine=engine).train()
    y = net.forward(x)
    dx = net.backward(g, need_input_grad=need_input_grad)
    grads = {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()}
    stats = {k: v.copy() for k, v in layers[1].buffers.items()}
    units = [type(u) for _, u in net.runner._tape[1] if u is not None] if engine else []
    return y, dx, grads, stats, units


def _data(layers, x_shape, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=x_shape)
    saved = {k: v.copy() for k, v in layers[1].buffers.items()}
    y = nf.NeuralNetwork(layers, engine=False).train().forward(x)
    layers[1].set_buffers(**saved)
    return x, rng.normal(size=y.shape)


def _both(layers, x, g, **kw):
    saved = {k: v.copy() for k, v in layers[1].buffers.items()}
    got = _run(layers, x, g, **kw)
    layers[1].set_buffers(**saved)
    want = _run(layers, x, g, engine=False, **kw)
    return got, want


def _assert_close(got, want, rtol=1e-12):
    y, dx, grads, stats = got[:4]
    y0, dx0, grads0, stats0 = want[:4]
    pairs = [(y, y0, "y")] + ([(dx, dx0, "dx")] if dx0 is not None else [])
    pairs += [(grads[k], grads0[k], str(k)) for k in grads0] + [(stats[k], stats0[k], k) for k in stats0]
    assert grads.keys() == grads0.keys()
    for a, b, what in pairs:
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(b).max(), 1.0), err_msg=what)   # O(1) data; dL/db is ~0 (BatchNorm)


@pytest.mark.parametrize("gamma_signs", [(1, 1, 1), (1, -1, 1)], ids=["gamma>0", "a negative gamma"])
@pytest.mark.parametrize("nd, pool_kw, x_shape", CASES)
def test_block_equals_the_layers(nd, pool_kw, x_shape, gamma_signs):
    layers = _layers(nd, pool_kw, x_shape, gamma_signs)
    x, g = _data(layers, x_shape)
    got, want = _both(layers, x, g)
    assert BatchNormPoolUnit in got[4]
    _assert_close(got, want)
    assert not np.allclose(got[3]["moving_mean"], 0)             # the statistics moved


def test_block_without_input_gradient():
    layers = _layers(*CASES[0])
    x, g = _data(layers, CASES[0][2])
    got, want = _both(layers, x, g, need_input_grad=False)
    assert got[1] is None and want[1] is None
    _assert_close(got, want)


@pytest.mark.parametrize("gamma_signs", [(1, 1, 1), (1, -1, 1)], ids=["gamma>0", "a negative gamma"])
def test_block_gradients_equal_finite_differences(gamma_signs):
    """dL/dx, dL/dW, dL/dgamma, dL/dbeta of L = sum(g * output) in training mode (batch statistics),
    through the unit; the moving statistics are put back before every evaluation."""
    nd, pool_kw, x_shape = CASES[1]
    layers = _layers(nd, pool_kw, x_shape, gamma_signs, seed=5)
    conv, bn = layers[0], layers[1]
    x, g = _data(layers, x_shape, seed=6)
    net = nf.NeuralNetwork(layers).train()
    saved = {k: v.copy() for k, v in bn.buffers.items()}

    def loss(xx):
        bn.set_buffers(**saved)
        return float((net.forward(xx) * g).sum())

    loss(x)
    dx = net.backward(g)
    assert BatchNormPoolUnit in [type(u) for _, u in net.runner._tape[1] if u is not None]
    analytic = {"W": conv.grads["W"].copy(), "gamma": bn.grads["gamma"].copy(), "beta": bn.grads["beta"].copy()}
    np.testing.assert_allclose(dx, finite_difference(loss, x, h=1e-4), rtol=0, atol=1e-8)
    for name, layer in (("W", conv), ("gamma", bn), ("beta", bn)):
        p = layer.params[name]
        base = p.copy()

        def f(v, p=p):
            p[...] = v
            return loss(x)
        fd = finite_difference(f, base, h=1e-4)
        p[...] = base
        np.testing.assert_allclose(analytic[name], fd, rtol=0, atol=1e-8 * max(1.0, np.abs(fd).max()), err_msg=name)


def test_inference_mode_and_block_off_run_otherwise(monkeypatch):
    layers = _layers(*CASES[0])
    x, g = _data(layers, CASES[0][2])
    net = nf.NeuralNetwork(layers).eval()
    net.forward(x)
    assert BatchNormPoolUnit not in [type(u) for _, u in net.runner._tape[1] if u is not None]
    monkeypatch.setattr(batchnorm_block, "BLOCK", False)
    got = _run(layers, x, g)
    assert BatchNormPoolUnit not in got[4]


def test_float32_block_agrees_with_float64():
    nd, pool_kw, x_shape = CASES[0]
    l64 = _layers(nd, pool_kw, x_shape)
    l32 = _layers(nd, pool_kw, x_shape, dtype=np.float32)
    for a, b in zip(l32, l64):
        for k, v in b.params.items():
            a.params[k][...] = v
    l32[1].set_buffers(**l64[1].buffers)
    x, g = _data(l64, x_shape)
    saved = {k: v.copy() for k, v in l64[1].buffers.items()}
    want = _run(l64, x, g, engine=False)
    l64[1].set_buffers(**saved)
    got = _run(l32, x.astype(np.float32), g.astype(np.float32))
    assert BatchNormPoolUnit in got[4]
    _assert_close(got, want, rtol=3e-5)


def test_one_value_per_channel_is_left_to_the_layer():
    """A batch the layer refuses in training mode (one value per channel): its own error."""
    layers = [nf.BatchNorm((None, 2, 1, 1), dtype=np.float64), nf.ReLU(), nf.MaxPool(pool_size=1)]
    net = nf.NeuralNetwork(layers).train()
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        net.forward(np.ones((1, 2, 1, 1)))


def test_bad_upstream_gradient_names_the_pool():
    layers = _layers(*CASES[0])
    x, _ = _data(layers, CASES[0][2])
    net = nf.NeuralNetwork(layers[:4]).train()
    net.forward(x)
    with pytest.raises(nf.ShapeError, match="MaxPool"):
        net.backward(np.zeros((1, 2)))


def test_a_replaced_forward_keeps_the_layers():
    """A BatchNorm whose instance ``_forward`` was replaced (the worker split installs its exchange of
    batch statistics there) runs by that code: neither the block nor the fold computes it."""
    layers = _layers(*CASES[0])
    x, g = _data(layers, CASES[0][2])
    calls = []
    own = layers[1]._forward

    def hooked(v):
        calls.append(1)
        return own(v)
    layers[1].__dict__["_forward"] = hooked
    for training in (True, False):
        net = nf.NeuralNetwork(layers).train(training)
        net.forward(x)
        assert [type(u).__name__ for _, u in net.runner._tape[1] if u is not None][:1] == ["ConvUnit"]
    assert len(calls) == 2
