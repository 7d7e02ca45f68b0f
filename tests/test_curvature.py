"""Kronecker-factored curvature (analysis/curvature.py) against references no one here wrote.

References: plain loops over the padded input (patches), ``tests/loop_reference.conv_loop``
with the gathering filter (the seed's construction, ``groups=1``), ``NeuralNetwork.gradients``
on one-example batches, central finite differences of the network OUTPUT (exact up to rounding
for outputs linear in the parameters), the framework's backward with one-hot upstreams (the
Jacobian of the logits), ``numpy.linalg.solve`` / ``numpy.kron`` and closed-form identities of
the KFC/EKFAC derivations.  float64 throughout, tolerances 1e-10 (relative to the scale of the
compared matrix) unless stated.
"""
import itertools
import math

import numpy as np
import pytest

from gpu_utils import requires_gpu
from loop_reference import conv_loop
from nn_from_scratch import (Convolution, Flatten, Linear, MSELoss, NeuralNetwork, ReLU, ShapeError,
                             SoftMaxLoss, Tanh)
from nn_from_scratch.analysis import curvature as cv
from nn_from_scratch.kfac import statistics as ls
from nn_from_scratch.layers.geometry import gathering_filter, resolve_padding

F64 = np.float64


from seeding import seeded_layers  # noqa: E402,F401 - autouse: seeded weights in every test
from jacobians import fd_output_jacobian


def close(a, b, tol=1e-10):
    a, b = np.asarray(a, dtype=F64), np.asarray(b, dtype=F64)
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    err = float(np.abs(a - b).max(initial=0.0))
    assert err <= tol * scale, f"max |difference| {err:.3e} > {tol:.0e} x {scale:.3e}"


def net_of(layers, loss=None):
    return NeuralNetwork(layers, loss_fn=loss if loss is not None else SoftMaxLoss(), workers=1)


# -------------------------------------------------------------------- patch order
GEOMETRIES = [
    # (C, spatial, kernel, stride, padding, dilation, bias)
    (2, (9,), 3, 2, 1, 2, True),
    (3, (7, 6), (3, 2), (2, 1), ((1, 0), (2, 1)), (1, 2), True),
    (2, (5, 5), 3, 1, "same", 1, False),
    (2, (5, 4, 4), (2, 2, 3), (1, 2, 1), 1, (2, 1, 1), True),
]


def _loop_A(x, kernel, stride, pairs, dilation, bias):
    """A = (1/N) sum_n sum_t a a^T with a read from the padded input one scalar at a time."""
    n, c = x.shape[:2]
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(pairs))
    out = tuple((s + lo + hi - d * (k - 1) - 1) // st + 1
                for s, k, st, (lo, hi), d in zip(x.shape[2:], kernel, stride, pairs, dilation))
    dp = c * math.prod(kernel) + int(bias)
    A = np.zeros((dp, dp))
    for b in range(n):
        for o in itertools.product(*(range(v) for v in out)):
            a = []
            for ch in range(c):                      # channel-major, then kernel offsets row-major
                for i in itertools.product(*(range(k) for k in kernel)):
                    a.append(xpad[(b, ch) + tuple(oo * s + ii * d for oo, s, ii, d in zip(o, stride, i, dilation))])
            if bias:
                a.append(1.0)
            a = np.array(a)
            A += np.outer(a, a)
    return A / n


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"{len(g[1])}d")
def test_A_from_im2col_equals_gathering_filter_conv_and_loop(geom, rng):
    C, spatial, kernel, stride, padding, dilation, bias = geom
    nd = len(spatial)
    conv = Convolution((None, C) + spatial, kernel_size=kernel, output_layers=3, stride=stride, padding=padding,
                       dilation=dilation, use_bias=bias, dtype=F64)
    net = net_of([conv], MSELoss())
    X = rng.standard_normal((3, C) + spatial)
    y = rng.standard_normal((3,) + conv.compute_output_shape((C,) + spatial))
    A = cv.kfac_factors(net, X, y)[conv.name].A
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    pairs = resolve_padding(padding, spatial, k, s, d)
    # the gathering-filter convolution (groups=1), by the naive loop convolution
    gath = conv_loop(X, gathering_filter(C, k), None, s, pairs, d)          # (N, C*K, *O)
    rows = gath.reshape(3, C * math.prod(k), -1).transpose(0, 2, 1)
    if bias:
        rows = np.concatenate([rows, np.ones(rows.shape[:2] + (1,))], axis=2)
    A_gather = np.einsum("ntd,nte->de", rows, rows) / 3
    close(A, A_gather)
    close(A, _loop_A(X, k, s, pairs, d, bias))
    assert A.shape == (C * math.prod(k) + bias,) * 2 and nd == len(k)


