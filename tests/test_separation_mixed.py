"""Mixed precision (float32 Gram products, float64 recheck of near-ties) gives the float64 result.

References: the float64 path (the definition), SciPy's pdist in float64 for the error bound, a
brute-force tree walk for the path maxima, and trees broken on purpose (the recheck must notice)."""
import itertools

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from nn_from_scratch import Convolution, Flatten, Linear, MaxPool, NeuralNetwork, ReLU
from nn_from_scratch.analysis import separation as sep
from nn_from_scratch.analysis.separation import _mixed, _mst, core
from nn_from_scratch.data import datasets

STATS = ("H", "R", "z", "p_value", "log_p", "R_min", "R_max")


def _both(Z, sizes, metric="euclidean"):
    """``_layer_stats`` on the float64 path and on the mixed path, with the mixed path's counters."""
    bounds = np.cumsum([0] + list(sizes))
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    ref = core._layer_stats(Z, slices, metric, "x", precision="float64")
    info = {}
    got = core._layer_stats(Z, slices, metric, "x", precision="float32", info=info)
    return ref, got, info["x"]


def _assert_equal(ref, got):
    for k in STATS:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k]), err_msg=k)


def test_mixed_equals_float64_on_a_cnn():
    X, y = datasets.load_mnist("all")
    keep = np.concatenate([np.flatnonzero(y == c)[:40] for c in range(5)])
    X, y = X[keep], y[keep]
    net = NeuralNetwork([
        Convolution((None, 1, 28, 28), kernel_size=3, output_layers=4, padding=1, seed=0, name="conv1"),
        ReLU(name="relu1"), MaxPool(pool_size=2, name="pool1"), Flatten(name="flatten"),
        Linear(784, 16, seed=1, name="fc1"), ReLU(name="relu2"), Linear(16, 5, seed=2, name="fc2")])
    ref = sep.class_separation(net, X, y, n_per_class=None, precision="float64")
    got = sep.class_separation(net, X, y, n_per_class=None, precision="float32")
    for k in STATS:
        np.testing.assert_array_equal(getattr(got, k), getattr(ref, k), err_msg=k)
    mixed = got.info["mixed_precision"]
    assert set(mixed) == set(got.layers) - {"flatten"} and all(v["pairs"] == 10 for v in mixed.values())
    assert sum(v["rechecked_edges"] for v in mixed.values()) > 0
    auto = sep.class_separation(net, X, y, n_per_class=None)          # "auto": every layer narrower than 4,096
    assert auto.info["precision"] == "auto" and auto.info["mixed_precision"] == {}
    np.testing.assert_array_equal(auto.H, ref.H)
    with pytest.raises(sep.SeparationError, match="precision must be one of"):
        sep.class_separation(net, X, y, n_per_class=None, precision="half")


def test_near_ties_are_rechecked_and_equal():
    """Nearly equilateral triangles far from each other: their sides differ by ~1e-7 relative, which float32
    products at this spread cannot resolve and float64 can."""
    rng = np.random.default_rng(0)
    tri = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]])
    Z = np.concatenate([c + tri + 1e-7 * rng.standard_normal((3, 3)) for c in rng.standard_normal((20, 3)) * 30])
    Z += 1e3                                          # a large common offset too (centring removes it)
    Z = Z[rng.permutation(len(Z))]
    ref, got, counts = _both(Z, (20, 20, 20))
    _assert_equal(ref, got)
    assert counts["rechecked_edges"] > 0          # the float32 trees were often wrong here: recomputed


def test_exact_ties_fall_back_to_float64():
    """A lattice: many exactly equal distances; only the float64 path's tie-breaking decides the tree."""
    rng = np.random.default_rng(1)
    pts = np.array(list(itertools.product(range(5), range(5), range(3))), float)
    order = rng.permutation(len(pts))
    Z = pts[order]
    ref, got, counts = _both(Z, (25, 25, 25))
    _assert_equal(ref, got)
    assert counts["recomputed_pairs"] > 0


