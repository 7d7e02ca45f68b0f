"""``Convolution -> BatchNorm`` in inference mode, run as one convolution with folded weights.

A ``BatchNorm`` on its moving statistics (inference mode, or frozen: ``layers/normalization.py``)
is an affine map per channel ``f``.  With ``h = conv(x; W) + b`` the convolution's output::

    z = gamma (h - mu) / sqrt(var + eps) + beta = s h + (beta - s mu),     s = gamma * inv,  inv = 1 / sqrt(var + eps)

and since ``h`` is linear in ``W`` and ``b``, ``z`` is the convolution with the folded kernel and bias::

    W'[f] = s[f] W[f],     b'[f] = s[f] (b[f] - mu[f]) + beta[f]          (b = 0 without a bias)
    z = conv(x; W') + b'                                                  (exact algebra)

so the two layers cost one convolution (the engine's arrangements, ``conv.py``).  Followed by
``ReLU -> MaxPool``, the folded convolution runs with them by pooling phase (``phase_pool.py``)
where ``phase_pool.applies``: the four layers as one matrix product and a maximum.

Backward, with ``g = dL/dz``, sums over samples ``n`` and positions ``p``, and ``dW'``, ``dx`` what
the arrangement's backward gives for ``W'`` (``dW'[f] = sum_{n,p} g[n,f,p] patches[n,:,p]``)::

    dL/dbeta  = sum g                           dL/dh = s g
    dL/dW     = s dW'                           dL/db = s dL/dbeta
    dL/dx     = dx                              (the backward of conv(.; W') is that of conv(.; W) after dL/dh = s g)
    dL/dgamma = sum g xhat = inv (sum_{k} W[f,k] dW'[f,k] + (b - mu) dL/dbeta)

the last because ``sum_{n,p} g[n,f,p] conv(x; W)[n,f,p] = sum_k W[f,k] dW'[f,k]``: the gradient of
``gamma`` needs neither ``h`` nor ``xhat``.  (Rounding: ``(b - mu) dL/dbeta`` and the product sum
can cancel when the moving mean is large next to the spread of ``h``; float64 agrees with the layers
to ~1e-13, float32 to a few units in 1e-6 of the gradient's scale: tests/test_batchnorm_fold.py.)

The reference is the two (four) layers one by one, ``FOLD = False`` runs them so.  In training
mode a ``BatchNorm`` normalises with the batch's statistics, which are not known before the
convolution ran: ``batchnorm_block.py`` handles that case.
"""
import numpy as np

from . import batchnorm_block, fusion, phase_pool
from ..backend import get_array_module
from ..layers.conv import Convolution
from ..layers.normalization import BatchNorm
from .conv import bias_gradient
from .settings import SETTINGS, check_gradient

__all__ = ["FOLD", "folds", "folds_by_phase", "FoldedConvUnit", "FoldedPhaseUnit"]

#: run ``Convolution -> BatchNorm`` in inference mode as one folded convolution
FOLD = True


def folds(layers, i, x):
    """Does the engine run ``layers[i:i + 2]`` (``Convolution -> BatchNorm`` on its moving statistics) folded?"""
    if not (FOLD and i + 1 < len(layers) and type(layers[i]) is Convolution and type(layers[i + 1]) is BatchNorm):
        return False
    conv, bn = layers[i], layers[i + 1]
    if batchnorm_block._replaced(bn) or bn.uses_batch_statistics() or bn.dtype != conv.dtype or bn.channels != conv.out_channels:
        return False                  # batch statistics, a cast between the two, or a mismatch its layer names
    if getattr(x, "ndim", 0) != conv.ndim + 2 or len(bn.input_shape) != conv.ndim + 1:
        return False
    return x.shape[1] == conv.in_channels and np.dtype(x.dtype) == conv.dtype


def folds_by_phase(layers, i, x):
    """And the ``ReLU -> MaxPool`` after it with it, by pooling phase (``phase_pool.applies``)?"""
    return (fusion.PHASES and i + 3 < len(layers) and fusion.pairs(layers[i + 2], layers[i + 3])
            and phase_pool.applies(layers[i], layers[i + 3], x))


