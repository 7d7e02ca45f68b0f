"""Samplers of a group of inputs given the others (docs/analysis/permutation.md, "sampler").

A sampler is ``sampler(X, group_mask, rng) -> X_tilde``: ``X`` the data ``(N, *S)`` (read
only), ``group_mask`` a boolean array of shape ``S`` marking the group, ``rng`` a
``numpy.random.Generator``.  It returns a new array of ``X``'s shape in which the group's
inputs are a fresh draw from (an estimate of) their law given the other inputs, and every
other input is unchanged.

``"residual"`` (the default), linear residual permutation: the group's columns ``X_G`` are
regressed on ``[1, X_R]`` (``X_R``: the other, non-constant inputs), and::

    X_tilde_G = fitted + residual[pi]      (pi one permutation of the rows: whole rows move,
                                            so the dependence inside the group is kept)

* least squares when ``X_R`` has at most ``n / 2`` columns.  In the sample, least-squares
  residuals are orthogonal to ``[1, X_R]`` and to the fitted values, so ``X_tilde`` keeps the
  empirical means and second moments of ``(X_G, X_R)`` exactly in expectation over ``pi``
  (the cross-covariance with the rest, the covariance inside the group).  Overfitting (``q``
  close to ``n``) moves ``X_tilde`` towards ``X`` and costs power, not validity;
* wider rests (more than ``n / 2`` columns, e.g. 700 pixels around a 7x7 patch with fewer
  than 1,400 images) use ridge regression, its penalty chosen by generalized cross-validation
  over a grid (from the Gram matrix of all inputs, computed once: ``eigh`` of the rest's block
  per group).  Ridge residuals are not orthogonal to the fitted values: ``X_tilde`` has a
  slightly smaller variance than ``X_G``, and on small samples the test is then measurably
  conservative (the complete-null simulation at ``n = 60``, 18 predictors, showed it): prefer
  ``n > 2 q`` where calibration matters;
* a constant column of the group is returned unchanged (its residuals are zero): a constant
  group, a blank patch, stays exactly as it is.

The fit is made once per group (``fit_residual``); each replicate draws a new ``pi``.
``"marginal"`` permutes the group's rows alone: the law of ``X_G`` given ``X_R`` only when
``X_G`` is independent of the rest (a comparison, not a valid conditional null otherwise).
"""
import numpy as np

__all__ = ["residual_sampler", "marginal_sampler", "fit_residual", "draw_residual", "check_sampler_output",
           "SAMPLERS", "OLS_MAX_RATIO"]

SAMPLERS = ("residual", "marginal")
#: least squares while the rest has at most n * OLS_MAX_RATIO columns; ridge (GCV) beyond
OLS_MAX_RATIO = 0.5
_RIDGE_GRID = 10.0 ** np.linspace(-6, 3, 37)       # lambda / mean eigenvalue of the rest's Gram block


def _flat(X):
    return np.asarray(X).reshape(len(X), -1)


class ResidualFit:
    """What ``fit_residual`` returns: the group's column indices, fitted values, residuals, and how."""

    def __init__(self, columns, fitted, residual, constant, method, penalty):
        self.columns, self.fitted, self.residual = columns, fitted, residual
        self.constant, self.method, self.penalty = constant, method, penalty


def fit_residual(X, group_mask, gram=None):
    """Fit the residual sampler of one group (float64): a ``ResidualFit``.

    ``gram``: ``(mean, Xc.T @ Xc)`` of all inputs (``gram_of``), or a callable returning it, reused
    across groups; only the ridge fits use it."""
    X2 = _flat(X).astype(np.float64)
    n = X2.shape[0]
    mask = np.asarray(group_mask, dtype=bool).reshape(-1)
    cols = np.flatnonzero(mask)
    XG = X2[:, cols]
    spread = X2.max(axis=0) - X2.min(axis=0)
    constant = spread[cols] == 0
    rest = np.flatnonzero(~mask & (spread > 0))
    meanG = XG.mean(axis=0)
    if rest.size == 0:
        fitted = np.broadcast_to(meanG, XG.shape).copy()
        method, penalty = "mean", None
    elif rest.size <= OLS_MAX_RATIO * n:
        A = np.column_stack([np.ones(n), X2[:, rest]])
        coef = np.linalg.lstsq(A, XG, rcond=None)[0]
        fitted = A @ coef
        method, penalty = "least squares", 0.0
    else:
        mean, C = gram() if callable(gram) else gram if gram is not None else gram_of(X2)
        coef, penalty = _ridge_gcv(C[np.ix_(rest, rest)], C[np.ix_(rest, cols)], float(np.trace(C[np.ix_(cols, cols)])), n)
        fitted = meanG + (X2[:, rest] - mean[rest]) @ coef
        method = "ridge (GCV)"
    residual = XG - fitted
    fitted[:, constant] = XG[:, constant]
    residual[:, constant] = 0.0
    return ResidualFit(cols, fitted, residual, constant, method, penalty)


