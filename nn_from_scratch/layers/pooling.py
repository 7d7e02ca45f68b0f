"""Max and average pooling for 1, 2 and 3 spatial dimensions.

``x: (N, C, *S) -> y: (N, C, *O)`` with window ``k`` (default 2), stride ``s``
(default ``k``), dilation 1 and ``O`` as for a convolution (see ``geometry``).
Both work offset by offset over the ``K`` offsets ``i`` of the window, with
``v_i[n, c, o] = x_pad[n, c, o*s + i]``::

    MaxPool: y = max_i v_i,          dL/dx_pad[o*s + i] += [i = argmax] * g
    AvgPool: y = sum_i v_i / count,  dL/dx_pad[o*s + i] += g / count

(the backward is col2im of the window gradients, done offset by offset).

``MaxPool`` pads with ``-inf`` and routes the gradient to the *first* maximum of
a window in row-major order (TensorFlow's rule; it matters for ties, e.g. the
zeros after a ReLU).  ``AvgPool`` divides by the number of real (non-padding)
entries of each window, as Keras's ``padding="same"`` pooling does.
"""
import itertools
import math

import numpy as np

from .. import validation
from ..backend import get_array_module
from .base import Node, ShapeError, format_shape
from .geometry import as_tuple, conv_output_shape, pad_input, padding_to_json, patch_view, resolve_padding

__all__ = ["MaxPool", "AvgPool", "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D"]


class _Pool(Node):
    def __init__(self, shape=None, pool_size=None, stride=None, padding="valid", ndim=None, name=None):
        if validation.is_int(shape) and not isinstance(shape, bool):
            # MaxPool(2) as Keras's MaxPooling2D(2): an int is the window (a per-sample shape (2,) has no channel axis)
            if pool_size is not None:
                raise ValueError(f"{type(self).__name__}({shape!r}, pool_size={pool_size!r}): an int first argument is "
                                 "the pool size; give it once")
            shape, pool_size = None, shape
        if pool_size is None:
            pool_size = 2
        super().__init__(shape, name)
        if self.input_shape is not None:
            if len(self.input_shape) not in (2, 3, 4):
                raise ShapeError(f"{self._describe()}: input shape must be (N, C, *S) with 1-3 spatial axes, "
                                 f"received {shape!r}")
            nd = len(self.input_shape) - 1
        elif ndim is not None:
            nd = validation.count(self._describe(), "ndim", ndim)
            if nd > 3:
                raise ValueError(f"{self._describe()}: ndim must be 1, 2 or 3 (spatial axes), received {ndim!r}")
        elif not isinstance(pool_size, (int, np.integer)) and hasattr(pool_size, "__len__"):
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
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self._describe()}: {exc}") from None
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

    def _offset_views(self, a, out):
        """For each window offset ``i`` (row-major), the strided view ``a[:, :, o*s + i]`` over all ``o``.

        ``a`` is the padded input (or its gradient); each view has the output's shape.
        """
        for idx in itertools.product(*(range(k) for k in self.pool_size)):
            yield a[(slice(None), slice(None)) + tuple(slice(i, i + s * (o - 1) + 1, s)
                                                       for i, s, o in zip(idx, self.stride, out))]

    def _geometry(self, x_shape):
        pads = self._pads(x_shape[2:])
        return pads, conv_output_shape(x_shape[2:], self.pool_size, self.stride, pads, self.dilation)

    def _padded_zeros(self, dy, x_shape, pads):
        xp = get_array_module(dy)
        return xp.zeros(tuple(x_shape[:2]) + tuple(s + lo + hi for s, (lo, hi) in zip(x_shape[2:], pads)),
                        dtype=dy.dtype)

    def _crop(self, dx_pad, x_shape, pads):
        return dx_pad[(slice(None), slice(None)) + tuple(slice(lo, lo + s) for s, (lo, _) in
                                                         zip(x_shape[2:], pads))]

    @property
    def _disjoint(self):
        """Windows never overlap (stride >= window): backward can assign instead of add."""
        return all(s >= k for s, k in zip(self.stride, self.pool_size))


class MaxPool(_Pool):
    """Max pooling; see the module docstring.  Cache: which offset held each window's maximum.

    ``patch_view`` of the ``-inf``-padded input is every window at once, ``(N, C, *k, *O)``; laid
    out as ``win: (N, C, K, *O)`` (offsets row-major), the forward and backward are::

        y = max_i win[:, :, i],   arg = argmax_i win[:, :, i]      (argmax: the first maximum)
        dL/dx_pad[:, :, o*s + i] += dL/dy * [arg == i]            (one slice-add per offset i)
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def _forward(self, x):
        pads, out = self._geometry(x.shape)
        n, c = x.shape[:2]
        view = patch_view(pad_input(x, pads, -np.inf), self.pool_size, self.stride, self.dilation, out)
        win = view.reshape((n, c, math.prod(self.pool_size)) + tuple(out))              # (N, C, K, *O)
        arg = win.argmax(axis=2)
        self._cache["argmax"] = arg
        self._cache["x_shape"] = tuple(x.shape)
        return win.max(axis=2)

    def _backward(self, dy):
        arg, x_shape = self._cache["argmax"], self._cache["x_shape"]
        pads, out = self._geometry(x_shape)
        dx = self._padded_zeros(dy, x_shape, pads)
        for i, v in enumerate(self._offset_views(dx, out)):
            v += dy * (arg == i)
        return self._crop(dx, x_shape, pads)


class AvgPool(_Pool):
    """Average pooling over the real entries of each window.  Cache: the counts.

    ``y = sum_i v_i / count`` (one pass per window offset ``i``, as for MaxPool);
    ``dL/dx_pad[:, :, o*s + i] += dL/dy / count``.
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def _counts(self, x, pads, out):
        """Real (non-padding) entries per window, ``(1, 1, *O)``; None without padding."""
        if all(lo == 0 and hi == 0 for lo, hi in pads):
            return None
        xp = get_array_module(x)
        ones = pad_input(xp.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype), pads, 0)
        views = self._offset_views(ones, out)
        counts = next(views).copy()
        for v in views:
            counts += v
        return counts

    def _forward(self, x):
        pads, out = self._geometry(x.shape)
        views = self._offset_views(pad_input(x, pads, 0), out)
        y = next(views).copy()
        for v in views:
            y += v
        counts = self._counts(x, pads, out)
        if counts is None:
            y *= x.dtype.type(1.0 / math.prod(self.pool_size))
        else:
            y /= counts
        self._cache["counts"] = counts
        self._cache["x_shape"] = x.shape
        return y

    def _backward(self, dy):
        x_shape, counts = self._cache["x_shape"], self._cache["counts"]
        pads, out = self._geometry(x_shape)
        g = dy * dy.dtype.type(1.0 / math.prod(self.pool_size)) if counts is None else dy / counts
        dx = self._padded_zeros(dy, x_shape, pads)
        for v in self._offset_views(dx, out):
            if self._disjoint:
                v[...] = g
            else:
                v += g
        return self._crop(dx, x_shape, pads)


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
