"""The engine's runner: a list of layers forward and backward, each part by the fastest path there is.

``Runner.forward(layers, x)`` walks the layers in order.  At each position it looks for a pattern
of *exact* classes it has a fast path for (a student's subclass never matches: it runs its own
code), longest first:

    Convolution -> BatchNorm -> ReLU -> MaxPool   inference mode: folded, by pooling phase  batchnorm_fold.FoldedPhaseUnit
    Convolution -> BatchNorm         inference mode: one convolution, BatchNorm folded in   batchnorm_fold.FoldedConvUnit
    Convolution -> ReLU -> MaxPool   by pooling phase (NumPy, 2-D, stride 1, 2x2 pooling)  fusion.PhaseBlockUnit
    BatchNorm -> ReLU -> MaxPool     training mode: pooled first, normalised after       batchnorm_block.BatchNormPoolUnit
    ReLU -> MaxPool                  pooled first, the ReLU on the pooled output            fusion.ReluPoolUnit
    Convolution                      the faster arrangements of conv.py                    conv.ConvUnit
    MaxPool                          offset-major windows, one scatter back                 pooling.MaxPoolUnit
    ReLU; Sigmoid, Tanh (CuPy)       the layer's forward, dL/dx in one pass (fused on CuPy)   fusion.ElementwiseUnit

and runs every other layer by its own ``forward``.  It records what it ran (the *tape*), so that
``Runner.backward`` runs each unit's backward, and every other layer's own ``backward``, in
reverse.  A unit reads a layer only through its public interface: ``prepare_input`` (the layer's
checks and cast), its parameters and settings, ``grads`` (where it writes dL/dparam) and
``clear_cache`` (a layer the engine ran has no cache of its own: its own ``backward`` then says
that no forward ran, rather than use an older one's).  Each unit computes the layer's formulas and
is held equal to the layers' own code by the tests (forward, gradients and training:
tests/test_engine_switch.py and the tests of each unit).

A runner also keeps, per layer, what its fast path reuses from step to step (the convolution
arrangement chosen for an input shape, scratch buffers, pooling index tables): ``context``.
``loss`` computes the loss and dL/doutput, with one fused kernel for ``SoftMaxLoss`` on integer
labels on CuPy.
"""
from . import batchnorm_block, batchnorm_fold, fusion, kernels
from ..backend import get_array_module
from ..by_layer import StateByLayer
from .conv import ConvContext, ConvUnit
from .pooling import MaxPoolUnit, PoolContext
from ..layers.activations import ReLU, Sigmoid, Tanh
from ..layers.conv import Convolution
from ..layers.losses import SoftMaxLoss
from ..layers.pooling import MaxPool

__all__ = ["Runner", "UNIT_NAMES"]

#: how ``Runner.plan`` (and ``NeuralNetwork.summary``) name each fast path
UNIT_NAMES = {"BatchNormPoolUnit": "pooled first, then normalised and the ReLU (engine/batchnorm_block.py)",
              "FoldedPhaseUnit": "BatchNorm folded into the convolution, by pooling phase (engine/batchnorm_fold.py)",
              "FoldedConvUnit": "BatchNorm folded into the convolution (engine/batchnorm_fold.py)",
              "PhaseBlockUnit": "by pooling phase (engine/phase_pool.py)",
              "ReluPoolUnit": "pooled first, then the ReLU (engine/fusion.py)",
              "ConvUnit": "faster arrangements (engine/conv.py)", "MaxPoolUnit": "fast path (engine/pooling.py)",
              "ElementwiseUnit": "one-pass backward (engine/kernels.py)"}