# -------------------------------------------------------------------- layout
def test_linear_bias_in_row_0_maps_to_the_last_column(rng):
    lin = Linear(4, 3, dtype=F64)
    W = rng.standard_normal((5, 3))
    M = ls.to_matrix(lin, {"W": W})
    assert M.shape == (3, 5)
    for f in range(3):
        for j in range(4):
            assert M[f, j] == W[1 + j, f]
        assert M[f, 4] == W[0, f]
    np.testing.assert_array_equal(ls.from_matrix(lin, M)["W"], W)
    conv = Convolution((None, 2, 5), kernel_size=3, output_layers=4, dtype=F64)
    arrays = {"W": rng.standard_normal((4, 2, 3)), "b": rng.standard_normal(4)}
    M = ls.to_matrix(conv, arrays)
    np.testing.assert_array_equal(M[:, :6], arrays["W"].reshape(4, 6))
    np.testing.assert_array_equal(M[:, 6], arrays["b"])
    back = ls.from_matrix(conv, M)
    np.testing.assert_array_equal(back["W"], arrays["W"])
    np.testing.assert_array_equal(back["b"], arrays["b"])


# -------------------------------------------------------------------- per-example gradients
def _nets(rng):
    yield "mlp", net_of([Linear(5, 4, dtype=F64), Tanh(), Linear(4, 3, dtype=F64)]), rng.standard_normal((6, 5)), 3
    yield "conv1d", net_of([Convolution((None, 2, 11), kernel_size=3, output_layers=3, stride=2, padding=2,
                                        dilation=2, dtype=F64), Tanh(), Flatten(), Linear(18, 3, dtype=F64)]), \
        rng.standard_normal((5, 2, 11)), 3
    yield "conv2d", net_of([Convolution((None, 2, 6, 5), kernel_size=(3, 2), output_layers=3, stride=(2, 1),
                                        padding=1, dtype=F64), ReLU(),
                            Convolution((None, 3, 3, 6), kernel_size=2, output_layers=2, dilation=(1, 2),
                                        use_bias=False, dtype=F64), Flatten(),
                            Linear(16, 4, dtype=F64)]), rng.standard_normal((5, 2, 6, 5)), 4
    yield "conv3d", net_of([Convolution((None, 2, 4, 4, 3), kernel_size=2, output_layers=2, stride=(1, 2, 1),
                                        padding=((1, 0), 0, 1), dilation=(2, 1, 1), dtype=F64), Tanh(),
                            Flatten(), Linear(2 * 3 * 2 * 4, 3, dtype=F64)]), rng.standard_normal((4, 2, 4, 4, 3)), 3


@pytest.mark.parametrize("which", ["mlp", "conv1d", "conv2d", "conv3d"])
def test_per_example_gradients_sum_and_single_batches(which, rng):
    name, net, X, k = next(item for item in _nets(rng) if item[0] == which)
    n = X.shape[0]
    y = rng.integers(0, k, n)
    pe = cv.per_example_gradients(net, X, y, batch_size=2)
    batch = net.gradients(X, y)
    for layer in net.trainable_layers:
        assert set(pe[layer.name]) == set(layer.params)
        for key in layer.params:
            assert pe[layer.name][key].shape == (n,) + tuple(layer.params[key].shape)
            close(pe[layer.name][key].sum(axis=0), n * batch[(layer.name, key)])
    for i in range(n):
        one = net.gradients(X[i:i + 1], y[i:i + 1])
        for layer in net.trainable_layers:
            for key in layer.params:
                close(pe[layer.name][key][i], one[(layer.name, key)])


