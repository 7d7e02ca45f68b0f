"""Class separation at every layer: the Henze-Penrose statistic and Fisher permutation tests.

For points ``X_a`` (m rows) and ``X_b`` (n rows), rows flattened, ``N = m + n``: build the
Euclidean minimum spanning tree over all N points and count ``R``, the tree edges that join
a point of ``a`` to a point of ``b``.  The Henze-Penrose estimate is::

    H = 1 - R (m + n) / (2 m n)

Under the null (both from one distribution) ``E[R] = 2mn/N``, so ``E[H] = 0`` for any m, n;
H can be negative (less separated than chance) and tends to 1 as the classes separate (its
largest value is ``1 - N/(2mn)``, at R = 1).  The reference PyTorch library used
``1 - 2 min(N/2, R)/N``, which agrees only when m = n.  With it come the Friedman-Rafsky
z-score from the exact permutation mean and variance of R given the tree, its one-sided
p-value ``Phi(z)`` (normal approximation; small R = separated) and ``log_p = log Phi(z)``
(finite where ``Phi(z)`` underflows to 0, below ``z ~ -38``).

Public names::

    henze_penrose(Xa, Xb, metric="euclidean")            -> HPResult (H, R, m, n, z, p_value, log_p, ...)
    class_separation(net, X, y, n_per_class=1000, layers=None, classes=None, seed=0,
                     metric="euclidean", batch_size=None)  -> SeparationResult
    fisher_test(a, b, paired=False, n_permutations=10000, alternative="two-sided", seed=0)
    compare_layers(result), compare_stages(before, after)  -> Rows
    SeparationHistory(X, y, every=1, layers=None, ...)     a fit callback        (history.py)
    plot_histograms, plot_separation_curve, plot_heatmap, plot_pca, plot_history  (plots.py)

The package: ``core.py`` (the computations), ``result.py`` (the result classes and tables),
``_mst.py`` (distances, trees, permutation moments), ``plots.py``, ``history.py``, ``cli.py``
(``python -m nn_from_scratch separation``).  The core imports neither the plots nor the
history; this file loads them when one of their names is first used (so importing the
analysis loads neither matplotlib nor the trainer's callbacks).

How ``R`` is computed -- distances (Gram products, error bound), exact duplicates
(merged; ``R`` is the expectation over the ties they create, with ``R_min``/``R_max``),
the dense Prim tree and the permutation moments -- is written out in ``_mst.py``.

``class_separation`` draws a seeded random sample of each class (``n_per_class=None``: every
sample), runs it once through the network in inference mode collecting the input and every
layer's output, and for each layer computes the distances within each class once (reused by
that class's pairs) and between two classes once per pair, in feature chunks (memory does
not grow with a layer's width).  A pure reshape (``Vectorization``/``Flatten``,
``Reshape``) has the distances of the layer before it, so its values are copied rather than
computed again.

On the CuPy backend the forward pass runs on the device (``layer_outputs``) and the outputs
come to the host; distances and trees are computed with NumPy (not run on a GPU here).
"""
import importlib

from ..fisher import EXACT_LIMIT, FisherResult, fisher_test
from .core import MEMORY_BUDGET, class_separation, compare_layers, compare_stages, henze_penrose
from .result import INPUT, JSON_FORMAT, HPResult, Rows, SeparationError, SeparationResult
from .._table import Table

__all__ = ["henze_penrose", "HPResult", "class_separation", "SeparationResult", "SeparationError",
           "fisher_test", "FisherResult", "compare_layers", "compare_stages", "SeparationHistory",
           "Table", "Rows", "plot_histograms", "plot_separation_curve", "plot_heatmap", "plot_pca",
           "plot_history", "EXACT_LIMIT", "MEMORY_BUDGET", "INPUT"]

#: public names loaded on first use -> the module of this package defining them
_LAZY = {"SeparationHistory": "history", "plot_histograms": "plots", "plot_separation_curve": "plots",
         "plot_heatmap": "plots", "plot_pca": "plots", "plot_history": "plots"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
