"""Parameter-free element-wise and shape layers.

Every class here keeps ``forward``/``backward`` symmetric and names what it
caches; shapes are ``x: (N, *S) -> y: (N, *S)`` unless stated.
"""
import math

from . import kernels
from .backend import get_array_module
from .interfaces import Node, ShapeError, format_shape
from .validation import is_int

__all__ = ["ReLU", "Sigmoid", "Tanh", "Softmax", "Vectorization", "Flatten", "Reshape"]


class ReLU(Node):
    """Rectified linear unit, element-wise.

    ``y = max(x, 0)``;  ``dL/dx = dL/dy * [x > 0]`` (the kink at 0 gets slope 0,
    as in Keras and PyTorch).  Cache: ``y`` (``y > 0`` exactly where ``x > 0``;
    the next layer holds ``y`` anyway, so this costs no memory).
    """

    per_sample = True  # samples never meet: batches may be split (parallel.py)

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, x.dtype.type(0))
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        y = self._cache["y"]
        if y is None:               # stood aside for the MaxPool after it, which masked dL/dy already
            return dy
        return kernels.relu_backward(dy, y)

    def stand_aside(self, x):
        """Let the ``MaxPool`` that follows apply this ReLU after pooling (``fusion.py``): check
        ``x`` as ``forward`` does and return it unchanged; ``backward`` then passes dL/dy through
        (that layer's ``forward_relu``/``backward`` apply the ReLU and its mask)."""
        self.check_input(x)
        x = self._as_float(x)
        self._cache["y"] = None
        self._out_shape = x.shape
        return x


class Sigmoid(Node):
    """Logistic function, element-wise.

    ``y = 1 / (1 + exp(-x)) = (1 + tanh(x / 2)) / 2`` (the tanh form never
    overflows);  ``dL/dx = dL/dy * y * (1 - y)``.  Cache: ``y``.
    """

    per_sample = True  # samples never meet: batches may be split (parallel.py)

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.tanh(x * x.dtype.type(0.5))
        y += 1
        y *= x.dtype.type(0.5)
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        return kernels.sigmoid_backward(dy, self._cache["y"])


class Tanh(Node):
    """Hyperbolic tangent, element-wise.

    ``y = tanh(x)``;  ``dL/dx = dL/dy * (1 - y^2)``.  Cache: ``y``.
    """

    per_sample = True  # samples never meet: batches may be split (parallel.py)

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.tanh(x)
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        return kernels.tanh_backward(dy, self._cache["y"])


class Softmax(Node):
    """Softmax over ``axis`` (default: the last one).

    ``y_i = exp(x_i - max x) / sum_j exp(x_j - max x)``;
    ``dL/dx = y * (dL/dy - sum_j dL/dy_j * y_j)``.  Cache: ``y``.
    For training a classifier use ``SoftMaxLoss`` on logits instead (stabler).
    """

    per_sample = True  # samples never meet: batches may be split (parallel.py)

    def __init__(self, shape=None, axis=-1, name=None):
        super().__init__(shape, name)
        if not is_int(axis):
            raise TypeError(f"{self._describe()}: axis must be an int, received {type(axis).__name__} {axis!r}")
        if axis == 0:
            raise ValueError(f"{self._describe()}: axis 0 is the batch axis; softmax runs over a sample's axis "
                             "(axis=-1 or >= 1)")
        self.axis = int(axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    def _forward(self, x):
        xp = get_array_module(x)
        z = x - x.max(axis=self.axis, keepdims=True)
        e = xp.exp(z)
        y = e / e.sum(axis=self.axis, keepdims=True)
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        y = self._cache["y"]
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


class Vectorization(Node):
    """Flatten every sample into a vector, in C (row-major) order.

    ``x: (N, C, H, W) -> y: (N, C*H*W)``, ``y[n, (c*H + h)*W + w] = x[n, c, h, w]``
    (any number of trailing axes).  Backward reshapes ``dL/dy`` back.  Note that
    Keras's ``Flatten`` on NHWC data orders the entries ``(h, w, c)`` instead;
    ``nn_from_scratch.crosscheck`` accounts for that.  Cache: the input shape.
    """

    per_sample = True  # samples never meet: batches may be split (parallel.py)

    def compute_output_shape(self, input_shape):
        n = 1
        for s in input_shape:
            if s is None:
                return (None,)
            n *= s
        return (n,)

    def _forward(self, x):
        self._cache["x_shape"] = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))      # (-1 is ambiguous for N = 0)

    def _backward(self, dy):
        return dy.reshape(self._cache["x_shape"])


#: Keras-style alias.
Flatten = Vectorization


class Reshape(Node):
    """Reshape every sample: ``x: (N, *S) -> y: (N, *target)`` with ``prod(S) == prod(target)``."""

    per_sample = True  # samples never meet: batches may be split (parallel.py)

    def __init__(self, shape=None, target_shape=None, name=None):
        super().__init__(shape, name)
        if target_shape is None:
            raise ValueError(f"{self._describe()}: target_shape is required")
        try:
            entries = tuple(target_shape)
        except TypeError:
            raise TypeError(f"{self._describe()}: target_shape must be a tuple of positive ints (per sample), "
                            f"received {type(target_shape).__name__} {target_shape!r}") from None
        if not entries or not all(is_int(s) and s >= 1 for s in entries):
            raise ValueError(f"{self._describe()}: target_shape must be a non-empty tuple of positive ints "
                             f"(per sample, no batch entry), received {target_shape!r}")
        self.target_shape = tuple(int(s) for s in entries)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}

    def compute_output_shape(self, input_shape):
        return self.target_shape

    def _forward(self, x):
        n_in = 1
        for s in x.shape[1:]:
            n_in *= s
        n_out = 1
        for s in self.target_shape:
            n_out *= s
        if n_in != n_out:
            raise ShapeError(
                f"{self._describe()} cannot reshape samples of shape {format_shape(tuple(x.shape))} "
                f"({n_in} values) to {format_shape((None,) + self.target_shape)} ({n_out} values)"
            )
        self._cache["x_shape"] = x.shape
        return x.reshape((x.shape[0],) + self.target_shape)

    def _backward(self, dy):
        return dy.reshape(self._cache["x_shape"])
