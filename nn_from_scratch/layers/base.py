"""The two interfaces every layer implements: ``Node`` and ``Neuron``.

* A ``Node`` is a differentiable map ``y = f(x)`` without trainable parameters
  (activations, reshapes, pooling, losses).  ``forward(x)`` computes ``y`` and
  keeps what the backward pass needs in named caches; ``backward(dy)`` takes the
  upstream gradient ``dL/dy`` and returns ``dL/dx``.
* A ``Neuron`` is a ``Node`` with trainable parameters (``Linear``,
  ``Convolution``).  Its ``backward`` also stores ``dL/dparam`` for every
  parameter in ``grads`` (and under the public names ``W_grad``/``b_grad``).

Shapes given to constructors include the batch dimension, as in
``ReLU((batch, 4, 26, 26))``; the batch entry never binds (any batch size works,
``None`` is allowed).  Only the per-sample part is checked.

What every layer keeps (``docs/ARCHITECTURE.md``, "Where to add a layer"):
* ``forward`` and ``backward`` never modify their arguments;
* float inputs keep their dtype in parameter-free nodes; neurons compute in
  the dtype of their parameters (float32 by default, float64 for checks);
* bad input raises ``ShapeError``/``ValueError`` naming the layer, what was
  expected and what was received.

What the package does for a student's class (adopting ``forward``/``backward``, the checks that
explain a mistake) is in ``teaching.py``; shapes and their errors in ``shapes.py``.
"""
import contextlib
import itertools
from abc import ABC, abstractmethod

import numpy as np

from ..backend import is_device_array, to_device
from . import teaching
from .registry import _REGISTRY, register_layer
from .shapes import NotBuiltError, NotReadyError, ShapeError, format_shape, not_built_message, sample_shape
from .teaching import LayerDefinitionError

__all__ = ["Node", "Neuron", "ShapeError", "NotReadyError", "NotBuiltError", "LayerDefinitionError", "format_shape",
           "sample_shape"]

_counters = {}


def _auto_name(cls_name):
    base = cls_name.lower()
    n = _counters.setdefault(base, itertools.count(1))
    return f"{base}_{next(n)}"


