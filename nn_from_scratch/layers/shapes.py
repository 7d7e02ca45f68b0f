"""Shapes as layers state them: the batch entry first (never binding), per-sample sizes after.

``sample_shape`` drops the batch entry of a constructor shape; ``format_shape`` writes a shape
as the errors show it (``(N, 1, 28, 28)``); ``ShapeError`` is what a layer raises for an array
of a shape it cannot take; ``NotBuiltError`` what a layer whose input size is inferred
(``Linear(10)``, ``Convolution(kernel_size=3, output_layers=4)``, ``BatchNorm()``) raises when its
parameters are asked for before that size is known (``docs/layers.md``, "Shapes inferred").
"""
from ..validation import is_int

__all__ = ["ShapeError", "NotReadyError", "NotBuiltError", "format_shape", "sample_shape", "not_built_message"]


class ShapeError(ValueError):
    """An array reached a layer with a shape that layer cannot take."""


class NotReadyError(RuntimeError):
    """``backward`` was called before ``forward`` (nothing is cached)."""


class NotBuiltError(RuntimeError):
    """A layer whose input size is inferred was used (parameters, count, save) before it knew that size."""


def not_built_message(describe, example, what=None):
    """The text of a ``NotBuiltError``: which layer, why, and the two ways out."""
    doing = f"{what}: " if what else ""
    return (f"{doing}{describe} has no parameters yet: its input size is inferred when the network is built. "
            f"Give the network's input shape (NeuralNetwork(layers, input_shape=(1, 28, 28)), per sample), "
            f"or run fit/predict once (the first batch's shape builds it), or give the size to the layer "
            f"itself ({example})")


def format_shape(shape):
    """``(None, 1, 28, 28)``-style text; ``None`` stands for 'any batch size'."""
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


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
