"""The three interfaces of the framework: ``Node``, ``Neuron`` and ``Optimizer``.

* A ``Node`` is a differentiable map ``y = f(x)`` without trainable parameters
  (activations, reshapes, pooling, losses).  ``forward(x)`` computes ``y`` and
  keeps what the backward pass needs in named caches; ``backward(dy)`` takes the
  upstream gradient ``dL/dy`` and returns ``dL/dx``.
* A ``Neuron`` is a ``Node`` with trainable parameters (``Linear``,
  ``Convolution``).  Its ``backward`` also stores ``dL/dparam`` for every
  parameter in ``grads`` (and under the public names ``W_grad``/``b_grad``).
* An ``Optimizer`` turns the gradients stored in neurons into parameter updates.

Shapes given to constructors include the batch dimension, as in
``ReLU((batch, 4, 26, 26))``; the batch entry never binds (any batch size works,
``None`` is allowed).  Only the per-sample part is checked.

Contracts every layer keeps:
* ``forward`` and ``backward`` never modify their arguments;
* float inputs keep their dtype in parameter-free nodes; neurons compute in
  the dtype of their parameters (float32 by default, float64 for checks);
* bad input raises ``ShapeError``/``ValueError`` naming the layer, what was
  expected and what was received.
"""
import itertools
import weakref
from abc import ABC, abstractmethod

import numpy as np

from .backend import get_array_module, is_device_array, to_device
from .serialization import register_layer

__all__ = ["Node", "Neuron", "Optimizer", "ShapeError", "NotReadyError", "format_shape"]

_counters = {}


class ShapeError(ValueError):
    """An array reached a layer with a shape that layer cannot take."""


class NotReadyError(RuntimeError):
    """``backward`` was called before ``forward`` (nothing is cached)."""


def format_shape(shape):
    """``(None, 1, 28, 28)``-style text; ``None`` stands for 'any batch size'."""
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _auto_name(cls_name):
    base = cls_name.lower()
    n = _counters.setdefault(base, itertools.count(1))
    return f"{base}_{next(n)}"


def sample_shape(shape):
    """Drop the batch entry of a constructor shape: ``(50, 4, 26, 26) -> (4, 26, 26)``.

    ``None`` (shape not known yet) stays ``None``; an int ``n`` means ``(n,)``.
    """
    if shape is None:
        return None
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    shape = tuple(shape)
    if len(shape) < 1:
        raise ShapeError(f"a layer shape needs a batch entry first, got {shape}")
    return tuple(None if s is None else int(s) for s in shape[1:])


