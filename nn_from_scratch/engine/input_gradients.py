"""The engine's input-gradient pass: ``dL/dx`` through a list of layers, no parameter gradients.

A training step needs ``dL/dW`` of every neuron; input gradients (saliency, the permutation test's
statistics, ``analysis/gradients.py``) need only ``dL/dx``.  ``InputGradientPass(layers)`` runs
``forward(x)`` and then ``input_gradient(g)`` and skips every ``dL/dparam`` the layers' own backward
would compute:

``Convolution`` (that exact class)
    * as the dense unrolled matrix ``A`` where ``unrolled_conv.unrolled_applies`` (dense enough,
      small enough: large kernels, e.g. 15x15 on 28x28)::

          y = x @ A + b_rep        dL/dx = dL/dy @ A.T           (unrolled_conv.py)

    * otherwise the engine's convolution forward (``conv.py``'s arrangements) and, for stride 1,
      dL/dx as the convolution of dL/dy with the flipped kernel by the same arrangements::

          dL/dx[c] = sum_f conv(pad(dL/dy[f]), flip(W[f, c]))     pad = dilation*(k - 1) - pad_lo|hi

      (for other strides, or padding larger than ``dilation*(k - 1)``, the layer's own formula
      ``col2im(W.reshape(F, C*K).T @ dL/dy)``, ``layers/conv.py``).
``Linear`` (that exact class)
    ``y = x @ W[1:] + W[0]``, ``dL/dx = dL/dy @ W[1:].T`` (``layers/dense.py``'s formulas, no ``dL/dW``).
every other layer
    as the engine's runner runs it (``runner.py``: the fast paths of pooling and ReLU, or the
    layer's own ``forward``/``backward``; a neuron of another class then computes its parameter
    gradients as usual, the general path).

The numbers are the layers' formulas: the tests hold this pass equal to the layers' own
``forward``/``backward`` (``engine=False``) and to float64 finite differences
(tests/test_input_gradient_pass.py).  Every array comes from the module of the data
(``backend.get_array_module``), so the pass runs on CuPy as on NumPy.
"""
import types

from ..backend import get_array_module
from ..layers.conv import Convolution
from ..layers.dense import Linear
from ..layers.geometry import col2im, resolve_padding
from .conv import ConvContext, _flipped_kernel
from .runner import Runner
from .settings import check_gradient
from .unrolled_conv import UnrolledConv, unrolled_applies

__all__ = ["InputGradientPass", "ConvInputUnit", "LinearInputUnit"]


class LinearInputUnit:
    """A ``Linear`` layer, forward and dL/dx only."""

    size = 1

    def __init__(self, layer):
        self.layer = layer

    def forward(self, x):
        layer = self.layer
        x = layer.prepare_input(x)
        layer.clear_cache()
        W = layer.params["W"]
        y = x @ W[1:]
        if layer.use_bias:
            y += W[0]
        self.out_shape = tuple(y.shape)
        return y

    def backward(self, g):
        layer = self.layer
        check_gradient(layer, g, self.out_shape)
        return g.astype(layer.dtype, copy=False) @ layer.params["W"][1:].T


def _transposed_layer(layer, spatial):
    """The settings of the convolution computing dL/dx of ``layer`` (stride 1) from dL/dy: channels
    swapped, padding ``dilation*(k - 1) - pad`` per side; None where such padding would be negative."""
    pads = resolve_padding(layer.padding, spatial, layer.kernel_size, layer.stride, layer.dilation)
    new = []
    for (lo, hi), k, d in zip(pads, layer.kernel_size, layer.dilation):
        reach = d * (k - 1)
        if lo > reach or hi > reach:
            return None
        new.append((reach - lo, reach - hi))
    return types.SimpleNamespace(kernel_size=layer.kernel_size, stride=(1,) * layer.ndim, dilation=layer.dilation,
                                 padding=tuple(new), in_channels=layer.out_channels, out_channels=layer.in_channels,
                                 ndim=layer.ndim, use_bias=False, name=layer.name)