class Runner:
    """Runs sequences of layers through the engine (see the module docstring)."""

    def __init__(self):
        self._contexts = StateByLayer()     # layer -> {context kind: context}
        self._tape = None                   # (ids of the layers, [(first index, unit or None)]) of the last forward

    def context(self, layer, kind):
        """The ``kind`` (``ConvContext``, ``PoolContext``) kept for ``layer``, made on first use."""
        held = self._contexts.of(layer)
        if kind not in held:
            held[kind] = kind(layer)
        return held[kind]

    def _unit(self, layers, i, x, fuse):
        """The unit that runs ``layers[i:]``'s first layer(s) on ``x``, or None (the layer's own code)."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype") or x.ndim < 1 or x.shape[0] == 0:
            return None                      # not an array, or no samples: the layer's own code says what
        layer = layers[i]
        kind = type(layer)
        if fuse and batchnorm_fold.folds(layers, i, x):
            context = self.context(layer, ConvContext)
            if batchnorm_fold.folds_by_phase(layers, i, x):
                return batchnorm_fold.FoldedPhaseUnit(context, layers[i + 1], layers[i + 2], layers[i + 3])
            return batchnorm_fold.FoldedConvUnit(context, layers[i + 1])
        if fuse and fusion.by_phase(layers, i, x):
            return fusion.PhaseBlockUnit(self.context(layer, ConvContext), layers[i + 1], layers[i + 2])
        if fuse and batchnorm_block.applies(layers, i, x):
            return batchnorm_block.BatchNormPoolUnit(layer, layers[i + 1], self.context(layers[i + 2], PoolContext))
        if fuse and i + 1 < len(layers) and fusion.pairs(layer, layers[i + 1]):
            return fusion.ReluPoolUnit(layer, self.context(layers[i + 1], PoolContext))
        if kind is Convolution:
            return ConvUnit(self.context(layer, ConvContext))
        if kind is MaxPool:
            return MaxPoolUnit(self.context(layer, PoolContext))
        if kind is ReLU or (kind in (Sigmoid, Tanh) and kernels.fused_enabled(x)):
            return fusion.ElementwiseUnit(layer)
        return None

    def forward_step(self, layers, i, x, fuse=True, for_backward=True):
        """Run the unit of ``layers`` that starts at ``i`` on ``x`` (``fuse=False``: one layer at a
        time; ``for_backward=False``: no backward will follow, a unit may skip what only the backward
        reads).  Returns ``(output, index after the unit, unit or None)``."""
        unit = self._unit(layers, i, x, fuse)
        if unit is not None and not for_backward:
            unit.for_backward = False
        if unit is None:
            return layers[i].forward(x), i + 1, None
        return unit.forward(x), i + unit.size, unit

    def backward_step(self, layers, first, unit, g, need_input_grad=True):
        """The backward of a unit ``forward_step`` ran (``unit`` None: ``layers[first]``'s own)."""
        if unit is None:
            return layers[first].backward(g, need_input_grad=need_input_grad)
        return unit.backward(g, need_input_grad)

    def forward(self, layers, x, return_all=False, for_backward=True):
        """The output of ``layers`` on the batch ``x`` (recorded for ``backward``).  ``return_all``:
        every layer's output, in order (units of one layer only, so that each output exists).
        ``for_backward=False`` (``predict``, ``evaluate``): nothing is recorded, and the units keep
        only what the output needs (``phase_pool.py``: the maxima without their phases)."""
        tape, outs = [], []
        i = 0
        while i < len(layers):
            first = i
            x, i, unit = self.forward_step(layers, i, x, fuse=not return_all, for_backward=for_backward)
            tape.append((first, unit))
            outs.append(x)
        self._tape = (tuple(map(id, layers)), tape) if for_backward else None
        return outs if return_all else x

    def backward(self, layers, upstream, need_input_grad=True):
        """Backpropagate ``dL/doutput`` through ``layers`` as the last ``forward`` ran them; returns
        ``dL/dinput`` (None with ``need_input_grad=False``).  Without a forward of these layers,
        each layer's own ``backward`` (which says so)."""
        tape = self._tape
        if tape is None or tape[0] != tuple(map(id, layers)):
            tape = (None, [(i, None) for i in range(len(layers))])
        g = upstream
        for first, unit in reversed(tape[1]):
            g = self.backward_step(layers, first, unit, g, first > 0 or need_input_grad)
        return g

    def loss(self, loss_fn, out, y, compute, upstream=1.0):
        """``(loss, dL/dout * upstream)``: ``compute(out, y)`` gives the loss by ``loss_fn``'s own
        ``forward``, then its ``backward``; a ``SoftMaxLoss`` (that class) on integer labels on CuPy
        is one fused kernel instead (``kernels.softmax_xent``)."""
        if (type(loss_fn) is SoftMaxLoss and kernels.fused_enabled(out) and getattr(out, "ndim", 0) == 2
                and getattr(y, "ndim", 0) == 1 and y.dtype.kind in "iu" and out.shape[0] > 0):
            loss_fn.clear_cache()
            loss, grad = kernels.softmax_xent(out, y)
            return loss, grad * out.dtype.type(upstream) if upstream != 1.0 else grad
        loss = compute(out, y)
        return loss, loss_fn.backward(upstream)

    def plan(self, layers, x):
        """``[(first, stop, what)]``: the runs of ``layers`` the engine would run by a fast path on a
        batch like ``x`` (only its shape, dtype and array type are read), and by what; the layers
        not listed run their own code.  Nothing is computed."""
        xp = get_array_module(x)
        zero = xp.zeros((), dtype=x.dtype)
        out, i = [], 0
        while i < len(layers):
            unit = self._unit(layers, i, x, fuse=True)
            size = 1 if unit is None else unit.size
            if unit is not None:
                out.append((i, i + size, UNIT_NAMES[type(unit).__name__]))
            shape = tuple(x.shape)
            for layer in layers[i:i + size]:
                shape = (shape[0],) + tuple(layer.compute_output_shape(shape[1:]))
            if None in shape:
                break
            x = xp.broadcast_to(zero, shape)
            i += size
        return out

    def forget_forward(self):
        """Drop the record of the last forward (its units are about to be overwritten); ``backward``
        then runs each layer's own, which says that no forward ran.  The kept contexts stay."""
        self._tape = None

    def clear(self):
        """Forget the last forward and every layer's kept context (scratch buffers, index tables)."""
        self._contexts = StateByLayer()
        self._tape = None
