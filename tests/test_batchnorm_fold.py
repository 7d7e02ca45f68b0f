"""``Convolution -> BatchNorm`` in inference mode folded into one convolution by the engine
(engine/batchnorm_fold.py), alone and with ``ReLU -> MaxPool`` by pooling phase.

References: the layers' own ``forward``/``backward`` one by one (``engine=False``), float64
finite differences of the folded path, and the fold switched off (``batchnorm_fold.FOLD = False``).
The BatchNorms have moving statistics away from 0 and 1 and some negative ``gamma`` (a negative
scale turns the pooling's maxima into minima of the convolution's output: the fold must not care).
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine import batchnorm_fold
from nn_from_scratch.engine.batchnorm_fold import FoldedConvUnit, FoldedPhaseUnit
from jacobians import finite_difference

# (ndim, conv keywords, pool: None / "pool", input shape, the unit expected)
CASES = [
    (2, dict(kernel_size=5, padding=2), "pool", (3, 2, 8, 8), FoldedPhaseUnit),         # LeNet-5's first block
    (2, dict(kernel_size=5), "pool", (3, 3, 9, 11), FoldedPhaseUnit),                   # odd conv output: 5x7
    (2, dict(kernel_size=3, padding=1), "pool", (3, 2, 6, 6), FoldedConvUnit),          # 3x3: no phase block
    (2, dict(kernel_size=3, stride=2), None, (2, 2, 9, 9), FoldedConvUnit),             # strided, no pooling
    (1, dict(kernel_size=3, padding="same"), "pool", (3, 2, 10), FoldedConvUnit),
    (3, dict(kernel_size=2), None, (2, 2, 4, 3, 4), FoldedConvUnit),
]


def _layers(nd, conv_kw, pool, x_shape, use_bias=True, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    F = 4
    conv = nf.Convolution(in_channels=x_shape[1], out_channels=F, ndim=nd, use_bias=use_bias, seed=seed,
                          dtype=dtype, **conv_kw)
    if use_bias:
        conv.params["b"][...] = rng.normal(0, 0.3, F)
    bn = nf.BatchNorm((None, F) + (None,) * nd, momentum=0.9, dtype=dtype)
    bn.set_buffers(moving_mean=rng.normal(0, 0.5, F), moving_variance=rng.uniform(0.2, 2.0, F))
    bn.params["gamma"][...] = rng.uniform(0.5, 1.5, F) * np.array([1, -1, 1, -1])
    bn.params["beta"][...] = rng.normal(0, 0.3, F)
    layers = [conv, bn, nf.ReLU()]
    if pool:
        layers.append(nf.MaxPool(ndim=nd, pool_size=2))
    return layers + [nf.Vectorization()]


def _run(layers, x, g, engine=True, training=False):
    net = nf.NeuralNetwork(layers, engine=engine)
    net.train(training)
    y = net.forward(x)
    dx = net.backward(g)
    grads = {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()}
    tape = net.runner._tape
    units = [type(u) for _, u in tape[1] if u is not None] if engine else []
    return y, dx, grads, units


def _data(layers, x_shape, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=x_shape)
    y = nf.NeuralNetwork(layers, engine=False).eval().forward(x)
    return x, rng.normal(size=y.shape)


def _assert_close(got, want, rtol=1e-12):
    (y, dx, grads), (y0, dx0, grads0) = got[:3], want[:3]
    for a, b, what in [(y, y0, "y"), (dx, dx0, "dx")] + [(grads[k], grads0[k], str(k)) for k in grads0]:
        scale = max(np.abs(b).max(), 1e-300)
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=what)
    assert grads.keys() == grads0.keys()


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("nd, conv_kw, pool, x_shape, unit", CASES)
def test_folded_equals_the_layers(nd, conv_kw, pool, x_shape, unit, use_bias):
    layers = _layers(nd, conv_kw, pool, x_shape, use_bias)
    x, g = _data(layers, x_shape)
    got = _run(layers, x, g)
    assert unit in got[3]
    want = _run(layers, x, g, engine=False)
    _assert_close(got, want)
    assert {"gamma", "beta"} <= {k for _, k in got[2]}


@pytest.mark.parametrize("nd, conv_kw, pool, x_shape, unit", [CASES[0], CASES[2], CASES[4]])
def test_folded_gradients_equal_finite_differences(nd, conv_kw, pool, x_shape, unit):
    """dL/dx, dL/dW, dL/db, dL/dgamma, dL/dbeta of L = sum(g * output), all through the folded path."""
    layers = _layers(nd, conv_kw, pool, x_shape, seed=3)
    conv, bn = layers[0], layers[1]
    x, g = _data(layers, x_shape, seed=4)
    net = nf.NeuralNetwork(layers).eval()

    def loss(_):
        return float((net.forward(x) * g).sum())

    net.forward(x)
    dx = net.backward(g)
    assert unit in [type(u) for _, u in net.runner._tape[1] if u is not None]
    analytic = {"x": dx, "W": conv.grads["W"].copy(), "b": conv.grads["b"].copy(),
                "gamma": bn.grads["gamma"].copy(), "beta": bn.grads["beta"].copy()}
    np.testing.assert_allclose(analytic["x"], finite_difference(lambda xx: float((net.forward(xx) * g).sum()), x,
                                                                h=1e-4), rtol=0, atol=1e-8)
    for name, layer in (("W", conv), ("b", conv), ("gamma", bn), ("beta", bn)):
        p = layer.params[name]
        base = p.copy()

        def f(v, p=p):
            p[...] = v
            return loss(None)
        fd = finite_difference(f, base, h=1e-4)
        p[...] = base
        np.testing.assert_allclose(analytic[name], fd, rtol=0, atol=1e-8 * max(1.0, np.abs(fd).max()), err_msg=name)


def test_training_mode_is_not_folded_and_frozen_batchnorm_is():
    """Batch statistics: the layers run (no fold); a frozen BatchNorm (``trainable = False``) uses its
    moving statistics in training mode too, and is folded there, equal to the layers."""
    layers = _layers(*CASES[0][:4])
    x, g = _data(layers, CASES[0][3])
    got = _run(layers, x, g, training=True)
    assert FoldedPhaseUnit not in got[3] and FoldedConvUnit not in got[3]
    layers[1].trainable = False
    got = _run(layers, x, g, training=True)
    assert FoldedPhaseUnit in got[3]
    _assert_close(got, _run(layers, x, g, engine=False, training=True))


def test_fold_off_runs_the_layers(monkeypatch):
    layers = _layers(*CASES[0][:4])
    x, g = _data(layers, CASES[0][3])
    monkeypatch.setattr(batchnorm_fold, "FOLD", False)
    got = _run(layers, x, g)
    assert FoldedPhaseUnit not in got[3] and FoldedConvUnit not in got[3]


def test_float32_folded_agrees_with_float64():
    """float32 through the fold against float64 through the layers: rounding of float32 only."""
    nd, conv_kw, pool, x_shape, _ = CASES[0]
    l64 = _layers(nd, conv_kw, pool, x_shape)
    l32 = _layers(nd, conv_kw, pool, x_shape, dtype=np.float32)
    for a, b in zip(l32, l64):
        for k, v in b.params.items():
            a.params[k][...] = v
        if hasattr(b, "buffers") and isinstance(b, nf.BatchNorm):
            a.set_buffers(**b.buffers)
    x, g = _data(l64, x_shape)
    want = _run(l64, x, g, engine=False)
    got = _run(l32, x.astype(np.float32), g.astype(np.float32))
    assert FoldedPhaseUnit in got[3]
    _assert_close(got, want, rtol=2e-5)


def test_parameters_changed_between_forwards_are_used():
    """The fold is made from the parameters and moving statistics at each forward (no stale copy)."""
    layers = _layers(*CASES[2][:4])
    x, g = _data(layers, CASES[2][3])
    net = nf.NeuralNetwork(layers).eval()
    net.forward(x)
    layers[1].set_buffers(moving_mean=layers[1].moving_mean + 0.25)
    layers[0].params["W"] *= 1.5
    y = net.forward(x)
    np.testing.assert_allclose(y, nf.NeuralNetwork(layers, engine=False).eval().forward(x), rtol=0, atol=1e-12)


def test_bad_upstream_gradient_names_the_layer():
    layers = _layers(*CASES[2][:4])
    x, g = _data(layers, CASES[2][3])
    net = nf.NeuralNetwork(layers[:2]).eval()
    net.forward(x)
    with pytest.raises(nf.ShapeError, match="BatchNorm"):
        net.backward(np.zeros((1, 2)))


def test_engine_plan_names_the_fold():
    layers = _layers(*CASES[0][:4])
    net = nf.NeuralNetwork(layers, input_shape=CASES[0][3][1:]).eval()
    assert (0, 4, batchnorm_fold_name()) in net.engine_plan()
    net.train()
    assert all(stop - first < 4 for first, stop, _ in net.engine_plan())


def batchnorm_fold_name():
    from nn_from_scratch.engine.runner import UNIT_NAMES
    return UNIT_NAMES["FoldedPhaseUnit"]
