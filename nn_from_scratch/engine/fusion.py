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

How: the runner (``runner.py``) recognises a ``ReLU`` directly followed by a ``MaxPool`` (those
exact classes: a subclass may change either rule) and runs them as one unit (``ReluPoolUnit``):
the engine's max pooling (``pooling.py``), then the ReLU on the pooled output; backward masks
``dL/dy`` with ``[y > 0]`` and routes it to the maxima.

A ``Convolution`` right before such a pair runs with it, forward and backward, by pooling
phase where ``phase_pool.applies`` (NumPy, 2-D, stride 1, 2x2 pooling: LeNet-5's two blocks):
the four phases of every pooling window come out of one matrix product over the input's
polyphase planes, and backward routes dL/dy straight back through them (``PhaseBlockUnit``,
``phase_pool.py``).

The layers' own code is the reference: each unit's results equal those of the layers run one
by one (tests/test_fusion.py, tests/test_phase_pool.py).  ``ENABLED = False`` runs ReLU and
MaxPool each on its own (for comparisons); ``PHASES = False`` no pooling-phase blocks.
"""
from . import kernels, phase_pool
from ..backend import get_array_module
from ..layers.activations import ReLU, Sigmoid, Tanh
from ..layers.conv import Convolution
from ..layers.pooling import MaxPool
from .settings import SETTINGS, check_gradient
from .pooling import maxpool_backward, maxpool_forward

__all__ = ["ENABLED", "PHASES", "pairs", "fused_pairs", "by_phase", "ReluPoolUnit", "PhaseBlockUnit",
           "ElementwiseUnit"]

#: run ReLU -> MaxPool pairs fused (see the module docstring)
ENABLED = True
#: and a Convolution before such a pair with it, by pooling phase, where ``phase_pool.applies``
PHASES = True


def pairs(layer, following):
    """Does the engine run ``layer`` with ``following`` as a ``ReLU -> MaxPool`` unit?"""
    return ENABLED and type(layer) is ReLU and type(following) is MaxPool


def fused_pairs(layers):
    """Indices ``i`` of the ReLUs the engine runs with the ``MaxPool`` at ``i + 1``."""
    fused, i = [], 0
    while i + 1 < len(layers):
        if pairs(layers[i], layers[i + 1]):
            fused.append(i)
            i += 2
        else:
            i += 1
    return fused


def by_phase(layers, i, x):
    """Does the engine run ``layers[i:i + 3]`` (``Convolution -> ReLU -> MaxPool``) by pooling phase on ``x``?"""
    return (PHASES and i + 2 < len(layers) and type(layers[i]) is Convolution
            and pairs(layers[i + 1], layers[i + 2]) and phase_pool.applies(layers[i], layers[i + 2], x))


class ReluPoolUnit:
    """``relu(maxpool(x))`` for a ``ReLU -> MaxPool`` pair: pooled first, the ReLU on the pooled output."""

    size = 2

    def __init__(self, relu, pool_context):
        self.relu, self.context = relu, pool_context

    def forward(self, x):
        relu, pool = self.relu, self.context.layer
        x = relu.prepare_input(x)
        x = pool.prepare_input(x)
        relu.clear_cache()
        pool.clear_cache()
        p, self.state = maxpool_forward(self.context, x)     # a new array, this call's own: ReLU in place
        self.y = get_array_module(p).maximum(p, p.dtype.type(0), out=p)
        return self.y

    def backward(self, g, need_input_grad):
        check_gradient(self.context.layer, g, self.y.shape)
        if not need_input_grad:
            return None
        return maxpool_backward(self.context, kernels.relu_backward(g, self.y), self.state)


class PhaseBlockUnit:
    """``Convolution -> ReLU -> MaxPool`` by pooling phase (``phase_pool.PhasePool``)."""

    size = 3
    for_backward = True      # False (set by the runner): the pooling's phases are not kept

    def __init__(self, conv_context, relu, pool):
        self.context, self.relu, self.pool = conv_context, relu, pool

    def forward(self, x):
        conv = self.context.layer
        x = conv.prepare_input(x)
        key = (tuple(x.shape), x.dtype, conv.kernel_size, repr(conv.padding), conv.use_bias, conv.out_channels,
               SETTINGS["phase_chunk_bytes"])
        held = self.context.workspace.get("phase_pool")
        if held is None or held[0] != key:
            held = self.context.workspace["phase_pool"] = (key, phase_pool.PhasePool(conv, x.shape, x.dtype))
        self.plan = held[1]
        h_shape = (x.shape[0], conv.out_channels) + self.plan.conv_out
        xp = get_array_module(x)
        h = xp.broadcast_to(xp.zeros((), dtype=x.dtype), h_shape)    # the shape only: the layers' checks
        self.relu.check_input(h)
        self.pool.check_input(h)
        for layer in (conv, self.relu, self.pool):
            layer.clear_cache()
        self.y = self.plan.forward(x, conv.params["W"], conv.params.get("b"), for_backward=self.for_backward)
        return self.y

    def backward(self, g, need_input_grad):
        conv = self.context.layer
        check_gradient(self.pool, g, self.y.shape)
        dW, db, dx = self.plan.backward(g.astype(conv.dtype, copy=False), conv.params["W"], conv.params.get("b"),
                                        need_input_grad=need_input_grad)
        conv.grads["W"] = dW
        if conv.use_bias:
            conv.grads["b"] = db
        return dx


class ElementwiseUnit:
    """``ReLU`` (and ``Sigmoid``/``Tanh`` on CuPy): the layer's own forward, and dL/dx in one pass
    (``kernels.relu_backward`` etc.: on NumPy without a bool temporary, on CuPy one fused kernel)."""

    size = 1
    BACKWARD = {ReLU: kernels.relu_backward, Sigmoid: kernels.sigmoid_backward, Tanh: kernels.tanh_backward}

    def __init__(self, layer):
        self.layer = layer

    def forward(self, x):
        self.y = self.layer.forward(x)
        return self.y

    def backward(self, g, need_input_grad):
        self.layer.check_upstream(g)
        return self.BACKWARD[type(self.layer)](g, self.y) if need_input_grad else None