# -------------------------------------------------------------------- exactness cases
def _flat_grads(layer, grads):
    return ls.to_matrix(layer, grads).reshape(-1)


def _logit_jacobian(net, x, layer):
    """d logits / d vec_r(W~) of one example, by the framework's backward with one-hot upstreams."""
    k = net.output_shape[0]
    rows = []
    for c in range(k):
        net.forward(x)
        up = np.zeros((1, k))
        up[0, c] = 1.0
        net.backward(up)
        rows.append(_flat_grads(layer, dict(layer.grads)))
    return np.array(rows)                                    # (K, P)


@pytest.mark.parametrize("fisher", ["type2", "empirical"])
def test_one_example_T1_kron_equals_dense_block(fisher, rng):
    conv = Convolution((None, 2, 3, 3), kernel_size=3, output_layers=4, dtype=F64)      # T = 1
    lin = Linear(4, 3, dtype=F64)
    net = net_of([conv, Tanh(), Flatten(), lin])
    X, y = rng.standard_normal((1, 2, 3, 3)), np.array([1])
    kf = cv.kfac_factors(net, X, y, fisher=fisher)
    z = net.predict(X)[0]
    p = np.exp(z - z.max())
    p /= p.sum()
    for layer in (conv, lin):
        K = kf[layer.name].dense()
        close(K, cv.fisher_block(net, X, y, layer.name, fisher=fisher))
        if fisher == "type2":            # J^T (diag p - p p^T) J, J by the framework's backward
            J = _logit_jacobian(net, X, layer)
            ref = J.T @ (np.diag(p) - np.outer(p, p)) @ J
        else:                            # rank one: the example's own gradient
            g = _flat_grads(layer, {k_[1]: v for k_, v in net.gradients(X, y).items() if k_[0] == layer.name})
            ref = np.outer(g, g)
        close(K, ref)


def _gauss_newton(net, layer, X):
    J = fd_output_jacobian(net, layer, X)
    d = J.shape[1]
    return np.einsum("ndp,ndq->pq", J, J) * (2.0 / d) / X.shape[0]     # (1/N) sum J^T (2/D) J


@pytest.mark.parametrize("geom", [((2, 5, 5), 3, 2, 1, 1), ((2, 6, 5), (2, 3), 1, "same", (2, 1)), ((3, 8), 3, 3, 2, 1)])
def test_single_linear_conv_with_squared_loss_is_exact(geom, rng):
    shape, kernel, stride, padding, dilation = geom
    conv = Convolution((None,) + shape, kernel_size=kernel, output_layers=3, stride=stride, padding=padding,
                       dilation=dilation, dtype=F64)
    conv.set_params(b=rng.standard_normal(3))
    net = net_of([conv], MSELoss())
    X = rng.standard_normal((4,) + shape)
    y = rng.standard_normal((4,) + conv.compute_output_shape(shape))
    K = cv.kfac_factors(net, X, y, fisher="gauss_newton", batch_size=3)[conv.name]
    assert K.n_positions > 1
    close(K.dense(), _gauss_newton(net, conv, X))
    close(K.dense(), cv.fisher_block(net, X, y, conv, fisher="gauss_newton"))


def test_deep_linear_network_with_squared_loss_is_exact_for_every_layer(rng):
    layers = [Linear(4, 5, dtype=F64), Linear(5, 3, dtype=F64, use_bias=False), Linear(3, 2, dtype=F64)]
    net = net_of(layers, MSELoss())
    X, y = rng.standard_normal((7, 4)), rng.standard_normal((7, 2))
    kf = cv.kfac_factors(net, X, y, fisher="gauss_newton")
    ek = cv.ekfac_factors(net, X, y, fisher="gauss_newton")
    for layer in layers:
        F = _gauss_newton(net, layer, X)
        close(kf[layer.name].dense(), F)
        close(ek[layer.name].dense(), F)                      # EKFAC == KFAC == F when K-FAC is exact


