"""Kronecker-factored curvature blocks ``kron(G, A)`` and their eigenvalue-corrected form (EKFAC).

For a layer with the matrix of parameters ``[W.reshape(F, -1) | b]: (F, Dp)`` flattened row-major
(``vec_r``), the block is ``G (x) A`` with ``G: (F, F)``, ``A: (Dp, Dp)`` and::

    (G (x) A) vec_r(V) = vec_r(G V A)          (A, G symmetric)

Eigendecomposition (symmetrised, in float64, eigenvalues clamped at 0)::

    A = Q_A diag(lam_A) Q_A^T,  G = Q_G diag(lam_G) Q_G^T,
    G (x) A = (Q_G (x) Q_A) diag(vec_r(lam_G lam_A^T)) (Q_G (x) Q_A)^T

Damped solves of ``(M + gamma I) X = V``:

* ``method="eigen"`` (exact damping, the default)::

      X = Q_G [(Q_G^T V Q_A) / (lam_G lam_A^T + gamma)] Q_A^T     = (G (x) A + gamma I)^-1 vec V

* ``method="pi"`` (factored Tikhonov damping, Martens & Grosse 2015 section 6.3)::

      pi = sqrt((tr A / Dp) / (tr G / F))
      X = (G + sqrt(gamma)/pi I)^-1 V (A + pi sqrt(gamma) I)^-1  = (G_d (x) A_d)^-1 vec V

EKFAC keeps the Kronecker eigenbasis ``Q = Q_G (x) Q_A`` and replaces the eigenvalues by scalings
``s: (F, Dp)``: ``E = Q diag(vec_r s) Q^T``; ``s = lam_G lam_A^T`` is K-FAC itself, and the
re-estimated ``s = diag(Q^T F Q)`` (``curvature.ekfac_scalings``) is, for that basis, the
diagonal closest to ``F`` in Frobenius norm, so that (``Q`` orthogonal)::

    ||F - K||_F^2 = ||F - E||_F^2 + ||s - lam_G (x) lam_A||^2
"""
import contextlib
import math

import numpy as np

from ..backend import get_array_module, read_scalars
from ..layers.base import ShapeError

__all__ = ["KroneckerFactors", "EKFACFactors", "symmetric_eigh", "check_damping", "one_blas_thread", "scalings_sum",
           "scalings_cost", "SOLVE_METHODS", "SCALING_METHODS"]

SOLVE_METHODS = ("eigen", "pi")


def check_damping(damping, where):
    try:
        ok = math.isfinite(float(damping)) and float(damping) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: damping must be a finite number > 0, received {damping!r} "
                         "(the damped solve (M + damping I)^-1 needs damping > 0)")
    return float(damping)


_BLAS = []


def one_blas_thread(xp=np):
    """A context holding NumPy's BLAS/LAPACK at one thread (``threadpoolctl``; the controller is made
    once; 0.1 ms); a no-op for CuPy (``xp``).  A factor is a few hundred rows at most: on the shared 2-core VM a 129 x 129 ``eigh`` took
    0.12 s multi-threaded and 0.011 s on one thread (benchmarks/RESULTS.md, "K-FAC / EKFAC")."""
    if xp is not np:
        return contextlib.nullcontext()
    if not _BLAS:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - a dependency, imported when used
        _BLAS.append(ThreadpoolController().select(user_api="blas"))
    return _BLAS[0].limit(limits=1)


def symmetric_eigh(M, what="factor"):
    """``(eigenvalues, eigenvectors)`` of a symmetric matrix: symmetrised, float64, eigenvalues >= 0.

    Raises ``FloatingPointError`` (naming ``what``) for NaN/Inf entries instead of a LAPACK error.
    """
    xp = get_array_module(M)
    M = M.astype(np.float64)
    (finite,) = read_scalars(xp.isfinite(M).all(), why="check")
    if not finite:
        raise FloatingPointError(f"{what} holds NaN/Inf values: the curvature statistics diverged "
                                 "(lower the learning rate or raise the damping)")
    with one_blas_thread(xp):
        lam, Q = xp.linalg.eigh((M + M.T) / 2)
    return xp.maximum(lam, 0.0), Q


SCALING_METHODS = ("gram", "project", "gradients")


