r"""Kronecker-factored curvature of Linear and Convolution layers: K-FAC / KFC and EKFAC
(docs/analysis/curvature.md).

``from nn_from_scratch.analysis import curvature``

The convention
--------------
A layer is a matrix product.  For a ``Convolution`` with kernel ``W: (F, C, *k)`` (``K = prod(k)``)
the patch matrix of ``layers/geometry.im2col`` (equivalently: the convolution with the *gathering filter*
``eye(C*K).reshape(C*K, C, *k)``, with ``groups=1``: every one of its ``C*K`` output channels reads
one input channel at one kernel offset, so it must see all channels; the seed's ``groups=C_in``
gave each output channel only one input channel and its 2-D test failed) has rows in the order of
``W.reshape(F, C*K)`` (channel-major).  For example ``n`` and output position ``t`` (``T`` positions,
``T = 1`` for ``Linear``) let

    ``a_nt``: the patch of position ``t``, with a 1 appended LAST when the layer has a bias
              (``Dp = C*K + 1``; no 1 without bias);
    ``W~ = [W.reshape(F, C*K) | b]: (F, Dp)``, so the pre-activation output is ``s_nt = W~ a_nt``;
    ``g_nt = d l_n / d s_nt``: the gradient of the PER-EXAMPLE loss ``l_n`` (the loss of a batch
              holding example ``n`` alone); for the framework's losses (means over the batch,
              ``L = (1/N) sum_n l_n``) that is ``N`` times what reaches the layer in ``backward``.

``Linear`` keeps its bias in row 0 of ``W: (D + 1, M)`` (``y = x @ W[1:] + W[0]``), so there
``F = M``, ``a_n = [x_n, 1]`` and ``W~ = [W[1:].T | W[0]]``: entry ``(f, j)`` of ``W~`` is
``W[1 + j, f]`` for ``j < D`` and ``W[0, f]`` for ``j = D`` (``to_matrix``/``from_matrix`` in
``nn_from_scratch.kfac.statistics`` do the mapping both ways).  Parameters are flattened row-major,
``vec_r(W~)``, index ``f*Dp + j``.

Derivation
----------
Because ``W~`` is shared over positions, the per-example gradient is (chain rule)::

    G_n = d l_n / d W~ = sum_t g_nt a_nt^T                         (F, Dp)

and ``vec_r(g a^T) = g (x) a``.  The Fisher block of the layer (the empirical, sampled or exact
kind depending on where ``g`` comes from; see *Fisher types*) is::

    F = (1/N) sum_n vec_r(G_n) vec_r(G_n)^T
      = (1/N) sum_n sum_{t, t'} (g_nt g_nt'^T) (x) (a_nt a_nt'^T)

K-FAC (Martens & Grosse 2015) and KFC (Grosse & Martens 2016) assume (i) activations and
derivatives independent, ``E[(g g'^T) (x) (a a'^T)] ~ E[g g'^T] (x) E[a a'^T]``, and (ii) for
convolutions spatially homogeneous, spatially uncorrelated derivatives,
``E[g_t g_t'^T] = delta_tt' Gamma``.  Then ``F ~ Gamma (x) sum_t E[a_t a_t^T]``, i.e.::

    A = (1/N) sum_n sum_t a_nt a_nt^T              (Dp, Dp)   a SUM over positions
    G = (1/(N T)) sum_n sum_t g_nt g_nt^T          (F, F)     a MEAN over positions
    F ~ kron(G, A)                                 (row-major flattening; papers write A (x) G)

Where ``T`` sits between the two factors is a convention (this is KFC's split); it matters only
for per-factor comparisons and factored damping.  The approximation is exact when (i)-(ii) hold:
one example with ``T = 1``; a linear model with squared loss (``fisher="gauss_newton"``), where
``g``'s covariance does not depend on the example; a single linear convolution with squared loss
on every output position.  tests/test_curvature.py holds each case at 1e-10.

Fisher types (``fisher=``)
--------------------------
``"empirical"`` (the labels), ``"mc"`` (labels drawn from the model, seeded, ``mc_samples`` draws
per example, each weighted ``1/mc_samples``), ``"type2"`` (the exact expectation over the
softmax: ``K`` backward passes, deterministic; softmax cross-entropy only) and ``"gauss_newton"``
(the exact generalised Gauss-Newton matrix: ``type2`` for softmax cross-entropy, the squared
loss's ``(2/D) I`` output Hessian for ``MSELoss``).  ``kfac.statistics`` says how each is made.

EKFAC (George et al. 2018) keeps the eigenbasis ``Q = Q_G (x) Q_A`` of ``kron(G, A)`` and
re-estimates the eigenvalues from the real per-example gradients::

    s = (1/N) sum_n (Q_G^T G_n Q_A)^2 = diag(Q^T F Q)           (F, Dp), elementwise square

(``ekfac_scalings``; the classes are in ``nn_from_scratch.kfac.factors``).

Data and mode: ``X, y`` as ``NeuralNetwork.fit`` takes them; everything is computed in float64
from the network's own forward/backward in inference mode (when the network has one), batch by
batch (``batch_size``), accumulated exactly: the factors of the whole data set.  Only Linear and
Convolution layers are factored (``layers=``; another layer named there is an error).
"""
import contextlib
import math

