"""Optimizers with the update rules of Keras's same-named optimizers.

For a parameter ``w`` with gradient ``g`` at step ``t`` (``lr`` the learning rate):

GradientDescent (Keras ``SGD``)::

    w <- w - lr * wd * w                       (only if weight_decay > 0, decoupled)
    momentum == 0:  w <- w - lr * g
    otherwise:      v <- m * v - lr * g
                    w <- w + v                  (classic)
                    w <- w + m * v - lr * g     (nesterov=True)

Adam (Keras ``Adam``)::

    m <- m + (1 - b1) * (g - m);   v <- v + (1 - b2) * (g^2 - v)
    w <- w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

AdaGrad (Keras ``Adagrad``; ``a`` starts at ``initial_accumulator_value``)::

    a <- a + g^2
    w <- w - lr * g / sqrt(a + eps)

AdamW (Keras ``AdamW``): Adam with decoupled weight decay, ``weight_decay`` 0.004 by default::

    w <- w - lr * wd * w, then the Adam update

RMSProp (Keras ``RMSprop``)::

    v <- rho * v + (1 - rho) * g^2
    w <- w - lr * g / sqrt(v + eps)                       (momentum 0)
    u <- momentum * u + lr * g / sqrt(v + eps); w <- w - u   (momentum > 0)

Every optimizer takes ``lr`` as a number or a schedule (``nn_from_scratch.schedules``) and
``clipnorm`` / ``clipvalue`` / ``global_clipnorm`` (Keras's semantics; see ``Optimizer``).
``weight_decay`` (decoupled, as Keras) uses the step's rate: ``w <- w - lr_t * wd * w``.

K-FAC and EKFAC (natural gradient with Kronecker-factored curvature) live in the package
``nn_from_scratch.kfac``, above this one; their classes register their names like these
(``get("kfac")``) when that package is imported (``nn_from_scratch`` imports it), so nothing here
imports it.  ``optimizers.KFAC`` still reads as it did when they lived here (``__getattr__``).

All updates happen in place on the parameter arrays, on their own backend.  Each ``_update`` is
the formula above in NumPy; on CuPy, the plain SGD/momentum, Adam and RMSProp updates run as one
fused kernel instead (``engine/kernels.py``, the same formula; held equal in
``tests/test_gpu_kernels.py``), the only branch each ``_update`` has for speed.

Each class declares the names ``get`` finds it by (``names``; ``optimizer_base`` keeps the registry).
"""
import math

from ..engine import kernels
from .. import validation
from ..backend import get_array_module
from .optimizer_base import Optimizer, optimizer_class, optimizer_names

__all__ = ["GradientDescent", "SGD", "Adam", "AdamW", "AdaGrad", "Adagrad", "RMSProp", "RMSprop",
           "get", "optimizer_class", "optimizer_names"]


def _check_range(owner, name, value, lo, hi, lo_open=False, hi_open=False):
    validation.real(owner, name, value)
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{owner}: {name} must be in {lb}{lo}, {hi}{rb}, received {value!r}")


class _Decay(Optimizer):
    def __init__(self, lr, weight_decay=0.0, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm)
        _check_range(type(self).__name__, "weight_decay", weight_decay, 0, math.inf)
        self.weight_decay = float(weight_decay)

    def _decay(self, param):
        if self.weight_decay:
            param -= param * (self.current_lr * self.weight_decay)


class GradientDescent(_Decay):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    names = ("sgd", "gradientdescent")

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clipnorm=None, clipvalue=None,
                 global_clipnorm=None):
        super().__init__(lr, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_range("GradientDescent", "momentum", momentum, 0, 1, hi_open=True)
        self.momentum = float(momentum)
        self.nesterov = validation.flag("GradientDescent", "nesterov", nesterov)

    def _update(self, param, grad, key):
        self._decay(param)
        lr, m = self.current_lr, self.momentum
        v = self.state(key, param, "velocity") if m else None
        if kernels.fused_enabled(param, grad, *([] if v is None else [v])):   # CuPy: one kernel
            kernels.sgd_update(param, grad, v, lr, m, self.nesterov)
            return
        if m == 0:
            param -= lr * grad                          # w <- w - lr g
            return
        v *= m                                          # v <- m v - lr g
        v -= lr * grad
        if self.nesterov:
            param += m * v - lr * grad                  # w <- w + m v - lr g
        else:
            param += v                                  # w <- w + v

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, **self._clip_config()}


SGD = GradientDescent


