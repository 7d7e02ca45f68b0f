"""Parameter-free element-wise layers: ``ReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``, and ReLU's
relatives ``LeakyReLU``, ``ELU``, ``GELU``, ``Softplus``.

Every class here keeps ``forward``/``backward`` symmetric and names what it
caches; shapes are ``x: (N, *S) -> y: (N, *S)`` unless stated.

ReLU's relatives, element-wise: ``LeakyReLU``, ``ELU``, ``GELU``, ``Softplus``.

``x: (N, *S) -> y: (N, *S)``; float inputs keep their dtype; the formulas are Keras's::

    LeakyReLU(alpha=0.3)   y = x             (x > 0)     dy/dx = 1
                           y = alpha x       (x <= 0)    dy/dx = alpha
    ELU(alpha=1.0)         y = x             (x > 0)     dy/dx = 1
                           y = alpha (e^x - 1) (x <= 0)  dy/dx = alpha e^x = y + alpha
    GELU(approximate=False)  y = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
                           dy/dx = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    GELU(approximate=True)   y = x (1 + tanh(u)) / 2,   u = sqrt(2 / pi) (x + 0.044715 x^3)
                           dy/dx = (1 + t) / 2 + x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2) / 2,  t = tanh(u)
    Softplus               y = log(1 + e^x) = max(x, 0) + log1p(e^-|x|)   (never overflows)
                           dy/dx = sigmoid(x)

The kinks (LeakyReLU and ELU at 0) take the left slope, as TensorFlow's gradients do.
Defaults as in Keras 3: ``LeakyReLU``'s ``alpha`` (Keras's ``negative_slope``) is 0.3 (PyTorch's
is 0.01), ``GELU`` is exact by default (``approximate=False``; PyTorch's ``approximate="tanh"``
is ``approximate=True``).  ``erf`` comes from SciPy (``cupyx.scipy.special`` on CuPy).
"""
import math
import numbers

import numpy as np

from ..backend import get_array_module
from ..validation import is_int
from .base import Node

__all__ = ["ReLU", "Sigmoid", "Tanh", "Softmax", "LeakyReLU", "ELU", "GELU", "Softplus", "stable_sigmoid"]


class ReLU(Node):
    """Rectified linear unit, element-wise.

    ``y = max(x, 0)``;  ``dL/dx = dL/dy * [x > 0]`` (the kink at 0 gets slope 0,
    as in Keras and PyTorch).  Cache: ``y`` (``y > 0`` exactly where ``x > 0``;
    the next layer holds ``y`` anyway, so this costs no memory).
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

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

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

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

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

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

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, shape=None, axis=-1, name=None):
        super().__init__(shape, name)
        if not is_int(axis):
            raise TypeError(f"{self._describe()}: axis must be an int, received {type(axis).__name__} {axis!r}")
        if axis == 0:
            raise ValueError(f"{self._describe()}: axis 0 is the batch axis; softmax runs over a sample's axis "
                             "(axis=-1 or >= 1)")
        self.axis = int(axis)
        if self.input_shape is not None:
            self._check_axis(len(self.input_shape) + 1)

    def _check_axis(self, ndim):
        """The axis must name a sample's axis of a batch of rank ``ndim``: 1..ndim-1 or -(ndim-1)..-1."""
        if not (1 <= self.axis < ndim or -ndim < self.axis <= -1):
            raise ValueError(f"{self._describe()}: axis={self.axis} is out of range for batches of rank {ndim} "
                             f"(samples of rank {ndim - 1}); use an axis in 1..{ndim - 1} or -{ndim - 1}..-1")

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    def _forward(self, x):
        self._check_axis(x.ndim)
        xp = get_array_module(x)
        z = x - x.max(axis=self.axis, keepdims=True)
        e = xp.exp(z)
        y = e / e.sum(axis=self.axis, keepdims=True)
        self._cache["y"] = y
        return y

    def _backward(self, dy):
        y = self._cache["y"]
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


