"""The engine's input-gradient pass (engine/input_gradients.py, engine/unrolled_conv.py).

References: the layers' own forward/backward run one by one (``engine=False``), a loop that places
each weight of the unrolled matrix by the convolution's definition, and float64 central finite
differences of the network's output.
"""
import math

import numpy as np
import pytest

from nn_from_scratch import (AvgPool, Convolution, Linear, MaxPool, NeuralNetwork, ReLU, SoftMaxLoss, Tanh,
                             Vectorization)
from nn_from_scratch.analysis import gradients as ig
from nn_from_scratch.analysis.permutation_cli import build_seed_cnn
from nn_from_scratch.engine import unrolled_conv
from nn_from_scratch.engine.input_gradients import ConvInputUnit, InputGradientPass
from nn_from_scratch.engine.unrolled_conv import UnrolledConv, unrolled_applies, unrolled_matrix
from nn_from_scratch.layers.geometry import resolve_padding
from jacobians import finite_difference


def plain(layers, X, g):
    """Output and dL/dx by every layer's own forward/backward (the reference path)."""
    net = NeuralNetwork(list(layers), SoftMaxLoss(), engine=False)
    out = net.forward(X)
    return out, net.backward(g)


def fast(layers, X, g):
    p = InputGradientPass(layers)
    out = p.forward(X)
    return out, p.input_gradient(g), p


def conv_paths(p):
    return [u.path for u in p.units().values() if isinstance(u, ConvInputUnit)]


# -- the unrolled matrix ---------------------------------------------------------------------------
def reference_matrix(conv, spatial):
    """A by its definition: for every filter, channel, output position and tap inside the image,
    ``A[c*|S| + flat(s), f*|O| + flat(o)] = W[f, c, i]`` with ``s = o*stride + i*dilation - pad_lo``."""
    W = np.asarray(conv.params["W"])
    pads = resolve_padding(conv.padding, spatial, conv.kernel_size, conv.stride, conv.dilation)
    O = conv.compute_output_shape((conv.in_channels,) + spatial)[1:]
    nS, nO = math.prod(spatial), math.prod(O)
    A = np.zeros((conv.in_channels * nS, conv.out_channels * nO), dtype=W.dtype)
    placed = np.zeros(A.shape, dtype=int)
    for f in range(conv.out_channels):
        for c in range(conv.in_channels):
            for o in np.ndindex(*O):
                for i in np.ndindex(*conv.kernel_size):
                    s = tuple(oo * st + ii * d - p[0] for oo, ii, st, d, p in
                              zip(o, i, conv.stride, conv.dilation, pads))
                    if all(0 <= ss < S for ss, S in zip(s, spatial)):
                        r = c * nS + np.ravel_multi_index(s, spatial)
                        q = f * nO + np.ravel_multi_index(o, O)
                        A[r, q] = W[(f, c) + i]
                        placed[r, q] += 1
    assert placed.max() == 1                  # every entry one weight, placed once
    return A


GEOMETRIES = [  # (spatial, kernel, stride, padding, dilation, C, F)
    ((9, 8), 5, 1, 0, 1, 1, 2),
    ((9, 8), 3, 2, 1, 1, 2, 3),
    ((9, 8), (3, 2), 1, "same", (2, 1), 2, 2),
    ((9, 8), 4, (1, 2), ((1, 2), (0, 3)), 1, 1, 2),
    ((11,), 4, 2, 2, 1, 2, 3),
    ((4, 5, 3), 2, 1, 1, 1, 2, 2),
]


@pytest.mark.parametrize("spatial,k,s,pad,d,C,F", GEOMETRIES)
def test_unrolled_matrix_equals_the_definition_and_the_layer(spatial, k, s, pad, d, C, F):
    conv = Convolution(in_channels=C, out_channels=F, kernel_size=k, stride=s, padding=pad, dilation=d,
                       ndim=len(spatial), seed=3).astype(np.float64)
    conv.set_params(b=np.arange(F, dtype=np.float64) - 0.5)
    x_shape = (4, C) + spatial
    un = UnrolledConv(conv, x_shape)
    np.testing.assert_array_equal(unrolled_matrix(conv.params["W"], un), reference_matrix(conv, spatial))
    X = np.random.default_rng(0).standard_normal(x_shape)
    y = un.forward(X, conv.params["W"], conv.params["b"])
    np.testing.assert_allclose(y, conv.forward(X), rtol=0, atol=1e-13)
    g = np.random.default_rng(1).standard_normal(y.shape)
    np.testing.assert_allclose(un.input_gradient(g), conv.backward(g), rtol=0, atol=1e-13)