class Node(ABC):
    """A differentiable map without trainable parameters.

    Subclasses implement ``_forward(x)`` and ``_backward(dy)`` and, when their
    output shape differs from the input shape, ``compute_output_shape``.
    ``input_shape`` is the per-sample shape (no batch entry) or ``None``.
    """

    #: Neurons override; used by optimizers and summaries.
    trainable = False
    #: True on layers whose forward draws random numbers (dropout, noise); such a layer
    #: makes its forward a deterministic function of x inside ``fixed_randomness()``.
    stochastic = False

    #: True on a class whose forward and backward treat each sample of a batch on its own (no
    #: statistic across the batch, as ``BatchNorm`` has): a batch may then be cut into parts that run
    #: side by side (``docs/ARCHITECTURE.md``, "Where to add a layer").  Only the class's own body
    #: counts: a subclass says so again (it may add state shared across samples).
    per_sample = False

    #: Training (True, the default) or inference mode.  Layers whose forward differs between the
    #: two (``Dropout``: random masks / identity; ``BatchNorm``: batch / running statistics) read
    #: it.  A student's loop calling ``forward`` directly trains; ``NeuralNetwork.train()``,
    #: ``eval()`` and ``with net.inference():`` set it on every layer (``fit`` trains;
    #: ``predict``/``evaluate``/``layer_outputs``/``input_gradient`` infer), or set it on one layer.
    training = True

    #: False on a layer whose input size is inferred (``Linear(10)``, ``BatchNorm()``) until ``build``
    #: ran: the network builds it from the previous layer's output (``docs/layers.md``, "Shapes
    #: inferred"), or its first ``forward`` from the batch's shape
    built = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        teaching.prepare_class(cls, Node)      # a student's class: adoption of forward/backward, checks
        known = _REGISTRY.get(cls.__name__)
        if cls._user_layer and known is not None and not getattr(known, "_user_layer", True):
            return          # a user's class never replaces a built-in layer of the same name for loading
        register_layer(cls)  # so saved models can name the class

    def __init__(self, shape=None, name=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a str or None, received {type(name).__name__} "
                            f"{name!r}")
        self.input_shape = sample_shape(shape, type(self).__name__)
        self.name = name or _auto_name(type(self).__name__)
        self._cache = {}
        self._out_shape = None

    # -- shapes -----------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape (default: same)."""
        return input_shape

    def build(self, input_shape):
        """Complete a layer whose input size was not given from the per-sample ``input_shape`` of its
        input (its parameters drawn now, as the explicit form draws them at construction).  A layer
        that knows its sizes has nothing to do; layers with inferred sizes override ``_build``."""
        if self.built:
            return
        self._build(tuple(input_shape))
        self.built = True

    def _build(self, input_shape):
        """Set the sizes and create the parameters for per-sample ``input_shape`` (lazy layers)."""

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
        if "_cache" not in self.__dict__:
            raise LayerDefinitionError(
                f"{type(self).__name__}.__init__ did not call the base class's __init__: begin it with "
                f"`super().__init__(shape, name=name)` (a Neuron: `super().__init__(shape, name=name, dtype=dtype)`)")
        if not self.built and hasattr(x, "shape"):
            self.build(tuple(x.shape[1:]))       # a lazy layer used on its own: the batch gives its size
        x = self.prepare_input(x)
        y = self._forward(x)
        if self._user_layer:
            teaching.check_forward_result(self, x, y, Node)
        self._out_shape = y.shape
        self._io_shapes = (tuple(x.shape), tuple(y.shape))
        return y

    def prepare_input(self, x):
        """``x`` as ``forward`` hands it to ``_forward``: checked (``check_input``) and cast (integer
        input to float32; a neuron's input to its dtype).  For code that computes a layer's formula
        itself from its parameters and settings."""
        self.check_input(x)
        return self._as_float(x)

    def backward(self, upstream, need_input_grad=True):
        """Given ``dL/dy`` (same shape as the last output), return ``dL/dx``.

        ``need_input_grad=False`` (used for a network's first layer) skips
        ``dL/dx`` and returns None; neurons still compute their parameter grads.
        """
        self.check_upstream(upstream)
        if isinstance(self, Neuron):      # frozen ones too (trainable = False): the split step sums them
            if self._backward_takes_flag:
                dx = self._backward(upstream, need_input_grad)
            else:                                   # written as _backward(self, dy): dx is dropped
                dx = self._backward(upstream)
            if self._user_layer:
                teaching.check_param_grads(self)
            if not need_input_grad:
                return None
        elif need_input_grad:
            dx = self._backward(upstream)
        else:
            return None
        if self._user_layer:
            teaching.check_input_grad(self, dx)
        return dx

    #: set for every class by ``teaching.prepare_class``: a student's layer gets its results checked
    _user_layer = False
    _backward_takes_flag = True

    # -- randomness ---------------------------------------------------------------
    @contextlib.contextmanager
    def fixed_randomness(self):
        """Inside ``with layer.fixed_randomness():`` forward is a deterministic function of x.

        For a layer without randomness (``stochastic = False``) this changes nothing.
        A stochastic layer draws its random numbers through ``random_draw(name, draw)``:
        inside the context the first draw of each name is kept and reused by every
        later forward (gradient checks perturb x and call forward again: they must
        see the same mask).  Contexts nest; leaving the outermost forgets the draws.
        A layer may instead override this method (keeping the same meaning).
        """
        depth = self.__dict__.get("_fixed_depth", 0)
        self._fixed_depth = depth + 1
        try:
            yield self
        finally:
            self._fixed_depth = depth
            if depth == 0:
                self.__dict__.pop("_fixed_draws", None)

    @property
    def randomness_fixed(self):
        """True inside ``fixed_randomness()``."""
        return self.__dict__.get("_fixed_depth", 0) > 0

    def random_draw(self, name, draw):
        """``draw()`` (a function returning this forward's random numbers, e.g. a mask); inside
        ``fixed_randomness()`` the first result for ``name`` is reused while its shape fits."""
        if not self.randomness_fixed:
            return draw()
        draws = self.__dict__.setdefault("_fixed_draws", {})
        if name not in draws:
            draws[name] = draw()
        return draws[name]

    def check_upstream(self, upstream):
        """Raise unless ``upstream`` can be this layer's ``dL/dy``: a forward ran, same shape as its output."""
        if self._out_shape is None:
            raise NotReadyError(f"{self._describe()}: backward() called before forward(): the layer holds no "
                                f"forward's cache (NeuralNetwork.forward, running it by a fast path, leaves it "
                                f"none: call the layer's own forward first, or use the network's backward)")
        if not hasattr(upstream, "shape") or not hasattr(upstream, "dtype"):
            raise TypeError(f"{self._describe()}: the upstream gradient must be an array (NumPy or CuPy) of the "
                            f"last output's shape {format_shape(tuple(self._out_shape))}, received "
                            f"{type(upstream).__name__} (convert it with np.asarray)")
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
        """Integer/bool input becomes float32; float input keeps its dtype; anything else
        (complex, objects, text, dates) is refused: a cast would drop or garble it."""
        if x.dtype.kind == "f":
            return x
        self._check_real(x)
        return x.astype(np.float32)

    def _check_real(self, x):
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{self._describe()} takes real numbers (float, int or bool arrays), received an "
                            f"array of dtype {x.dtype}" + (" (the imaginary part would be dropped)"
                                                           if x.dtype.kind == "c" else ""))

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
        self._io_shapes = None

    def __repr__(self):
        shape = "?" if self.input_shape is None else format_shape((None,) + self.input_shape)
        return f"{type(self).__name__}(name={self.name!r}, input_shape={shape})"


