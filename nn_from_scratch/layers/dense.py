"""``Linear`` (``Dense``): the fully connected layer with the seed's augmented weight matrix."""
import numpy as np

from .. import validation
from ..backend import get_array_module
from . import initializers
from .base import Neuron, ShapeError, format_shape, sample_shape
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
    are the same layer.  ``Linear(10)`` (Keras's ``Dense(10)``), ``Linear(out_features=10)`` or
    ``Dense(units=10)`` give only the output size: the input size ``D`` is inferred when the network
    is built (or at the first ``forward``), and ``W`` is drawn then, with the same values for a given
    ``seed`` as the explicit form (``docs/layers.md``, "Shapes inferred").  Cache: ``x``.
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, input_shape=None, output_shape=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 W_init_range=None, seed=None, dtype=np.float32, name=None,
                 kernel_regularizer=None, bias_regularizer=None, *, in_features=None, out_features=None,
                 units=None):
        in_shape, out_size = _resolve_sizes(input_shape, output_shape, in_features, out_features, units)
        super().__init__(None if in_shape is None else (None,) + in_shape, name=name, dtype=dtype)
        self.in_features, self.out_features = None if in_shape is None else in_shape[0], out_size
        self.use_bias = validation.flag(self._describe(), "use_bias", use_bias)
        self._init = (_init_spec(kernel_initializer, W_init_range), bias_initializer)
        initializers.get(self._init[0])              # an unknown initializer is refused here, built or not
        initializers.get(bias_initializer)
        self._seed = seed
        self._set_regularizers(kernel_regularizer, bias_regularizer)
        if in_shape is None:
            self.built = False      # Dense(10): the input size comes from the previous layer (build)
        else:
            self._make_params(initializers.default_rng(seed))

    def _make_params(self, rng):
        """Draw ``W`` (kernel, then bias) from ``rng``: the same draws whether the input size was
        given or inferred, so one seed gives the same weights in both forms."""
        d, m = self.in_features, self.out_features
        kernel = initializers.get(self._init[0])((d, m), rng)
        bias = initializers.get(self._init[1])((m,), rng) if self.use_bias else np.zeros(m)
        W = np.concatenate([np.asarray(bias, dtype=np.float64)[None, :], kernel], axis=0)
        self.add_param("W", W.astype(self.dtype))

    def _build(self, input_shape):
        if len(input_shape) != 1 or input_shape[0] is None:
            raise ShapeError(f"{self._describe()} maps vectors to vectors: its input must be (N, D), received "
                             f"samples of shape {format_shape((None,) + tuple(input_shape))}"
                             + (" (flatten images with Vectorization/Flatten first)" if len(input_shape) > 1 else ""))
        self.in_features = int(input_shape[0])
        self.input_shape = (self.in_features,)
        self._make_params(initializers.default_rng(self._seed))

    def _explicit_example(self):
        return f"Linear(800, {self.out_features}) or Linear((N, 800), (N, {self.out_features}))"

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
        self.require_built("count_params")
        return self.in_features * self.out_features + (self.out_features if self.use_bias else 0)

    def get_config(self):
        self.require_built("get_config (saving)")
        return {"input_shape": [None, self.in_features], "output_shape": [None, self.out_features],
                "use_bias": self.use_bias, "dtype": self.dtype.name, "name": self.name,
                **self._regularizer_config()}

    @property
    def weight(self):
        """``W[1:]``: the (D, M) weight matrix (a view)."""
        return self.params["W"][1:]

    @property
    def bias(self):
        """``W[0]``: the (M,) bias (a view)."""
        return self.params["W"][0]

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
        return f"Linear({'?' if self.in_features is None else self.in_features} -> {self.out_features}, use_bias={self.use_bias}, name={self.name!r})"


#: the Keras name
Dense = Linear


def _resolve_sizes(input_shape, output_shape, in_features, out_features, units):
    """``(per-sample input shape or None, output size)`` from the constructor's ways of saying them:
    ``Linear(800, 10)``, ``Linear((N, 800), (N, 10))``, ``Linear(10)`` (output only, as Keras's
    ``Dense(10)``), ``in_features=``/``out_features=`` (PyTorch) and ``units=`` (Keras)."""
    if units is not None and out_features is not None and units != out_features:
        raise ValueError(f"Linear: units={units!r} and out_features={out_features!r} disagree (they are the same "
                         "size: give one)")
    out_kw = out_features if out_features is not None else units
    if output_shape is None and out_kw is None and in_features is None and input_shape is not None:
        if not validation.is_int(input_shape):
            raise ShapeError(f"Linear({input_shape!r}) gives one shape: write Linear(10) for an output size of 10 "
                             f"(the input size inferred), or both shapes, Linear((N, 800), (N, 10))")
        input_shape, out_kw = None, input_shape          # Linear(10): Dense(10), the output size
    if output_shape is not None and out_kw is not None:
        raise ValueError(f"Linear: the output size is given twice (output_shape={output_shape!r} and "
                         f"out_features/units={out_kw!r}); give one")
    if input_shape is not None and in_features is not None:
        raise ValueError(f"Linear: the input size is given twice (input_shape={input_shape!r} and "
                         f"in_features={in_features!r}); give one")
    if output_shape is None and out_kw is None:
        raise ValueError("Linear needs an output size, e.g. Linear(10) (input size inferred), Linear(800, 10) or "
                         "Linear((N, 800), (N, 10))")
    out_shape = (sample_shape(output_shape, "Linear", "output_shape") if output_shape is not None
                 else sample_shape(out_kw, "Linear", "out_features"))
    in_arg = input_shape if input_shape is not None else in_features
    in_shape = sample_shape(in_arg, "Linear", "input_shape" if input_shape is not None else "in_features")
    if len(out_shape) != 1 or None in out_shape or (in_shape is not None and (len(in_shape) != 1 or None in in_shape)):
        raise ShapeError(
            f"Linear maps vectors to vectors: input/output shapes must be (N, D) and (N, M), "
            f"received {input_shape if input_shape is not None else in_features!r} and "
            f"{output_shape if output_shape is not None else out_kw!r} (flatten images with Vectorization first)"
        )
    return in_shape, out_shape[0]