def scalings_cost(n_positions, dp, f):
    """``{method: multiply-adds per example and output column}`` of ``scalings_sum``'s three exact forms
    (``T`` positions, ``Dp`` patch entries, ``F`` outputs), the projections of the rows included."""
    T = n_positions
    return {"gram": T * (dp * dp + f * f) + (T * T * (dp + f + f * dp) if T > 1 else f * dp),   # ties: gram
            "project": T * (dp * dp + f * f + f * dp),
            "gradients": T * f * dp + f * dp * dp + f * f * dp}


def scalings_sum(a, gs, Q_G, Q_A, chunk=32, method=None):
    """``sum_n sum_c (Q_G^T G_nc Q_A)^2`` (elementwise square; ``(F, Dp)``, float64) for the per-example
    gradients ``G_nc = sum_t g_nct a_nt^T`` of ``a: (N, T, Dp)`` and each ``g`` in ``gs: [(N, T, F)]``.

    Three exact forms (``method``; ``None``: the cheapest by ``scalings_cost``), with the projected rows
    ``a~_nt = Q_A^T a_nt`` and ``g~_nt = Q_G^T g_nt``:

    * ``"gram"``, the Gramian form: entry ``(i, j)`` is ``sum_n sum_{t,u} (g~_nti g~_nui)(a~_ntj a~_nuj)``,
      one product of the position-pair Gramians (``einsum``); no per-example gradient is formed.
      For a Linear layer (``T = 1``) it is ``(g~ * g~)^T (a~ * a~)``: two matrix products for the batch;
    * ``"project"``: the projected per-example gradients ``g~_n^T a~_n``, squared and summed;
    * ``"gradients"``: the per-example gradients first, then projected (a convolution with many
      positions and few filters).

    The per-example forms run ``chunk`` examples at a time (never ``N`` gradients at once).  The
    products run in the dtype of ``a`` and ``Q_A`` together (float32 rows and bases: float32; the
    optimizer of a float32 network), the sum in float64.
    """
    xp = get_array_module(a)
    n, T, dp = a.shape
    f = Q_G.shape[0]
    if method is None:
        cost = scalings_cost(T, dp, f)
        method = min(SCALING_METHODS, key=cost.__getitem__)
    elif method not in SCALING_METHODS:
        raise ValueError(f"scalings_sum: method must be one of {SCALING_METHODS} or None, received {method!r}")
    dt = np.result_type(a.dtype, Q_A.dtype)
    total = xp.zeros((f, dp), dtype=np.float64)
    if method == "gram" and T == 1:
        at = a[:, 0].astype(dt, copy=False) @ Q_A.astype(dt, copy=False)
        a2 = at * at
        for g in gs:
            gt = g[:, 0].astype(dt, copy=False) @ Q_G.astype(dt, copy=False)
            total += ((gt * gt).T @ a2).astype(np.float64, copy=False)
        return total
    Q_A, Q_G = Q_A.astype(dt, copy=False), Q_G.astype(dt, copy=False)
    if method == "gram":            # the position-pair Gramians of a chunk: chunk * T^2 * (Dp + F) entries
        chunk = max(1, min(chunk, (1 << 22) // (T * T * (dp + f))))
    for lo in range(0, n, chunk):
        a_c = a[lo:lo + chunk].astype(dt, copy=False)
        if method != "gradients":
            a_c = a_c @ Q_A
        for g in gs:
            g_c = g[lo:lo + chunk].astype(dt, copy=False)
            if method == "gram":
                g_c = g_c @ Q_G
                # (c, t, u, .): the position-pair products of each example, then one contraction
                kg = (g_c[:, :, None, :] * g_c[:, None, :, :]).reshape(-1, f)
                ka = (a_c[:, :, None, :] * a_c[:, None, :, :]).reshape(-1, dp)
                total += (kg.T @ ka).astype(np.float64, copy=False)
                continue
            if method == "project":
                P = xp.matmul((g_c @ Q_G).transpose(0, 2, 1), a_c)
            else:
                P = Q_G.T @ xp.matmul(g_c.transpose(0, 2, 1), a_c) @ Q_A
            total += (P * P).sum(axis=0, dtype=np.float64)
    return total


def _as_matrix(V, shape, where):
    """``(V as (F, Dp), was it flat?)``."""
    if tuple(V.shape) == tuple(shape):
        return V, False
    if V.ndim == 1 and V.shape[0] == shape[0] * shape[1]:
        return V.reshape(shape), True
    raise ShapeError(f"{where}: V must have shape {shape} ([W.reshape(F, -1) | b]) or ({shape[0] * shape[1]},) "
                     f"(its vec_r), received {tuple(V.shape)}")


class KroneckerFactors:
    """The K-FAC approximation ``kron(G, A)`` of one layer's Fisher block (see the module docstring).

    Attributes: ``A: (Dp, Dp)``, ``G: (F, F)`` (float64, on the data's backend), ``layer`` (its
    name), ``n_examples`` (N they were averaged over), ``n_positions`` (T), ``bias`` (is the
    last row/column of ``A`` the bias's 1?).
    """

    def __init__(self, A, G, layer=None, n_examples=None, n_positions=1, bias=True):
        if A.ndim != 2 or A.shape[0] != A.shape[1] or G.ndim != 2 or G.shape[0] != G.shape[1]:
            raise ShapeError(f"KroneckerFactors: A and G must be square matrices, received {tuple(A.shape)} "
                             f"and {tuple(G.shape)}")
        self.A, self.G = A, G
        self.layer, self.n_examples, self.n_positions, self.bias = layer, n_examples, n_positions, bias
        self._eigen = None

    @property
    def shape(self):
        """``(F, Dp)``: the parameter matrix this block acts on."""
        return (self.G.shape[0], self.A.shape[0])

    @property
    def size(self):
        """``F * Dp``: the block is ``size x size``."""
        return self.G.shape[0] * self.A.shape[0]

    def dense(self):
        """``kron(G, A)``: ``(F*Dp, F*Dp)`` (for small layers and tests)."""
        return get_array_module(self.A).kron(self.G, self.A)

    def eigen(self):
        """``(lam_G, Q_G, lam_A, Q_A)`` (cached; see ``symmetric_eigh``)."""
        if self._eigen is None:
            lam_A, Q_A = symmetric_eigh(self.A, f"the A factor of layer {self.layer!r}")
            lam_G, Q_G = symmetric_eigh(self.G, f"the G factor of layer {self.layer!r}")
            self._eigen = (lam_G, Q_G, lam_A, Q_A)
        return self._eigen

    def eigenvalues(self):
        """``lam_G lam_A^T: (F, Dp)``: the eigenvalues of ``kron(G, A)`` (entry ``(i, j)`` for the
        eigenvector ``Q_G[:, i] (x) Q_A[:, j]``)."""
        lam_G, _, lam_A, _ = self.eigen()
        return get_array_module(lam_G).outer(lam_G, lam_A)

    def matvec(self, V):
        """``kron(G, A) vec_r(V) = vec_r(G V A)``; ``V`` as ``(F, Dp)`` or flat."""
        M, flat = _as_matrix(V, self.shape, "KroneckerFactors.matvec")
        out = self.G @ M @ self.A
        return out.reshape(-1) if flat else out

    def solve(self, V, damping, method="eigen"):
        """``(kron(G, A) + damping I)^-1 vec_r(V)`` (``"eigen"``) or the factored ``"pi"`` damping
        (module docstring); ``V`` as ``(F, Dp)`` or flat, the result in the same form."""
        where = f"KroneckerFactors.solve (layer {self.layer!r})"
        damping = check_damping(damping, where)
        if method not in SOLVE_METHODS:
            raise ValueError(f"{where}: method must be one of {SOLVE_METHODS}, received {method!r}")
        M, flat = _as_matrix(V, self.shape, where)
        M = M.astype(np.float64)
        if method == "eigen":
            lam_G, Q_G, lam_A, Q_A = self.eigen()
            xp = get_array_module(lam_G)
            out = Q_G @ ((Q_G.T @ M @ Q_A) / (xp.outer(lam_G, lam_A) + damping)) @ Q_A.T
        else:
            Gd, Ad = self.pi_damped(damping)
            xp = get_array_module(Gd)
            out = xp.linalg.solve(Ad, xp.linalg.solve(Gd, M).T).T          # Gd^-1 M Ad^-1 (Ad symmetric)
        return out.reshape(-1) if flat else out

    def pi_damped(self, damping):
        """``(G + sqrt(damping)/pi I, A + pi sqrt(damping) I)``: the factored damping's two matrices."""
        damping = check_damping(damping, f"KroneckerFactors.pi_damped (layer {self.layer!r})")
        xp = get_array_module(self.A)
        tr_a, tr_g = read_scalars(xp.trace(self.A), xp.trace(self.G), why="check")
        da, dg = self.A.shape[0], self.G.shape[0]
        pi = math.sqrt((tr_a / da) / (tr_g / dg)) if tr_a > 0 and tr_g > 0 else 1.0
        r = math.sqrt(damping)
        return self.G + (r / pi) * xp.eye(dg), self.A + (pi * r) * xp.eye(da)

    def trace(self):
        """``tr(kron(G, A)) = tr G * tr A`` (a 0-d array)."""
        xp = get_array_module(self.A)
        return xp.trace(self.G) * xp.trace(self.A)

    def frobenius_norm(self):
        """``||kron(G, A)||_F = ||G||_F ||A||_F`` (a 0-d array)."""
        xp = get_array_module(self.A)
        return xp.linalg.norm(self.G) * xp.linalg.norm(self.A)

    def diagonal(self):
        """``diag(kron(G, A)) = kron(diag G, diag A)``."""
        xp = get_array_module(self.A)
        return xp.kron(xp.diagonal(self.G), xp.diagonal(self.A))

    def ekfac(self, scalings=None):
        """The eigenvalue-corrected form in this eigenbasis (``scalings=None``: K-FAC's own eigenvalues)."""
        return EKFACFactors(self, scalings)

    def __repr__(self):
        return (f"KroneckerFactors(layer={self.layer!r}, G={tuple(self.G.shape)}, A={tuple(self.A.shape)}, "
                f"n_examples={self.n_examples}, n_positions={self.n_positions})")


class EKFACFactors:
    """``E = (Q_G (x) Q_A) diag(vec_r s) (Q_G (x) Q_A)^T`` in the eigenbasis of ``factors``.

    ``scalings`` (``s: (F, Dp)``) defaults to ``lam_G lam_A^T``, for which ``E`` is K-FAC exactly.
    """

    def __init__(self, factors, scalings=None):
        self.factors = factors
        lam_G, self.Q_G, lam_A, self.Q_A = factors.eigen()
        xp = get_array_module(lam_G)
        if scalings is None:
            scalings = xp.outer(lam_G, lam_A)
        if tuple(scalings.shape) != factors.shape:
            raise ShapeError(f"EKFACFactors: scalings must have shape {factors.shape}, received {tuple(scalings.shape)}")
        self.scalings = scalings
        self.layer = factors.layer

    @property
    def shape(self):
        return self.factors.shape

    def dense(self):
        xp = get_array_module(self.Q_A)
        Q = xp.kron(self.Q_G, self.Q_A)
        return (Q * self.scalings.reshape(-1)) @ Q.T

    def matvec(self, V):
        M, flat = _as_matrix(V, self.shape, "EKFACFactors.matvec")
        out = self.Q_G @ ((self.Q_G.T @ M @ self.Q_A) * self.scalings) @ self.Q_A.T
        return out.reshape(-1) if flat else out

    def solve(self, V, damping):
        """``(E + damping I)^-1 vec_r(V) = Q_G [(Q_G^T V Q_A) / (s + damping)] Q_A^T``."""
        where = f"EKFACFactors.solve (layer {self.layer!r})"
        damping = check_damping(damping, where)
        M, flat = _as_matrix(V, self.shape, where)
        out = self.Q_G @ ((self.Q_G.T @ M.astype(np.float64) @ self.Q_A) / (self.scalings + damping)) @ self.Q_A.T
        return out.reshape(-1) if flat else out

    def trace(self):
        return self.scalings.sum()

    def frobenius_norm(self):
        return get_array_module(self.scalings).linalg.norm(self.scalings)

    def __repr__(self):
        return f"EKFACFactors(layer={self.layer!r}, shape={self.shape})"