class Fold:
    """``s``, ``W'``, ``b'`` of a ``Convolution`` and the ``BatchNorm`` after it (module docstring),
    from their parameters and moving statistics as they are at ``forward``."""

    def __init__(self, conv, bn):
        xp = get_array_module(conv.params["W"])
        dt = conv.dtype.type
        self.conv, self.bn = conv, bn
        self.W = conv.params["W"]
        self.b = conv.params["b"] if conv.use_bias else None
        self.mu = bn.moving_mean
        self.inv = xp.reciprocal(xp.sqrt(bn.moving_variance + dt(bn.epsilon)))     # as BatchNorm computes it
        self.s = bn.gamma * self.inv
        shift = -self.mu if self.b is None else self.b - self.mu
        self.shift = shift                                                            # b - mu
        self.W_folded = self.W * self.s.reshape((-1,) + (1,) * (self.W.ndim - 1))
        self.b_folded = self.s * shift + bn.beta

    def post_gradients(self, dW_folded, dbeta):
        """Write ``dL/dW``, ``dL/db``, ``dL/dgamma``, ``dL/dbeta`` from the folded convolution's
        ``dW'`` and ``sum g`` (module docstring)."""
        conv, bn = self.conv, self.bn
        F = self.W.shape[0]
        column = (-1,) + (1,) * (self.W.ndim - 1)
        conv.grads["W"] = dW_folded * self.s.reshape(column)
        if conv.use_bias:
            conv.grads["b"] = self.s * dbeta
        dot = (self.W.reshape(F, -1) * dW_folded.reshape(F, -1)).sum(axis=1)
        bn.grads["gamma"] = self.inv * (dot + self.shift * dbeta)
        bn.grads["beta"] = dbeta


def _start(conv, bn, x, h_shape, others=()):
    """The layers' checks on ``x`` and on the (not computed) intermediate shape; caches dropped."""
    x = conv.prepare_input(x)
    xp = get_array_module(x)
    h = xp.broadcast_to(xp.zeros((), dtype=x.dtype), h_shape)      # the shape only: the layers' checks
    bn.check_input(h)
    for layer in others:
        layer.check_input(h)
    for layer in (conv, bn) + tuple(others):
        layer.clear_cache()
    return x


class FoldedConvUnit:
    """``Convolution -> BatchNorm`` (moving statistics) as one convolution with ``W'``, ``b'``."""

    size = 2

    def __init__(self, conv_context, bn):
        self.context, self.bn = conv_context, bn

    def forward(self, x):
        conv, bn = self.context.layer, self.bn
        h_shape = (x.shape[0],) + tuple(conv.compute_output_shape(tuple(x.shape[1:])))
        x = _start(conv, bn, x, h_shape)
        self.fold = Fold(conv, bn)
        self.arrangement = self.context.arrangement(x)
        y = self.arrangement.forward(x, self.fold.W_folded, self.fold.b_folded)
        self.out_shape = tuple(y.shape)
        return y

    def backward(self, g, need_input_grad):
        conv = self.context.layer
        check_gradient(self.bn, g, self.out_shape)
        g = g.astype(conv.dtype, copy=False)
        dW, dx = self.arrangement.backward(g, self.fold.W_folded, need_input_grad)
        db = getattr(self.arrangement, "db", None)                        # KernelPatchProduct sums it on the way
        self.fold.post_gradients(dW, db if db is not None else bias_gradient(g))
        return dx


class _BiasedView:
    """A ``Convolution``'s settings as ``phase_pool.PhasePool`` reads them, with a bias (``b'``)."""

    use_bias = True

    def __init__(self, conv):
        self.conv = conv

    def __getattr__(self, name):
        return getattr(self.__dict__["conv"], name)


class FoldedPhaseUnit:
    """``Convolution -> BatchNorm -> ReLU -> MaxPool`` (moving statistics): the folded convolution
    with the ReLU and the 2x2 pooling by pooling phase (``phase_pool.PhasePool``)."""

    size = 4
    for_backward = True      # False (set by the runner): the pooling's phases are not kept

    def __init__(self, conv_context, bn, relu, pool):
        self.context, self.bn, self.relu, self.pool = conv_context, bn, relu, pool

    def forward(self, x):
        conv, bn = self.context.layer, self.bn
        key = ("folded", tuple(x.shape), x.dtype, conv.kernel_size, repr(conv.padding), conv.out_channels,
               SETTINGS["phase_chunk_bytes"])
        held = self.context.workspace.get("phase_pool_folded")
        if held is None or held[0] != key:
            held = self.context.workspace["phase_pool_folded"] = (
                key, phase_pool.PhasePool(_BiasedView(conv), x.shape, x.dtype))
        self.plan = held[1]
        x = _start(conv, bn, x, (x.shape[0], conv.out_channels) + self.plan.conv_out, (self.relu, self.pool))
        self.fold = Fold(conv, bn)
        self.y = self.plan.forward(x, self.fold.W_folded, self.fold.b_folded, for_backward=self.for_backward)
        return self.y

    def backward(self, g, need_input_grad):
        conv = self.context.layer
        check_gradient(self.pool, g, self.y.shape)
        dW, dbeta, dx = self.plan.backward(g.astype(conv.dtype, copy=False), self.fold.W_folded,
                                           self.fold.b_folded, need_input_grad=need_input_grad)
        self.fold.post_gradients(dW, dbeta)
        return dx
