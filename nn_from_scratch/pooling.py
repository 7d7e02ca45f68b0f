"""Max and average pooling for 1, 2 and 3 spatial dimensions.

``x: (N, C, *S) -> y: (N, C, *O)`` with window ``k`` (default 2), stride ``s``
(default ``k``), dilation 1 and ``O`` as for a convolution (see ``patches``).
Both gather the windows with the same patch view as ``Convolution``::

    windows[n, c, i, p] = x_pad[n, c, o_p*s + i]          (N, C, K, P)
    MaxPool: y = max_i windows,  dL/dx = col2im(onehot(argmax_i) * g)
    AvgPool: y = sum_i windows / count,  dL/dx = col2im(g / count broadcast over i)

``MaxPool`` pads with ``-inf`` and routes the gradient to the *first* maximum of
a window in row-major order (TensorFlow's rule; it matters for ties, e.g. the
zeros after a ReLU).  ``AvgPool`` divides by the number of real (non-padding)
entries of each window, as Keras's ``padding="same"`` pooling does.
"""
import numpy as np

from .backend import get_array_module
from .interfaces import Node, ShapeError, format_shape
from .patches import (as_tuple, col2im, conv_output_shape, pad_input, padding_to_json, patch_view,
                      resolve_padding)

__all__ = ["MaxPool", "AvgPool", "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D"]


class _Pool(Node):
    def __init__(self, shape=None, pool_size=2, stride=None, padding="valid", ndim=None, name=None):
        super().__init__(shape, name)
        if self.input_shape is not None:
            if len(self.input_shape) not in (2, 3, 4):
                raise ShapeError(f"{self._describe()}: input shape must be (N, C, *S) with 1-3 spatial axes, "
                                 f"received {shape!r}")
            nd = len(self.input_shape) - 1
        elif ndim is not None:
            nd = int(ndim)
        elif not isinstance(pool_size, (int, np.integer)):
            nd = len(pool_size)
        else:
            nd = 2
        if ndim is not None and int(ndim) != nd:
            raise ValueError(f"{self._describe()}: ndim={ndim} but the input shape has {nd} spatial axes")
        self.ndim = nd
        try:
            self.pool_size = as_tuple(pool_size, nd, "pool_size")
            self.stride = as_tuple(stride if stride is not None else self.pool_size, nd, "stride")
            self.dilation = (1,) * nd
            resolve_padding(padding, (1,) * nd, self.pool_size, self.stride, self.dilation)
        except ValueError as exc:
            raise ValueError(f"{self._describe()}: {exc}") from None
        self.padding = padding
        pads = resolve_padding(padding, (1,) * nd, self.pool_size, self.stride, self.dilation)
        if any(lo >= k or hi >= k for (lo, hi), k in zip(pads, self.pool_size)):
            # a window could then hold only padding: -inf (max) or 0/0 (average); with
            # padding < pool_size on both sides every window holds an input entry
            raise ValueError(f"{self._describe()}: padding must be smaller than pool_size {self.pool_size} "
                             f"on every side, received padding={padding!r}")
        if self.input_shape is not None and None not in self.input_shape:
            self.compute_output_shape(self.input_shape)

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "stride": list(self.stride),
                "padding": padding_to_json(self.padding), "ndim": self.ndim}

    def _pads(self, spatial):
        return resolve_padding(self.padding, spatial, self.pool_size, self.stride, self.dilation)

    def compute_output_shape(self, input_shape):
        spatial = input_shape[1:]
        if None in spatial:
            return (input_shape[0],) + (None,) * self.ndim
        pads = self._pads(spatial)
        try:
            out = conv_output_shape(spatial, self.pool_size, self.stride, pads, self.dilation)
        except ShapeError as exc:
            raise ShapeError(f"{self._describe()}: {exc}") from None
        return (input_shape[0],) + out

    def check_input(self, x):
        if hasattr(x, "ndim") and x.ndim != self.ndim + 2:
            raise ShapeError(f"{self._describe()} expects {self.ndim + 2}-d input (N, C, *S), "
                             f"received {format_shape(tuple(x.shape))}")
        super().check_input(x)
        self.compute_output_shape(tuple(x.shape[1:]))

    def _windows(self, x, pad_value):
        """(N, C, K, P) copy of the pooling windows, and the output spatial shape."""
        pads = self._pads(x.shape[2:])
        out = conv_output_shape(x.shape[2:], self.pool_size, self.stride, pads, self.dilation)
        view = patch_view(pad_input(x, pads, pad_value), self.pool_size, self.stride, self.dilation, out)
        n, c = x.shape[:2]
        k = int(np.prod(self.pool_size))
        return view.reshape(n, c, k, int(np.prod(out))), out

    def _scatter(self, dwin, x_shape):
        n, c, k, p = dwin.shape
        return col2im(dwin.reshape(n, c * k, p), x_shape, self.pool_size, self.stride, self.padding,
                      self.dilation)


