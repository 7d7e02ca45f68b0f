"""Weight penalties added to the loss: ``kernel_regularizer`` / ``bias_regularizer`` of
``Linear`` and ``Convolution`` (Keras's ``L1``, ``L2``, ``L1L2``, same defaults and formulas)::

    L1(l1=0.01):          penalty = l1 * sum |w|               d/dw = l1 * sign(w)   (0 at w = 0)
    L2(l2=0.01):          penalty = l2 * sum w^2               d/dw = 2 * l2 * w
    L1L2(l1=0.0, l2=0.0): both

As in Keras, the penalties of every layer are added to the batch's mean loss (not divided by
the batch size): the loss ``fit`` reports (history, progress bar, callbacks' logs),
``evaluate``'s and the validation loss all include them, and so do the gradients the optimizer
gets.  A ``Linear`` layer's kernel is ``W[1:]`` and its bias ``W[0]``.  Frozen layers
(``trainable = False``) add no penalty: Keras counts the regularizers of trainable weights only.

``apply(layers)`` is what the trainer runs after each backward pass; ``penalty(layers)`` the
loss term alone.  Names: ``"l1"``, ``"l2"``, ``"l1_l2"``/``"l1l2"``, or an instance.
"""
import math

import numpy as np

from ..backend import get_array_module

__all__ = ["Regularizer", "L1", "L2", "L1L2", "get", "penalty", "apply", "to_config", "from_config"]


def _coef(owner, name, value):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, received {value!r}")
    return float(value)


class Regularizer:
    """``regularizer(w)`` -> the penalty (0-d array); ``gradient(w)`` -> its gradient (like ``w``)."""

    l1 = 0.0
    l2 = 0.0

    def __call__(self, w):
        xp = get_array_module(w)
        total = xp.zeros((), dtype=w.dtype)
        if self.l1:
            total = total + w.dtype.type(self.l1) * xp.abs(w).sum()
        if self.l2:
            total = total + w.dtype.type(self.l2) * (w * w).sum()
        return total

    def gradient(self, w):
        xp = get_array_module(w)
        g = xp.zeros_like(w)
        if self.l1:
            g += w.dtype.type(self.l1) * xp.sign(w)
        if self.l2:
            g += w.dtype.type(2 * self.l2) * w
        return g

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()) + ")"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


class L1(Regularizer):
    """``l1 * sum |w|`` (Keras ``L1``, default 0.01)."""

    def __init__(self, l1=0.01):
        self.l1 = _coef("L1", "l1", l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum w^2`` (Keras ``L2``, default 0.01)."""

    def __init__(self, l2=0.01):
        self.l2 = _coef("L2", "l2", l2)

    def get_config(self):
        return {"l2": self.l2}


class L1L2(Regularizer):
    """``l1 * sum |w| + l2 * sum w^2`` (Keras ``L1L2``, defaults 0)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _coef("L1L2", "l1", l1)
        self.l2 = _coef("L1L2", "l2", l2)


_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}
_BY_CLASS = {"L1": L1, "L2": L2, "L1L2": L1L2}


def get(spec, where="regularizer"):
    """A ``Regularizer`` (or None) from None, a name or an instance."""
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, str) and spec.lower() in _BY_NAME:
        return _BY_NAME[spec.lower()]()
    if isinstance(spec, dict):
        return from_config(spec)
    raise ValueError(f"{where}: unknown regularizer {spec!r}; give one of {sorted(_BY_NAME)}, "
                     "an L1/L2/L1L2 instance, or None")


def to_config(reg):
    """JSON-able record of a regularizer (None stays None)."""
    return None if reg is None else {"class": type(reg).__name__, "config": reg.get_config()}


def from_config(entry):
    if entry is None:
        return None
    try:
        return _BY_CLASS[entry["class"]](**entry["config"])
    except (KeyError, TypeError):
        raise ValueError(f"unknown regularizer record {entry!r}; known classes {sorted(_BY_CLASS)}") from None


def _parts(layer):
    """``(regularizer, parameter name, index)`` of a layer's regularised weights (none when frozen)."""
    fn = getattr(layer, "regularized_parts", None)
    return fn() if fn is not None and getattr(layer, "trainable", False) else []


def has_any(layers):
    return any(_parts(layer) for layer in layers)


def penalty(layers):
    """The sum of every layer's penalties (a 0-d array on the parameters' device), or 0.0."""
    total = 0.0
    for layer in layers:
        for reg, name, idx in _parts(layer):
            total = total + reg(layer.params[name][idx])
    return total


def apply(layers):
    """Add each penalty's gradient to its layer's ``grads`` (trainable layers; new arrays, the
    old ones are left as they were) and return the total penalty (see ``penalty``)."""
    total = 0.0
    for layer in layers:
        parts = _parts(layer)
        if not parts:
            continue
        new = {}
        for reg, name, idx in parts:
            w = layer.params[name][idx]
            total = total + reg(w)
            if layer.grads.get(name) is None:
                continue
            if name not in new:
                new[name] = layer.grads[name].copy()
            new[name][idx] += reg.gradient(w)
        layer.grads.update(new)
    return total
