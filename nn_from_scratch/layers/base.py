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

Contracts every layer keeps:
* ``forward`` and ``backward`` never modify their arguments;
* float inputs keep their dtype in parameter-free nodes; neurons compute in
  the dtype of their parameters (float32 by default, float64 for checks);
* bad input raises ``ShapeError``/``ValueError`` naming the layer, what was
  expected and what was received.
"""
import contextlib
import inspect
import itertools
from abc import ABC, abstractmethod

import numpy as np

from ..backend import is_device_array, to_device
from ..validation import is_int
from .registry import _REGISTRY, register_layer

__all__ = ["Node", "Neuron", "ShapeError", "NotReadyError", "LayerDefinitionError", "format_shape"]

_counters = {}


class ShapeError(ValueError):
    """An array reached a layer with a shape that layer cannot take."""


class NotReadyError(RuntimeError):
    """``backward`` was called before ``forward`` (nothing is cached)."""


class LayerDefinitionError(TypeError):
    """A layer class (or what its methods returned) breaks the rules of writing a layer.

    Raised when the class is defined (a method with the wrong arguments) or at its
    first forward/backward (a returned array of the wrong shape, a parameter
    without a gradient); the message says what to write instead.
    """


#: How a layer is written (quoted by the errors below; docs/custom-layers.md, "Writing your own layer").
_HOW = ("a layer implements _forward(self, x) -> y and _backward(self, dy) -> dx "
        "(a Neuron: _backward(self, dy, need_input_grad=True), storing self.grads[name] for every "
        "parameter), and compute_output_shape(self, input_shape) when y's shape differs from x's")


def _positional(func):
    """``(required, maximum)`` positional arguments of ``func`` after ``self`` (maximum None: *args)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):      # a builtin or a C function: nothing to check
        return None
    params = list(sig.parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    pos = [p for p in params if p.kind in kinds]
    required = sum(p.default is inspect.Parameter.empty for p in pos)
    varargs = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params)
    return required, None if varargs else len(pos)


def _signature_text(func):
    try:
        return f"{func.__name__}{inspect.signature(func)}"
    except (TypeError, ValueError):
        return func.__name__


def format_shape(shape):
    """``(None, 1, 28, 28)``-style text; ``None`` stands for 'any batch size'."""
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _auto_name(cls_name):
    base = cls_name.lower()
    n = _counters.setdefault(base, itertools.count(1))
    return f"{base}_{next(n)}"