import numpy as np

from ..backend import get_array_module, read_scalars, to_device, to_numpy
from ..kfac import statistics as ls
from ..kfac.factors import EKFACFactors, KroneckerFactors, check_damping, scalings_sum, symmetric_eigh

__all__ = ["per_example_gradients", "kfac_factors", "fisher_block", "ekfac_scalings", "ekfac_factors",
           "approximation_errors", "KroneckerFactors", "EKFACFactors", "check_damping", "symmetric_eigh",
           "MAX_BLOCK_PARAMS", "MAX_FACTOR_SIZE"]

#: ``fisher_block`` refuses layers with more parameters than this (a dense 4096 x 4096 float64
#: block is 128 MiB); raise it with ``max_params=``
MAX_BLOCK_PARAMS = 4096
#: ``kfac_factors`` refuses layers whose factor ``A`` (``Dp x Dp``) or ``G`` (``F x F``) would be
#: larger than this on a side (8192: 512 MiB per float64 factor, about three copies at once while
#: they are summed); raise it with ``max_factor_size=``
MAX_FACTOR_SIZE = 8192


def _inference(net):
    ctx = getattr(net, "inference", None)
    return ctx() if callable(ctx) else contextlib.nullcontext()


def _batches(net, X, y, batch_size, where):
    """``(xb, yb)`` on the parameters' device, validated as ``fit`` validates its data."""
    if y is None:
        raise ValueError(f"{where}: labels/targets y are needed")
    X, y, given = net._prepare_xy(X, y, where)
    n = X.shape[0]
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"{where}: batch_size must be an int >= 1 or None (one batch), received {batch_size!r}")
    bs = n if batch_size is None else int(batch_size)
    for a in range(0, n, bs):
        xb = net._to_batch(X[a:a + bs])
        yield xb, to_device(y[a:a + bs], like=xb)


@contextlib.contextmanager
def _session(net):
    """Inference mode, and every layer's cache dropped afterwards."""
    try:
        with _inference(net):
            yield
    finally:
        for layer in net.layers:
            layer.clear_cache()


def _records(net, X, y, fisher, layers, mc_samples, seed, batch_size, where):
    ls.check_fisher(fisher, net.loss_fn, where, mc_samples)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{where}: seed must be an int >= 0, received {seed!r}")
    rng = np.random.default_rng(seed)
    with _session(net):
        for xb, yb in _batches(net, X, y, batch_size, where):
            yield ls.record(net, xb, yb, fisher, layers, mc_samples, rng)


def _rows64(rec, layer):
    a = rec.patches(layer).astype(np.float64)
    return a, [g.astype(np.float64) for g in rec.output_gradients(layer)]


def _per_example(a, g):
    """``G_n = sum_t g_nt a_nt^T``: ``(N, F, Dp)`` from ``a: (N, T, Dp)``, ``g: (N, T, F)``."""
    return get_array_module(a).matmul(g.transpose(0, 2, 1), a)