class Adam(_Decay):
    """Adam (Kingma & Ba) with Keras's epsilon placement and defaults."""

    names = ("adam",)

    def __init__(self, lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=0.0,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_range("Adam", "beta_1", beta_1, 0, 1, hi_open=True)
        _check_range("Adam", "beta_2", beta_2, 0, 1, hi_open=True)
        _check_range("Adam", "epsilon", epsilon, 0, math.inf, lo_open=True)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.amsgrad = validation.flag("Adam", "amsgrad", amsgrad)

    def _update(self, param, grad, key):
        self._decay(param)
        t = self.iterations
        m = self.state(key, param, "m")
        v = self.state(key, param, "v")
        # bias correction in the parameter's dtype (float32 by default), as Keras computes it;
        # in float64 Python math it differs from Keras's by ~7e-6 per update (1 - 0.999 in float32)
        dt = param.dtype.type
        b1, b2 = dt(self.beta_1), dt(self.beta_2)
        alpha = dt(self.current_lr) * (1 - b2 ** t) ** dt(0.5) / (1 - b1 ** t)
        if not self.amsgrad and kernels.fused_enabled(param, grad, m, v):   # CuPy: one kernel
            kernels.adam_update(param, grad, m, v, alpha, self.beta_1, self.beta_2, self.epsilon)
            return
        m += (grad - m) * (1 - self.beta_1)             # m <- m + (1 - b1) (g - m)
        v += (grad * grad - v) * (1 - self.beta_2)      # v <- v + (1 - b2) (g^2 - v)
        if self.amsgrad:                                # v_hat <- max(v_hat, v)
            v_hat = self.state(key, param, "v_hat")
            get_array_module(v).maximum(v_hat, v, out=v_hat)
            v = v_hat
        param -= (m * alpha) / (v ** 0.5 + self.epsilon)   # w <- w - alpha m / (sqrt(v) + eps)

    def get_config(self):
        return {"lr": self.lr, "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "amsgrad": self.amsgrad, "weight_decay": self.weight_decay, **self._clip_config()}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras's ``AdamW``: each step first
    ``w <- w - lr * weight_decay * w``, then Adam's update (which never sees the decay)."""

    names = ("adamw",)

    def __init__(self, lr=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, beta_1, beta_2, epsilon, amsgrad, weight_decay, clipnorm, clipvalue, global_clipnorm)


class AdaGrad(_Decay):
    """AdaGrad (Duchi et al.) with Keras's ``Adagrad`` defaults: the squared gradients summed from
    ``initial_accumulator_value``, epsilon inside the square root."""

    names = ("adagrad",)

    def __init__(self, lr=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=0.0, clipnorm=None,
                 clipvalue=None, global_clipnorm=None):
        super().__init__(lr, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_range("AdaGrad", "initial_accumulator_value", initial_accumulator_value, 0, math.inf)
        _check_range("AdaGrad", "epsilon", epsilon, 0, math.inf, lo_open=True)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def _update(self, param, grad, key):
        self._decay(param)
        a = self.state(key, param, "accumulator", fill=self.initial_accumulator_value)
        a += grad * grad
        param -= (grad * param.dtype.type(self.current_lr)) / (a + param.dtype.type(self.epsilon)) ** 0.5

    def get_config(self):
        return {"lr": self.lr, "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon, "weight_decay": self.weight_decay, **self._clip_config()}


Adagrad = AdaGrad


class RMSProp(_Decay):
    """RMSProp with Keras's defaults (rho=0.9, epsilon inside the square root)."""

    names = ("rmsprop",)

    def __init__(self, lr=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=0.0,
                 clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(lr, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_range("RMSProp", "rho", rho, 0, 1, hi_open=True)
        _check_range("RMSProp", "momentum", momentum, 0, 1, hi_open=True)
        _check_range("RMSProp", "epsilon", epsilon, 0, math.inf, lo_open=True)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = validation.flag("RMSProp", "centered", centered)

    def _update(self, param, grad, key):
        self._decay(param)
        v = self.state(key, param, "velocity")
        if not self.centered and self.momentum == 0 and kernels.fused_enabled(param, grad, v):   # CuPy
            kernels.rmsprop_update(param, grad, v, self.current_lr, self.rho, self.epsilon)
            return
        v *= self.rho                                   # v <- rho v + (1 - rho) g^2
        v += (1 - self.rho) * (grad * grad)
        if self.centered:
            a = self.state(key, param, "average_grad")
            a *= self.rho
            a += (1 - self.rho) * grad
            denom = v - a * a + self.epsilon
        else:
            denom = v + self.epsilon
        increment = (self.current_lr * grad) / denom ** 0.5     # lr g / sqrt(v + eps)
        if self.momentum > 0:
            u = self.state(key, param, "momentum")
            u *= self.momentum
            u += increment
            param -= u
        else:
            param -= increment

    def get_config(self):
        return {"lr": self.lr, "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered, "weight_decay": self.weight_decay, **self._clip_config()}


RMSprop = RMSProp



def __getattr__(name):
    """A registered optimizer by its class name (``optimizers.KFAC``, ``optimizers.EKFAC``: registered by
    ``nn_from_scratch.kfac`` on import), as when those classes lived in this module."""
    from .optimizer_base import _REGISTRY  # noqa: PLC0415
    for cls in _REGISTRY.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(spec, **kwargs):
    """An optimizer from an instance or a registered name (``"sgd"``, ``"adam"``, ``"rmsprop"``, ...;
    ``optimizer_base.optimizer_names()`` lists them), built with ``kwargs``."""
    if isinstance(spec, Optimizer):
        return spec
    return optimizer_class(spec)(**kwargs)