def sample_shape(shape, owner="a layer", name="shape"):
    """Drop the batch entry of a constructor shape: ``(50, 4, 26, 26) -> (4, 26, 26)``.

    ``None`` (shape not known yet) stays ``None``; an int ``n`` means ``(n,)``.  Every per-sample
    entry must be an int >= 1 or None (``ShapeError`` naming ``owner`` and ``name`` otherwise:
    ``Linear(0, 10)``, ``Linear(4.7, 10)``); the batch entry an int >= 0 or None.
    """
    if shape is None:
        return None
    if is_int(shape):
        entries = (None, shape)
    else:
        try:
            entries = tuple(shape)
        except TypeError:
            raise ShapeError(f"{owner}: {name} must be an int, a tuple of ints (batch first) or None, received "
                             f"{type(shape).__name__} {shape!r}") from None
        if len(entries) < 1:
            raise ShapeError(f"{owner}: {name} needs a batch entry first, received {shape!r}")
    batch, rest = entries[0], entries[1:]
    if batch is not None and not (is_int(batch) and batch >= 0):
        raise ShapeError(f"{owner}: the batch entry of {name} must be an int or None, received {batch!r} "
                         f"(in {shape!r})")
    for s in rest:
        if s is not None and not (is_int(s) and s >= 1):
            raise ShapeError(f"{owner}: {name} must hold positive ints (None for an unknown size), received "
                             f"{shape!r}")
    return tuple(None if s is None else int(s) for s in rest)


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

    #: Training (True, the default) or inference mode.  Layers whose forward differs between the
    #: two (``Dropout``: random masks / identity; ``BatchNorm``: batch / running statistics) read
    #: it.  A student's loop calling ``forward`` directly trains; ``NeuralNetwork.train()``,
    #: ``eval()`` and ``with net.inference():`` set it on every layer (``fit`` trains;
    #: ``predict``/``evaluate``/``layer_outputs``/``input_gradient`` infer), or set it on one layer.
    training = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._adopt_public_methods()
        cls._check_methods()
        known = _REGISTRY.get(cls.__name__)
        if cls._user_layer and known is not None and not getattr(known, "_user_layer", True):
            return          # a user's class never replaces a built-in layer of the same name for loading
        register_layer(cls)  # so saved models can name the class

    @classmethod
    def _adopt_public_methods(cls):
        """Accept a layer written with ``forward``/``backward`` instead of ``_forward``/``_backward``.

        What students write first is ``def forward(self, x)`` and ``def backward(self, dy)``.
        When a class defines ``forward`` (or ``backward``) itself and no ``_forward``
        (``_backward``) exists yet in its ancestry, its method becomes the private one and
        the public method stays the base class's, which checks shapes, casts integer input,
        records what backward needs, and then calls it.
        """
        if (cls.__module__ or "").startswith("nn_from_scratch"):
            return                  # the package's own classes (e.g. Loss) define forward/backward on purpose
        for public, private in (("forward", "_forward"), ("backward", "_backward")):
            own = cls.__dict__.get(public)
            if own is None or not callable(own) or private in cls.__dict__:
                continue
            if getattr(getattr(cls, private, None), "__isabstractmethod__", False):
                setattr(cls, private, own)
                base = next(getattr(b, public) for b in cls.__mro__[1:] if public in b.__dict__)
                setattr(cls, public, base)
                cls._adopted = tuple(getattr(cls, "_adopted", ())) + (public,)

    @classmethod
    def _check_methods(cls):
        """Refuse, when the class is defined, a ``_forward``/``_backward`` that cannot be called right."""
        name = cls.__name__
        # the package's own layers are tested; a user's layer gets its results checked and explained
        cls._user_layer = not (cls.__module__ or "").startswith("nn_from_scratch")
        fwd = cls.__dict__.get("_forward")
        if fwd is not None and callable(fwd) and cls.forward is Node.forward:
            n = _positional(fwd)
            if n is not None and (n[0] > 1 or (n[1] is not None and n[1] < 1)):
                raise LayerDefinitionError(
                    f"{name}.{_signature_text(fwd)}: forward receives exactly one array, the batch x; write "
                    f"`def _forward(self, x):` and keep anything else as an attribute set in __init__ "
                    f"({_HOW})")
        bwd = cls.__dict__.get("_backward")
        if bwd is not None and callable(bwd) and cls.backward is Node.backward:
            n = _positional(bwd)
            if n is None:
                return
            required, maximum = n
            if maximum is not None and maximum < 1:
                raise LayerDefinitionError(
                    f"{name}.{_signature_text(bwd)}: backward receives the upstream gradient dL/dy; write "
                    f"`def _backward(self, dy):` ({_HOW})")
            if required > 2 or (required == 2 and not cls.trainable):
                extra = "" if cls.trainable else " (only a Neuron gets need_input_grad)"
                raise LayerDefinitionError(
                    f"{name}.{_signature_text(bwd)}: backward receives only dL/dy{extra}; anything "
                    f"forward computed (x, masks, ...) must be kept in self._cache in _forward and read "
                    f"back in _backward. Write `def _backward(self, dy):`"
                    + (" or `def _backward(self, dy, need_input_grad=True):`" if cls.trainable else "")
                    + f" ({_HOW})")
        if bwd is not None and callable(bwd):
            n = _positional(bwd)
            cls._backward_takes_flag = n is None or n[1] is None or n[1] >= 2

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
        x = self.prepare_input(x)
        y = self._forward(x)
        if self._user_layer:
            self._check_forward_result(x, y)
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
                self._check_param_grads()
            if not need_input_grad:
                return None
        elif need_input_grad:
            dx = self._backward(upstream)
        else:
            return None
        if self._user_layer:
            self._check_input_grad(dx)
        return dx

    # -- the checks that explain a user's layer's mistakes (classes outside this package) --------
    _user_layer = False
    _backward_takes_flag = True

    def _check_forward_result(self, x, y):
        name = type(self).__name__
        if not hasattr(y, "shape") or not hasattr(y, "dtype"):
            raise LayerDefinitionError(f"{self._describe()}: _forward must return the output array, it returned "
                                       f"{type(y).__name__}")
        if y.shape[:1] != x.shape[:1]:
            raise ShapeError(f"{self._describe()}: _forward returned {y.shape[0] if y.ndim else 'no'} samples for a "
                             f"batch of {x.shape[0]} (input {format_shape(tuple(x.shape))}, output "
                             f"{format_shape(tuple(y.shape))}); axis 0 is the batch, keep it")
        declared = self.compute_output_shape(tuple(x.shape[1:]))
        if declared is None:
            return
        declared = tuple(declared)
        got = tuple(y.shape[1:])
        if len(declared) == len(got) and all(d is None or d == g for d, g in zip(declared, got)):
            return
        if type(self).compute_output_shape is Node.compute_output_shape:
            raise ShapeError(
                f"{self._describe()}: _forward turned samples of shape {format_shape(tuple(x.shape[1:]))} into "
                f"{format_shape(got)}, but {name} does not define compute_output_shape, so the network assumes "
                f"its output has its input's shape. Define `def compute_output_shape(self, input_shape):` "
                f"returning the per-sample output shape (here {got} for input_shape {tuple(x.shape[1:])})")
        raise ShapeError(
            f"{self._describe()}: _forward turned samples of shape {format_shape(tuple(x.shape[1:]))} into "
            f"{format_shape(got)}, but {name}.compute_output_shape({tuple(x.shape[1:])}) says {declared}; "
            f"make the two agree")

    def _check_input_grad(self, dx):
        if dx is None:
            raise LayerDefinitionError(
                f"{self._describe()}: _backward returned None; it must return dL/dx, an array of the input's shape "
                f"(only a Neuron called with need_input_grad=False may return None)")
        if not hasattr(dx, "shape"):
            raise LayerDefinitionError(f"{self._describe()}: _backward must return dL/dx as an array, it returned "
                                       f"{type(dx).__name__}")
        io = self.__dict__.get("_io_shapes")
        if io is not None and io[1] == tuple(self._out_shape) and tuple(dx.shape) != io[0]:
            raise ShapeError(
                f"{self._describe()}: _backward returned dL/dx of shape {format_shape(tuple(dx.shape))}, but the "
                f"input x had shape {format_shape(io[0])}; dL/dx always has the shape of x")

    def _check_param_grads(self):
        for pname, p in self.params.items():
            g = self.grads.get(pname)
            if g is None:
                raise LayerDefinitionError(
                    f"{self._describe()}: _backward stored no gradient for parameter {pname!r}; set "
                    f"self.grads[{pname!r}] = dL/d{pname} (shape {tuple(p.shape)}) in _backward")
            if tuple(g.shape) != tuple(p.shape):
                hint = " (transposed?)" if tuple(g.shape) == tuple(p.shape)[::-1] else ""
                raise ShapeError(
                    f"{self._describe()}: the gradient stored for parameter {pname!r} has shape {tuple(g.shape)} "
                    f"but {pname} has shape {tuple(p.shape)}{hint}; dL/d{pname} always has the parameter's shape")

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
        if self._user_layer and not self._params:
            raise LayerDefinitionError(
                f"{self._describe()} is a Neuron (a layer with trainable parameters) but has none registered: "
                f"in __init__ write `self.add_param('W', initial_array)` (not `self.W = ...`), then use self.W; "
                f"a layer without parameters subclasses Node instead")
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
        return self._params

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
