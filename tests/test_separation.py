"""henze_penrose and fisher_test against hand cases, SciPy written here, enumeration and simulation.

References used (none of them the code under test): the reference values of the research note
shared/research/hp-separation.md section 5 (computed there with SciPy), SciPy's
``minimum_spanning_tree`` on a sparse graph built in ``scipy_R`` below, brute-force
enumeration of labellings / spanning trees / rearrangements, and simulation under nulls.
"""
import itertools
import math

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist

from nn_from_scratch.analysis import separation as sep
from nn_from_scratch.analysis import _mst


def scipy_R(A, B):
    """R by the research note's recipe: SciPy distances + sparse MST with zero fills; asserts N-1 edges."""
    A = np.asarray(A, np.float64).reshape(len(A), -1)
    B = np.asarray(B, np.float64).reshape(len(B), -1)
    Z = np.concatenate([A, B])
    m, N = len(A), len(A) + len(B)
    d = pdist(Z)
    d[d == 0] = 1e-300
    i, j = np.triu_indices(N, 1)
    T = minimum_spanning_tree(csr_matrix((d, (i, j)), shape=(N, N))).tocoo()
    assert T.nnz == N - 1
    return int(np.sum((T.row < m) != (T.col < m)))


def H_of(R, m, n):
    return 1 - R * (m + n) / (2 * m * n)


# ------------------------------------------------------------------ hand cases
LINE = [  # (A, B, R, H) from the issue / research note section 5.1
    ([(1, 1), (3, 3), (5, 5), (7, 7)], [(2, 2), (4, 4), (6, 6), (8, 8)], 7, -0.75),
    ([(1, 1), (3, 3), (5, 5), (7, 7)], [(101, 101), (103, 103), (105, 105), (107, 107)], 1, 0.75),
    ([0, 1, 2], list(range(10, 17)), 1, 0.761905),
    ([0, 2, 4], [1, 3, 5, 6, 7, 8, 9], 5, -0.190476),
    ([0], [1, 2, 3], 1, 0.333333),
    ([0, 0], [10, 10], 1, 0.5),
    ([0, 1, 2, 3, 4], [10, 11, 12, 13, 14], 1, 0.8),
    ([0, 2, 4, 6, 8], [1, 3, 5, 7, 9], 9, -0.8),
    ([0, 7], [1, 2, 3, 4, 5, 6], 2, 0.333333),
]


@pytest.mark.parametrize("A,B,R,H", LINE)
def test_hand_cases(A, B, R, H):
    r = sep.henze_penrose(np.array(A, float), np.array(B, float))
    assert r.R == R and r.m == len(A) and r.n == len(B)
    assert r.H == pytest.approx(H, abs=5e-7)
    assert r.R_min == r.R_max == R
    # H is symmetric in the two samples
    assert sep.henze_penrose(np.array(B, float), np.array(A, float)).H == pytest.approx(r.H, abs=1e-15)


def test_duplicates_give_n_minus_1_edges_and_order_free_ties():
    # T6: SciPy with a dense input drops the zero edges and gets R = 3 (H = -0.5); the tree has 3 edges
    r = sep.henze_penrose([0.0, 0.0], [10.0, 10.0])
    assert (r.R, r.H) == (1, 0.5)
    W = np.array([[0, 0, 100, 100], [0, 0, 100, 100], [100, 100, 0, 0], [100, 100, 0, 0]], float)
    child, parent = _mst.prim_dense(W)
    assert len(child) == 3 and W[child, parent].sum() == 100
    dense = minimum_spanning_tree(W).tocoo()    # the pitfall the issue names: zeros are no edges
    assert np.sum((dense.row < 2) != (dense.col < 2)) == 3 and dense.sum() == 300
    # T7: the tie-dependent case: R in [1, 3] over ties, R = 2 (the expectation), for any row order
    for A, B in (([0.0, 0.0], [0.0, 5.0]), ([0.0, 0.0], [5.0, 0.0])):
        r = sep.henze_penrose(A, B)
        assert (r.R, r.R_min, r.R_max) == (2, 1, 3) and r.H == 0
        assert r.H_range == (-0.5, 0.5)