def test_rule_unrolls_large_dense_kernels_only():
    cnn_conv = Convolution((None, 1, 28, 28), kernel_size=15, output_layers=2)
    assert unrolled_applies(cnn_conv, (8, 1, 28, 28), 8)                       # density 0.29, 2.5 MB
    assert not unrolled_applies(Convolution((None, 1, 28, 28), kernel_size=3, output_layers=2),
                                (8, 1, 28, 28), 8)                              # density 0.011: sparse
    big = Convolution((None, 3, 64, 64), kernel_size=15, output_layers=64)
    assert not unrolled_applies(big, (8, 3, 64, 64), 4)                         # dense enough, 3.1 GB: large
    nnz, rows, cols = unrolled_conv._density(cnn_conv, (28, 28))
    assert (nnz, rows, cols) == (2 * 14 * 14 * 225, 784, 392)


def test_rule_threshold_is_the_documented_density():
    conv = Convolution((None, 1, 28, 28), kernel_size=11, output_layers=2)      # density 121*324/(784*324)
    nnz, rows, cols = unrolled_conv._density(conv, (28, 28))
    assert nnz / (rows * cols) == pytest.approx(121 / 784)
    assert unrolled_applies(conv, (1, 1, 28, 28), 8) == (121 / 784 >= unrolled_conv.MIN_DENSITY)
    conv9 = Convolution((None, 1, 28, 28), kernel_size=9, output_layers=2)
    assert unrolled_applies(conv9, (1, 1, 28, 28), 8) == (81 / 784 >= unrolled_conv.MIN_DENSITY)


# -- the pass equals the layers' own path -------------------------------------------------------------
def lenet_like(act=ReLU, pool=MaxPool):
    return [Convolution((None, 1, 20, 20), kernel_size=3, output_layers=4, padding="same", seed=0), act(),
            pool(pool_size=2), Convolution(in_channels=4, out_channels=3, kernel_size=3, stride=2, seed=1),
            act(), Vectorization(), Linear(48, 5, seed=2)]


def dilated(act=Tanh, pool=AvgPool):
    return [Convolution((None, 2, 12, 12), kernel_size=3, output_layers=3, dilation=2, padding=1, seed=0), act(),
            pool(pool_size=2), Vectorization(), Linear(3 * 5 * 5, 4, use_bias=False, seed=2)]


def large_kernel(act=ReLU, pool=None):
    return [Convolution((None, 1, 12, 12), kernel_size=7, output_layers=2, seed=0), act(), Vectorization(),
            Linear(2 * 36, 6, seed=1)]


def nobias(act=ReLU, pool=None):
    return [Convolution((None, 1, 12, 12), kernel_size=9, output_layers=2, use_bias=False, seed=0), act(),
            Vectorization(), Linear(2 * 16, 3, seed=1)]


#: name: (layers, sample shape, the convolutions' paths by the rule, with unrolling off)
NETS = {"lenet_like": (lenet_like, (1, 20, 20), ["flipped", "col2im"], ["flipped", "col2im"]),
        "dilated": (dilated, (2, 12, 12), ["flipped"], ["flipped"]),
        "large_kernel": (large_kernel, (1, 12, 12), ["unrolled"], ["flipped"]),
        "nobias": (nobias, (1, 12, 12), ["unrolled"], ["flipped"])}


def build(name, dtype=np.float64, **kw):
    make, shape, paths, general = NETS[name]
    layers = make(**kw)
    for layer in layers:
        if hasattr(layer, "astype"):
            layer.astype(dtype)
    return layers, shape, (paths, general)


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("force", [None, "unrolled", "general"])
def test_pass_equals_the_layers_own_path_float64(name, n, force, monkeypatch):
    if force == "unrolled":
        monkeypatch.setattr(unrolled_conv, "MIN_DENSITY", 0.0)
    elif force == "general":
        monkeypatch.setattr(unrolled_conv, "ENABLED", False)
    layers, shape, paths = build(name)
    X = np.random.default_rng(n).standard_normal((n,) + shape)
    out_ref = NeuralNetwork(list(layers), SoftMaxLoss(), engine=False).forward(X)
    g = np.random.default_rng(5).standard_normal(out_ref.shape)
    out, dx, p = fast(layers, X, g)
    out_p, dx_p = plain(layers, X, g)
    expected = {None: paths[0], "unrolled": ["unrolled"] * len(paths[0]), "general": paths[1]}
    assert conv_paths(p) == expected[force]
    assert dx.shape == X.shape and dx.dtype == np.float64
    np.testing.assert_allclose(out, out_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, dx_p, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(NETS))