def test_empirical_fisher_is_not_kronecker_in_general(rng):
    """The identities above are not vacuous: with several examples the empirical block differs."""
    net = net_of([Linear(4, 3, dtype=F64)])
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    K = cv.kfac_factors(net, X, y)[net.layers[0].name].dense()
    F = cv.fisher_block(net, X, y, net.layers[0])
    assert np.abs(K - F).max() > 1e-3 * np.abs(F).max()


# -------------------------------------------------------------------- factors: algebra, solves, batches
def _some_factors(rng, f=3, dp=5):
    a = rng.standard_normal((12, dp))
    g = rng.standard_normal((7, f))
    return cv.KroneckerFactors(a.T @ a / 12, g.T @ g / 7, layer="test")


def test_eigen_damped_solve_equals_dense_solve(rng):
    kf = _some_factors(rng)
    V = rng.standard_normal((3, 5))
    for gamma in (1e-3, 0.1, 2.0):
        ref = np.linalg.solve(np.kron(kf.G, kf.A) + gamma * np.eye(15), V.reshape(-1))
        close(kf.solve(V, gamma).reshape(-1), ref)
        close(kf.solve(V.reshape(-1), gamma), ref)


def test_pi_damped_solve_equals_its_dense_counterpart(rng):
    kf = _some_factors(rng)
    V = rng.standard_normal((3, 5))
    gamma = 0.05
    pi = math.sqrt((np.trace(kf.A) / 5) / (np.trace(kf.G) / 3))
    Gd = kf.G + math.sqrt(gamma) / pi * np.eye(3)
    Ad = kf.A + pi * math.sqrt(gamma) * np.eye(5)
    close(kf.solve(V, gamma, method="pi").reshape(-1), np.linalg.solve(np.kron(Gd, Ad), V.reshape(-1)))


def test_kronecker_algebra(rng):
    kf = _some_factors(rng)
    D = np.kron(kf.G, kf.A)
    V = rng.standard_normal((3, 5))
    close(kf.dense(), D, 1e-12)
    close(kf.matvec(V).reshape(-1), D @ V.reshape(-1), 1e-12)
    close(kf.trace(), np.trace(D), 1e-12)
    close(kf.frobenius_norm(), np.linalg.norm(D), 1e-12)
    close(kf.diagonal(), np.diag(D), 1e-12)
    close(np.sort(kf.eigenvalues().reshape(-1)), np.sort(np.linalg.eigvalsh(D)), 1e-12)
    # undamped limit on full-rank factors
    close(kf.solve(D @ V.reshape(-1), 1e-13), V.reshape(-1), 1e-6)


def test_factors_are_exact_over_batches(rng):
    name, net, X, k = next(item for item in _nets(rng) if item[0] == "conv2d")
    y = rng.integers(0, k, X.shape[0])
    whole = cv.kfac_factors(net, X, y, fisher="type2")
    parts = cv.kfac_factors(net, X, y, fisher="type2", batch_size=2)
    for key in whole:
        close(parts[key].A, whole[key].A, 1e-12)
        close(parts[key].G, whole[key].G, 1e-12)
        assert parts[key].n_examples == X.shape[0]


def test_G_is_N_times_the_mean_loss_gradient_outer_product(rng):
    """Scale check of the convention: one example, empirical: G = g g^T, g = N dL/dy with N = 1; the
    per-position mean for a conv (T positions) is (1/T) sum_t g_t g_t^T."""
    conv = Convolution((None, 1, 4, 4), kernel_size=3, output_layers=2, dtype=F64)
    net = net_of([conv], MSELoss())
    X = rng.standard_normal((3, 1, 4, 4))
    y = rng.standard_normal((3, 2, 2, 2))
    G = cv.kfac_factors(net, X, y)[conv.name].G
    out = net.predict(X)
    g = 2 * (out - y) / 8                                   # per-example loss (1/8) sum (f - t)^2
    rows = g.reshape(3, 2, 4).transpose(0, 2, 1).reshape(-1, 2)
    close(G, rows.T @ rows / (3 * 4))


