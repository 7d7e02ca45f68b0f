"""Layers the trainer runs together: ``ReLU -> MaxPool``, and ``Convolution -> ReLU -> MaxPool``.

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

A ``Convolution`` right before such a pair runs with it, forward and backward, by pooling
phase where ``phase_pool.applies`` (NumPy, 2-D, stride 1, 2x2 pooling: LeNet-5's two blocks):
the four phases of every pooling window come out of one matrix product over the input's
polyphase planes, and ``backward`` (the trainer's: ``NeuralNetwork.backward`` and the split
step's shards) routes dL/dy straight back through them (``phase_pool.py``).  The three layers'
caches record it, so their own ``backward`` called one by one still gives the same numbers.

``ENABLED = False`` runs every layer on its own (for comparisons); ``PHASES = False`` only the
convolutions.
"""
import numpy as np

from . import phase_pool
from ..layers.activations import ReLU
from ..layers.conv import Convolution
from ..layers.pooling import MaxPool

__all__ = ["forward", "backward", "forward_step", "backward_step", "unit_start", "fused_pairs", "ENABLED", "PHASES"]

#: run ReLU -> MaxPool pairs fused (see the module docstring)
ENABLED = True
#: and a Convolution before such a pair with it, by pooling phase, where ``phase_pool.applies``
PHASES = True


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


def _by_phase(layers, i, x):
    """Does ``forward`` run ``layers[i:i + 3]`` (``Convolution -> ReLU -> MaxPool``) by pooling phase on ``x``?"""
    return (PHASES and i + 2 < len(layers) and type(layers[i]) is Convolution
            and _pairs_with_next(layers[i + 1], layers[i + 2]) and phase_pool.applies(layers[i], layers[i + 2], x))


def _phase_forward(conv, relu, pool, x):
    """``pool(relu(conv(x)))`` by pooling phase; each layer's cache records it (see the module docstring)."""
    conv.check_input(x)
    x = conv._as_float(x)
    key = (tuple(x.shape), x.dtype, conv.kernel_size, repr(conv.padding), conv.use_bias, conv.out_channels,
           conv.phase_chunk_bytes)
    held = conv._workspace.get("phase_pool")
    if held is None or held[0] != key:
        held = conv._workspace["phase_pool"] = (key, phase_pool.PhasePool(conv, x.shape, x.dtype))
    plan = held[1]
    y = plan.forward(x, conv.params["W"], conv.params.get("b"))
    h_shape = (x.shape[0], conv.out_channels) + plan.conv_out
    link = (plan,)                                  # one object, held by both ends of the block
    conv.adopt_phase_forward(x, h_shape, link)
    relu.stand_aside(np.broadcast_to(np.zeros((), dtype=x.dtype), h_shape))     # checks the shape only
    pool.adopt_phase_forward(y, h_shape, link)
    return y


def _ran_by_phase(conv, relu, pool):
    """Did the last forward of these three layers run them together by pooling phase?"""
    link = getattr(pool, "_cache", {}).get("phase")
    return (link is not None and type(conv) is Convolution and conv._cache.get("phase") is link
            and type(relu) is ReLU and relu._cache.get("y", False) is None)


def forward_step(layers, i, x):
    """Run the unit of ``layers`` that starts at ``i`` on ``x``: a block by pooling phase (3
    layers), a ``ReLU -> MaxPool`` pair (2) or one layer.  Returns ``(output, index after it)``."""
    layer = layers[i]
    if _by_phase(layers, i, x):
        return _phase_forward(layer, layers[i + 1], layers[i + 2], x), i + 3
    if i + 1 < len(layers) and _pairs_with_next(layer, layers[i + 1]):
        return layers[i + 1].forward_relu(layer.stand_aside(x)), i + 2
    return layer.forward(x), i + 1


def unit_start(layers, i):
    """The index of the first layer of the unit that ends at ``i`` (for ``backward_step``)."""
    return i - 2 if i >= 2 and _ran_by_phase(layers[i - 2], layers[i - 1], layers[i]) else i


def backward_step(layers, i, g, need_input_grad=True):
    """Backpropagate ``g`` through the unit of ``layers`` that ends at ``i`` (as the last
    ``forward`` ran it; ``need_input_grad`` for the unit's first layer).  Returns ``(dL/d(unit's
    input) or None, index of the layer before the unit)``."""
    return _backward_unit(layers, unit_start(layers, i), i, g, need_input_grad)


def _backward_unit(layers, first, i, g, need_input_grad):
    """``backward_step`` of the unit ``layers[first:i + 1]`` (``first``: from ``unit_start``)."""
    if first == i - 2:
        conv, pool = layers[first], layers[i]
        pool.check_upstream(g)
        plan = pool._cache["phase"][0]
        dW, db, dx = plan.backward(g.astype(conv.dtype, copy=False), conv.params["W"], conv.params.get("b"),
                                   need_input_grad=need_input_grad)
        conv.adopt_phase_grads(dW, db)
        return dx, first - 1
    return layers[i].backward(g, need_input_grad=need_input_grad), i - 1


def forward(layers, x):
    """The output of ``layers`` (a sequence) on the batch ``x``, ``ReLU -> MaxPool`` pairs fused
    (with the convolution before them where ``phase_pool`` applies)."""
    i = 0
    while i < len(layers):
        x, i = forward_step(layers, i, x)
    return x


def backward(layers, upstream, need_input_grad=True):
    """Backpropagate ``dL/doutput`` through ``layers`` after ``forward``; returns ``dL/dinput``
    (None with ``need_input_grad=False``).  Each layer's own ``backward``, except the blocks the
    forward ran by pooling phase: their backward by phase too, in one step."""
    g, i = upstream, len(layers) - 1
    while i >= 0:
        first = unit_start(layers, i)
        g, i = _backward_unit(layers, first, i, g, first > 0 or need_input_grad)
    return g