def per_example_gradients(net, X, y, batch_size=None, layers=None):
    """``{layer name: {"W": (N, *W.shape), "b": (N, *b.shape)}}``: the gradient of each example's own loss.

    From the patches and the per-example output gradients of one forward and one backward pass
    per batch (never N passes).  Each entry is in the layer's own layout (``Linear``: ``W`` with
    the bias in row 0 and no ``"b"``; a layer without bias: no ``"b"``), float64, NumPy on the
    host.  ``sum_n`` of them is ``N`` times the gradient of the batch's mean loss.
    """
    chosen = ls.select_layers(net, layers, "per_example_gradients")
    parts = {layer.name: [] for layer in chosen}
    for rec in _records(net, X, y, "empirical", chosen, 1, 0, batch_size, "per_example_gradients"):
        for layer in chosen:
            a, (g,) = _rows64(rec, layer)
            parts[layer.name].append(to_numpy(_per_example(a, g)))
    out = {}
    for layer in chosen:
        M = np.concatenate(parts[layer.name], axis=0)
        out[layer.name] = ls.from_matrix(layer, M)
    return out


def _check_factor_sizes(chosen, max_factor_size, where):
    if isinstance(max_factor_size, bool) or not isinstance(max_factor_size, (int, np.integer)) \
            or max_factor_size < 1:
        raise ValueError(f"{where}: max_factor_size must be an int >= 1, received {max_factor_size!r}")
    for layer in chosen:
        F, Dp = ls.matrix_shape(layer)
        if max(F, Dp) > max_factor_size:
            need = 3 * 8 * (F * F + Dp * Dp)
            raise ValueError(
                f"{where}: layer '{layer.name}' has factors A of {Dp} x {Dp} and G of {F} x {F}; building them "
                f"needs about {need / 2 ** 30:.3g} GiB (float64, three copies while summing), above the limit "
                f"max_factor_size={int(max_factor_size)} on a side; pass layers= without it, or raise "
                f"max_factor_size= to build it anyway")


def kfac_factors(net, X, y, fisher="empirical", mc_samples=1, seed=0, batch_size=None, layers=None,
                 max_factor_size=MAX_FACTOR_SIZE):
    """``{layer name: KroneckerFactors}`` with ``A``, ``G`` of the convention (module docstring),
    over the whole of ``X`` (accumulated exactly over batches of ``batch_size``).

    Refuses, before any pass, a layer whose ``A`` or ``G`` would be larger than
    ``max_factor_size`` on a side (``MAX_FACTOR_SIZE``)."""
    chosen = ls.select_layers(net, layers, "kfac_factors")
    _check_factor_sizes(chosen, max_factor_size, "kfac_factors")
    sums = {layer.name: None for layer in chosen}
    n_total, T = 0, {}
    for rec in _records(net, X, y, fisher, chosen, mc_samples, seed, batch_size, "kfac_factors"):
        n_total += rec.output.shape[0]
        for layer in chosen:
            a, gs = _rows64(rec, layer)
            T[layer.name] = a.shape[1]
            a2 = a.reshape(-1, a.shape[2])
            A = a2.T @ a2
            G = sum(g.reshape(-1, g.shape[2]).T @ g.reshape(-1, g.shape[2]) for g in gs)
            s = sums[layer.name]
            sums[layer.name] = (A, G) if s is None else (s[0] + A, s[1] + G)
    out = {}
    for layer in chosen:
        A, G = sums[layer.name]
        t = T[layer.name]
        out[layer.name] = KroneckerFactors(A / n_total, G / (n_total * t), layer=layer.name, n_examples=n_total,
                                           n_positions=t, bias=layer.use_bias)
    return out


def _resolve_one(net, layer, where):
    (chosen,) = ls.select_layers(net, [layer], where)
    return chosen