class Node(ABC):
    """A differentiable map without trainable parameters.

    Subclasses implement ``_forward(x)`` and ``_backward(dy)`` and, when their
    output shape differs from the input shape, ``compute_output_shape``.
    ``input_shape`` is the per-sample shape (no batch entry) or ``None``.
    """

    #: Neurons override; used by optimizers and summaries.
    trainable = False

    #: Training (True, the default) or inference mode.  Layers whose forward differs between the
    #: two (``Dropout``: random masks / identity; ``BatchNorm``: batch / running statistics) read
    #: it.  A student's loop calling ``forward`` directly trains; ``NeuralNetwork.train()``,
    #: ``eval()`` and ``with net.inference():`` set it on every layer (``fit`` trains;
    #: ``predict``/``evaluate``/``layer_outputs``/``input_gradient`` infer), or set it on one layer.
    training = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_layer(cls)  # so saved models can name the class

    def __init__(self, shape=None, name=None):
        self.input_shape = sample_shape(shape)
        self.name = name or _auto_name(type(self).__name__)
        self._cache = {}
        self._out_shape = None

    # -- shapes -----------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape (default: same)."""
        return input_shape

    @property
    def output_shape(self):
        """Per-sample output shape, or None while the input shape is unknown."""
        if self.input_shape is None:
            return None
        return self.compute_output_shape(self.input_shape)

    def _describe(self):
        return f"{type(self).__name__} layer '{self.name}'"

    def check_input(self, x):
        """Raise ShapeError unless ``x`` is a batch this layer can take."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(
                f"{self._describe()} expects an array (NumPy or CuPy), received {type(x).__name__}"
            )
        expected = self.input_shape
        if expected is None:
            return
        got = tuple(x.shape[1:])
        if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
            raise ShapeError(
                f"{self._describe()} expects input of shape {format_shape((None,) + expected)} "
                f"(N = any batch size), received {format_shape(tuple(x.shape))}"
            )

    # -- forward / backward -----------------------------------------------------
    def forward(self, x):
        """Compute the layer's output for a batch ``x`` (cached for ``backward``)."""
        self.check_input(x)
        x = self._as_float(x)
        y = self._forward(x)
        self._out_shape = y.shape
        return y

    def backward(self, upstream, need_input_grad=True):
        """Given ``dL/dy`` (same shape as the last output), return ``dL/dx``.

        ``need_input_grad=False`` (used for a network's first layer) skips
        ``dL/dx`` and returns None; neurons still compute their parameter grads.
        """
        self.check_upstream(upstream)
        if isinstance(self, Neuron):      # frozen ones too (trainable = False): the split step sums them
            return self._backward(upstream, need_input_grad)
        return self._backward(upstream) if need_input_grad else None

    def check_upstream(self, upstream):
        """Raise unless ``upstream`` can be this layer's ``dL/dy``: a forward ran, same shape as its output."""
        if self._out_shape is None:
            raise NotReadyError(f"{self._describe()}: backward() called before forward()")
        if tuple(upstream.shape) != tuple(self._out_shape):
            raise ShapeError(
                f"{self._describe()}: the upstream gradient must have the shape of the last "
                f"output {format_shape(tuple(self._out_shape))}, received {format_shape(tuple(upstream.shape))}"
            )

    def __call__(self, x):
        return self.forward(x)

    @abstractmethod
    def _forward(self, x):
        """The layer's formula; ``x`` has been checked."""

    @abstractmethod
    def _backward(self, dy):
        """dL/dx from dL/dy, using the caches of the last forward."""

    # -- helpers ----------------------------------------------------------------
    def _as_float(self, x):
        """Integer/bool input becomes float32; float input keeps its dtype."""
        if x.dtype.kind in "fc":
            return x
        return x.astype(np.float32)

    # parameters (none for a plain node) -----------------------------------------
    @property
    def params(self):
        """Trainable parameters by name (empty for a Node)."""
        return {}

    @property
    def grads(self):
        """Gradients of the last backward pass by parameter name (empty for a Node)."""
        return {}

    @property
    def buffers(self):
        """Non-trainable state by name, saved with the model (BatchNorm's moving statistics; else empty)."""
        return {}

    # configuration (for saving and summaries) ----------------------------------
    def get_config(self):
        """Constructor arguments (JSON-able) that rebuild this layer."""
        shape = None if self.input_shape is None else [None] + list(self.input_shape)
        return {"shape": shape, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def count_params(self):
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def clear_cache(self):
        """Drop the arrays kept for backward (frees memory after inference)."""
        self._cache = {}
        self._out_shape = None

    def __repr__(self):
        shape = "?" if self.input_shape is None else format_shape((None,) + self.input_shape)
        return f"{type(self).__name__}(name={self.name!r}, input_shape={shape})"


class Neuron(Node):
    """A Node with trainable parameters.

    Subclasses keep parameters in ``self._params`` (name -> array) and write
    gradients to ``self._grads`` in ``_backward``.  The dtype of the parameters
    is the dtype the layer computes in; inputs are cast to it.
    """

    #: ``layer.trainable = False`` freezes the layer: optimizers leave its parameters alone,
    #: ``summary`` counts them as non-trainable, and the setting is saved with the model
    #: (its gradients are still computed, as they cost little and keep the split step simple)
    trainable = True

    def __init__(self, shape=None, name=None, dtype=np.float32):
        super().__init__(shape, name)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"{self._describe()}: dtype must be a float type, received {self.dtype}")
        self._params = {}
        self._grads = {}

    @property
    def params(self):
        return self._params

    @property
    def grads(self):
        return self._grads

    def _as_float(self, x):
        if x.dtype != self.dtype:
            return x.astype(self.dtype)
        return x

    def check_input(self, x):
        """Also: ``x`` must live where the parameters live (both NumPy or both CuPy)."""
        super().check_input(x)
        p = next(iter(self._params.values()), None)
        if p is not None and is_device_array(x) != is_device_array(p):
            where = {True: "a CuPy (GPU) array", False: "a NumPy (host) array"}
            raise TypeError(
                f"{self._describe()} has its parameters on {'the GPU (CuPy)' if is_device_array(p) else 'the host (NumPy)'}"
                f" but received {where[is_device_array(x)]}; move the data with "
                f"nn_from_scratch.backend.to_device(x, like=layer.W) (NeuralNetwork methods do this for you)"
            )

    def astype(self, dtype):
        """Convert parameters (and later computation) to ``dtype``; returns self."""
        self.dtype = np.dtype(dtype)
        for k, v in self._params.items():
            self._params[k] = v.astype(self.dtype)
        self._grads = {}
        self.clear_cache()
        return self

    def set_params(self, **values):
        """Replace parameters by arrays of the same shapes (cast to the layer dtype)."""
        for k, v in values.items():
            if k not in self._params:
                raise KeyError(f"{self._describe()} has no parameter {k!r}; it has {sorted(self._params)}")
            old = self._params[k]
            if tuple(v.shape) != tuple(old.shape):
                raise ShapeError(
                    f"{self._describe()}: parameter {k!r} must have shape {tuple(old.shape)}, "
                    f"received {tuple(v.shape)}"
                )
            # to the parameters' device (either direction), then a copy the caller does not hold
            self._params[k] = to_device(v, like=old, dtype=self.dtype).copy()
        return self


