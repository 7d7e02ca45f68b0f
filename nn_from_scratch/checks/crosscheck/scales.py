"""What a difference is measured against when the plain scale says nothing (docs/CROSSCHECK.md, "Tolerances").

Two cases where ``max|ours - keras| / max|keras|`` would fail a correct network:

1. **Gradients that are sums over the batch and cancel.**  A bias gradient
   ``db_c = sum_{n,s} g[n, c, s]`` (``Linear``/``Convolution`` ``b``, ``BatchNorm``
   ``beta``; ``gamma``: ``sum g * xhat``) is structurally zero when a
   ``BatchNorm`` follows (its input gradient sums to zero over every channel).
   Both frameworks then return rounding noise, of order ``eps * sum|terms|``, and
   the noise of one against the noise of the other is a "relative error" near 1.
   No float computation can be judged below its rounding: the difference counted
   is ``max(|ours - keras| - allowance, 0)`` with the **rounding allowance**::

       allowance_c = ROUNDING_ULPS * eps(dtype) * sum_{n,s} |terms[n, c, s]|

   (``eps`` = ``np.finfo(dtype).eps``: 1.2e-7 in float32, 2.2e-16 in float64); a gradient that is not
   cancelled is still judged against its own size, and a wrong one (a factor,
   a sign, a missing sum) differs by about ``sum|terms| / sqrt(M)``, far above.
2. **BatchNorm in float32.**  Its statistics are sums of ``M = N * prod(S)``
   values per channel, rounded differently by the two frameworks (blocked vs
   pairwise summation); the normalised output then differs by about
   ``eps * sqrt(M) * kappa`` relative, with ``kappa = max_c rms(x_c) / sigma_c``
   (how far the channel's values sit from zero against their spread: the
   cancellation in ``x - mu``).  The output, ``dL/dx`` and ``dL/dgamma`` of a
   ``BatchNorm`` (and, end to end, every output after it) are judged with::

       tol_bn = max(tol, BN_SQRT_M_FACTOR * eps(dtype) * sqrt(M) * kappa)

   Measured on MNIST batches of 32 after a 3x3 convolution (M = 21,632):
   ``kappa`` 1.1 .. 11, ``eps * sqrt(M) * kappa`` ~ 2e-5 .. 2e-4 and the observed
   relative differences 2e-5 .. 4e-4, i.e. 1.4-4.9x ``eps * sqrt(M) * kappa`` (eight
   batches); the factor 50 leaves a margin of 10.  In float64 the same rule gives
   ~1e-12: nothing is loosened there.

In training (``compare_training``) a bias-like weight (``b``, ``beta``, ``gamma``)
whose gradient cancels follows the accumulated rounding of its updates: it is
judged against ``max(max|keras|, update mass)``, where the update mass adds, at
every step, the largest absolute change the step could have made:
``lr_t * max_c sum|terms_c| / (1 - momentum)`` for SGD, ``lr_t`` for an
adaptive optimizer (Adam, RMSprop, AdaGrad: their per-coordinate step is
about ``lr_t`` whatever the gradient's size).  An adaptive optimizer also turns
a gradient that is noise into a full step of about ``lr_t`` in a direction the
rounding decides, differently in each framework: for every coordinate whose
gradient is below ``rho * sum|terms|`` (``rho``: ``ROUNDING_ULPS * eps``, or
``tol_bn`` when a BatchNorm normalises with batch statistics, whose rounding
reaches every gradient) a difference of ``2 lr_t`` per step is not counted
(``UpdateTracker``).
"""
import copy
import math

import numpy as np

from ...backend import to_numpy
from ...layers.conv import Convolution
from ...layers.dense import Linear
from ...layers.normalization import BatchNorm

__all__ = ["ROUNDING_ULPS", "BN_SQRT_M_FACTOR", "rounding_allowance", "batchnorm_tolerance", "bias_like",
           "UpdateTracker"]

