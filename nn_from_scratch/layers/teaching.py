"""What the package does for a layer written by a student (a class defined outside this package).

* **Adoption**: a class that writes ``forward``/``backward`` (what students write first) instead
  of ``_forward``/``_backward`` has them taken as the private methods, so that the base class's
  public ones still check shapes, cast integer input and record what backward needs
  (``adopt_public_methods``).
* **Definition checks**: a ``_forward``/``_backward`` that cannot be called right is refused when
  the class is defined, with the line to write instead (``check_methods``).
* **Result checks**: at each forward/backward of a student's layer, what the methods returned is
  checked against the rules of writing a layer (``check_forward_result``, ``check_input_grad``,
  ``check_param_grads``, ``check_has_params``).  The package's own layers are tested instead.

``docs/ARCHITECTURE.md`` ("Where to add a layer") and docs/custom-layers.md ("Writing your own layer") state
the rules these messages quote.  ``base.py`` holds the interface itself and calls in here.
"""
import inspect

from .shapes import ShapeError, format_shape

__all__ = ["LayerDefinitionError", "is_package_class", "prepare_class", "check_forward_result",
           "check_input_grad", "check_param_grads", "check_has_params"]

_PACKAGE = __name__.split(".")[0]


class LayerDefinitionError(TypeError):
    """A layer class (or what its methods returned) breaks the rules of writing a layer.

    Raised when the class is defined (a method with the wrong arguments) or at its
    first forward/backward (a returned array of the wrong shape, a parameter
    without a gradient); the message says what to write instead.
    """


#: How a layer is written (quoted by the errors below; docs/custom-layers.md, "Writing your own layer").
HOW = ("a layer implements _forward(self, x) -> y and _backward(self, dy) -> dx "
       "(a Neuron: _backward(self, dy, need_input_grad=True), storing self.grads[name] for every "
       "parameter), and compute_output_shape(self, input_shape) when y's shape differs from x's")


def is_package_class(cls):
    """Is ``cls`` defined in this package (``nn_from_scratch`` or a module inside it)?  A student's
    package named ``nn_from_scratch_lab`` is not: only the name itself or the name and a dot count."""
    module = cls.__module__ or ""
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


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


def prepare_class(cls, node):
    """Run when a layer class ``cls`` is defined (``node``: the ``Node`` base class): mark whether it
    is a student's (``cls._user_layer``), adopt its public methods and check its methods' arguments."""
    cls._user_layer = not is_package_class(cls)
    if cls._user_layer:       # the package's own classes (e.g. Loss) define forward/backward on purpose
        adopt_public_methods(cls)
    check_methods(cls, node)


def adopt_public_methods(cls):
    """Accept a layer written with ``forward``/``backward`` instead of ``_forward``/``_backward``.

    When a class defines ``forward`` (or ``backward``) itself and no ``_forward``
    (``_backward``) exists yet in its ancestry, its method becomes the private one and
    the public method stays the base class's, which checks shapes, casts integer input,
    records what backward needs, and then calls it.  ``cls._adopted`` names what was adopted.
    """
    for public, private in (("forward", "_forward"), ("backward", "_backward")):
        own = cls.__dict__.get(public)
        if own is None or not callable(own) or private in cls.__dict__:
            continue
        if getattr(getattr(cls, private, None), "__isabstractmethod__", False):
            setattr(cls, private, own)
            base = next(getattr(b, public) for b in cls.__mro__[1:] if public in b.__dict__)
            setattr(cls, public, base)
            cls._adopted = tuple(getattr(cls, "_adopted", ())) + (public,)


def check_methods(cls, node):
    """Refuse, when the class is defined, a ``_forward``/``_backward`` that cannot be called right;
    record whether ``_backward`` takes ``need_input_grad`` (``cls._backward_takes_flag``)."""
    name = cls.__name__
    fwd = cls.__dict__.get("_forward")
    if fwd is not None and callable(fwd) and cls.forward is node.forward:
        n = _positional(fwd)
        if n is not None and (n[0] > 1 or (n[1] is not None and n[1] < 1)):
            raise LayerDefinitionError(
                f"{name}.{_signature_text(fwd)}: forward receives exactly one array, the batch x; write "
                f"`def _forward(self, x):` and keep anything else as an attribute set in __init__ "
                f"({HOW})")
    bwd = cls.__dict__.get("_backward")
    if bwd is not None and callable(bwd) and cls.backward is node.backward:
        n = _positional(bwd)
        if n is None:
            return
        required, maximum = n
        if maximum is not None and maximum < 1:
            raise LayerDefinitionError(
                f"{name}.{_signature_text(bwd)}: backward receives the upstream gradient dL/dy; write "
                f"`def _backward(self, dy):` ({HOW})")
        if required > 2 or (required == 2 and not cls.trainable):
            extra = "" if cls.trainable else " (only a Neuron gets need_input_grad)"
            raise LayerDefinitionError(
                f"{name}.{_signature_text(bwd)}: backward receives only dL/dy{extra}; anything "
                f"forward computed (x, masks, ...) must be kept in self._cache in _forward and read "
                f"back in _backward. Write `def _backward(self, dy):`"
                + (" or `def _backward(self, dy, need_input_grad=True):`" if cls.trainable else "")
                + f" ({HOW})")
    if bwd is not None and callable(bwd):
        n = _positional(bwd)
        cls._backward_takes_flag = n is None or n[1] is None or n[1] >= 2