def test_collapsed_layer_has_no_separation():
    # every sample mapped to one point (a dead layer): H = 0 exactly, whatever m and n
    for m, n in ((5, 5), (3, 11)):
        r = sep.henze_penrose(np.zeros((m, 4)), np.zeros((n, 4)))
        assert r.R == pytest.approx(2 * m * n / (m + n))
        assert r.H == pytest.approx(0.0, abs=1e-14)
        assert (r.R_min, r.R_max) == (1, m + n - 1)


def _spanning_trees(N):
    """Every labelled tree on N nodes (Pruefer sequences), as edge lists."""
    for seq in itertools.product(range(N), repeat=N - 2):
        seq, degree = list(seq), [1] * N
        for s in seq:
            degree[s] += 1
        edges = []
        for s in seq:
            leaf = min(i for i in range(N) if degree[i] == 1)
            edges.append((leaf, s))
            degree[leaf] -= 1
            degree[s] -= 1
        u, v = [i for i in range(N) if degree[i] == 1]
        edges.append((u, v))
        yield edges


@pytest.mark.parametrize("A,B", [([0, 0, 3], [0, 3, 7]), ([1, 1, 1], [1, 4]), ([0, 2, 2], [2, 2, 9])])
def test_tie_range_and_expectation_by_enumeration_and_jitter(A, B):
    """R_min/R_max: the extremes of R over every minimum spanning tree (all trees enumerated);
    R: the mean of SciPy's R over random infinitesimal jitters of the points."""
    Z = np.array(A + B, float)
    m, N = len(A), len(A) + len(B)
    D = np.abs(Z[:, None] - Z[None, :])
    trees = list(_spanning_trees(N))
    w = np.array([sum(D[u, v] for u, v in t) for t in trees])
    Rs = [sum((u < m) != (v < m) for u, v in t) for t, wt in zip(trees, w) if wt == w.min()]
    r = sep.henze_penrose(A, B)
    assert (r.R_min, r.R_max) == (min(Rs), max(Rs))
    rng = np.random.default_rng(0)
    draws = [scipy_R(Z[:m] + 1e-7 * rng.standard_normal(m), Z[m:] + 1e-7 * rng.standard_normal(N - m))
             for _ in range(600)]
    se = np.std(draws) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - r.R) < 4 * se + 1e-12


# --------------------------------------------------- against SciPy written here
@pytest.mark.parametrize("m,n,d,shift", [(30, 30, 5, 0.0), (17, 64, 3, 1.5), (120, 45, 20, 0.5), (2, 9, 1, 0.3)])
def test_matches_scipy_on_random_data(m, n, d, shift):
    rng = np.random.default_rng(m * 1000 + n)
    A = rng.standard_normal((m, d))
    B = rng.standard_normal((n, d)) + shift
    r = sep.henze_penrose(A, B)
    R = scipy_R(A, B)
    assert r.R == R
    assert r.H == pytest.approx(H_of(R, m, n), abs=1e-14)


def test_matches_scipy_and_reference_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    # research note 5.2: all samples per class, R for pairs (0,1) = 1, (1,8) = 6, (8,9) = 5, (3,9) = 5
    for (a, b), R in {(0, 1): 1, (1, 8): 6, (8, 9): 5, (3, 9): 5, (1, 6): 2}.items():
        r = sep.henze_penrose(X[y == a], X[y == b])
        assert r.R == R == scipy_R(X[y == a], X[y == b])
    assert sep.henze_penrose(X[y == 1], X[y == 8]).H == pytest.approx(0.966275, abs=1e-6)
    # 5.4: digit 3 split in two (null): m = n and m != n
    X3 = X[y == 3]
    perm = np.random.default_rng(0).permutation(len(X3))
    r = sep.henze_penrose(X3[perm[:91]], X3[perm[91:]])
    assert (r.R, round(r.H, 6)) == (85, 0.071011)
    r = sep.henze_penrose(X3[perm[:40]], X3[perm[40:]])
    assert (r.R, round(r.H, 6)) == (66, -0.055769)   # the seed's formula gives 0.278689


