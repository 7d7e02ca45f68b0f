"""Loss nodes: ``loss = forward(prediction, target)``, then ``backward()``: ``SoftMaxLoss``,
``MSELoss``, and ``BinaryCrossEntropy``, ``Huber``, ``MAE`` (means over every entry).

A loss maps a batch to a scalar (the mean over the batch).  ``backward(upstream=1)``
returns ``dL/dprediction`` with the prediction's shape.

Sample weights (Keras's semantics, ``reduction="sum_over_batch_size"``)::

    L = 1/N sum_n w_n l_n          dL/dprediction_n = w_n * (dL/dprediction_n of the unweighted mean)

with ``l_n`` the sample's own loss (``sample_losses``); the second form holds because the
unweighted mean's gradient row ``n`` is ``1/N dl_n/dprediction_n``.

``BinaryCrossEntropy``, ``Huber`` and ``MAE``: means over every entry, as Keras's same-named losses.

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

from ..backend import get_array_module, read_scalars, to_device
from .activations import stable_sigmoid
from .base import Node, NotReadyError, ShapeError, format_shape

__all__ = ["Loss", "SoftMaxLoss", "MSELoss", "labels_to_indices", "BinaryCrossEntropy", "Huber", "MAE", "HuberLoss",
           "MAELoss"]


def labels_to_indices(labels, n_classes, where="labels"):
    """Integer class indices ``(N,)`` from integer labels or one-hot rows.

    Checks the range and that float labels are whole numbers; returns the
    array on the labels' backend.  (Helper shared by losses and the trainer.)
    """
    xp = get_array_module(labels)
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{where}: class labels must be integers or one-hot rows, received dtype {labels.dtype}")
    if labels.ndim == 2:
        return labels.argmax(axis=1)
    if labels.ndim != 1:
        raise ShapeError(f"{where}: expected shape (N,) or (N, {n_classes}), received {format_shape(labels.shape)}")
    if labels.dtype.kind == "f":
        (whole,) = read_scalars(xp.all(labels == xp.rint(labels)), why="check")
        if not whole:
            raise ValueError(f"{where}: class labels must be whole numbers, received non-integer values")
        labels = labels.astype(np.int64)
    return labels


class Loss(Node):
    """Base class of losses: ``forward(prediction, target) -> scalar``."""

    def forward(self, prediction, target, validate=True, sample_weight=None):
        """Mean loss over the batch (a 0-d array on the prediction's backend).

        ``validate=False`` skips the label checks (range, whole numbers) that
        need a device->host read; the trainer validates all labels once.
        ``sample_weight``: ``(N,)`` weights, ``L = 1/N sum_n w_n l_n`` (see the module docstring).
        """
        self.check_input(prediction)
        if prediction.shape[0] == 0:
            raise ShapeError(f"{self._describe()}: the batch is empty (prediction of shape "
                             f"{format_shape(tuple(prediction.shape))}): the mean loss needs at least one sample")
        prediction = self._as_float(prediction)
        target = to_device(target, like=prediction)
        target = self._prepare_target(prediction, target, validate)
        self._cache.pop("sample_weight", None)
        if sample_weight is not None:
            w = to_device(sample_weight, like=prediction, dtype=prediction.dtype).reshape(-1)
            if w.shape[0] != prediction.shape[0]:
                raise ShapeError(f"{self._describe()}: {w.shape[0]} sample weights for {prediction.shape[0]} samples")
            per = self._sample_losses(prediction, target)
        loss = self._forward_pair(prediction, target)
        if sample_weight is not None:
            loss = (per * w).sum() / prediction.shape[0]
            self._cache["sample_weight"] = w
        self._out_shape = ()
        self._pred_shape = prediction.shape
        return loss

    def sample_losses(self, prediction, target):
        """Each sample's own loss, ``(N,)`` (their mean is ``forward``'s value)."""
        prediction = self._as_float(prediction)
        target = self._prepare_target(prediction, to_device(target, like=prediction), True)
        return self._sample_losses(prediction, target)

    def _sample_losses(self, prediction, target):
        """``(N,)`` losses from a prepared target.  This default runs the formula on each sample
        alone (a batch of one); losses override it with a vectorised form."""
        xp = get_array_module(prediction)
        saved = dict(self._cache)
        pick = (lambda t, i: (t[0], t[1][i:i + 1])) if isinstance(target, tuple) else (lambda t, i: t[i:i + 1])
        out = xp.stack([self._forward_pair(prediction[i:i + 1], pick(target, i)).reshape(())
                        for i in range(prediction.shape[0])])
        self._cache = saved
        return out

    def probabilities(self, prediction):
        """The probabilities the loss reads the network's output as (``predict_proba``)."""
        raise TypeError(f"{type(self).__name__} does not read the output as probabilities "
                        "(predict_proba needs a classification loss such as SoftMaxLoss)")

    def backward(self, upstream=1.0):
        """``dL/dprediction``, scaled by ``upstream`` (a scalar, default 1)."""
        if self._out_shape is None:
            raise NotReadyError(f"{self._describe()}: backward() called before forward()")
        if hasattr(upstream, "shape") and tuple(upstream.shape) not in ((), (1,)):
            raise ShapeError(
                f"{self._describe()}: the upstream gradient of a loss is a scalar, received shape "
                f"{format_shape(tuple(upstream.shape))}"
            )
        g = self._backward(upstream)
        w = self._cache.get("sample_weight")
        if w is not None:
            g = g * w.reshape((-1,) + (1,) * (g.ndim - 1))
        return g

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def _forward(self, x):  # pragma: no cover - losses use _forward_pair
        raise TypeError("a loss takes (prediction, target)")

    def _prepare_target(self, prediction, target, validate):
        return target


