"""The machinery behind ``separation``: distances, minimum spanning trees, edge counts.

Private module; the public names live in the package ``nn_from_scratch.analysis.separation``.

Distances
---------
Squared Euclidean distances come from a Gram product in float64, on rows centred by
their mean (distances do not change under a translation; centring makes the norms,
and with them the rounding error, small)::

    D2[i, j] = |x_i - mu|^2 + |x_j - mu|^2 - 2 (x_i - mu) . (x_j - mu)      clamped at >= 0

Error bound (Higham, *Accuracy and Stability*, section 3.1; u = 2^-53): each dot
product of length d carries an error of at most gamma_d |x||y| with
gamma_d = d u / (1 - d u), so

    |D2_computed - D2| <= (d + 2) u (|x_i - mu| + |x_j - mu|)^2 (1 + O(d u))

e.g. below 1.5e-12 times the squared spread for d = 6,272.  The tree is exact
whenever the distances it compares differ by more than that; closer values are
numerical ties.  Exact duplicates never rely on it: they are found bitwise (below).
Features are processed in chunks, so memory is O(rows x cols + rows x chunk)
whatever the layer's width.  Prim's algorithm runs on the squared distances (the same
tree as on the distances: the minimum spanning tree only depends on their order).

Exact duplicates
----------------
Identical rows (blank images, dead ReLUs, saturated outputs) are real data.  They are
merged first (``numpy.unique`` over the rows' bytes, after turning -0.0 into 0.0): the
tree is built over the distinct points, each carrying ``ka`` copies from class a and
``kb`` from class b.  A minimum spanning tree of all N points is then that tree plus,
inside each group of copies, any spanning tree of zero-length edges.  Which copy an
edge ends at, and how the copies are joined, is a pure tie: ``R`` is defined as its
expectation when the tie is broken at random (infinitesimal random jitter of the
copies), which by exchangeability of the copies is::

    R = sum_groups 2 ka kb / k  +  sum_(tree edges g-h) (ka_g kb_h + kb_g ka_h) / (k_g k_h)

It is the ordinary integer count when no two points coincide, it does not depend on the
order of the input rows, and a layer that maps every sample to one point gets
R = 2mn/N, H = 0 ("no information") instead of an arbitrary value between the extremes.
``R_min`` and ``R_max`` (the fewest / most cross edges over every way of breaking those
ties) are reported with it.  Remaining ties between *distinct* points at exactly equal
distances (measure zero for continuous data) are broken by a canonical order of the
points (sorted by their bytes), so they do not depend on the input order either.

Friedman-Rafsky moments
-----------------------
For a fixed tree with N - 1 edges and C pairs of edges sharing a node, under random
relabelling with m a's and n b's (Friedman & Rafsky 1979, eq. 14; derived again here
from the probabilities that one edge / two adjacent / two disjoint edges are cross)::

    E R   = 2mn / N
    E R^2 = (N-1) p1 + 2C p2 + ((N-1)(N-2) - 2C) p3
    p1 = 2mn / (N(N-1)),  p2 = mn / (N(N-1)),  p3 = 4 m(m-1) n(n-1) / (N(N-1)(N-2)(N-3))

With duplicates, C is that of the tree in which each group of copies hangs as a star
off one copy.  tests/test_separation.py checks these moments by enumerating every
labelling of small trees.
"""
import numpy as np
from scipy.special import log_ndtr, ndtr

#: float64 bytes a chunk of features may take (rows x chunk x 8)
CHUNK_BYTES = 32 * 2 ** 20

#: metrics with the fast Gram path (all give the tree of squared Euclidean distances,
#: "cosine" on rows scaled to unit length: 1 - cos = |u - v|^2 / 2)
GRAM_METRICS = ("euclidean", "sqeuclidean", "cosine")


#: distance blocks below this many multiply-adds (rows x cols x d) run on one BLAS thread
SMALL_GEMM = 2e9


def blas_threads(rows, d):
    """One BLAS thread for small blocks (a context manager), the default otherwise.

    Multi-threaded OpenBLAS on small products can be 100x slower than one thread when the
    cores are busy (threads wait for each other); big products keep every core.
    """
    import contextlib  # noqa: PLC0415
    if float(rows) * rows * d >= SMALL_GEMM:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    return threadpool_limits(1, user_api="blas")