class MaxPool(_Pool):
    """Max pooling; see the module docstring.  Cache: argmax of each window."""

    def _forward(self, x):
        win, out = self._windows(x, -np.inf)
        idx = win.argmax(axis=2)
        xp = get_array_module(x)
        y = xp.take_along_axis(win, idx[:, :, None, :], axis=2)[:, :, 0, :]
        self._cache["argmax"] = idx
        self._cache["x_shape"] = x.shape
        return y.reshape(x.shape[:2] + out)

    def _backward(self, dy):
        xp = get_array_module(dy)
        idx = self._cache["argmax"]
        n, c, p = idx.shape
        k = int(np.prod(self.pool_size))
        onehot = xp.arange(k)[None, None, :, None] == idx[:, :, None, :]
        dwin = onehot * dy.reshape(n, c, 1, p)
        return self._scatter(dwin.astype(dy.dtype, copy=False), self._cache["x_shape"])


class AvgPool(_Pool):
    """Average pooling over the real entries of each window.  Cache: the counts."""

    def _forward(self, x):
        xp = get_array_module(x)
        win, out = self._windows(x, 0)
        pads = self._pads(x.shape[2:])
        if all(lo == 0 and hi == 0 for lo, hi in pads):
            counts = None
            y = win.mean(axis=2)
        else:
            ones = xp.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
            cwin, _ = self._windows(ones, 0)
            counts = cwin.sum(axis=2)  # (1, 1, P)
            y = win.sum(axis=2) / counts
        self._cache["counts"] = counts
        self._cache["x_shape"] = x.shape
        return y.reshape(x.shape[:2] + out)

    def _backward(self, dy):
        xp = get_array_module(dy)
        n, c = dy.shape[:2]
        k = int(np.prod(self.pool_size))
        g = dy.reshape(n, c, 1, -1)
        counts = self._cache["counts"]
        g = g / (k if counts is None else counts[:, :, None, :])
        dwin = xp.broadcast_to(g, (n, c, k, g.shape[-1]))
        return self._scatter(dwin.astype(dy.dtype, copy=False), self._cache["x_shape"])


def _fixed(cls, nd, doc):
    def make(pool_size=2, stride=None, padding="valid", shape=None, name=None):
        return cls(shape, pool_size=pool_size, stride=stride, padding=padding, ndim=nd, name=name)
    make.__doc__ = doc
    make.__name__ = f"{cls.__name__}{nd}D"
    return make


MaxPool1D = _fixed(MaxPool, 1, "1-D max pooling ``(N, C, L) -> (N, C, L')``.")
MaxPool2D = _fixed(MaxPool, 2, "2-D max pooling ``(N, C, H, W) -> (N, C, H', W')``.")
MaxPool3D = _fixed(MaxPool, 3, "3-D max pooling ``(N, C, D, H, W) -> (N, C, D', H', W')``.")
AvgPool1D = _fixed(AvgPool, 1, "1-D average pooling ``(N, C, L) -> (N, C, L')``.")
AvgPool2D = _fixed(AvgPool, 2, "2-D average pooling ``(N, C, H, W) -> (N, C, H', W')``.")
AvgPool3D = _fixed(AvgPool, 3, "3-D average pooling ``(N, C, D, H, W) -> (N, C, D', H', W')``.")