# -------------------------------------------------------------------- mc -> type2
def test_mc_fisher_converges_to_type2(rng):
    """The mean of R single-sample MC estimates of every factor entry lies within 5 standard errors
    of the type-2 value (R = 400; for ~40 entries the chance of a false failure is < 1e-4)."""
    net = net_of([Linear(3, 4, dtype=F64), Tanh(), Linear(4, 3, dtype=F64)])
    X, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    t2 = cv.kfac_factors(net, X, y, fisher="type2")
    R = 400
    draws = [cv.kfac_factors(net, X, y, fisher="mc", seed=s) for s in range(R)]
    for name in t2:
        Gs = np.array([d[name].G for d in draws])
        mean, se = Gs.mean(axis=0), Gs.std(axis=0, ddof=1) / math.sqrt(R)
        assert np.all(np.abs(mean - t2[name].G) <= 5 * se + 1e-14)
        assert se.max() < 0.1 * np.abs(t2[name].G).max()       # the bound is tight enough to mean something
        close(draws[0][name].A, t2[name].A, 1e-14)
    many = cv.kfac_factors(net, X, y, fisher="mc", mc_samples=R, seed=7)
    for name in t2:                                             # mc_samples: the same estimator, one call
        assert np.abs(many[name].G - t2[name].G).max() < 6 * np.abs(t2[name].G).max() / math.sqrt(R)


# -------------------------------------------------------------------- EKFAC
def test_ekfac_before_reestimation_is_kfac_and_after_it_is_closer(rng):
    name, net, X, k = next(item for item in _nets(rng) if item[0] == "conv2d")
    y = rng.integers(0, k, X.shape[0])
    for fisher in ("type2", "empirical"):
        kf = cv.kfac_factors(net, X, y, fisher=fisher)
        s = cv.ekfac_scalings(net, X, y, kf, fisher=fisher, batch_size=2)
        for layer in net.trainable_layers:
            f = kf[layer.name]
            close(f.ekfac().dense(), f.dense())                  # s = lam_G lam_A^T: K-FAC exactly
            F = cv.fisher_block(net, X, y, layer, fisher=fisher)
            _, Q_G, _, Q_A = f.eigen()
            Q = np.kron(Q_G, Q_A)
            close(s[layer.name].reshape(-1), np.diag(Q.T @ F @ Q))
            E = cv.EKFACFactors(f, s[layer.name]).dense()
            dk, de = np.linalg.norm(F - f.dense()), np.linalg.norm(F - E)
            assert de <= dk
            close(dk ** 2, de ** 2 + np.linalg.norm(s[layer.name] - f.eigenvalues()) ** 2)


def test_ekfac_solve_equals_dense_solve(rng):
    kf = _some_factors(rng)
    s = rng.random((3, 5))
    e = cv.EKFACFactors(kf, s)
    V = rng.standard_normal((3, 5))
    close(e.solve(V, 0.1).reshape(-1), np.linalg.solve(e.dense() + 0.1 * np.eye(15), V.reshape(-1)))
    close(e.matvec(V).reshape(-1), e.dense() @ V.reshape(-1))


