"""The ``Optimizer`` interface: turns the gradients stored in neurons into parameter updates.

Concrete optimizers (``SGD``, ``Adam``, ...) are in ``optimizers.py``; each implements
``_update(param, grad, key)`` and keeps its per-parameter state (moments, accumulators) in
``state(key, like, slot)``.

Every optimizer class registers itself by its names when it is defined, as layers do
(``names = ("sgd", "gradientdescent")``: lowercase aliases, the first the canonical one; a class
that declares none is registered under its lowercase class name).  ``optimizer_class(name)``
finds a class by a name (``optimizers.get`` and model loading use it); ``optimizer_names()``
lists them.  An optimizer defined anywhere (K-FAC in its own package, a course's own) is known
once its module is imported.
"""
import math
import numbers
from abc import ABC, abstractmethod

import numpy as np

from ..backend import get_array_module, to_device
from ..by_layer import StateByLayer

__all__ = ["Optimizer", "check_learning_rate", "optimizer_class", "optimizer_names"]

_PACKAGE = __name__.split(".")[0]
#: name (lowercase) -> optimizer class; filled by ``Optimizer.__init_subclass__``
_REGISTRY = {}


def _is_package_class(cls):
    module = cls.__module__ or ""
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


def _register(cls):
    """Put ``cls`` in the registry under its declared ``names`` (or its lowercase class name)."""
    declared = cls.__dict__.get("names")
    if declared is None:
        if cls.__name__.startswith("_") or getattr(cls._update, "__isabstractmethod__", False):
            return
        name = cls.__name__.lower()
        if name not in _REGISTRY:          # an undeclared name never takes another class's place
            _REGISTRY[name] = cls
        return
    if isinstance(declared, str) or not isinstance(declared, tuple) or not declared or \
            not all(isinstance(n, str) and n and n == n.lower() for n in declared):
        raise TypeError(f"{cls.__name__}.names must be a non-empty tuple of lowercase names such as "
                        f"('sgd', 'gradientdescent'), received {declared!r}")
    for name in declared:
        known = _REGISTRY.get(name)
        if known is not None and known is not cls and _is_package_class(known) and not _is_package_class(cls):
            raise ValueError(f"{cls.__name__}.names: {name!r} already names the optimizer {known.__name__}; "
                             f"choose another name")
    for name in declared:
        _REGISTRY[name] = cls


def optimizer_names():
    """Every registered optimizer name, sorted."""
    return sorted(_REGISTRY)


def optimizer_class(name):
    """The optimizer class registered under ``name`` (any case; a class's own name such as
    ``"GradientDescent"``, as model files record it, works too).  ``ValueError`` listing the known
    names otherwise."""
    if isinstance(name, str):
        cls = _REGISTRY.get(name.lower())
        if cls is not None:
            return cls
        for cls in _REGISTRY.values():                 # a model file names the class itself
            if cls.__name__ == name:
                return cls
    raise ValueError(f"unknown optimizer {name!r}; expected one of {optimizer_names()}")


def check_learning_rate(owner, lr):
    """``lr`` as a float after checking it is a finite number > 0 (``TypeError``/``ValueError``
    naming ``owner`` otherwise); a schedule object (callable, not a number; ``schedules.py``) is
    returned as it is, its values being checked where they are used."""
    if callable(lr) and not isinstance(lr, numbers.Number):
        return lr
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real):
        raise TypeError(f"{owner}: learning rate lr must be a number (or a schedule), received "
                        f"{type(lr).__name__} {lr!r}")
    if not lr > 0:
        raise ValueError(f"{owner}: learning rate must be > 0, received {lr!r} (lr: a finite number > 0)")
    if not math.isfinite(lr):
        raise ValueError(f"{owner}: learning rate must be finite, received {lr!r} (lr: a finite number > 0)")
    return float(lr)