#: safety factor on ``eps * sum|terms|`` (the bias gradients before a BatchNorm measured differ by 2.7-5 of it)
ROUNDING_ULPS = 64.0
#: safety factor on ``eps * sqrt(M) * kappa`` for a float32 BatchNorm (measured ratios 1.4-4.9)
BN_SQRT_M_FACTOR = 50.0


def _eps(dtype):
    return float(np.finfo(np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.float32).eps)


def _channel_sums(a, signed=False):
    """``sum |a|`` (or ``sum a``) over every axis but the channel/feature axis 1 (``(N, C, *S)``/``(N, D)``)."""
    a = np.asarray(a, dtype=np.float64)
    axes = tuple(i for i in range(a.ndim) if i != 1)
    return (a if signed else np.abs(a)).sum(axis=axes)


def _xhat(layer, x):
    x = np.asarray(to_numpy(x), dtype=np.float64)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    shape = [1] * x.ndim
    shape[1] = -1
    if getattr(layer, "training", True) and layer.trainable:
        mu, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mu = np.asarray(to_numpy(layer.buffers["moving_mean"]), dtype=np.float64)
        var = np.asarray(to_numpy(layer.buffers["moving_variance"]), dtype=np.float64)
    return (x - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + layer.epsilon)


def bias_like(layer, label):
    """True for a parameter whose gradient is a sum over the batch of the upstream gradient (or of ``g * xhat``)."""
    return (isinstance(layer, (Linear, Convolution)) and label == "b") or \
        (isinstance(layer, BatchNorm) and label in ("beta", "gamma"))


def term_mass(layer, label, x_in, upstream, signed=False):
    """``sum|terms|`` per channel of a bias-like gradient (``signed``: the gradient itself, in float64);
    None for any other parameter."""
    if not bias_like(layer, label) or upstream is None:
        return None
    g = np.asarray(to_numpy(upstream), dtype=np.float64)
    if label == "gamma":
        return _channel_sums(g * _xhat(layer, x_in), signed)
    return _channel_sums(g, signed)


def rounding_allowance(layer, label, x_in, upstream, dtype, bn_tol=None):
    """The per-entry allowance of a bias-like parameter gradient (None: none), see the module docstring."""
    mass = term_mass(layer, label, x_in, upstream)
    if mass is None:
        return None
    rho = ROUNDING_ULPS * _eps(dtype)
    if label == "gamma" and bn_tol is not None:
        rho = max(rho, bn_tol)          # xhat itself is known only to tol_bn (case 2)
    return rho * mass


def batchnorm_tolerance(layer, x_in, tol, dtype):
    """``tol_bn`` of a BatchNorm in training mode on input ``x_in`` (module docstring, case 2); ``tol`` otherwise."""
    if not isinstance(layer, BatchNorm) or x_in is None or not layer.uses_batch_statistics():
        return tol          # inference mode: the moving statistics, no sums over the batch
    x = np.asarray(to_numpy(x_in), dtype=np.float64)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    m = x.size // max(x.shape[1], 1)
    rms = np.sqrt((x * x).mean(axis=axes))
    sigma = np.sqrt(x.var(axis=axes) + layer.epsilon)
    kappa = float(np.max(rms / sigma)) if rms.size else 1.0
    return max(tol, BN_SQRT_M_FACTOR * _eps(dtype) * math.sqrt(m) * max(kappa, 1.0))