# -------------------------------------------------------------------- bad input
def test_bad_inputs_are_named(rng):
    net = net_of([Linear(3, 4, dtype=F64), Tanh(), Linear(4, 2, dtype=F64)])
    X, y = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
    tanh = net.layers[1].name
    with pytest.raises(TypeError, match=rf"'{tanh}' is a Tanh.*Linear and Convolution"):
        cv.kfac_factors(net, X, y, layers=[tanh])
    with pytest.raises(TypeError, match="Tanh"):
        cv.fisher_block(net, X, y, tanh)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        cv.kfac_factors(net, X, y, layers=["nope"])
    with pytest.raises(ValueError, match="fisher must be one of"):
        cv.kfac_factors(net, X, y, fisher="exact")
    with pytest.raises(ValueError, match="mc_samples"):
        cv.kfac_factors(net, X, y, fisher="mc", mc_samples=0)
    reg = net_of([Linear(3, 2, dtype=F64)], MSELoss())
    with pytest.raises(ValueError, match="type2.*SoftMaxLoss.*MSELoss"):
        cv.kfac_factors(reg, X, rng.standard_normal((4, 2)), fisher="type2")
    kf = _some_factors(rng)
    for bad in (0, -1e-3, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="damping must be a finite number > 0"):
            kf.solve(np.zeros((3, 5)), bad)
    with pytest.raises(ValueError, match="method must be one of"):
        kf.solve(np.zeros((3, 5)), 0.1, method="cholesky")
    with pytest.raises(ShapeError, match=r"V must have shape \(3, 5\)"):
        kf.solve(np.zeros((5, 3)), 0.1)
    big = net_of([Linear(70, 60, dtype=F64)])
    with pytest.raises(ValueError, match=r"P = 60 x 71 = 4260 parameters.*4260 x 4260.*max_params=4096"):
        cv.fisher_block(big, rng.standard_normal((2, 70)), np.array([0, 1]), big.layers[0])
    with pytest.raises(ValueError, match="no Linear or Convolution layer"):
        cv.kfac_factors(net_of([Tanh((None, 3))]), X, y)


# -------------------------------------------------------------------- CuPy
@requires_gpu
def test_cupy_factors_equal_numpy(gpu, rng):
    """The same network on the GPU and on the host: factors, per-example gradients and blocks agree."""
    from nn_from_scratch import backend as nnb

    def build():
        return net_of([Convolution((None, 2, 6, 6), kernel_size=3, output_layers=3, stride=2, padding=1, seed=3,
                                   dtype=F64), Tanh(), Flatten(), Linear(27, 4, seed=4, dtype=F64)])
    X, y = rng.standard_normal((6, 2, 6, 6)), rng.integers(0, 4, 6)
    on_gpu = build()
    nnb.use("numpy")
    try:
        on_host = build()
    finally:
        nnb.use("cupy")
    for fisher in ("empirical", "type2", "mc"):
        kg, kh = cv.kfac_factors(on_gpu, X, y, fisher=fisher), cv.kfac_factors(on_host, X, y, fisher=fisher)
        for name_g, name_h in zip(kg, kh):
            close(nnb.to_numpy(kg[name_g].A), kh[name_h].A)
            close(nnb.to_numpy(kg[name_g].G), kh[name_h].G)
            V = np.ones(kh[name_h].shape)
            close(nnb.to_numpy(kg[name_g].solve(nnb.to_device(V, like=kg[name_g].A), 1e-3)),
                  kh[name_h].solve(V, 1e-3))
    pg, ph = cv.per_example_gradients(on_gpu, X, y), cv.per_example_gradients(on_host, X, y)
    for (lg, dg), (lh, dh) in zip(pg.items(), ph.items()):
        for key in dh:
            close(dg[key], dh[key])


