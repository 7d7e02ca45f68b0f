"""Parameter-free element-wise layers: ``ReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``.

Every class here keeps ``forward``/``backward`` symmetric and names what it
caches; shapes are ``x: (N, *S) -> y: (N, *S)`` unless stated.
"""
from ..backend import get_array_module
from .base import Node
from ..validation import is_int

__all__ = ["ReLU", "Sigmoid", "Tanh", "Softmax"]


class ReLU(Node):
    """Rectified linear unit, element-wise.

    ``y = max(x, 0)``;  ``dL/dx = dL/dy * [x > 0]`` (the kink at 0 gets slope 0,
    as in Keras and PyTorch).  Cache: ``y`` (``y > 0`` exactly where ``x > 0``;
    the next layer holds ``y`` anyway, so this costs no memory).
    """

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, x.dtype.type(0))
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        return dy * (self._cache["y"] > 0)


class Sigmoid(Node):
    """Logistic function, element-wise.

    ``y = 1 / (1 + exp(-x)) = (1 + tanh(x / 2)) / 2`` (the tanh form never
    overflows);  ``dL/dx = dL/dy * y * (1 - y)``.  Cache: ``y``.
    """

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.tanh(x * x.dtype.type(0.5))
        y += 1
        y *= x.dtype.type(0.5)
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        y = self._cache["y"]
        return dy * y * (1 - y)


class Tanh(Node):
    """Hyperbolic tangent, element-wise.

    ``y = tanh(x)``;  ``dL/dx = dL/dy * (1 - y^2)``.  Cache: ``y``.
    """

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.tanh(x)
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        y = self._cache["y"]
        return dy * (1 - y * y)


class Softmax(Node):
    """Softmax over ``axis`` (default: the last one).

    ``y_i = exp(x_i - max x) / sum_j exp(x_j - max x)``;
    ``dL/dx = y * (dL/dy - sum_j dL/dy_j * y_j)``.  Cache: ``y``.
    For training a classifier use ``SoftMaxLoss`` on logits instead (stabler).
    """

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
