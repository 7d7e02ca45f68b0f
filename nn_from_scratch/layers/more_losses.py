"""``BinaryCrossEntropy``, ``Huber`` and ``MAE``: means over every entry, as Keras's same-named losses.

``y, t: (N, *S)`` (prediction and target of the same shape), ``K = N * prod(S)`` entries::

    BinaryCrossEntropy(from_logits=True), z the logits:
        L = 1/K sum max(z, 0) - z t + log1p(exp(-|z|))        (= -t log s - (1 - t) log(1 - s), s = sigmoid z,
        dL/dz = (sigmoid(z) - t) / K                             never overflowing)
    BinaryCrossEntropy(from_logits=False), p probabilities clipped to [eps, 1 - eps], eps = 1e-7:
        L = -1/K sum t log p + (1 - t) log(1 - p)
        dL/dp = (p - t) / (p (1 - p)) / K   inside the clip range, 0 where the clip applies (as Keras)
    Huber(delta=1.0), e = y - t:
        L = 1/K sum  e^2 / 2               (|e| <= delta)
                     delta (|e| - delta/2) (|e| > delta)
        dL/dy = clip(e, -delta, delta) / K
    MAE:  L = 1/K sum |e|,   dL/dy = sign(e) / K   (0 at e = 0, as TensorFlow's |.|)

``from_logits`` defaults to **True** here (Keras's ``BinaryCrossentropy`` defaults to False): like
``SoftMaxLoss``, the network ends in a Linear layer, no Sigmoid, and the loss is computed stably
from the logits.  Pass ``from_logits=False`` for a network ending in ``Sigmoid``.  Targets of
``BinaryCrossEntropy`` are probabilities in [0, 1] (labels 0/1); ``(N,)`` targets are taken for an
``(N, 1)`` prediction.  Caches: the gradient ``dL/dprediction`` (computed with the loss).
"""
import numpy as np

from ..backend import get_array_module, read_scalars
from .base import ShapeError, format_shape
from .losses import Loss
from .rectifiers import stable_sigmoid

__all__ = ["BinaryCrossEntropy", "Huber", "MAE", "HuberLoss", "MAELoss"]


class _ElementwiseLoss(Loss):
    def _prepare_target(self, y, t, validate):
        if t.ndim == 1 and y.ndim == 2 and y.shape[1] == 1 and t.shape[0] == y.shape[0]:
            t = t.reshape(-1, 1)
        if tuple(t.shape) != tuple(y.shape):
            raise ShapeError(f"{self._describe()}: targets must have the prediction's shape "
                             f"{format_shape(tuple(y.shape))}, received {format_shape(tuple(t.shape))}")
        if t.dtype.kind not in "biuf":
            raise ValueError(f"{self._describe()}: targets must be numbers, received dtype {t.dtype}")
        return t.astype(y.dtype, copy=False)

    def _backward(self, upstream):
        return self._cache["grad"] * upstream


class BinaryCrossEntropy(_ElementwiseLoss):
    """Mean binary cross-entropy; from logits (default, stable) or from probabilities (module docstring)."""

    #: Keras's clip of probabilities (``keras.config.epsilon()``)
    EPSILON = 1e-7

    def __init__(self, from_logits=True, shape=None, name=None):
        super().__init__(shape, name)
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(f"{self._describe()}: from_logits must be True or False, received {from_logits!r}")
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}

    def probabilities(self, prediction):
        """``sigmoid(z)`` of logits (``from_logits=True``), else the prediction itself (``predict_proba``)."""
        return stable_sigmoid(prediction) if self.from_logits else prediction

    def _prepare_target(self, y, t, validate):
        t = super()._prepare_target(y, t, validate)
        if validate and t.size:
            lo, hi = (float(v) for v in read_scalars(t.min(), t.max(), why="check"))
            if not (0 <= lo and hi <= 1):
                raise ValueError(f"{self._describe()}: targets must be probabilities in [0, 1] (labels 0/1), "
                                 f"received values in [{lo}, {hi}]")
        if validate and not self.from_logits and y.size:
            lo, hi = (float(v) for v in read_scalars(y.min(), y.max(), why="check"))
            if not (0 <= lo and hi <= 1):
                raise ValueError(f"{self._describe()}: with from_logits=False the predictions must be "
                                 f"probabilities in [0, 1], received values in [{lo}, {hi}]; end the network "
                                 "in Sigmoid, or use from_logits=True on logits")
        return t

    def _forward_pair(self, z, t):
        xp = get_array_module(z)
        k = z.dtype.type(1.0 / z.size)
        one = z.dtype.type(1)
        if self.from_logits:
            per = xp.maximum(z, z.dtype.type(0)) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
            self._cache["grad"] = (stable_sigmoid(z) - t) * k
            return per.mean()
        eps = z.dtype.type(self.EPSILON)
        p = xp.clip(z, eps, one - eps)
        per = -(t * xp.log(p) + (one - t) * xp.log(one - p))
        inside = (z >= eps) & (z <= one - eps)
        self._cache["grad"] = xp.where(inside, (p - t) / (p * (one - p)), z.dtype.type(0)) * k
        return per.mean()


class Huber(_ElementwiseLoss):
    """Mean Huber loss: quadratic within ``delta`` of the target, linear beyond (module docstring)."""

    def __init__(self, delta=1.0, shape=None, name=None):
        super().__init__(shape, name)
        if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)) \
                or not np.isfinite(delta) or not delta > 0:
            raise ValueError(f"{self._describe()}: delta must be a finite number > 0, received {delta!r}")
        self.delta = float(delta)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}

    def _forward_pair(self, y, t):
        xp = get_array_module(y)
        e = y - t
        a = xp.abs(e)
        d = y.dtype.type(self.delta)
        half = y.dtype.type(0.5)
        per = xp.where(a <= d, half * e * e, d * (a - half * d))
        self._cache["grad"] = xp.clip(e, -d, d) * y.dtype.type(1.0 / y.size)
        return per.mean()


class MAE(_ElementwiseLoss):
    """Mean absolute error (module docstring)."""

    def _forward_pair(self, y, t):
        xp = get_array_module(y)
        e = y - t
        self._cache["grad"] = xp.sign(e) * y.dtype.type(1.0 / y.size)
        return xp.abs(e).mean()


#: names in the style of ``MSELoss``
HuberLoss = Huber
MAELoss = MAE
