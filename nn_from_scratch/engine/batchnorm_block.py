"""``BatchNorm -> ReLU -> MaxPool`` in training mode (batch statistics) run as one unit, pooled first.

After a convolution (LeNet-5 with BatchNorm: ``Convolution -> BatchNorm -> ReLU -> MaxPool``) the
engine runs the convolution by its arrangement (``conv.py``) and these three layers as one unit.
With ``xc = x - mu`` (``mu``, ``var`` the batch's per-channel statistics, ``inv = 1 / sqrt(var + eps)``)
the layers compute, per channel::

    z = (xc * inv) * gamma + beta,      y = maxpool(relu(z)) = relu(maxpool(z))   (fusion.py)

For ``gamma > 0`` the map ``xc -> z`` is non-decreasing (each rounding step is), so the maximum of
``z`` over a window is ``z`` at the maximum of ``xc``, with the very same rounding::

    y = relu((maxpool(xc) * inv) * gamma + beta)                 (gamma > 0 in every channel)

which applies the normalisation and the ReLU to the pooled values only (2x2 windows: a quarter).
A channel with ``gamma <= 0`` breaks the monotone order: then ``z`` is computed in full and pooled
(still without the layer's separate ``xhat`` and ``y`` passes).  Backward, with ``g = dL/dy``
masked by ``[y > 0]`` and routed to the windows' maxima (``dz``; nonzero at those only)::

    dL/dbeta  = sum dz                       (= the sum of the pooled, masked g)
    dL/dgamma = sum dz * xhat                (= inv * sum of the masked g times maxpool(xc))
    dL/dx     = s dz - (s / M) dL/dbeta - (s inv / M) dL/dgamma xc,      s = gamma * inv

(``BatchNorm``'s training formula, ``layers/normalization.py``, with ``xhat = xc * inv``), the two
sums taken over the pooled arrays.  The moving statistics are updated as the layer does.  Ties:
two window entries that differ in ``xc`` may round to the same ``z``; the layers then route the
gradient to the first of them, the unit to the larger ``xc`` (the exact-arithmetic maximum).  The
layers' own code is the reference (tests/test_batchnorm_block.py); ``BLOCK = False`` runs them.
"""
import numpy as np

from . import fusion, kernels
from ..backend import get_array_module
from ..layers.normalization import BatchNorm, one_over_sqrt
from .conv import bias_gradient
from .pooling import maxpool_backward, maxpool_forward
from .settings import check_gradient

__all__ = ["BLOCK", "applies", "BatchNormPoolUnit"]

#: run ``BatchNorm -> ReLU -> MaxPool`` in training mode as one unit
BLOCK = True


def applies(layers, i, x):
    """Does the engine run ``layers[i:i + 3]`` (``BatchNorm`` on batch statistics, ``ReLU``, ``MaxPool``)
    as one unit on ``x``?  (Anything the layer would refuse, it is left to refuse.)"""
    if not (BLOCK and i + 2 < len(layers) and type(layers[i]) is BatchNorm and fusion.pairs(layers[i + 1], layers[i + 2])):
        return False
    bn = layers[i]
    if get_array_module(x) is not np:
        return False                  # NumPy only: choosing the pooled-first path reads gamma's signs (a device sync on CuPy)
    if _replaced(bn) or not bn.uses_batch_statistics() or getattr(x, "ndim", 0) < 3 or len(bn.input_shape) != x.ndim - 1:
        return False
    return x.shape[1] == bn.channels and np.dtype(x.dtype) == bn.dtype and x.size // bn.channels >= 2


def _replaced(layer):
    """The instance's ``_forward``/``_backward`` were replaced (the worker split's exchange of batch
    statistics installs its own there, ``engine/parallel``): a unit computing the layer would bypass them."""
    return "_forward" in vars(layer) or "_backward" in vars(layer)


def _channel_sums(a):
    """``sum over samples and positions of a[n, c, ...]`` per channel ``c`` (``conv.bias_gradient``)."""
    return bias_gradient(a)


class BatchNormPoolUnit:
    """``BatchNorm`` (batch statistics) ``-> ReLU -> MaxPool``, pooled first (module docstring)."""

    size = 3

    def __init__(self, bn, relu, pool_context):
        self.bn, self.relu, self.context = bn, relu, pool_context

    def _column(self, v, x):
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x):
        bn, relu, pool = self.bn, self.relu, self.context.layer
        x = bn.prepare_input(x)
        relu.check_input(x)
        pool.check_input(x)
        for layer in (bn, relu, pool):
            layer.clear_cache()
        xp = get_array_module(x)
        dt = bn.dtype.type
        M = x.size // bn.channels
        mean = _channel_sums(x) * dt(1.0 / M)
        xc = xp.subtract(x, self._column(mean, x), out=self._buffer("xc", x))
        sq = xp.multiply(xc, xc, out=self._buffer("tmp", x))
        var = _channel_sums(sq) * dt(1.0 / M)
        mom = dt(bn.momentum)
        bn.set_buffers(moving_mean=bn.moving_mean * mom + mean * (dt(1) - mom),
                       moving_variance=bn.moving_variance * mom + var * (dt(1) - mom))
        inv = one_over_sqrt(var + dt(bn.epsilon), xp)
        gamma, beta = bn.gamma, bn.beta
        self.pooled_first = bool((gamma > 0).all())
        if self.pooled_first:                    # normalise the pooled maxima of xc only
            p, self.state = maxpool_forward(self.context, xc)
            self.p = p
            z = p * self._column(inv, p)
        else:                                    # z in full, then pooled
            z = xp.multiply(xc, self._column(inv, xc), out=sq)
        z *= self._column(gamma, z)
        z += self._column(beta, z)
        if not self.pooled_first:
            z, self.state = maxpool_forward(self.context, z)
        self.y = xp.maximum(z, z.dtype.type(0), out=z)
        self.xc, self.inv, self.M = xc, inv, M
        return self.y

    def _buffer(self, name, like):
        """A scratch array like ``like`` kept for the pooling layer between steps (a fresh array of a
        layer's size costs page faults as long as the arithmetic on it: the same idea as ``conv.py``'s)."""
        key = "batchnorm_block_" + name
        buf = self.context.workspace.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or type(buf) is not type(like):
            buf = self.context.workspace[key] = get_array_module(like).empty(like.shape, dtype=like.dtype)
        return buf

    def backward(self, g, need_input_grad):
        bn = self.bn
        check_gradient(self.context.layer, g, self.y.shape)
        g = g.astype(bn.dtype, copy=False)
        dt = bn.dtype.type
        gp = kernels.relu_backward(g, self.y)                 # dL/dz at the pooled positions
        xc, inv, M = self.xc, self.inv, self.M
        if self.pooled_first:
            dbeta = _channel_sums(gp)
            dgamma = _channel_sums(gp * self.p) * inv
            dz = maxpool_backward(self.context, gp, self.state) if need_input_grad else None
        else:
            dz = maxpool_backward(self.context, gp, self.state)
            dbeta = _channel_sums(dz)
            dgamma = _channel_sums(dz * xc) * inv
        bn.grads["gamma"], bn.grads["beta"] = dgamma, dbeta
        if not need_input_grad:
            return None
        s = bn.gamma * inv                                   # dz: a new array of maxpool_backward's
        dz *= self._column(s, dz)
        dz += get_array_module(xc).multiply(xc, self._column(-s * inv * dgamma * dt(1.0 / M), xc),
                                            out=self._buffer("tmp", xc))
        dz += self._column(-s * dbeta * dt(1.0 / M), xc)
        return dz