class Optimizer(ABC):
    """Updates the parameters of neurons from their stored gradients.

    ``step(layers)`` applies one update to every trainable layer in ``layers``
    using ``layer.grads``; per-parameter state (momenta, moving averages) is
    kept by the optimizer, per layer object (weakly: a layer that is garbage-collected
    takes its state with it, and a new layer never inherits an old one's, even an
    equal one) and parameter name.

    ``lr``: a number, or a schedule (``nn_from_scratch.schedules``: any callable
    ``schedule(step) -> rate``, called with the number of updates done before this one, as
    Keras; its value is checked at each step).  ``_update`` reads the step's rate as
    ``self.current_lr``.

    Gradient clipping (Keras's semantics; at most one of them), before any update:

    * ``clipnorm``: each weight tensor's gradient ``g <- g * c / max(||g||, c)``
      (a ``Linear``'s kernel ``W[1:]`` and bias ``W[0]`` are two tensors, as in Keras);
    * ``global_clipnorm``: every gradient ``g <- g * c / max(G, c)`` with ``G`` the norm of all
      of the step's gradients together (NaN when ``G`` is not finite);
    * ``clipvalue``: each entry clipped to ``[-c, c]``.
    """

    #: the lowercase names ``optimizers.get`` and model loading find this class by (the first is the
    #: canonical one); each class declares its own (see the module docstring)
    names = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _register(cls)

    def __init__(self, lr, clipnorm=None, clipvalue=None, global_clipnorm=None):
        name = type(self).__name__
        self.lr = check_learning_rate(name, lr)            # a schedule: checked when used
        given = {k: v for k, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                                   ("global_clipnorm", global_clipnorm)) if v is not None}
        if len(given) > 1:
            raise ValueError(f"{name}: give at most one of clipnorm, clipvalue, global_clipnorm (as Keras), "
                             f"received {sorted(given)}")
        for k, v in given.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and v < float("inf")):
                raise ValueError(f"{name}: {k} must be a finite number > 0, received {v!r}")
        self.clipnorm = None if clipnorm is None else float(clipnorm)
        self.clipvalue = None if clipvalue is None else float(clipvalue)
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.iterations = 0
        self._state = StateByLayer()
        self.current_lr = self._rate(0)

    def _rate(self, step):
        """The learning rate of the update after ``step`` earlier ones (checked)."""
        if isinstance(self.lr, (int, float)):
            return float(self.lr)
        from .schedules import check_rate  # noqa: PLC0415 - schedules imports nothing from here
        return check_rate(self.lr(step), self.lr, step)

    @property
    def learning_rate(self):
        """The rate the next update will use (a schedule's value at ``iterations``); setting it
        (Keras's name) sets ``lr`` (a finite number > 0, or a schedule)."""
        return self._rate(self.iterations)

    @learning_rate.setter
    def learning_rate(self, value):
        self.lr = check_learning_rate(type(self).__name__, value)

    def step(self, layers):
        """One update of every parameter of every trainable layer (clipped gradients, if asked)."""
        self.current_lr = self._rate(self.iterations)
        self.iterations += 1
        items = []
        for layer in layers:
            if not getattr(layer, "trainable", False):
                continue
            for name, param in layer.params.items():
                grad = layer.grads.get(name)
                if grad is None:
                    raise RuntimeError(
                        f"{layer._describe()}: no gradient for parameter {name!r}; call backward() before step()"
                    )
                if not hasattr(grad, "shape") or tuple(grad.shape) != tuple(param.shape):
                    got = tuple(grad.shape) if hasattr(grad, "shape") else type(grad).__name__
                    raise ValueError(f"{type(self).__name__}.step: the gradient of {layer._describe()} parameter "
                                     f"{name!r} must be an array of the parameter's shape {tuple(param.shape)}, "
                                     f"received {got}")
                items.append((layer, name, param, grad))
        grads = self._clip(items) if (self.clipnorm or self.clipvalue or self.global_clipnorm) else \
            [g for *_, g in items]
        for (layer, name, param, _), grad in zip(items, grads):
            self._update(param, grad, (layer, name))

    def _clip(self, items):
        """The step's gradients clipped (new arrays; the layers' ``grads`` stay as they are)."""
        out = []
        if self.clipvalue:
            return [get_array_module(g).clip(g, -self.clipvalue, self.clipvalue) for *_, g in items]
        if self.global_clipnorm:
            c = self.global_clipnorm
            xp = get_array_module(items[0][3]) if items else np
            sq = sum((g.astype(np.float64) ** 2).sum() for *_, g in items)   # stays on the device
            with np.errstate(divide="ignore", invalid="ignore"):
                use = xp.sqrt(sq)
                scale = c * xp.minimum(1.0 / use, 1.0 / c) + (use - use)   # NaN when the norm is not finite
            return [g * scale.astype(g.dtype) for *_, g in items]
        for layer, name, _, g in items:
            g = g.copy()
            views = layer.param_views(name, g) if hasattr(layer, "param_views") else [g]
            for v in views:
                xp = get_array_module(v)
                c = v.dtype.type(self.clipnorm)
                l2sum = (v * v).sum()
                pos = l2sum > 0                   # Keras's two-sided where: a NaN gradient stays NaN
                l2norm = xp.where(pos, xp.sqrt(xp.where(pos, l2sum, 1)), l2sum)
                v[...] = (v * c) / xp.maximum(l2norm, c)
            out.append(g)
        return out

    @abstractmethod
    def _update(self, param, grad, key):
        """Update ``param`` in place from ``grad``; ``key`` indexes the state."""

    def state(self, key, like, slot, fill=0.0):
        """Per-parameter state array ``slot`` for ``key = (layer, parameter name)``, created filled
        with ``fill`` (zeros by default)."""
        layer, name = key
        s = self._state.of(layer)
        arr = s.get((name, slot))
        if arr is None:
            arr = s[(name, slot)] = get_array_module(like).zeros_like(like)
            if fill:
                arr += like.dtype.type(fill)
        elif arr.shape != like.shape or arr.dtype != like.dtype:
            raise ValueError(
                f"{type(self).__name__}: its {slot!r} state for {layer._describe()} parameter {name!r} is "
                f"{arr.dtype}{tuple(arr.shape)} but the parameter is now {like.dtype}{tuple(like.shape)}; "
                "call optimizer.reset() after replacing parameters")
        return arr

    def reset(self):
        """Forget momenta and the step count."""
        self.iterations = 0
        self._state = StateByLayer()
        self.current_lr = self._rate(0)

    def get_state(self, layers):
        """``(iterations, {(layer index, parameter name, slot): array})``: what ``fit`` needs to go on
        exactly where it stopped (a schedule's position is ``iterations``); saved with the model."""
        arrays = {}
        for i, layer in enumerate(layers):
            for (name, slot), arr in self._state.peek(layer).items():
                arrays[(i, name, slot)] = arr
        return self.iterations, arrays

    def set_state(self, layers, iterations, arrays):
        """Put back ``get_state``'s output (arrays on the parameters' device, each of its parameter's
        shape and dtype; a mismatch raises ValueError naming it)."""
        layers = list(layers)
        self.reset()
        for (i, name, slot), arr in arrays.items():
            if not 0 <= i < len(layers) or name not in layers[i].params:
                raise ValueError(f"{type(self).__name__}: state {slot!r} for layer {i} parameter {name!r}, which "
                                 "this network does not have")
            p = layers[i].params[name]
            if tuple(arr.shape) != tuple(p.shape) or np.dtype(arr.dtype) != np.dtype(p.dtype):
                raise ValueError(f"{type(self).__name__}: state {slot!r} for {layers[i]._describe()} parameter "
                                 f"{name!r} is {np.dtype(arr.dtype)}{tuple(arr.shape)} but the parameter is "
                                 f"{np.dtype(p.dtype)}{tuple(p.shape)}")
            self._state.of(layers[i])[(name, slot)] = to_device(arr, like=p).copy()
        self.iterations = int(iterations)
        self.current_lr = self._rate(max(self.iterations - 1, 0))

    def _clip_config(self):
        return {k: getattr(self, k) for k in ("clipnorm", "clipvalue", "global_clipnorm")
                if getattr(self, k, None) is not None}

    def get_config(self):
        return {"lr": self.lr, **self._clip_config()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
