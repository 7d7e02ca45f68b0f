"""Permutation p-values and their multiplicity adjustments (docs/analysis/permutation.md, "p-values").

* ``permutation_p_values``: ``p = (1 + #{b : T_b >= T_0}) / (B + 1)``;
* ``sequential_p_values``: Besag & Clifford's sequential p-values (stop at ``h`` exceedances);
* ``holm``, ``benjamini_hochberg``, ``max_t`` (Westfall-Young, needs one joint null);
* ``smallest_adjusted_p``: the smallest value an adjustment can give with ``B`` replicates.
"""
import numbers

import numpy as np

__all__ = ["permutation_p_values", "sequential_p_values", "holm", "benjamini_hochberg", "max_t",
           "smallest_adjusted_p", "METHODS"]

METHODS = ("none", "bonferroni", "holm", "bh", "maxT")


def permutation_p_values(statistic, null_distribution):
    """``p_j = (1 + #{b : null[b, j] >= statistic[j]}) / (B + 1)`` (ties count as exceeding)."""
    t = np.asarray(statistic, dtype=np.float64)
    null = np.asarray(null_distribution, dtype=np.float64)
    if null.ndim < 1 or tuple(null.shape[1:]) != tuple(t.shape):
        raise ValueError(f"permutation_p_values: null_distribution must have shape (B, *{tuple(t.shape)}), "
                         f"received {tuple(null.shape)}")
    b = null.shape[0]
    p = (1.0 + (null >= t).sum(axis=0)) / (b + 1.0)
    return np.where(np.isnan(t) | np.isnan(null).any(axis=0), np.nan, p)


def sequential_p_values(statistic, null_distribution, h):
    """Besag-Clifford sequential p-values, one per column (group) of ``null_distribution (B, G)``.

    Replicates ``b = 1, 2, ...`` are drawn in order; a group stops at the first ``L`` where the
    count of exceedances ``#{b <= L : T_b >= T_0}`` reaches ``h``, and then::

        p = h / L                                   (stopped early, L <= B)
        p = (1 + #{b <= B : T_b >= T_0}) / (B + 1)  (never reached h: all B replicates drawn)

    Entries after a group's stop are not used (they may be NaN).  Besag & Clifford (1991)
    show ``P(p <= u) <= u`` under the null for every attainable ``u``.  A group whose
    replicates stop (NaN) before either rule applies gets NaN.  ``h = B + 1`` never stops
    early and equals ``permutation_p_values``.
    """
    if isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1:
        raise ValueError(f"sequential_p_values: h must be an integer >= 1, received {h!r}")
    t = np.asarray(statistic, dtype=np.float64)
    null = np.asarray(null_distribution, dtype=np.float64)
    if null.ndim != 2 or t.shape != (null.shape[1],):
        raise ValueError(f"sequential_p_values: statistic must have shape (G,) and null_distribution (B, G); "
                         f"received {t.shape} and {null.shape}")
    B, G = null.shape
    out = np.full(G, np.nan)
    for g in range(G):
        if np.isnan(t[g]):
            continue
        count = 0
        for b in range(B):
            v = null[b, g]
            if np.isnan(v):
                break
            count += v >= t[g]
            if count >= h:
                out[g] = h / (b + 1.0)
                break
        else:
            out[g] = (1.0 + count) / (B + 1.0)
    return out


def sequential_stop(statistic, column, h, B):
    """``(stopped, L)`` for one group: has its rule applied after the replicates in ``column`` (in order,
    NaN = not drawn yet), and at which ``L`` (the number of replicates the p-value uses)."""
    count = 0
    for b, v in enumerate(column):
        if np.isnan(v):
            return False, b
        count += v >= statistic
        if count >= h:
            return True, b + 1
    return len(column) >= B, len(column)


def holm(p):
    """Holm's step-down adjusted p-values (family-wise error), any shape; NaN entries stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out


def benjamini_hochberg(p):
    """Benjamini-Hochberg adjusted p-values (false discovery rate): ``scipy.stats.false_discovery_control``."""
    from scipy.stats import false_discovery_control  # noqa: PLC0415
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def max_t(statistic, null_distribution):
    """Westfall-Young step-down max-T adjusted p-values from the joint null (family-wise error).

    Order the features by observed statistic, largest first: ``T_(1) >= ... >= T_(m)``.  Then::

        p~_(r) = (1 + #{b : max_{s >= r} T_(s)^(b) >= T_(r)}) / (B + 1),   made non-decreasing in r

    (Westfall & Young 1993, algorithm 4.1, with the observed data counted among the
    permutations as for the raw p-values).  It keeps the dependence between features, so on
    784 correlated pixels it is far less conservative than Holm.  The statistics should be on
    a common scale (standardized inputs; pixels of one image are).  It needs ONE set of null
    replicates shared by all features (the global test); the conditional test has none.
    """
    t = np.asarray(statistic, dtype=np.float64)
    null = np.asarray(null_distribution, dtype=np.float64)
    if tuple(null.shape[1:]) != tuple(t.shape):
        raise ValueError(f"max_t: null_distribution must have shape (B, *{tuple(t.shape)}), received "
                         f"{tuple(null.shape)}")
    flat_t = t.reshape(-1)
    flat_null = null.reshape(null.shape[0], -1)
    out = np.full(flat_t.shape, np.nan)
    ok = ~(np.isnan(flat_t) | np.isnan(flat_null).any(axis=0))
    idx = np.flatnonzero(ok)
    if idx.size:
        order = idx[np.argsort(-flat_t[idx], kind="stable")]
        tail_max = np.maximum.accumulate(flat_null[:, order][:, ::-1], axis=1)[:, ::-1]     # (B, m)
        counts = (tail_max >= flat_t[order][None, :]).sum(axis=0)
        adj = np.maximum.accumulate((1.0 + counts) / (null.shape[0] + 1.0))
        out[order] = adj
    return out.reshape(t.shape)


def smallest_adjusted_p(method, n_tests, n_permutations):
    """The smallest adjusted p-value ``method`` can return for ``n_tests`` tests with ``B`` replicates.

    Every raw p-value is at least ``1/(B+1)`` (sequential ones too), so Holm and Bonferroni
    give at least ``m/(B+1)``, and Benjamini-Hochberg, max-T and no adjustment ``1/(B+1)``.
    Nothing can be significant at ``alpha`` when this exceeds ``alpha``.
    """
    if method not in METHODS:
        raise ValueError(f"smallest_adjusted_p: method must be one of {METHODS}, received {method!r}")
    for name, v in (("n_tests", n_tests), ("n_permutations", n_permutations)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"smallest_adjusted_p: {name} must be an integer >= 1, received {v!r}")
    m = int(n_tests) if method in ("holm", "bonferroni") else 1
    return min(1.0, m / (int(n_permutations) + 1.0))
