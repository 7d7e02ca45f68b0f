"""``GlobalAveragePooling``: the mean over every spatial position, per channel.

``x: (N, C, *S) -> y: (N, C)`` with 1-3 spatial axes ``S`` (``P = prod(S)`` positions)::

    y[n, c] = 1/P sum_s x[n, c, s]          dL/dx[n, c, s] = dL/dy[n, c] / P

Keras's ``GlobalAveragePooling{1,2,3}D`` (``keepdims=False``) on channels-last data; the
aliases ``GlobalAveragePooling1D/2D/3D`` also check the number of spatial axes.  Cache: the
input shape.
"""
from ..backend import get_array_module
from .base import Node, ShapeError, format_shape

__all__ = ["GlobalAveragePooling", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D"]


class GlobalAveragePooling(Node):
    """Mean over the spatial axes: ``(N, C, *S) -> (N, C)`` (module docstring); ``ndim``: 1-3 or None (any)."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, shape=None, ndim=None, name=None):
        super().__init__(shape, name)
        if ndim is not None and (isinstance(ndim, bool) or ndim not in (1, 2, 3)):
            raise ValueError(f"{self._describe()}: ndim must be 1, 2, 3 or None, received {ndim!r}")
        if self.input_shape is not None:
            nd = len(self.input_shape) - 1
            if nd not in (1, 2, 3) or (ndim is not None and nd != ndim):
                raise ShapeError(f"{self._describe()}: input shape must be (N, C, *S) with "
                                 f"{ndim or '1-3'} spatial axes, received {format_shape((None,) + self.input_shape)}")
            ndim = nd
        self.ndim = ndim

    def get_config(self):
        return {**super().get_config(), "ndim": self.ndim}

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def check_input(self, x):
        if hasattr(x, "ndim"):
            want = (self.ndim + 2,) if self.ndim is not None else (3, 4, 5)
            if x.ndim not in want:
                raise ShapeError(f"{self._describe()} expects (N, C, *S) input with "
                                 f"{self.ndim or '1-3'} spatial axes, received {format_shape(tuple(x.shape))}")
        super().check_input(x)

    def _forward(self, x):
        self._cache["x_shape"] = x.shape
        return x.mean(axis=tuple(range(2, x.ndim)))

    def _backward(self, dy):
        xp = get_array_module(dy)
        shape = self._cache["x_shape"]
        p = 1
        for s in shape[2:]:
            p *= s
        g = dy * dy.dtype.type(1.0 / p)
        return xp.broadcast_to(g.reshape(g.shape + (1,) * (len(shape) - 2)), shape).copy()


class GlobalAveragePooling1D(GlobalAveragePooling):
    """``GlobalAveragePooling`` of ``(N, C, L)`` data."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, shape=None, name=None):
        super().__init__(shape, ndim=1, name=name)

    def get_config(self):
        return {k: v for k, v in super().get_config().items() if k != "ndim"}


class GlobalAveragePooling2D(GlobalAveragePooling):
    """``GlobalAveragePooling`` of ``(N, C, H, W)`` data."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, shape=None, name=None):
        super().__init__(shape, ndim=2, name=name)

    def get_config(self):
        return {k: v for k, v in super().get_config().items() if k != "ndim"}


class GlobalAveragePooling3D(GlobalAveragePooling):
    """``GlobalAveragePooling`` of ``(N, C, D, H, W)`` data."""

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, shape=None, name=None):
        super().__init__(shape, ndim=3, name=name)

    def get_config(self):
        return {k: v for k, v in super().get_config().items() if k != "ndim"}
