"""``Linear`` (``Dense``): the fully connected layer with the seed's augmented weight matrix."""
import numpy as np

from .. import validation
from ..backend import get_array_module
from . import initializers
from .base import Neuron, ShapeError, sample_shape
from .parameters import _GradNames, _init_spec, _size

__all__ = ["Linear", "Dense"]


class Linear(_GradNames, Neuron):
    """Fully connected layer with the seed's *augmented* weight matrix.

    ``x: (N, D) -> y: (N, M)``.  ``W: (D + 1, M)`` holds the bias in row 0 and
    the weights in rows ``1..D``, i.e. ``y = [1, x] @ W = x @ W[1:] + W[0]``.

    Backward, for ``g = dL/dy: (N, M)``::

        dL/dx    = g @ W[1:].T          (N, D)
        dL/dW[1:] = x.T @ g             (D, M)
        dL/dW[0]  = sum_n g[n]          (M,)     (zero when use_bias=False)

    ``Linear((batch, 800), (batch, 10))`` (the seed's form) and ``Linear(800, 10)``
    are the same layer.  Cache: ``x``.
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, input_shape, output_shape=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 W_init_range=None, seed=None, dtype=np.float32, name=None,
                 kernel_regularizer=None, bias_regularizer=None):
        in_shape = sample_shape(input_shape, "Linear", "input_shape")
        out_shape = sample_shape(output_shape, "Linear", "output_shape") if output_shape is not None else None
        if out_shape is None:
            raise ValueError("Linear needs an output size, e.g. Linear(800, 10) or Linear((N, 800), (N, 10))")
        if len(in_shape) != 1 or len(out_shape) != 1 or None in in_shape + out_shape:
            raise ShapeError(
                f"Linear maps vectors to vectors: input/output shapes must be (N, D) and (N, M), "
                f"received {input_shape!r} and {output_shape!r} (flatten images with Vectorization first)"
            )
        super().__init__((None,) + in_shape, name=name, dtype=dtype)
        self.in_features, self.out_features = in_shape[0], out_shape[0]
        self.use_bias = validation.flag(self._describe(), "use_bias", use_bias)
        rng = initializers.default_rng(seed)
        d, m = self.in_features, self.out_features
        kernel = initializers.get(_init_spec(kernel_initializer, W_init_range))((d, m), rng)
        bias = initializers.get(bias_initializer)((m,), rng) if self.use_bias else np.zeros(m)
        W = np.concatenate([np.asarray(bias, dtype=np.float64)[None, :], kernel], axis=0)
        self.add_param("W", W.astype(self.dtype))
        self._set_regularizers(kernel_regularizer, bias_regularizer)

    def regularized_parts(self):
        """``(regularizer, parameter, index)``: the kernel ``W[1:]`` and the bias ``W[0]``."""
        parts = []
        if self.kernel_regularizer is not None:
            parts.append((self.kernel_regularizer, "W", slice(1, None)))
        if self.bias_regularizer is not None and self.use_bias:
            parts.append((self.bias_regularizer, "W", 0))
        return parts

    def compute_output_shape(self, input_shape):
        return (self.out_features,)

    @classmethod
    def param_shapes(cls, config):
        """``{"W": (D + 1, M)}`` for a ``get_config`` record, without building the layer (the model
        file check, ``serialization.py``)."""
        d = _size(list(config["input_shape"])[-1], "input_shape[-1]")
        m = _size(list(config["output_shape"])[-1], "output_shape[-1]")
        return {"W": (d + 1, m)}

    def param_views(self, name, array):
        """The weight tensors an array shaped like parameter ``name`` holds, as Keras sees them
        (views): ``W[1:]`` the kernel and ``W[0]`` the bias (per-tensor gradient clipping)."""
        return [array[1:], array[0]] if name == "W" else [array]

    def count_params(self):
        """``D*M`` weights plus ``M`` biases; without bias the (always zero) row 0 of ``W`` is not counted."""
        return self.in_features * self.out_features + (self.out_features if self.use_bias else 0)

    def get_config(self):
        return {"input_shape": [None, self.in_features], "output_shape": [None, self.out_features],
                "use_bias": self.use_bias, "dtype": self.dtype.name, "name": self.name,
                **self._regularizer_config()}

    @property
    def weight(self):
        """``W[1:]``: the (D, M) weight matrix (a view)."""
        return self._params["W"][1:]

    @property
    def bias(self):
        """``W[0]``: the (M,) bias (a view)."""
        return self._params["W"][0]

    def _forward(self, x):
        self._cache["x"] = x
        W = self._params["W"]
        y = x @ W[1:]
        if self.use_bias:
            y += W[0]
        return y

    def _backward(self, dy, need_input_grad=True):
        x = self._cache["x"]
        W = self._params["W"]
        xp = get_array_module(dy)
        dy = dy.astype(self.dtype, copy=False)
        dW = xp.empty_like(W)
        xp.matmul(x.T, dy, out=dW[1:])
        if self.use_bias:
            dy.sum(axis=0, out=dW[0])
        else:
            dW[0] = 0
        self._grads["W"] = dW
        return dy @ W[1:].T if need_input_grad else None

    def __repr__(self):
        return f"Linear({self.in_features} -> {self.out_features}, use_bias={self.use_bias}, name={self.name!r})"


#: the Keras name
Dense = Linear