def test_gaussian_reference_values_and_z():
    # research note 5.5 (m != n): R, C, Var0 R and z from the exact permutation moments
    rng = np.random.default_rng(12345)
    A = rng.standard_normal((200, 10))
    B0 = rng.standard_normal((300, 10))
    ref = {0: (244, 872, 121.856, 0.362), 2: (133, 883, 122.059, -9.685), 5: (7, 879, 121.985, -21.096)}
    for delta, (R, C, V, z) in ref.items():
        B = B0.copy()
        B[:, 0] += delta
        r = sep.henze_penrose(A, B)
        assert (r.R, r.C) == (R, C)
        assert r.E_R == 240
        assert r.var_R == pytest.approx(V, abs=5e-4)
        assert r.z == pytest.approx(z, abs=5e-4)
        assert r.p_value == pytest.approx(0.5 * math.erfc(-r.z / math.sqrt(2)), rel=1e-12)


def test_invariances():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 2, 3, 4))
    B = rng.standard_normal((55, 2, 3, 4)) + 0.4
    r = sep.henze_penrose(A, B)
    pa, pb = rng.permutation(40), rng.permutation(55)
    assert sep.henze_penrose(A[pa], B[pb]).R == r.R                      # row order
    cols = rng.permutation(24)
    r2 = sep.henze_penrose(A.reshape(40, -1)[:, cols], B.reshape(55, -1)[:, cols])
    assert (r2.R, r2.H) == (r.R, r.H)                                     # flatten order
    assert sep.henze_penrose(A + 1e3, B + 1e3).R == r.R                   # translation (centring)
    assert sep.henze_penrose(A.astype(np.float32), B.astype(np.float32)).R == \
        scipy_R(A.astype(np.float32), B.astype(np.float32))


def test_gram_distances_error_bound():
    rng = np.random.default_rng(5)
    Z = 50.0 + rng.standard_normal((300, 700))
    pts = _mst.Points(Z)
    idx = pts.inverse                     # row i of Z is distinct point idx[i] (canonical order)
    D = pts.sqdist(idx[:120], idx[120:])
    ref = ((Z[:120, None, :] - Z[None, 120:, :]) ** 2).sum(-1)
    spread = ((Z - Z.mean(0)) ** 2).sum(1)
    bound = (700 + 2) * 2.0 ** -53 * (np.sqrt(spread[:120, None]) + np.sqrt(spread[None, 120:])) ** 2
    assert np.all(np.abs(D - ref) <= bound)
    Ds = pts.sqdist(idx[:50])
    assert np.array_equal(Ds, Ds.T) and np.all(np.diag(Ds) == 0)


def test_metrics():
    rng = np.random.default_rng(8)
    A, B = rng.random((25, 6)), rng.random((31, 6)) + 0.2
    assert sep.henze_penrose(A, B, "sqeuclidean").R == sep.henze_penrose(A, B).R
    # cosine: SciPy's cosine distances through the same recipe
    Z = np.concatenate([A, B])
    d = pdist(Z, "cosine")
    i, j = np.triu_indices(len(Z), 1)
    T = minimum_spanning_tree(csr_matrix((d, (i, j)), shape=(56, 56))).tocoo()
    assert sep.henze_penrose(A, B, "cosine").R == np.sum((T.row < 25) != (T.col < 25))
    assert sep.henze_penrose(A, B, "cityblock").R == _r_scipy_metric(A, B, "cityblock")


def _r_scipy_metric(A, B, metric):
    Z = np.concatenate([A, B])
    d = pdist(Z, metric)
    i, j = np.triu_indices(len(Z), 1)
    T = minimum_spanning_tree(csr_matrix((d, (i, j)), shape=(len(Z),) * 2)).tocoo()
    return int(np.sum((T.row < len(A)) != (T.col < len(A))))