class ConvInputUnit:
    """A ``Convolution`` layer, forward and dL/dx only: the unrolled matrix where it applies, else the
    engine's arrangements (see the module docstring).  Kept per layer: what it built for the last
    input shape (``UnrolledConv``, the arrangements' contexts)."""

    size = 1

    def __init__(self, layer):
        self.layer = layer
        self._key = None
        self.unrolled = None
        self.forward_context = None
        self.backward_context = None

    def _prepare(self, x):
        layer = self.layer
        key = (type(x), tuple(x.shape[1:]), x.dtype, repr(layer.padding), layer.stride, layer.dilation,
               layer.kernel_size, layer.in_channels, layer.out_channels, layer.use_bias)
        if key == self._key:
            return
        self._key = key
        self.unrolled = UnrolledConv(layer, x.shape) if unrolled_applies(layer, x.shape, x.itemsize) else None
        if self.unrolled is None:
            self.forward_context = ConvContext(layer)
            flipped = None
            if all(s == 1 for s in layer.stride):
                flipped = _transposed_layer(layer, tuple(x.shape[2:]))
            self.backward_context = None if flipped is None else ConvContext(flipped)

    @property
    def path(self):
        """How the last input ran: "unrolled", "flipped" (stride 1) or "col2im"."""
        if self.unrolled is not None:
            return "unrolled"
        return "col2im" if self.backward_context is None else "flipped"

    def forward(self, x):
        layer = self.layer
        x = layer.prepare_input(x)
        layer.clear_cache()
        self._prepare(x)
        W, b = layer.params["W"], layer.params.get("b")
        if self.unrolled is not None:
            y = self.unrolled.forward(x, W, b)
        else:
            y = self.forward_context.arrangement(x).forward(x, W, b)
        self.x_shape = tuple(x.shape)
        self.out_shape = tuple(y.shape)
        return y

    def backward(self, g):
        layer = self.layer
        check_gradient(layer, g, self.out_shape)
        g = g.astype(layer.dtype, copy=False)
        if self.unrolled is not None:
            return self.unrolled.input_gradient(g)
        W = layer.params["W"]
        if self.backward_context is not None:
            xp = get_array_module(g)
            g = xp.ascontiguousarray(g)
            return self.backward_context.arrangement(g).forward(g, _flipped_kernel(W, layer.ndim), None)
        F = W.shape[0]
        dcols = W.reshape(F, -1).T @ g.reshape(g.shape[0], F, -1)
        return col2im(dcols, self.x_shape, layer.kernel_size, layer.stride, layer.padding, layer.dilation)


class InputGradientPass:
    """``forward(x)`` then ``input_gradient(g)``: dL/dx through ``layers`` without parameter gradients.

    The units are made on first use and kept (a convolution's matrix ``A`` is rebuilt only when its
    weights change), so one pass object serves every batch of a data set.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self._runner = Runner()
        self._units = {}
        self._tape = None

    def _unit(self, i):
        layer = self.layers[i]
        unit = self._units.get(i)
        if unit is None:
            if type(layer) is Convolution:
                unit = ConvInputUnit(layer)
            elif type(layer) is Linear:
                unit = LinearInputUnit(layer)
            else:
                return None
            self._units[i] = unit
        return unit

    def units(self):
        """``{index: unit}`` of the layers this pass runs by its own units (convolutions, linear layers)."""
        return dict(self._units)

    def forward(self, x):
        """The layers' output on the batch ``x`` (recorded for ``input_gradient``)."""
        layers, tape, i = self.layers, [], 0
        while i < len(layers):
            unit = self._unit(i)
            if unit is not None:
                x = unit.forward(x)
                tape.append((i, unit, True))
                i += 1
            else:
                first = i
                x, i, runner_unit = self._runner.forward_step(layers, i, x)
                tape.append((first, runner_unit, False))
        self._tape = tape
        return x

    def input_gradient(self, upstream):
        """dL/dx of the last ``forward``'s input for ``upstream = dL/doutput``; no parameter gradients
        (except those of neurons this pass does not know, which run their own backward)."""
        if self._tape is None:
            raise RuntimeError("InputGradientPass.input_gradient: call forward(x) first")
        g = upstream
        for first, unit, own in reversed(self._tape):
            g = unit.backward(g) if own else self._runner.backward_step(self.layers, first, unit, g, True)
        return g
