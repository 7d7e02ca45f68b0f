"""A reference shared by the curvature and K-FAC tests: a layer's output Jacobian by central differences."""
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