# ----------------------------------------------------- permutation moments of R
def _random_tree(N, rng):
    return [(i, int(rng.integers(0, i))) for i in range(1, N)]


@pytest.mark.parametrize("shape", ["path", "star", "random"])
@pytest.mark.parametrize("m,N", [(2, 9), (3, 9), (4, 9), (3, 8), (1, 5), (2, 4)])
def test_fr_moments_by_enumerating_labellings(shape, m, N):
    rng = np.random.default_rng(N * 10 + m)
    edges = {"path": [(i, i + 1) for i in range(N - 1)], "star": [(0, i) for i in range(1, N)],
             "random": _random_tree(N, rng)}[shape]
    deg = np.bincount(np.array(edges).ravel(), minlength=N)
    C = int((deg * (deg - 1) // 2).sum())
    Rs = []
    for a in itertools.combinations(range(N), m):
        lab = np.zeros(N, bool)
        lab[list(a)] = True
        Rs.append(sum(lab[u] != lab[v] for u, v in edges))
    E, V = _mst.moments(m, N - m, C)
    assert E == pytest.approx(np.mean(Rs), abs=1e-12)
    assert V == pytest.approx(np.var(Rs), abs=1e-12)
    n = N - m
    if N > 3:   # the closed form of the research note (Friedman & Rafsky 1979)
        closed = (2 * m * n / (N * (N - 1))) * ((2 * m * n - N) / N + (C - N + 2) / ((N - 2) * (N - 3))
                                                * (N * (N - 1) - 4 * m * n + 2))
        assert V == pytest.approx(closed, abs=1e-12)


# --------------------------------------------------------------- under the null
@pytest.mark.parametrize("m,n", [(25, 25), (12, 48)])
def test_null_mean_of_H_is_zero_and_z_is_standard_normal(m, n):
    rng = np.random.default_rng(m + n)
    H, Z, Hlib = [], [], []
    for _ in range(400):
        r = sep.henze_penrose(rng.standard_normal((m, 3)), rng.standard_normal((n, 3)))
        H.append(r.H)
        Z.append(r.z)
        N = m + n
        Hlib.append(1 - 2 * min(N / 2, r.R) / N)
    H, Z = np.array(H), np.array(Z)
    se = H.std(ddof=1) / np.sqrt(len(H))
    assert abs(H.mean()) < 3 * se
    assert abs(Z.mean()) < 3 / np.sqrt(len(Z))
    assert abs(Z.std(ddof=1) - 1) < 0.12
    rate = np.mean(Z < -1.6449)              # one-sided 5 % test: inside the binomial band
    assert abs(rate - 0.05) < 3 * np.sqrt(0.05 * 0.95 / len(Z)) + 0.01
    if m != n:   # the test can fail: the seed's formula is biased when m != n
        assert abs(np.mean(Hlib)) > 10 * se


def test_power_under_a_shift():
    rng = np.random.default_rng(11)
    rejected = [sep.henze_penrose(rng.standard_normal((30, 4)), rng.standard_normal((40, 4)) + 1.5).p_value < 0.05
                for _ in range(60)]
    assert np.mean(rejected) > 0.9


def test_bad_input():
    with pytest.raises(sep.SeparationError, match="same size"):
        sep.henze_penrose(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(sep.SeparationError, match="Xb has no points"):
        sep.henze_penrose(np.zeros((3, 2)), np.zeros((0, 2)))
    with pytest.raises(sep.SeparationError, match="NaN"):
        sep.henze_penrose(np.array([[0.0], [np.nan]]), np.zeros((2, 1)))
    with pytest.raises(sep.SeparationError, match="numbers"):
        sep.henze_penrose(np.array(["a", "b"]), np.zeros(2))


# --------------------------------------------------------------- Fisher tests
def _enumerate_unpaired(a, b, alt):
    x = np.concatenate([a, b])
    T = np.mean(a) - np.mean(b)
    hits = total = 0
    for S in itertools.combinations(range(len(x)), len(a)):
        mask = np.zeros(len(x), bool)
        mask[list(S)] = True
        t = x[mask].mean() - x[~mask].mean()
        hits += {"two-sided": abs(t) >= abs(T) - 1e-9, "greater": t >= T - 1e-9, "less": t <= T + 1e-9}[alt]
        total += 1
    return hits / total


def test_fisher_exact_hand_cases():
    assert sep.fisher_test([1, 2, 3], [4, 5, 6]) == (-3.0, pytest.approx(0.1))
    assert sep.fisher_test([1, 2, 3], [4, 5, 6], paired=True).p_value == pytest.approx(0.25)
    assert sep.fisher_test([0.1, 0.2, 0.3, 0.4], [0.3, 0.5, 0.6, 0.7]).p_value == pytest.approx(6 / 70)
    assert sep.fisher_test([0.1, 0.2, 0.3, 0.4], [0.3, 0.5, 0.6, 0.7], paired=True).p_value == \
        pytest.approx(2 / 16)
    assert sep.fisher_test([1, 2, 3, 4, 5], [3, 4, 5, 6, 7]).p_value == pytest.approx(32 / 252)
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(5), rng.standard_normal(6) + 0.5
    for alt in ("two-sided", "greater", "less"):
        assert sep.fisher_test(a, b, alternative=alt).p_value == pytest.approx(_enumerate_unpaired(a, b, alt))
    # one-sided: p(less) + p(greater) = 1 + P(T* = T) = 1 + 1/C(11,5) without ties
    pl = sep.fisher_test(a, b, alternative="less").p_value
    pg = sep.fisher_test(a, b, alternative="greater").p_value
    assert pl + pg == pytest.approx(1 + 1 / math.comb(11, 5))


def test_fisher_monte_carlo_never_zero_and_close_to_exact():
    a, b = np.arange(30.0), np.arange(30.0) + 100
    st, p = sep.fisher_test(a, b, n_permutations=999)
    assert st == -100 and p == pytest.approx(1 / 1000)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(12), rng.standard_normal(12) + 0.6     # C(24,12) > limit: Monte Carlo
    p_mc = sep.fisher_test(a, b, n_permutations=20000, seed=1).p_value
    from scipy.stats import permutation_test
    ref = permutation_test((a, b), lambda x, y: np.mean(x) - np.mean(y), n_resamples=40000,
                           random_state=0).pvalue
    assert abs(p_mc - ref) < 4 * np.sqrt(ref * (1 - ref) * (1 / 20000 + 1 / 40000)) + 0.001
    assert sep.fisher_test(a, b, seed=3) == sep.fisher_test(a, b, seed=3)


def test_fisher_paired_beats_unpaired_on_paired_data():
    rng = np.random.default_rng(6)
    base = rng.uniform(0, 1, 45)                       # pairs differ a lot among themselves
    a, b = base + 0.02 + 0.005 * rng.standard_normal(45), base
    assert sep.fisher_test(a, b, paired=True).p_value < 0.001
    assert sep.fisher_test(a, b, paired=False).p_value > 0.5


def test_fisher_type_one_error():
    rng = np.random.default_rng(9)
    p = [sep.fisher_test(rng.standard_normal(8), rng.standard_normal(7), n_permutations=200, seed=i).p_value
         for i in range(300)]
    rate = np.mean(np.array(p) <= 0.05)
    assert abs(rate - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 300) + 0.005


def test_fisher_bad_input():
    with pytest.raises(ValueError, match="same length"):
        sep.fisher_test([1, 2], [1, 2, 3], paired=True)
    with pytest.raises(ValueError, match="alternative"):
        sep.fisher_test([1, 2], [3, 4], alternative="bigger")
    with pytest.raises(ValueError, match="NaN"):
        sep.fisher_test([1, np.nan], [3, 4])
    with pytest.raises(ValueError, match="n_permutations"):
        sep.fisher_test([1, 2], [3, 4], n_permutations=0)
    with pytest.raises(ValueError, match="empty"):
        sep.fisher_test([], [3, 4])