# ---------------------------------------------------------------- ReLU's relatives
def _number(layer, arg, value, lo=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (lo is not None and value < lo):
        want = "a finite number" + (f" >= {lo}" if lo is not None else "")
        raise ValueError(f"{layer._describe()}: {arg} must be {want}, received {value!r}")
    return float(value)


class LeakyReLU(Node):
    """``y = x`` for ``x > 0``, ``alpha * x`` otherwise (Keras's default ``alpha = 0.3``).  Cache: ``x > 0``."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, alpha=0.3, shape=None, name=None):
        super().__init__(shape, name)
        self.alpha = _number(self, "alpha", alpha, lo=0)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}

    def _forward(self, x):
        xp = get_array_module(x)
        positive = x > 0
        self._cache["positive"] = positive
        return xp.where(positive, x, x * x.dtype.type(self.alpha))

    def _backward(self, dy):
        xp = get_array_module(dy)
        return xp.where(self._cache["positive"], dy, dy * dy.dtype.type(self.alpha))


class ELU(Node):
    """``y = x`` for ``x > 0``, ``alpha (e^x - 1)`` otherwise.  Cache: ``y`` and ``x > 0``."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, alpha=1.0, shape=None, name=None):
        super().__init__(shape, name)
        self.alpha = _number(self, "alpha", alpha, lo=0)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}

    def _forward(self, x):
        xp = get_array_module(x)
        positive = x > 0
        a = x.dtype.type(self.alpha)
        y = xp.where(positive, x, a * xp.expm1(xp.minimum(x, x.dtype.type(0))))
        self._cache.update(y=y, positive=positive)
        return y

    def _backward(self, dy):
        xp = get_array_module(dy)
        y, positive = self._cache["y"], self._cache["positive"]
        return xp.where(positive, dy, dy * (y + y.dtype.type(self.alpha)))


def _erf(x):
    xp = get_array_module(x)
    if xp is np:
        from scipy.special import erf  # noqa: PLC0415
    else:  # pragma: no cover - needs a GPU
        from cupyx.scipy.special import erf  # noqa: PLC0415
    return erf(x)


class GELU(Node):
    """Gaussian error linear unit ``y = x Phi(x)``, exact (erf) or ``approximate=True`` (tanh).  Cache: ``x``."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    C = 0.044715

    def __init__(self, approximate=False, shape=None, name=None):
        super().__init__(shape, name)
        if not isinstance(approximate, (bool, np.bool_)):
            raise ValueError(f"{self._describe()}: approximate must be True (tanh) or False (erf), "
                             f"received {approximate!r}")
        self.approximate = bool(approximate)

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}

    def _forward(self, x):
        xp = get_array_module(x)
        t = x.dtype.type
        self._cache["x"] = x
        if self.approximate:
            th = xp.tanh(t(math.sqrt(2 / math.pi)) * (x + t(self.C) * x * x * x))
            self._cache["tanh"] = th
            return t(0.5) * x * (t(1) + th)
        cdf = t(0.5) * (t(1) + _erf(x * t(1 / math.sqrt(2))))
        self._cache["cdf"] = cdf
        return x * cdf

    def _backward(self, dy):
        xp = get_array_module(dy)
        x = self._cache["x"]
        t = x.dtype.type
        if self.approximate:
            th = self._cache["tanh"]
            s = t(math.sqrt(2 / math.pi))
            d = t(0.5) * (t(1) + th) + t(0.5) * x * (t(1) - th * th) * s * (t(1) + t(3 * self.C) * x * x)
        else:
            pdf = xp.exp(t(-0.5) * x * x) * t(1 / math.sqrt(2 * math.pi))
            d = self._cache["cdf"] + x * pdf
        return dy * d


class Softplus(Node):
    """``y = log(1 + e^x)``, computed as ``max(x, 0) + log1p(e^-|x|)``.  Cache: ``x``."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def _forward(self, x):
        xp = get_array_module(x)
        self._cache["x"] = x
        return xp.maximum(x, x.dtype.type(0)) + xp.log1p(xp.exp(-xp.abs(x)))

    def _backward(self, dy):
        return dy * stable_sigmoid(self._cache["x"])


def stable_sigmoid(x):
    """``1 / (1 + e^-x)`` to full relative precision on both sides: ``e^x / (1 + e^x)`` for ``x < 0``
    (``e^-|x|`` never overflows; the tanh form would round ``sigmoid(-50)`` to 0)."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    one = x.dtype.type(1)
    return xp.where(x >= 0, one / (one + e), e / (one + e))