def test_wrong_trees_within_the_error_bound_are_noticed(monkeypatch):
    """A pretend error bound of 20 % and distances perturbed by up to 90 % of it: many trees on them are
    wrong; the recheck (which may rely only on the bound) must recompute exactly those pairs."""
    real = _mixed.gram_blocks
    big = 0.2

    def noisy(pts, groups, requests, k=_mixed.GRAM_CHUNK):
        out = real(pts, groups, requests, k)
        rng = np.random.default_rng(len(out))
        noisy_blocks = []
        for (i, j), b in zip(requests, out):
            r_i = np.sqrt(pts.norms[groups[i]])
            r_j = r_i if j is None else np.sqrt(pts.norms[groups[j]])
            e = 0.9 * big * np.multiply.outer(r_i, r_j) * rng.uniform(-1, 1, b.shape)
            if j is None:
                e = np.triu(e, 1) + np.triu(e, 1).T
            noisy_blocks.append(np.maximum(b + e, 0.0))
        return noisy_blocks

    monkeypatch.setattr(_mixed, "gram_blocks", noisy)
    monkeypatch.setattr(_mixed, "error_coefficients", lambda d, k=None: (big, (d + 4) * 2.0 ** -53 * 1.01))
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((120, 8))
    Z[40:80] += 0.7
    ref, got, counts = _both(Z, (40, 40, 40))
    _assert_equal(ref, got)
    assert counts["recomputed_pairs"] >= 1 and counts["rechecked_edges"] > 0


def test_several_rounds_when_the_blocks_do_not_fit(monkeypatch):
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((120, 6)) + np.repeat(np.arange(4), 30)[:, None] * 0.3
    monkeypatch.setattr(core, "BLOCK_BUDGET", 4 * 8 * 30 * 30)
    ref, got, counts = _both(Z, (30, 30, 30, 30))
    _assert_equal(ref, got)
    assert counts["rounds"] == 6


def test_duplicates_and_cosine_on_the_mixed_path():
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((60, 5))
    Z[10:15] = Z[3]                                     # copies inside a class
    Z[25] = Z[40]                                       # and across classes
    for metric in ("euclidean", "cosine"):
        ref, got, _ = _both(Z, (20, 20, 20), metric)
        _assert_equal(ref, got)


def test_mixed_distances_are_within_their_error_bound():
    rng = np.random.default_rng(5)
    d = 5000
    Z = (rng.standard_normal((40, d)) * 0.1 + 3.0).astype(np.float32)
    pts = _mst.Points(Z)
    ids = [np.arange(20), np.arange(20, 40)]
    Daa, Dab = _mixed.gram_blocks(pts, ids, [(0, None), (0, 1)], k=1024)
    exact = squareform(pdist(Z[pts.first].astype(np.float64), "sqeuclidean"))     # distinct points' order
    alpha, beta = _mixed.error_coefficients(d, 1024)
    r = np.sqrt(pts.norms)
    E = alpha * np.multiply.outer(r, r) + beta * np.add.outer(r, r) ** 2
    assert np.all(np.abs(Daa - exact[:20, :20]) <= E[:20, :20])
    assert np.all(np.abs(Dab - exact[:20, 20:]) <= E[:20, 20:])
    assert np.abs(Dab - exact[:20, 20:]).max() > 0          # float32 products did round


def test_path_max_against_a_tree_walk():
    rng = np.random.default_rng(6)
    N = 40
    W = squareform(pdist(rng.standard_normal((N, 3))))
    child, parent = _mst.prim_dense(W)
    w = W[child, parent]
    order = np.concatenate([[0], child])
    pos = np.empty(N, np.intp)
    pos[order] = np.arange(N)
    P = _mixed._path_max(pos, child, parent, w)
    adj = {i: [] for i in range(N)}
    for c, p, x in zip(child, parent, w):
        adj[c].append((p, x))
        adj[p].append((c, x))
    for u in range(N):
        best = {u: 0.0}
        stack = [u]
        while stack:
            a = stack.pop()
            for b, x in adj[a]:
                if b not in best:
                    best[b] = max(best[a], x)
                    stack.append(b)
        for v in range(N):
            assert P[pos[u], pos[v]] == best[v]
