"""``BatchNorm``: batch normalisation per feature ``(N, D)`` or per channel ``(N, C, *S)``.

With ``c`` the feature/channel axis (axis 1) and the statistics over every other axis
(``M = N * prod(S)`` values per channel)::

    training:   mu = mean(x),  var = mean((x - mu)^2)          (biased: divides by M, as Keras)
                moving_mean     <- momentum * moving_mean     + (1 - momentum) * mu
                moving_variance <- momentum * moving_variance + (1 - momentum) * var   (biased too)
    inference:  mu = moving_mean,  var = moving_variance
    both:       xhat = (x - mu) / sqrt(var + epsilon),   y = gamma * xhat + beta

Keras's ``BatchNormalization`` defaults and semantics: ``momentum = 0.99``, ``epsilon = 1e-3``,
``gamma = 1``, ``beta = 0``, ``moving_mean = 0``, ``moving_variance = 1``, and the biased batch
variance both for normalising and for the moving average (PyTorch normalises with the biased
one but averages the unbiased one, and writes ``momentum`` as ``1 - ours``: its 0.1 is our 0.9).
Keras's ``axis=-1`` on channels-last data is our axis 1 on channels-first data.

Backward, with ``g = dL/dy`` and sums over the same axes as the statistics::

    dL/dbeta  = sum g,     dL/dgamma = sum g * xhat
    training:   dL/dx = gamma / (M sqrt(var + eps)) * (M g - sum g - xhat * sum g xhat)
                (the full formula: mu and var depend on every sample of the batch)
    inference:  dL/dx = gamma / sqrt(var + eps) * g

Training mode needs at least two values per channel (``M >= 2``; one sample of ``(N, D)`` data
would normalise to 0): a batch with fewer raises ``ValueError``; use inference mode for single
samples.  The moving statistics are non-trainable state (``buffers``), saved and loaded with the
model like the weights.  The layer couples the samples of a batch: a batch cannot be cut into
parts computed apart.
Following Keras, a layer frozen with ``trainable = False`` runs in inference mode.
Caches: ``xhat``, ``inv = 1 / sqrt(var + eps)``, and whether batch statistics were used.
"""
import math
import numbers

import numpy as np

from ..backend import get_array_module, to_device
from .initializers import backend as _backend
from ..validation import is_int
from .base import Neuron, ShapeError, format_shape, sample_shape

__all__ = ["BatchNorm", "BatchNormalization"]