class UpdateTracker:
    """The floors and allowances of ``compare_training``'s weights (module docstring, "In training").

    Per step: ``start_step(layers, ins)`` (the noise level ``rho``: ``ROUNDING_ULPS * eps``, or a
    BatchNorm's ``tol_bn`` where one normalises with batch statistics), then around each layer's
    backward ``before_backward(i, x_in, g)`` / ``after_backward(i)``.  ``floor(i, label)`` and
    ``allowance(i, label)`` are what ``Check.of`` takes.

    * SGD: a bias-like weight's floor grows by ``lr * max_c sum|terms_c| / (1 - momentum)``.
    * Adaptive optimizers (Adam, RMSprop, AdaGrad): a bias-like weight's floor grows by ``lr``; and
      every coordinate of every weight whose gradient is noise (``|grad| <= rho * sum|terms|``, the
      term mass of a ``Linear``/``Convolution`` weight being the same gradient computed from ``|x|``
      and ``|g|``) gets ``2 lr`` more allowance: the optimizer's normalised step moves it by about
      ``lr`` in a direction the rounding decides, differently in each framework.
    """

    def __init__(self, groups, opt, dtype):
        self.opt, self.dtype = opt, dtype
        self.adaptive = type(opt).__name__ != "GradientDescent"
        self.momentum = 0.0 if self.adaptive else float(getattr(opt, "momentum", 0.0))
        self.maps = {g.index: (g.layer, list(g.params)) for g in groups
                     if g.params and isinstance(g.layer, (Linear, Convolution, BatchNorm))}
        self.floors, self.allowances, self.rho = {}, {}, ROUNDING_ULPS * _eps(dtype)
        self._shadows, self._masses = {}, {}

    def start_step(self, layers, ins):
        rho = ROUNDING_ULPS * _eps(self.dtype)
        for layer, x in zip(layers, ins):
            rho = max(rho, batchnorm_tolerance(layer, x, 0.0, self.dtype))
        self.rho = rho

    def _term_masses(self, i, layer, x_in, g):
        if isinstance(layer, BatchNorm):
            return {"gamma": term_mass(layer, "gamma", x_in, g), "beta": term_mass(layer, "beta", x_in, g)}
        if not self.adaptive:   # SGD needs the bias's mass only: sum |g| per channel
            return {"b": _channel_sums(to_numpy(g))} if isinstance(layer, Convolution) else \
                {"W": np.concatenate([_channel_sums(to_numpy(g))[None, :],
                                      np.zeros((layer.in_features, layer.out_features))])}
        shadow = self._shadows.get(i)
        if shadow is None:      # the weight gradients are bilinear in (x, g): from |x| and |g| they are the masses
            shadow = self._shadows[i] = copy.deepcopy(layer)
        shadow.forward(abs(x_in))
        shadow.backward(abs(g), need_input_grad=False)
        return {k: np.asarray(to_numpy(v), dtype=np.float64) for k, v in shadow.grads.items()}

    def before_backward(self, i, x_in, g):
        if i in self.maps:
            self._masses[i] = self._term_masses(i, self.maps[i][0], x_in, g)

    def after_backward(self, i):
        if i not in self.maps:
            return
        layer, pms = self.maps[i]
        masses = self._masses.pop(i)
        grads = {k: np.asarray(to_numpy(v), dtype=np.float64) for k, v in layer.grads.items()}
        lr = float(getattr(self.opt, "current_lr", getattr(self.opt, "lr", 0.0)))
        for pm in pms:
            key = (i, pm.label)
            if self.adaptive:
                if bias_like(layer, pm.label):
                    self.floors[key] = self.floors.get(key, 0.0) + lr
                mass = np.asarray(pm.ours(masses), dtype=np.float64)
                noise = np.abs(np.asarray(pm.ours(grads), dtype=np.float64)) <= self.rho * mass
                self.allowances[key] = self.allowances.get(key, 0.0) + 2.0 * lr * noise
            elif bias_like(layer, pm.label):
                mass = np.asarray(pm.ours(masses), dtype=np.float64)
                self.floors[key] = self.floors.get(key, 0.0) + lr * float(np.max(mass)) / max(1 - self.momentum, 1e-3)

    def floor(self, i, label):
        return self.floors.get((i, label), 0.0)

    def allowance(self, i, label):
        return self.allowances.get((i, label))