class Neuron(Node):
    """A Node with trainable parameters.

    Subclasses register parameters in ``__init__`` with ``self.add_param(name, array)``
    (kept in ``self.params``, name -> array; readable as ``self.<name>``) and write
    ``self.grads[name] = dL/d<name>`` for each of them in ``_backward(dy,
    need_input_grad=True)`` (or ``_backward(dy)``).  The dtype of the parameters
    is the dtype the layer computes in; inputs are cast to it.
    """

    #: ``layer.trainable = False`` freezes the layer: optimizers leave its parameters alone,
    #: ``summary`` counts them as non-trainable, and the setting is saved with the model
    #: (its gradients are still computed, as they cost little and keep the split step simple)
    trainable = True

    def add_param(self, name, value):
        """Register the trainable parameter ``name`` with initial ``value`` (cast to the layer's dtype,
        on the current backend); the optimizers update it in place.  Returns the stored array."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self._describe()}: a parameter name must be an identifier such as 'W', "
                             f"received {name!r}")
        if name in self._params:
            raise ValueError(f"{self._describe()} already has a parameter {name!r}; use set_params({name}=...) "
                             f"to replace its value")
        if not hasattr(value, "shape"):
            value = np.asarray(value)
        self._params[name] = to_device(value, dtype=self.dtype).copy()
        return self._params[name]

    def __getattr__(self, name):
        # only reached when normal lookup fails: ``self.W`` / ``self.W_grad`` for registered parameters
        params = self.__dict__.get("_params")
        if params is not None:
            if name in params:
                return params[name]
            if name.endswith("_grad") and name[:-5] in params:
                return self.__dict__["_grads"].get(name[:-5])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("_params")
        if params is not None and name in params and not hasattr(type(self), name):
            self.set_params(**{name: value})       # ``self.W = ...`` replaces the registered parameter
            return
        object.__setattr__(self, name, value)

    def check_input(self, x):
        if self._user_layer:
            teaching.check_has_params(self)
        self._check_device(x)

    def __init__(self, shape=None, name=None, dtype=np.float32):
        super().__init__(shape, name)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"{self._describe()}: dtype must be a float type, received {self.dtype}")
        self._params = {}
        self._grads = {}

    @property
    def params(self):
        if not self._params and not self.built:
            raise NotBuiltError(not_built_message(self._describe(), self._explicit_example()))
        return self._params

    def _explicit_example(self):
        """How to write this layer with its input size given (for ``NotBuiltError``)."""
        return f"see help({type(self).__name__})"

    def require_built(self, what):
        """Raise ``NotBuiltError`` naming ``what`` (e.g. ``"count_params"``) while the layer is unbuilt."""
        if not self.built:
            raise NotBuiltError(not_built_message(self._describe(), self._explicit_example(), what))

    @property
    def grads(self):
        return self._grads

    def _as_float(self, x):
        if x.dtype != self.dtype:
            self._check_real(x)
            return x.astype(self.dtype)
        return x

    def _check_device(self, x):
        """Also: ``x`` must live where the parameters live (both NumPy or both CuPy)."""
        Node.check_input(self, x)
        p = next(iter(self._params.values()), None)
        if p is not None and is_device_array(x) != is_device_array(p):
            where = {True: "a CuPy (GPU) array", False: "a NumPy (host) array"}
            raise TypeError(
                f"{self._describe()} has its parameters on {'the GPU (CuPy)' if is_device_array(p) else 'the host (NumPy)'}"
                f" but received {where[is_device_array(x)]}; move the data with "
                f"nn_from_scratch.backend.to_device(x, like=layer.W) (NeuralNetwork methods do this for you)"
            )

    def astype(self, dtype):
        """Convert parameters (and later computation) to ``dtype`` (a float type); returns self."""
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt is None or dt.kind != "f":
            raise TypeError(f"{self._describe()}.astype: dtype must be a floating type (float32, float64, "
                            f"float16), received {dtype!r}; integer parameters cannot be trained")
        self.dtype = dt
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
            if not hasattr(v, "shape") or not hasattr(v, "dtype"):
                raise TypeError(f"{self._describe()}: parameter {k!r} must be an array (NumPy or CuPy) of shape "
                                f"{tuple(old.shape)}, received {type(v).__name__} (convert it with np.asarray)")
            if v.dtype.kind not in "fiub":
                raise TypeError(f"{self._describe()}: parameter {k!r} must hold real numbers, received dtype {v.dtype}")
            if tuple(v.shape) != tuple(old.shape):
                raise ShapeError(
                    f"{self._describe()}: parameter {k!r} must have shape {tuple(old.shape)}, "
                    f"received {tuple(v.shape)}"
                )
            # to the parameters' device (either direction), then a copy the caller does not hold
            self._params[k] = to_device(v, like=old, dtype=self.dtype).copy()
        return self
