"""Naive loop convolution and pooling (test helper; NumPy only, no nn_from_scratch).

Direct transcriptions of the defining sums, one scalar at a time, for the
cases TensorFlow cannot check (stride together with dilation, explicit pooling
padding, 3-D max-pool ties).  Padding is given as per-axis ``(lo, hi)`` pairs::

    y[n, f, o] = b[f] + sum_{c, i} W[f, c, i] * x_pad[n, c, o*s + i*d]
    O = (S + lo + hi - d*(k - 1) - 1) // s + 1

Backward of that sum with upstream ``g``::

    dx_pad[n, c, o*s + i*d] += W[f, c, i] * g[n, f, o]
    dW[f, c, i]             += x_pad[n, c, o*s + i*d] * g[n, f, o]
    db[f]                   += g[n, f, o]
"""
import itertools

import numpy as np


def out_size(S, k, s, d, lo, hi):
    return (S + lo + hi - d * (k - 1) - 1) // s + 1


def _positions(shape):
    return itertools.product(*(range(v) for v in shape))


def conv_loop(x, W, b, stride, pairs, dilation, upstream=None):
    """Returns ``y`` or, with ``upstream``, ``(y, dx, dW, db)`` (``db`` None without ``b``)."""
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    n_batch, C = x.shape[:2]
    F = W.shape[0]
    kernel = W.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(pairs))
    out = tuple(out_size(S, k, s, d, lo, hi) for S, k, s, d, (lo, hi)
                in zip(x.shape[2:], kernel, stride, dilation, pairs))
    y = np.zeros((n_batch, F) + out)
    for n in range(n_batch):
        for f in range(F):
            for o in _positions(out):
                acc = 0.0 if b is None else float(b[f])
                for c in range(C):
                    for i in _positions(kernel):
                        src = tuple(oo * s + ii * d for oo, s, ii, d in zip(o, stride, i, dilation))
                        acc += W[(f, c) + i] * xpad[(n, c) + src]
                y[(n, f) + o] = acc
    if upstream is None:
        return y
    g = np.asarray(upstream, dtype=np.float64)
    dxpad = np.zeros_like(xpad)
    dW = np.zeros_like(W)
    db = None if b is None else np.zeros(F)
    for n in range(n_batch):
        for f in range(F):
            for o in _positions(out):
                go = g[(n, f) + o]
                if db is not None:
                    db[f] += go
                for c in range(C):
                    for i in _positions(kernel):
                        src = tuple(oo * s + ii * d for oo, s, ii, d in zip(o, stride, i, dilation))
                        dxpad[(n, c) + src] += W[(f, c) + i] * go
                        dW[(f, c) + i] += xpad[(n, c) + src] * go
    crop = tuple(slice(lo, lo + S) for (lo, _), S in zip(pairs, x.shape[2:]))
    return y, dxpad[(slice(None), slice(None)) + crop], dW, db


def pool_loop(x, kind, pool_size, stride, pairs, upstream):
    """Max/avg pooling and its gradient by loops.

    Max: the padding never wins (only real entries are candidates) and the
    gradient goes to the *first* maximum of the window in row-major order.
    Avg: mean over the real (non-padding) entries of the window.
    Returns ``(y, dx)``.
    """
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(upstream, dtype=np.float64)
    n_batch, C = x.shape[:2]
    spatial = x.shape[2:]
    out = tuple(out_size(S, k, s, 1, lo, hi) for S, k, s, (lo, hi) in zip(spatial, pool_size, stride, pairs))
    y = np.zeros((n_batch, C) + out)
    dx = np.zeros_like(x)
    for n in range(n_batch):
        for c in range(C):
            for o in _positions(out):
                members = []  # real input positions of this window, row-major
                for i in _positions(pool_size):
                    pos = tuple(oo * s + ii - lo for oo, s, ii, (lo, _) in zip(o, stride, i, pairs))
                    if all(0 <= p < S for p, S in zip(pos, spatial)):
                        members.append(pos)
                vals = [x[(n, c) + p] for p in members]
                go = g[(n, c) + o]
                if kind == "max":
                    best = 0
                    for j, v in enumerate(vals):
                        if v > vals[best]:
                            best = j
                    y[(n, c) + o] = vals[best]
                    dx[(n, c) + members[best]] += go
                else:
                    y[(n, c) + o] = sum(vals) / len(vals)
                    for p in members:
                        dx[(n, c) + p] += go / len(vals)
    return y, dx