def check_forward_result(layer, x, y, node):
    """``y = layer._forward(x)``: an array of the batch's samples, of the shape ``compute_output_shape`` says."""
    name = type(layer).__name__
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise LayerDefinitionError(f"{layer._describe()}: _forward must return the output array, it returned "
                                   f"{type(y).__name__}")
    if y.shape[:1] != x.shape[:1]:
        raise ShapeError(f"{layer._describe()}: _forward returned {y.shape[0] if y.ndim else 'no'} samples for a "
                         f"batch of {x.shape[0]} (input {format_shape(tuple(x.shape))}, output "
                         f"{format_shape(tuple(y.shape))}); axis 0 is the batch, keep it")
    declared = layer.compute_output_shape(tuple(x.shape[1:]))
    if declared is None:
        return
    declared = tuple(declared)
    got = tuple(y.shape[1:])
    if len(declared) == len(got) and all(d is None or d == g for d, g in zip(declared, got)):
        return
    if type(layer).compute_output_shape is node.compute_output_shape:
        raise ShapeError(
            f"{layer._describe()}: _forward turned samples of shape {format_shape(tuple(x.shape[1:]))} into "
            f"{format_shape(got)}, but {name} does not define compute_output_shape, so the network assumes "
            f"its output has its input's shape. Define `def compute_output_shape(self, input_shape):` "
            f"returning the per-sample output shape (here {got} for input_shape {tuple(x.shape[1:])})")
    raise ShapeError(
        f"{layer._describe()}: _forward turned samples of shape {format_shape(tuple(x.shape[1:]))} into "
        f"{format_shape(got)}, but {name}.compute_output_shape({tuple(x.shape[1:])}) says {declared}; "
        f"make the two agree")


def check_input_grad(layer, dx):
    """``dx = layer._backward(dy)``: an array of the input's shape."""
    if dx is None:
        raise LayerDefinitionError(
            f"{layer._describe()}: _backward returned None; it must return dL/dx, an array of the input's shape "
            f"(only a Neuron called with need_input_grad=False may return None)")
    if not hasattr(dx, "shape"):
        raise LayerDefinitionError(f"{layer._describe()}: _backward must return dL/dx as an array, it returned "
                                   f"{type(dx).__name__}")
    io = layer.__dict__.get("_io_shapes")
    if io is not None and io[1] == tuple(layer._out_shape) and tuple(dx.shape) != io[0]:
        raise ShapeError(
            f"{layer._describe()}: _backward returned dL/dx of shape {format_shape(tuple(dx.shape))}, but the "
            f"input x had shape {format_shape(io[0])}; dL/dx always has the shape of x")


def check_param_grads(layer):
    """After a neuron's ``_backward``: a gradient of the parameter's shape for every parameter."""
    for pname, p in layer.params.items():
        g = layer.grads.get(pname)
        if g is None:
            raise LayerDefinitionError(
                f"{layer._describe()}: _backward stored no gradient for parameter {pname!r}; set "
                f"self.grads[{pname!r}] = dL/d{pname} (shape {tuple(p.shape)}) in _backward")
        if tuple(g.shape) != tuple(p.shape):
            hint = " (transposed?)" if tuple(g.shape) == tuple(p.shape)[::-1] else ""
            raise ShapeError(
                f"{layer._describe()}: the gradient stored for parameter {pname!r} has shape {tuple(g.shape)} "
                f"but {pname} has shape {tuple(p.shape)}{hint}; dL/d{pname} always has the parameter's shape")


def check_has_params(layer):
    """A student's ``Neuron`` registered its parameters with ``add_param`` (not ``self.W = ...``)."""
    if not layer.params:
        raise LayerDefinitionError(
            f"{layer._describe()} is a Neuron (a layer with trainable parameters) but has none registered: "
            f"in __init__ write `self.add_param('W', initial_array)` (not `self.W = ...`), then use self.W; "
            f"a layer without parameters subclasses Node instead")