@pytest.mark.parametrize("method", [None, "gram", "project", "gradients"])
@pytest.mark.parametrize("shape", [(5, 1, 7, 3), (4, 30, 6, 2), (6, 4, 5, 3)], ids=["linear", "many-positions", "few"])
def test_scalings_sum_every_form_equals_the_per_example_definition(shape, method, rng):
    """``sum_n (Q_G^T G_n Q_A)^2`` with ``G_n = sum_t g_nt a_nt^T`` formed example by example (float64):
    the Gramian form (no per-example gradient), the projected and the plain per-example forms, and
    the cheapest one (``method=None``) all equal it, in chunks that do not divide N."""
    from nn_from_scratch.kfac.factors import scalings_cost, scalings_sum
    n, T, dp, f = shape
    a, gs = rng.standard_normal((n, T, dp)), [rng.standard_normal((n, T, f)) for _ in range(2)]
    Q_A = np.linalg.qr(rng.standard_normal((dp, dp)))[0]
    Q_G = np.linalg.qr(rng.standard_normal((f, f)))[0]
    ref = sum((Q_G.T @ sum(np.outer(g[i, t], a[i, t]) for t in range(T)) @ Q_A) ** 2 for g in gs for i in range(n))
    got = scalings_sum(a, gs, Q_G, Q_A, chunk=4, method=method)
    assert got.dtype == np.float64
    close(got, ref)
    cost = scalings_cost(T, dp, f)
    if T == 1:                                      # a Linear layer: the Gramian form is taken
        assert min(cost, key=cost.get) == "gram"
    if T == 30:                                     # many positions: a per-example form is cheaper
        assert min(cost, key=cost.get) != "gram"


def test_scalings_sum_float32_rows_are_summed_in_float64(rng):
    from nn_from_scratch.kfac.factors import scalings_sum
    a, g = rng.standard_normal((64, 1, 9)), rng.standard_normal((64, 1, 4))
    Q_A = np.linalg.qr(rng.standard_normal((9, 9)))[0]
    Q_G = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    ref = scalings_sum(a, [g], Q_G, Q_A)
    got = scalings_sum(a.astype(np.float32), [g.astype(np.float32)], Q_G.astype(np.float32), Q_A.astype(np.float32))
    assert got.dtype == np.float64
    close(got, ref, 1e-5)
    with pytest.raises(ValueError, match="scalings_sum: method must be one of"):
        scalings_sum(a, [g], Q_G, Q_A, method="einsum")


ROW_WINDOW_GEOMETRIES = [  # (C, (H, W), kernel, stride, padding, dilation, bias)
    (4, (12, 12), (7, 7), 1, 0, 1, False),          # the seed CNN's second layer, smaller
    (2, (9, 11), (3, 5), (2, 1), (1, 2), 1, True),
    (3, (10, 10), (3, 3), 1, "same", 2, True),
    (1, (8, 7), (2, 3), (1, 3), 0, (2, 1), True),
]


@pytest.mark.parametrize("geom", ROW_WINDOW_GEOMETRIES, ids=lambda g: f"k{g[2]}s{g[3]}p{g[4]}d{g[5]}")
def test_input_factor_row_windows_equal_the_patch_rows_and_a_loop(geom, rng):
    """The factor's two forms (one product of the patch rows; the row-window Gramian and its
    diagonal sums) equal each other and the loop over patches, in float64."""
    C, spatial, kernel, stride, padding, dilation, bias = geom
    conv = Convolution((None, C) + spatial, kernel_size=kernel, output_layers=2, stride=stride, padding=padding,
                       dilation=dilation, use_bias=bias, dtype=F64)
    X = rng.standard_normal((3, C) + spatial)
    pairs = resolve_padding(padding, spatial, conv.kernel_size, conv.stride, conv.dilation)
    ref = _loop_A(X, conv.kernel_size, conv.stride, pairs, conv.dilation, bias) * 3
    for form in ("patches", "row windows"):
        close(ls.input_factor_sum(conv, X, form=form), ref)
    with pytest.raises(ValueError, match="input_factor_sum: form must be"):
        ls.input_factor_sum(conv, X, form="fft")


def test_input_factor_form_takes_the_cheaper():
    seed_conv2 = Convolution((None, 4, 26, 26), kernel_size=7, output_layers=2, use_bias=False)
    lenet_conv1 = Convolution((None, 1, 28, 28), kernel_size=5, output_layers=6, padding=2)
    assert ls.input_factor_form(seed_conv2, (64, 4, 26, 26)) == "row windows"    # 26^2 < 20 * 7^2
    assert ls.input_factor_form(lenet_conv1, (64, 1, 28, 28)) == "patches"       # 32^2 > 28 * 5^2
    assert ls.input_factor_form(Linear(3, 2), (5, 3)) == "patches"