class BatchNorm(Neuron):
    """Batch normalisation over axis 1 of ``(N, D)`` or ``(N, C, *S)`` data (module docstring).

    ``BatchNorm(shape=None, momentum=0.99, epsilon=1e-3, dtype=float32, name=None)``, ``shape``:

    * ``C`` (an int): ``C`` features of ``(N, C)`` input or ``C`` channels of ``(N, C, *S)`` input,
      as PyTorch's ``BatchNorm2d(C)``; the rank comes from the input when the network is built;
    * nothing: ``C`` too comes from the input (Keras's ``BatchNormalization()``);
    * ``(N, D)``/``(N, C, *S)`` (spatial sizes may be None): that input shape exactly.

    A ``C`` that differs from the input's raises ``ShapeError`` showing the form to write
    (``docs/layers.md``, "Shapes inferred").
    Parameters ``gamma``, ``beta``: ``(C,)``; buffers ``moving_mean``, ``moving_variance``: ``(C,)``.
    """

    def __init__(self, shape=None, momentum=0.99, epsilon=1e-3, dtype=np.float32, name=None):
        super().__init__(None, name=name, dtype=dtype)
        c = None
        if shape is not None and is_int(shape):
            if shape < 1:
                raise ShapeError(f"{self._describe()}: the number of features/channels must be >= 1, received "
                                 f"{shape!r}")
            c = int(shape)          # BatchNorm(8): 8 channels (axis 1) of input of any rank, as PyTorch/Keras
        elif shape is not None:
            try:
                self.input_shape = sample_shape(shape)
            except (ShapeError, TypeError, ValueError):
                self.input_shape = None
            if not self.input_shape or self.input_shape[0] is None or self.input_shape[0] < 1:
                raise ShapeError(f"{self._describe()}: shape must be the number of features/channels C "
                                 f"(BatchNorm(8)), (N, D), (N, C, *S), or nothing (BatchNorm(): C from the "
                                 f"input), with D/C known, received {shape!r}")
            c = self.input_shape[0]
        for arg, value, ok in (("momentum", momentum, lambda v: 0 <= v < 1),
                               ("epsilon", epsilon, lambda v: v > 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or not ok(value):
                want = "0 <= momentum < 1" if arg == "momentum" else "epsilon > 0"
                raise ValueError(f"{self._describe()}: {arg} must be a number with {want}, received {value!r}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.channels = c
        if self.input_shape is None:
            self.built = False      # the rank (and for BatchNorm() the channels) come from the input (build)
        if c is not None:
            self._make_params(c)

    def _make_params(self, c):
        """gamma = 1, beta = 0, moving mean 0, moving variance 1, all ``(C,)`` (no random draw)."""
        self.add_param("gamma", np.ones(c, dtype=self.dtype))
        self.add_param("beta", np.zeros(c, dtype=self.dtype))
        self._buffers = {"moving_mean": _backend.to_device(np.zeros(c, dtype=self.dtype)),
                         "moving_variance": _backend.to_device(np.ones(c, dtype=self.dtype))}

    def _build(self, input_shape):
        if len(input_shape) < 1 or input_shape[0] is None:
            raise ShapeError(f"{self._describe()} normalises axis 1 of (N, D) or (N, C, *S) input with D/C known, "
                             f"received samples of shape {format_shape((None,) + tuple(input_shape))}")
        c = int(input_shape[0])
        if self.channels is not None and c != self.channels:
            form = (f"BatchNorm({c})" if len(input_shape) == 1 else
                    f"BatchNorm({c}) or BatchNorm((None, {c}{', None' * (len(input_shape) - 1)}))")
            raise ShapeError(f"{self._describe()} was given {self.channels} "
                             f"{'features' if len(input_shape) == 1 else 'channels'} but its input has {c} (samples "
                             f"of shape {format_shape((None,) + tuple(input_shape))}; axis 1 is normalised): write "
                             f"{form}, or BatchNorm() to take the size from the input")
        self.input_shape = (c,) + (None,) * (len(input_shape) - 1)
        if self.channels is None:
            self.channels = c
            self._make_params(c)

    def _explicit_example(self):
        return "BatchNorm(C) or BatchNorm((None, C, None, None))"

    # -- state --------------------------------------------------------------------------------
    @property
    def buffers(self):
        """Non-trainable state by name: ``moving_mean``, ``moving_variance`` (the optimizer leaves them)."""
        if self.channels is None:
            self.require_built("buffers")
        return self._buffers

    def set_buffers(self, **values):
        """Replace buffers by arrays of the same shapes (cast to the layer dtype, copied)."""
        for k, v in values.items():
            if k not in self.buffers:
                raise KeyError(f"{self._describe()} has no buffer {k!r}; it has {sorted(self._buffers)}")
            old = self._buffers[k]
            if tuple(v.shape) != tuple(old.shape):
                raise ShapeError(f"{self._describe()}: buffer {k!r} must have shape {tuple(old.shape)}, "
                                 f"received {tuple(v.shape)}")
            self._buffers[k] = to_device(v, like=old, dtype=self.dtype).copy()
        return self

    @property
    def gamma(self):
        return self.params["gamma"]

    @property
    def beta(self):
        return self.params["beta"]

    @property
    def moving_mean(self):
        return self.buffers["moving_mean"]

    @property
    def moving_variance(self):
        return self.buffers["moving_variance"]

    def astype(self, dtype):
        super().astype(dtype)
        for k, v in self.__dict__.get("_buffers", {}).items():
            self._buffers[k] = v.astype(self.dtype)
        return self

    def count_params(self):
        """``4 C`` as Keras counts them: ``2 C`` trainable (gamma, beta), ``2 C`` not (the moving statistics)."""
        if self.channels is None:
            self.require_built("count_params")
        return 4 * self.channels

    @classmethod
    def param_shapes(cls, config):
        """``{"gamma", "beta", "moving_mean", "moving_variance": (C,)}`` for a ``get_config`` record,
        without building the layer (the model file check, ``serialization.py``: the moving statistics
        are validated like the weights)."""
        c = config["shape"] if is_int(config["shape"]) else list(config["shape"])[1]
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"shape[1] (features/channels) must be a positive integer, received {c!r}")
        return {name: (int(c),) for name in ("gamma", "beta", "moving_mean", "moving_variance")}

    def get_config(self):
        if self.channels is None:
            self.require_built("get_config (saving)")
        shape = self.channels if self.input_shape is None else [None] + list(self.input_shape)
        return {"shape": shape, "momentum": self.momentum, "epsilon": self.epsilon,
                "dtype": self.dtype.name, "name": self.name}

    # -- forward / backward -------------------------------------------------------------------
    def check_input(self, x):
        if self.input_shape is None and hasattr(x, "ndim"):        # BatchNorm(C), rank still open
            if x.ndim < 2 or x.shape[1] != self.channels:
                raise ShapeError(f"{self._describe()} normalises {self.channels} features/channels along axis 1, "
                                 f"received {format_shape(tuple(x.shape))}")
        elif hasattr(x, "ndim") and x.ndim != len(self.input_shape) + 1:
            raise ShapeError(f"{self._describe()} expects input of shape "
                             f"{format_shape((None,) + self.input_shape)}, received {format_shape(tuple(x.shape))}")
        super().check_input(x)

    def _axes(self, x):
        return (0,) + tuple(range(2, x.ndim))

    def _column(self, v, x):
        """``(C,)`` -> broadcastable against ``x``: ``(1, C, 1, ...)``."""
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def check_training_batch(self, n, where="fit"):
        """Raise ``DataError`` (before any step) when a training batch of ``n`` samples would give
        fewer than 2 values per channel (``fit`` checks its smallest batch, the last of each epoch)."""
        spatial = self.input_shape[1:] if self.input_shape is not None else (None,)
        if not self.uses_batch_statistics() or None in spatial or n * math.prod(spatial) >= 2:
            return
        from ..validation import DataError  # noqa: PLC0415
        raise DataError(f"{where}: the last batch of every epoch would hold {n} sample, and {self._describe()} "
                        "needs at least 2 values per channel in training mode; choose a batch_size that "
                        "leaves no single sample over, or drop one sample")

    def uses_batch_statistics(self):
        """Training mode and not frozen (Keras: ``training and trainable``)."""
        return bool(self.training) and bool(self.trainable)

    def _forward(self, x):
        xp = get_array_module(x)
        axes = self._axes(x)
        m = x.size // self.channels if self.channels else 0
        batch = self.uses_batch_statistics()
        if batch:
            if m < 2:
                raise ValueError(
                    f"{self._describe()}: training mode normalises with the batch's statistics and needs at "
                    f"least 2 values per channel, received a batch of shape {format_shape(tuple(x.shape))} "
                    f"({m} value per channel); use a batch of 2 or more samples, or inference mode "
                    "(net.eval(), with net.inference():, layer.training = False) for single samples")
            mean = x.mean(axis=axes)
            xc = x - self._column(mean, x)
            var = (xc * xc).mean(axis=axes)
            one = self.dtype.type(1)
            mom = self.dtype.type(self.momentum)
            self._buffers["moving_mean"] = self._buffers["moving_mean"] * mom + mean * (one - mom)
            self._buffers["moving_variance"] = self._buffers["moving_variance"] * mom + var * (one - mom)
        else:
            xc = x - self._column(self._buffers["moving_mean"], x)
            var = self._buffers["moving_variance"]
        inv = one_over_sqrt(var + self.dtype.type(self.epsilon), xp)
        xhat = xc * self._column(inv, x)
        self._cache.update(xhat=xhat, inv=inv, batch=batch)
        y = xhat * self._column(self._params["gamma"], x)
        y += self._column(self._params["beta"], x)
        return y

    def _backward(self, dy, need_input_grad=True):
        xhat, inv, batch = self._cache["xhat"], self._cache["inv"], self._cache["batch"]
        dy = dy.astype(self.dtype, copy=False)
        axes = self._axes(dy)
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * xhat).sum(axis=axes)
        self._grads["gamma"], self._grads["beta"] = dgamma, dbeta
        if not need_input_grad:
            return None
        scale = self._column(self._params["gamma"] * inv, dy)
        if not batch:
            return dy * scale
        m = dy.size // self.channels
        t = self.dtype.type(1.0 / m)
        dx = dy - self._column(dbeta * t, dy)
        dx -= xhat * self._column(dgamma * t, dy)
        dx *= scale
        return dx

    def __repr__(self):
        return (f"BatchNorm(channels={self.channels}, momentum={self.momentum}, epsilon={self.epsilon}, "
                f"name={self.name!r})")


def one_over_sqrt(v, xp):
    return xp.reciprocal(xp.sqrt(v))


#: Keras's name
BatchNormalization = BatchNorm