def test_pass_float32_equals_the_layers_own_path_and_float64(name):
    layers, shape, _ = build(name, np.float32)
    layers64, _, _ = build(name, np.float64)
    X = np.random.default_rng(0).standard_normal((5,) + shape)
    out_ref = NeuralNetwork(list(layers64), SoftMaxLoss(), engine=False).forward(X)
    g = np.random.default_rng(5).standard_normal(out_ref.shape)
    out, dx, _ = fast(layers, X.astype(np.float32), g.astype(np.float32))
    _, dx_p = plain(layers, X.astype(np.float32), g.astype(np.float32))
    _, dx64 = plain(layers64, X, g)
    assert dx.dtype == np.float32
    scale = np.abs(dx64).max()
    np.testing.assert_allclose(dx, dx_p, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(dx, dx64, rtol=0, atol=2e-5 * scale)


def test_no_parameter_gradients_are_computed():
    layers, shape, _ = build("large_kernel")
    layers2, _, _ = build("lenet_like")
    for ls in (layers, layers2):
        X = np.random.default_rng(0).standard_normal((3,) + ls[0].input_shape)
        p = InputGradientPass(ls)
        out = p.forward(X)
        p.input_gradient(np.ones_like(out))
        assert all(layer.grads == {} for layer in ls)
        _, _ = plain(ls, X, np.ones_like(out))            # the layers' own backward does compute them
        assert all(layer.grads for layer in ls if layer.trainable)


def test_new_weights_rebuild_the_matrix():
    layers, shape, _ = build("large_kernel")
    X = np.random.default_rng(0).standard_normal((4,) + shape)
    p = InputGradientPass(layers)
    out = p.forward(X)
    g = np.random.default_rng(1).standard_normal(out.shape)
    p.input_gradient(g)
    layers[0].params["W"] *= -1.5                 # in place, as an optimizer step does
    layers[0].params["b"] += 0.25
    layers[3].params["W"] *= 0.5
    out = p.forward(X)
    dx = p.input_gradient(g)
    out_p, dx_p = plain(layers, X, g)
    np.testing.assert_allclose(out, out_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, dx_p, rtol=0, atol=1e-12)


def test_upstream_of_the_wrong_shape_is_named():
    layers, shape, _ = build("large_kernel")
    p = InputGradientPass(layers)
    out = p.forward(np.zeros((2,) + shape))
    with pytest.raises(ValueError, match=r"upstream gradient must have the shape of the last output \(2, 6\), received \(2, 5\)"):
        p.input_gradient(np.zeros((2, 5)))
    with pytest.raises(RuntimeError, match="call forward"):
        InputGradientPass(layers).input_gradient(out)


# -- input_gradients: finite differences, both paths ----------------------------------------------------
@pytest.mark.parametrize("engine", [True, False], ids=["engine", "layers"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_input_gradients_equal_finite_differences(name, engine):
    """Smooth networks (tanh, average pooling: no kinks for the differences to step over)."""
    layers, shape, _ = build(name, act=Tanh, pool=AvgPool)
    net = NeuralNetwork(layers, SoftMaxLoss(), engine=engine)
    X = np.random.default_rng(3).standard_normal((3,) + shape)
    D = ig.input_gradients(net, X, output="logit", index=1, batch_size=2)
    for i in range(len(X)):
        ref = finite_difference(lambda x: net.predict(x[None])[0, 1], X[i])
        np.testing.assert_allclose(D[i], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(NETS))
def test_input_gradients_engine_equals_layers_relu_max_logit(name):
    layers, shape, _ = build(name)
    X = np.random.default_rng(4).standard_normal((9,) + shape)
    net = NeuralNetwork(layers, SoftMaxLoss())
    D = ig.input_gradients(net, X, batch_size=4)
    net.engine = False
    np.testing.assert_allclose(D, ig.input_gradients(net, X, batch_size=4), rtol=0, atol=1e-12)


def test_the_permutation_tests_cnn_runs_the_unrolled_matrix(monkeypatch):
    """``gradient_statistics`` (what each permutation-test fit computes) takes the engine pass, and the
    CNN's 15x15 convolution runs as the unrolled matrix."""
    made = []

    class Spy(InputGradientPass):
        def __init__(self, layers):
            super().__init__(layers)
            made.append(self)
    monkeypatch.setattr(ig, "InputGradientPass", Spy)
    net = build_seed_cnn(0).astype(np.float64)
    X = np.random.default_rng(0).standard_normal((6, 1, 28, 28))
    s = ig.gradient_statistics(net, X, batch_size=4)
    assert len(made) == 1 and conv_paths(made[0]) == ["unrolled"]
    net.engine = False
    D = ig.input_gradients(net, X)
    assert len(made) == 1                                     # engine=False: the layers' own path
    np.testing.assert_allclose(s["association"], (D ** 2).mean(axis=0), rtol=1e-12, atol=1e-300)


def test_on_each_backend_equals_numpy(backend):
    """CuPy: the pass takes its array module from the data (skipped without a GPU)."""
    ref = {}
    for name in ("large_kernel", "lenet_like"):
        layers, shape, _ = build(name)
        X = np.random.default_rng(0).standard_normal((5,) + shape)
        ref[name] = ig.input_gradients(NeuralNetwork(layers, SoftMaxLoss(), engine=False), X)
        layers, _, _ = build(name)
        net = NeuralNetwork(layers, SoftMaxLoss())
        D = ig.input_gradients(net, backend.asarray(X))
        np.testing.assert_allclose(backend.to_numpy(D), ref[name], rtol=0, atol=1e-12)