def gram_of(X):
    """``(column means, Xc.T @ Xc)`` of the flattened inputs, float64."""
    X2 = _flat(X).astype(np.float64)
    mean = X2.mean(axis=0)
    Xc = X2 - mean
    return mean, Xc.T @ Xc


def _ridge_gcv(C_rr, C_rg, y2, n):
    """Ridge coefficients ``(C_rr + lam I)^-1 C_rg`` with ``lam`` minimising GCV over the grid, and ``lam``.

    With ``C_rr = V diag(s) V^T``, ``Z = V^T C_rg``, ``d_k = 1/(s_k + lam)`` and ``y2 = ||Y_c||^2``
    (the centred group's sum of squares)::

        RSS(lam) = y2 - sum_k ||Z_k||^2 (2 d_k - s_k d_k^2)
        df(lam)  = 1 + sum_k s_k d_k                       (the intercept counted)
        GCV(lam) = RSS / (n (1 - df/n)^2)
    """
    s, V = np.linalg.eigh(C_rr)
    s = np.maximum(s, 0.0)
    Z = V.T @ C_rg
    z2 = (Z * Z).sum(axis=1)
    scale = max(float(s.mean()), np.finfo(np.float64).tiny)
    best = None
    for t in _RIDGE_GRID:
        lam = t * scale
        d = 1.0 / (s + lam)
        rss = max(y2 - float((z2 * (2 * d - s * d * d)).sum()), 0.0)
        df = 1.0 + float((s * d).sum())
        if df >= n:
            continue
        gcv = rss / (n * (1 - df / n) ** 2)
        if best is None or gcv < best[0]:
            best = (gcv, lam, d)
    if best is None:                     # every penalty leaves df >= n: the largest one
        lam = _RIDGE_GRID[-1] * scale
        best = (None, lam, 1.0 / (s + lam))
    _, lam, d = best
    return V @ (d[:, None] * Z), lam


def draw_residual(X, fit, rng):
    """One draw of the residual sampler: ``X`` with the group's columns ``fitted + residual[pi]``."""
    Xt = np.array(X, copy=True)
    flat = Xt.reshape(len(Xt), -1)
    perm = rng.permutation(len(Xt))
    new = fit.fitted + fit.residual[perm]
    keep = fit.constant
    cols = fit.columns
    flat[:, cols[~keep]] = new[:, ~keep].astype(Xt.dtype, copy=False)
    return Xt


def residual_sampler(X, group_mask, rng):
    """The ``"residual"`` sampler as a plain callable (fits, then draws once; module docstring)."""
    return draw_residual(X, fit_residual(X, group_mask), rng)


def marginal_sampler(X, group_mask, rng):
    """Permute the group's rows, ignoring the other inputs (valid only for a group independent of them)."""
    Xt = np.array(X, copy=True)
    flat = Xt.reshape(len(Xt), -1)
    cols = np.flatnonzero(np.asarray(group_mask, dtype=bool).reshape(-1))
    flat[:, cols] = flat[rng.permutation(len(Xt))][:, cols]
    return Xt


def check_sampler_output(X, X_tilde, group_mask, g):
    """The checks every sampler output passes: ``X``'s shape, finite, nothing outside the group changed."""
    where = "permutation_test"
    if not hasattr(X_tilde, "shape"):
        raise ValueError(f"{where}: sampler must return an array of shape {tuple(X.shape)} (X's shape), received "
                         f"{type(X_tilde).__name__} for group {g}")
    if tuple(X_tilde.shape) != tuple(X.shape):
        raise ValueError(f"{where}: sampler must return an array of X's shape {tuple(X.shape)}, received shape "
                         f"{tuple(X_tilde.shape)} for group {g}")
    Xt = np.asarray(X_tilde)
    if Xt.dtype.kind not in "fiub" or not np.all(np.isfinite(Xt)):
        raise ValueError(f"{where}: sampler must return finite real numbers, received "
                         f"{'dtype ' + str(Xt.dtype) if Xt.dtype.kind not in 'fiub' else 'NaN or inf'} for group {g}")
    outside = ~np.asarray(group_mask, dtype=bool).reshape(-1)
    a, b = _flat(X)[:, outside], Xt.reshape(len(Xt), -1)[:, outside]
    changed = np.flatnonzero((a != b).any(axis=0))
    if changed.size:
        idx = np.flatnonzero(outside)[changed]
        raise ValueError(f"{where}: sampler must change only the inputs of the group (group_mask) and return the "
                         f"others unchanged; for group {g} it changed {changed.size} input(s) outside the group "
                         f"(flat indices {idx[:5].tolist()}{' ...' if idx.size > 5 else ''})")
    return Xt.astype(np.asarray(X).dtype, copy=False)
