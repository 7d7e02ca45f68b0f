"""Layers that only change an array's shape: ``Vectorization`` (``Flatten``) and ``Reshape``."""
import math

from .base import Node, ShapeError, format_shape
from ..validation import is_int

__all__ = ["Vectorization", "Flatten", "Reshape"]


class Vectorization(Node):
    """Flatten every sample into a vector, in C (row-major) order.

    ``x: (N, C, H, W) -> y: (N, C*H*W)``, ``y[n, (c*H + h)*W + w] = x[n, c, h, w]``
    (any number of trailing axes).  Backward reshapes ``dL/dy`` back.  Note that
    Keras's ``Flatten`` on NHWC data orders the entries ``(h, w, c)`` instead;
    ``nn_from_scratch.crosscheck`` accounts for that.  Cache: the input shape.
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def compute_output_shape(self, input_shape):
        n = 1
        for s in input_shape:
            if s is None:
                return (None,)
            n *= s
        return (n,)

    def _forward(self, x):
        self._cache["x_shape"] = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))      # (-1 is ambiguous for N = 0)

    def _backward(self, dy):
        return dy.reshape(self._cache["x_shape"])


#: Keras-style alias.
Flatten = Vectorization


class Reshape(Node):
    """Reshape every sample: ``x: (N, *S) -> y: (N, *target)`` with ``prod(S) == prod(target)``."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, shape=None, target_shape=None, name=None):
        super().__init__(shape, name)
        if target_shape is None:
            raise ValueError(f"{self._describe()}: target_shape is required")
        try:
            entries = tuple(target_shape)
        except TypeError:
            raise TypeError(f"{self._describe()}: target_shape must be a tuple of positive ints (per sample), "
                            f"received {type(target_shape).__name__} {target_shape!r}") from None
        if not entries or not all(is_int(s) and s >= 1 for s in entries):
            raise ValueError(f"{self._describe()}: target_shape must be a non-empty tuple of positive ints "
                             f"(per sample, no batch entry), received {target_shape!r}")
        self.target_shape = tuple(int(s) for s in entries)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}

    def compute_output_shape(self, input_shape):
        return self.target_shape

    def _forward(self, x):
        n_in = 1
        for s in x.shape[1:]:
            n_in *= s
        n_out = 1
        for s in self.target_shape:
            n_out *= s
        if n_in != n_out:
            raise ShapeError(
                f"{self._describe()} cannot reshape samples of shape {format_shape(tuple(x.shape))} "
                f"({n_in} values) to {format_shape((None,) + self.target_shape)} ({n_out} values)"
            )
        self._cache["x_shape"] = x.shape
        return x.reshape((x.shape[0],) + self.target_shape)

    def _backward(self, dy):
        return dy.reshape(self._cache["x_shape"])
