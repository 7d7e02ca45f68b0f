"""K-FAC and EKFAC: Kronecker-factored curvature of Linear and Convolution layers, and the natural-gradient
optimizers built on it (docs/analysis/curvature.md).

* ``factors``: ``KroneckerFactors`` (``kron(G, A)``: products, damped solves, eigenbasis) and
  ``EKFACFactors`` (the eigenvalue-corrected form);
* ``statistics``: what the factors are made of: each layer's input patches and per-example
  output gradients of one batch, for every Fisher type;
* ``optimizers``: ``KFAC`` and ``EKFAC``, optimizers like the others (``NeuralNetwork(...,
  optimizer="kfac")``).

The package sits above ``training/`` (it uses the optimizer interface and the network's
layer-by-layer pass) and below ``analysis/`` (``analysis.curvature`` measures the factors
against the exact Fisher block).  ``training/`` never imports it: defining ``KFAC`` and ``EKFAC``
enters ``"kfac"`` and ``"ekfac"`` in the optimizer registry (their ``names``;
``training.optimizer_base``), as every optimizer class does.
"""
from .factors import EKFACFactors, KroneckerFactors
from .optimizers import EKFAC, KFAC

__all__ = ["KFAC", "EKFAC", "KroneckerFactors", "EKFACFactors"]