def prim_dense(W):
    """A minimum spanning tree of the complete graph with weights ``W`` (N x N, symmetric).

    Dense Prim, O(N^2), N vectorised steps.  Zero weights are edges like any other (SciPy's
    ``minimum_spanning_tree`` drops them).  Ties go to the lowest index, so the tree is a
    function of ``W`` alone.  Returns ``(child, parent)``: the N - 1 edges.
    """
    N = W.shape[0]
    if N < 2:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    key = W[0].copy()
    key[0] = np.inf
    parent = np.zeros(N, np.intp)
    outside = np.ones(N, bool)
    outside[0] = False
    mask = np.empty(N, bool)
    child = np.empty(N - 1, np.intp)
    for s in range(N - 1):
        v = int(key.argmin())
        child[s] = v
        outside[v] = False
        key[v] = np.inf
        row = W[v]
        np.less(row, key, out=mask)
        mask &= outside
        np.copyto(key, row, where=mask)
        np.copyto(parent, v, where=mask)
    return child, parent[child]


class Points:
    """The distinct rows of a layer's outputs, ready for distance blocks.

    ``Z``: (N, d) array.  ``inverse[i]``: the distinct point of row i; distinct points are
    numbered in the canonical order (sorted by their bytes).  ``owned=True``: ``Z`` is a
    private array that may be modified in place (no copy is made).
    """

    def __init__(self, Z, metric="euclidean", where="input", owned=False):
        Z = np.asarray(Z)
        Z = Z.reshape(len(Z), -1)
        if Z.dtype.kind not in "fiub":
            raise TypeError(f"{where}: values must be numbers, received dtype {Z.dtype}")
        if Z.dtype.kind != "f":
            Z, owned = Z.astype(np.float64), True
        if not (owned and Z.flags.c_contiguous and Z.flags.writeable):
            Z = np.ascontiguousarray(Z).copy()
        Z += Z.dtype.type(0)                           # -0.0 -> 0.0 (bytes compare below)
        rows = Z.view(np.dtype((np.void, Z.dtype.itemsize * Z.shape[1]))).ravel()
        _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        del rows
        self.Z, self.first = Z, first                  # distinct point k is row first[k] of Z
        self.inverse = inverse.ravel()
        self.n = len(first)
        self.metric = metric
        self.where = where
        if metric == "cosine":
            U = Z[first].astype(np.float64)
            norm = np.sqrt(np.einsum("ij,ij->i", U, U))
            if (norm == 0).any():
                raise ValueError(f"{where}: metric='cosine' is undefined for all-zero outputs, and "
                                 f"{int((norm == 0).sum())} distinct output(s) are all zero; use "
                                 "metric='euclidean'")
            self.Z, self.first = U / norm[:, None], np.arange(len(first))
        self.d = self.Z.shape[1]
        if metric in GRAM_METRICS:
            self.mean = self.Z[self.first].mean(axis=0, dtype=np.float64) if self.n < len(self.Z) \
                else self.Z.mean(axis=0, dtype=np.float64)
            self.norms = np.zeros(self.n)
            step = max(1, (CHUNK_BYTES // 8) // max(self.d, 1))
            for r0 in range(0, self.n, step):
                A = self._rows(np.arange(r0, min(r0 + step, self.n)), 0, self.d)
                self.norms[r0:r0 + step] = np.einsum("ij,ij->i", A, A)

    def _rows(self, ids, c0, c1):
        """Distinct points ``ids``, features c0:c1, centred, float64."""
        A = self.Z[self.first[ids], c0:c1].astype(np.float64)
        A -= self.mean[c0:c1]
        return A

    def _chunks(self, rows):
        step = max(256, CHUNK_BYTES // (8 * max(rows, 1)))
        return [(c, min(c + step, self.d)) for c in range(0, self.d, step)]

    def sqdist(self, rows, cols=None):
        """Squared distances (float64) between distinct points ``rows`` and ``cols`` (index arrays).

        ``cols=None``: the symmetric block of ``rows`` with itself (zero diagonal).
        Other metrics than ``GRAM_METRICS`` go through ``scipy.spatial.distance.cdist``.
        """
        same = cols is None
        if self.metric not in GRAM_METRICS:
            from scipy.spatial.distance import cdist  # noqa: PLC0415
            A = self.Z[self.first[rows]].astype(np.float64)
            D = cdist(A, A if same else self.Z[self.first[cols]].astype(np.float64), metric=self.metric)
            if same:
                np.fill_diagonal(D, 0.0)
            return D
        cols_ = rows if same else cols
        G = np.zeros((len(rows), len(cols_)))
        for c0, c1 in self._chunks(max(len(rows), len(cols_))):
            A = self._rows(rows, c0, c1)
            if same:
                G += A @ A.T            # SYRK: exactly symmetric
            else:
                G += A @ self._rows(cols_, c0, c1).T
        D = self.norms[rows][:, None] + self.norms[cols_][None, :]
        D -= 2.0 * G
        np.maximum(D, 0.0, out=D)
        if same:
            np.fill_diagonal(D, 0.0)
        return D


def moments(m, n, C):
    """Friedman-Rafsky permutation mean and variance of R for a tree with C adjacent edge pairs."""
    m, n = float(m), float(n)
    N = m + n
    E = 2 * m * n / N
    edges = N - 1
    p1 = 2 * m * n / (N * (N - 1))
    p2 = m * n / (N * (N - 1))
    p3 = 4 * m * (m - 1) * n * (n - 1) / (N * (N - 1) * (N - 2) * (N - 3)) if N > 3 else 0.0
    ER2 = edges * p1 + 2 * C * p2 + (edges * (edges - 1) - 2 * C) * p3
    return E, max(ER2 - E * E, 0.0)


def tree_statistics(child, parent, ka, kb):
    """``(R, R_min, R_max, C)`` for a tree over distinct points with ``ka``/``kb`` copies each."""
    ka = np.asarray(ka, np.float64)
    kb = np.asarray(kb, np.float64)
    k = ka + kb
    both = (ka > 0) & (kb > 0)
    r_in = float((2 * ka[both] * kb[both] / k[both]).sum())
    in_min = float(both.sum())
    in_max = float((k[both] - 1).sum())
    ai, bi, aj, bj = ka[child] > 0, kb[child] > 0, ka[parent] > 0, kb[parent] > 0
    p = (ka[child] * kb[parent] + kb[child] * ka[parent]) / (k[child] * k[parent])
    out_min = float((~((ai & aj) | (bi & bj))).sum())
    out_max = float(((ai & bj) | (bi & aj)).sum())
    deg = (np.bincount(child, minlength=len(k)) + np.bincount(parent, minlength=len(k))).astype(np.float64)
    deg += k - 1
    C = float((deg * (deg - 1) / 2).sum())
    R = r_in + float(p.sum())           # an integer when no two points coincide (p is 0 or 1)
    return R, in_min + out_min, in_max + out_max, C


def pair_statistics(W, ka, kb):
    """Everything about one pair from its distinct points' squared distances and copy counts.

    Returns a dict with H, R, R_min, R_max, m, n, z, p_value, log_p, E_R, var_R, C.
    """
    child, parent = prim_dense(W)
    return tree_summary(child, parent, ka, kb)


def tree_summary(child, parent, ka, kb):
    """``pair_statistics`` of a tree already built."""
    R, R_min, R_max, C = tree_statistics(child, parent, ka, kb)
    m, n = int(np.sum(ka)), int(np.sum(kb))
    return summarize(R, R_min, R_max, C, m, n)


def summarize(R, R_min, R_max, C, m, n):
    N = m + n
    E, V = moments(m, n, C)
    z = (R - E) / np.sqrt(V) if V > 0 else float("nan")
    return {"H": 1.0 - R * N / (2.0 * m * n), "R": R, "R_min": R_min, "R_max": R_max, "m": m, "n": n,
            "z": float(z), "p_value": float(ndtr(z)) if V > 0 else float("nan"),
            "log_p": float(log_ndtr(z)) if V > 0 else float("nan"),
            "E_R": E, "var_R": V, "C": C}