def fisher_block(net, X, y, layer, fisher="empirical", mc_samples=1, seed=0, batch_size=None,
                 max_params=MAX_BLOCK_PARAMS):
    """The dense Fisher block ``(1/N) sum_n vec_r(G_n) vec_r(G_n)^T`` of one layer (name or object).

    ``(P, P)`` float64 on the data's backend, ``P = F * Dp`` in ``vec_r([W.reshape(F, -1) | b])``
    order; with several columns per example (``mc``, ``type2``, ``gauss_newton``) the sum runs
    over them too.  Refuses layers with more than ``max_params`` parameters.
    """
    target = _resolve_one(net, layer, "fisher_block")
    if isinstance(max_params, (bool, np.bool_)) or not isinstance(max_params, (int, np.integer)) or max_params < 1:
        raise ValueError(f"fisher_block: max_params must be an int >= 1, received {max_params!r}")
    F, Dp = ls.matrix_shape(target)
    P = F * Dp
    if P > int(max_params):
        raise ValueError(f"fisher_block: layer '{target.name}' has P = {F} x {Dp} = {P} parameters; its dense "
                         f"Fisher block would be {P} x {P} ({P * P * 8 / 2**20:.0f} MiB in float64), above the "
                         f"limit of max_params={int(max_params)} parameters (raise max_params= to build it anyway)")
    block, n_total = None, 0
    for rec in _records(net, X, y, fisher, [target], mc_samples, seed, batch_size, "fisher_block"):
        n_total += rec.output.shape[0]
        a, gs = _rows64(rec, target)
        for g in gs:
            V = _per_example(a, g).reshape(a.shape[0], P)
            block = V.T @ V if block is None else block + V.T @ V
    return block / n_total


def ekfac_scalings(net, X, y, factors, fisher="empirical", mc_samples=1, seed=0, batch_size=None):
    """``{layer name: s}``, ``s = (1/N) sum_n (Q_G^T G_n Q_A)^2: (F, Dp)`` in the eigenbasis of
    ``factors`` (a ``kfac_factors`` result), from the real per-example gradients of ``X``.

    Per example ``sum_t (Q_G^T g_nt)(Q_A^T a_nt)^T`` or ``Q_G^T G_n Q_A``, whichever is cheaper
    (``kfac.factors.scalings_sum``).
    """
    if not isinstance(factors, dict) or not all(isinstance(f, KroneckerFactors) for f in factors.values()):
        raise TypeError(f"ekfac_scalings: factors must be the dict {{layer name: KroneckerFactors}} that "
                        f"kfac_factors returns, received {type(factors).__name__}")
    names = list(factors)
    chosen = ls.select_layers(net, names, "ekfac_scalings")
    sums, n_total = {name: None for name in names}, 0
    for rec in _records(net, X, y, fisher, chosen, mc_samples, seed, batch_size, "ekfac_scalings"):
        n_total += rec.output.shape[0]
        for layer in chosen:
            _, Q_G, _, Q_A = factors[layer.name].eigen()
            s = scalings_sum(rec.patches(layer), rec.output_gradients(layer), Q_G, Q_A)
            sums[layer.name] = s if sums[layer.name] is None else sums[layer.name] + s
    return {name: sums[name] / n_total for name in names}


def ekfac_factors(net, X, y, fisher="empirical", mc_samples=1, seed=0, batch_size=None, layers=None):
    """``{layer name: EKFACFactors}``: K-FAC's eigenbasis with re-estimated scalings (two passes over
    ``X``; with ``fisher="mc"`` both draw the same labels from ``seed``)."""
    kf = kfac_factors(net, X, y, fisher, mc_samples, seed, batch_size, layers)
    s = ekfac_scalings(net, X, y, kf, fisher, mc_samples, seed, batch_size)
    return {name: EKFACFactors(kf[name], s[name]) for name in kf}


def approximation_errors(net, X, y, fisher="empirical", mc_samples=1, seed=0, batch_size=None, layers=None,
                         max_params=MAX_BLOCK_PARAMS):
    """``{layer name: {"kfac": ||F - K||_F / ||F||_F, "ekfac": ||F - E||_F / ||F||_F, "params": P}}``
    against the dense block ``F = fisher_block(...)`` of the same data (small layers only)."""
    kf = kfac_factors(net, X, y, fisher, mc_samples, seed, batch_size, layers)
    s = ekfac_scalings(net, X, y, kf, fisher, mc_samples, seed, batch_size)
    out = {}
    for name, f in kf.items():
        Fb = fisher_block(net, X, y, name, fisher, mc_samples, seed, batch_size, max_params)
        xp = get_array_module(Fb)
        e = EKFACFactors(f, s[name]).dense()
        nf, nk, ne = read_scalars(xp.linalg.norm(Fb), xp.linalg.norm(Fb - f.dense()), xp.linalg.norm(Fb - e),
                                  why="analysis")
        out[name] = {"kfac": nk / nf if nf else math.nan, "ekfac": ne / nf if nf else math.nan,
                     "params": f.size}
    return out
