"""Layers the trainer runs together: a ``ReLU`` followed by a ``MaxPool``.

ReLU is monotone (non-decreasing), so it commutes with taking a maximum::

    maxpool(relu(x)) = relu(maxpool(x))          (exactly: no rounding either way)

and the right-hand side applies the ReLU to the pooled output, ``K`` times smaller
(2x2 windows: 4x).  The gradient agrees too.  A window's gradient goes to its first
maximum (row-major) in both orders when that maximum is positive: the ReLU leaves
positive entries alone, and the entries it zeroes were below the maximum.  When the
maximum is 0 or negative, the ReLU's mask ``[y > 0]`` stops it in both orders.  So::

    unfused:  h = relu(x);  y = maxpool(h)      dL/dx = [h > 0] * route(dL/dy)
    fused:    p = maxpool(x);  y = relu(p)      dL/dx = route([y > 0] * dL/dy)

with the same ``y`` and the same ``dL/dx`` bit for bit (tests/test_fusion.py).  For
LeNet-5 at 128 samples on one core the ReLU after the first convolution cost ~0.6 ms of
~11 ms a step (forward and backward over 600,000 numbers); fused, it works on 150,000.

How: ``forward(layers, x)`` runs the layers in order, except that for each ``ReLU`` directly
followed by a ``MaxPool`` (those exact classes: a subclass may change either rule) the ReLU
stands aside (``ReLU.stand_aside``: checks ``x``, passes it on) and the pool applies it after
pooling (``MaxPool.forward_relu``).  Each layer's cache records what it did, so ``backward``
needs no plan: the pool masks ``dL/dy`` before routing it, and the ReLU passes the routed
gradient through.  Calling the layers one by one (``forward`` of each, as a student's loop or
``NeuralNetwork.layer_outputs`` does) runs them unfused, and their backward as usual.

``ENABLED = False`` runs every layer on its own (for comparisons).
"""
from .activations import ReLU
from .pooling import MaxPool

__all__ = ["forward", "fused_pairs", "ENABLED"]

#: run ReLU -> MaxPool pairs fused (see the module docstring)
ENABLED = True


def _pairs_with_next(layer, following):
    return ENABLED and type(layer) is ReLU and type(following) is MaxPool


def fused_pairs(layers):
    """Indices ``i`` of the ReLUs that ``forward`` runs with the ``MaxPool`` at ``i + 1``."""
    fused, i = [], 0
    while i + 1 < len(layers):
        if _pairs_with_next(layers[i], layers[i + 1]):
            fused.append(i)
            i += 2
        else:
            i += 1
    return fused


def forward(layers, x):
    """The output of ``layers`` (a sequence) on the batch ``x``, ``ReLU -> MaxPool`` pairs fused."""
    i, n = 0, len(layers)
    while i < n:
        layer = layers[i]
        if i + 1 < n and _pairs_with_next(layer, layers[i + 1]):
            x = layers[i + 1].forward_relu(layer.stand_aside(x))
            i += 2
        else:
            x = layer.forward(x)
            i += 1
    return x