class SoftMaxLoss(Loss):
    """Mean softmax cross-entropy computed from logits.

    ``z: (N, K)`` logits, ``t``: one-hot/probability rows ``(N, K)`` or integer
    labels ``(N,)`` in ``[0, K)``::

        log p = z - max(z) - log sum_k exp(z_k - max(z))     (stable for |z| ~ 1e4)
        L     = -1/N sum_n sum_k t_nk log p_nk
        dL/dz = (softmax(z) - t) / N

    Cache: ``(softmax(z) - t) / N`` (computed with the loss).
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def _prepare_target(self, z, t, validate):
        if z.ndim != 2:
            raise ShapeError(f"{self._describe()} expects logits of shape (N, K), received "
                             f"{format_shape(tuple(z.shape))} (flatten with Vectorization first)")
        n, k = z.shape
        if t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1 and k != 1):
            t = t.reshape(-1)
            if t.shape[0] != n:
                raise ShapeError(
                    f"{self._describe()}: {t.shape[0]} labels for {n} predictions"
                )
            if not validate:
                return ("index", t if t.dtype.kind in "iu" else t.astype(np.int64))
            idx = labels_to_indices(t, k, where=self._describe())
            if idx.dtype.kind not in "iu":
                raise ValueError(f"{self._describe()}: labels must be integers, received dtype {t.dtype}")
            if idx.size:
                lo, hi = (int(v) for v in read_scalars(idx.min(), idx.max(), why="check"))
                if lo < 0 or hi >= k:
                    raise ValueError(
                        f"{self._describe()}: labels must be in [0, {k}), received values in [{lo}, {hi}]"
                    )
            return ("index", idx)
        if tuple(t.shape) != tuple(z.shape):
            raise ShapeError(
                f"{self._describe()}: targets must be integer labels (N,) = ({n},) or one-hot rows "
                f"{format_shape(tuple(z.shape))}, received {format_shape(tuple(t.shape))}"
            )
        return ("dense", t.astype(z.dtype, copy=False))

    def _forward_pair(self, z, target):
        kind, t = target
        xp = get_array_module(z)
        n = z.shape[0]
        shifted = z - z.max(axis=1, keepdims=True)          # the row maximum: exp never overflows
        e = xp.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        log_p = shifted - xp.log(s)                         # log softmax(z)
        grad = e / s                                        # softmax(z)
        if kind == "index":                                 # labels t_n: t is onehot(t_n)
            rows = xp.arange(n)
            loss = -log_p[rows, t].sum() / n
            grad[rows, t] -= 1
        else:
            loss = -(t * log_p).sum() / n
            grad -= t
        grad *= z.dtype.type(1.0 / n)
        self._cache["grad"] = grad                          # (softmax(z) - t) / N
        return loss

    def _backward(self, upstream):
        return self._cache["grad"] * upstream

    def _sample_losses(self, z, target):
        kind, t = target
        xp = get_array_module(z)
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        if kind == "index":
            return -log_p[xp.arange(z.shape[0]), t]
        return -(t * log_p).sum(axis=1)

    def probabilities(self, z):
        """``softmax(z)`` row by row (shifted by the row maximum: no overflow)."""
        xp = get_array_module(z)
        e = xp.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


class MSELoss(Loss):
    """Mean squared error averaged over every entry (as Keras's ``MeanSquaredError``).

    ``y, t: (N, *S)``;  ``L = 1/(N*D) sum (y - t)^2`` with ``D = prod(S)``;
    ``dL/dy = 2 (y - t) / (N*D)``.  Cache: ``y - t``.
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def _prepare_target(self, y, t, validate):
        if tuple(t.shape) != tuple(y.shape):
            raise ShapeError(
                f"{self._describe()}: targets must have the prediction's shape "
                f"{format_shape(tuple(y.shape))}, received {format_shape(tuple(t.shape))}"
            )
        return t.astype(y.dtype, copy=False)

    def _forward_pair(self, y, t):
        diff = y - t
        self._cache["diff"] = diff
        return (diff * diff).mean()

    def _sample_losses(self, y, t):
        d = y - t
        return (d * d).reshape(d.shape[0], -1).mean(axis=1)

    def _backward(self, upstream):
        diff = self._cache["diff"]
        grad = diff * (2.0 / diff.size)
        grad *= upstream
        return grad


# ---------------------------------------------------------------- losses over every entry
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

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

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

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

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

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def _forward_pair(self, y, t):
        xp = get_array_module(y)
        e = y - t
        self._cache["grad"] = xp.sign(e) * y.dtype.type(1.0 / y.size)
        return xp.abs(e).mean()


#: names in the style of ``MSELoss``
HuberLoss = Huber
MAELoss = MAE