class _StateByLayer:
    """``layer -> {(parameter name, slot): array}``, by the layer's identity.

    Not a ``WeakKeyDictionary``: that hashes and compares the layers themselves, and a
    layer's ``==`` is its own business (a ``@dataclass`` layer is unhashable, and two
    equal ones are still two layers with two sets of momenta).  An entry goes when its
    layer is garbage-collected; a layer that cannot be weakly referenced (``__slots__``
    without ``__weakref__``) keeps its entry until ``Optimizer.reset``.
    """

    def __init__(self):
        self._entries = {}                              # id(layer) -> (reference, state)

    def of(self, layer):
        """The state dictionary of ``layer`` (created empty the first time)."""
        entry = self._entries.get(id(layer))
        if entry is not None and entry[0]() is layer:
            return entry[1]
        key, entries = id(layer), self._entries
        try:
            def forget(ref):                            # only its own entry: the id may be reused
                if entries.get(key, (None,))[0] is ref:
                    del entries[key]
            ref = weakref.ref(layer, forget)
        except TypeError:
            ref = lambda: layer                         # noqa: E731 - kept alive with the optimizer
        entries[key] = (ref, {})
        return entries[key][1]

    def __len__(self):
        return len(self._entries)

    def peek(self, layer):
        """The state dictionary of ``layer`` if it has one, else an empty dict (nothing created)."""
        entry = self._entries.get(id(layer))
        return entry[1] if entry is not None and entry[0]() is layer else {}


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

    def __init__(self, lr, clipnorm=None, clipvalue=None, global_clipnorm=None):
        name = type(self).__name__
        if callable(lr) and not isinstance(lr, (int, float)):
            self.lr = lr                                  # a schedule: checked when used
        else:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) and not hasattr(lr, "__float__") \
                    or not lr > 0 or lr != lr or lr == float("inf"):
                raise ValueError(f"{name}: learning rate must be > 0, received {lr!r} (or give a schedule)")
            self.lr = float(lr)
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
        self._state = _StateByLayer()
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
        if callable(value) and not isinstance(value, (int, float)):
            self.lr = value
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
            raise ValueError(f"{type(self).__name__}: learning rate must be > 0, received {value!r} "
                             "(or give a schedule)")
        self.lr = float(value)

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
        self._state = _StateByLayer()
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
