"""References shared by the tests: a layer's output Jacobian, and a gradient, by central differences."""
import numpy as np

from nn_from_scratch.kfac import statistics as ls


def fd_output_jacobian(net, layer, X, h=0.5):
    """d output / d vec_r(W~) per example by central differences (exact for outputs linear in W~),
    ``(N, D, P)``: ``W~`` is the layer's parameters as one matrix (``kfac.statistics.to_matrix``)."""
    M0 = ls.to_matrix(layer, {k: v.copy() for k, v in layer.params.items()})
    cols = []
    for idx in range(M0.size):
        outs = []
        for sign in (1, -1):
            M = M0.copy().reshape(-1)
            M[idx] += sign * h
            layer.set_params(**ls.from_matrix(layer, M.reshape(M0.shape)))
            outs.append(net.predict(X).reshape(X.shape[0], -1))
        cols.append((outs[0] - outs[1]) / (2 * h))
    layer.set_params(**ls.from_matrix(layer, M0))
    return np.stack(cols, axis=2)


def finite_difference(f, x, h=1e-3):
    """The gradient of the scalar ``f`` at ``x`` by 5-point central differences: error O(h^4) +
    O(eps/h), ~1e-12 for the smooth float64 functions the tests use."""
    g = np.zeros_like(x)
    for j in np.ndindex(x.shape):
        def at(t):
            xx = x.copy()
            xx[j] += t
            return f(xx)
        g[j] = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
    return g
