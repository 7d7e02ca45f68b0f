"""The engine's max pooling: ``MaxPool``'s formulas (``layers/pooling.py``) with fewer passes.

The windows are copied once, offset-major: ``win[i] = x_pad[:, :, o*s + i]`` (``K`` contiguous
slices of the output's shape), so every later pass is a contiguous one::

    y = win[0], arg = 0;  for i = 1..K-1:  gt = win[i] > y;  arg = max(arg, i*gt);  y = max(y, win[i])
    dL/dx_pad[:, :, o*s + i] += dL/dy * [arg == i]

A strict ``>`` keeps the first maximum (row-major) on ties, as the layer's ``argmax`` does;
``i*gt`` with ``i`` increasing makes ``arg`` the last offset that raised the maximum.  (Arithmetic
on masks instead of masked assignment: NumPy's ``where``/``copyto(where=)`` branch per element and
are several times slower on random masks.)  When windows do not overlap, the backward is one
scatter to precomputed flat positions.  On CuPy it is one kernel each way
(``kernels.maxpool_forward``/``_backward``, the same rules).  The layer's own code is the
reference: tests/test_engine_pooling.py holds the two equal.
"""
import itertools
import math

import numpy as np

from . import kernels
from ..backend import get_array_module
from ..layers.geometry import conv_output_shape, pad_input, patch_view, resolve_padding
from .settings import check_gradient

__all__ = ["PoolContext", "MaxPoolUnit", "maxpool_forward", "maxpool_backward"]


class PoolContext:
    """A ``MaxPool``'s geometry (from its public settings) and the index tables kept for it."""

    def __init__(self, layer):
        self.layer = layer
        self.workspace = {}

    def geometry(self, x_shape):
        """``(pads, out)``: the padding per axis and the output's spatial shape for inputs ``x_shape``."""
        p = self.layer
        pads = resolve_padding(p.padding, x_shape[2:], p.pool_size, p.stride, p.dilation)
        return pads, conv_output_shape(x_shape[2:], p.pool_size, p.stride, pads, p.dilation)

    def offset_major(self, a, out):
        """``(K, N, C, *O)`` copy of the windows of ``a``: ``win[i] = a[:, :, o*s + i]``."""
        p = self.layer
        xp = get_array_module(a)
        view = patch_view(a, p.pool_size, p.stride, p.dilation, out)     # (N, C, *k, *O)
        nd = p.ndim
        win = xp.empty(p.pool_size + tuple(a.shape[:2]) + tuple(out), dtype=a.dtype)
        order = tuple(range(2, 2 + nd)) + (0, 1) + tuple(range(2 + nd, 2 + 2 * nd))
        xp.copyto(win, view.transpose(order))
        return win.reshape((math.prod(p.pool_size),) + tuple(a.shape[:2]) + tuple(out))

    def offset_views(self, a, out):
        p = self.layer
        for idx in itertools.product(*(range(k) for k in p.pool_size)):
            yield a[(slice(None), slice(None)) + tuple(slice(i, i + s * (o - 1) + 1, s)
                                                       for i, s, o in zip(idx, p.stride, out))]

    @property
    def disjoint(self):
        """Windows never overlap (stride >= window): backward can assign instead of add."""
        return all(s >= k for s, k in zip(self.layer.stride, self.layer.pool_size))

    def flat_positions(self, padded_shape, out, xp):
        """Where the windows lie in the flat padded input ``(N, C, *Sp)``: ``starts: (N, C, *O)``,
        the flat index of each window's first entry, and ``offsets: (K,)``, that of offset ``i``
        (row-major, as ``argmax``) from it; window ``o``'s maximum sits at
        ``starts[o] + offsets[argmax[o]]`` (kept per input shape)."""
        p = self.layer
        key = (tuple(padded_shape), tuple(out), p.pool_size, p.stride, p.dilation, xp.__name__)
        held = self.workspace.get("positions")
        if held is None or held[0] != key:
            step = [math.prod(padded_shape[d + 1:]) for d in range(len(padded_shape))]    # element strides
            ranges = [np.arange(padded_shape[0]) * step[0], np.arange(padded_shape[1]) * step[1]]
            ranges += [np.arange(o) * s * st for o, s, st in zip(out, p.stride, step[2:])]
            starts = np.zeros(tuple(padded_shape[:2]) + tuple(out), dtype=np.intp)
            for d, r in enumerate(ranges):
                starts += r.reshape((-1,) + (1,) * (len(ranges) - 1 - d))
            offsets = np.array([sum(i * d * st for i, d, st in zip(idx, p.dilation, step[2:]))
                                for idx in itertools.product(*(range(k) for k in p.pool_size))], dtype=np.intp)
            held = self.workspace["positions"] = (key, xp.asarray(starts), xp.asarray(offsets))
        return held[1], held[2]


def maxpool_forward(ctx, x):
    """``(y, state)``: max pooling of ``x`` (checked) and what ``maxpool_backward`` needs."""
    p = ctx.layer
    xp = get_array_module(x)
    pads, out = ctx.geometry(x.shape)
    if kernels.fused_enabled(x) and kernels.window_kernels_fit(x.size, x.shape[0] * x.shape[1] * math.prod(out)):
        geo = kernels.window_geometry(x.shape[1], x.shape[2:], p.pool_size, p.stride, pads, p.dilation, out)
        y, arg = kernels.maxpool_forward(xp.ascontiguousarray(x), geo, tuple(x.shape[:2]) + tuple(out))
        return y, (tuple(x.shape), arg, geo)
    win = ctx.offset_major(pad_input(x, pads, -np.inf), out)         # (K, N, C, *O)
    k = win.shape[0]
    itype = np.uint8 if k < 256 else np.int32
    y = win[0].copy()
    arg = xp.zeros(y.shape, dtype=itype)
    for i in range(1, k):
        gt = (win[i] > y).view(np.uint8).astype(itype, copy=False)
        xp.maximum(arg, gt * itype(i), out=arg)
        xp.maximum(y, win[i], out=y)
    if y.size and xp.isnan(y.min()):    # a window holding NaN: y is NaN there, and (as the layer's argmax)
        nan = xp.isnan(y)               # its first NaN gets the gradient; ``>`` never saw past it
        arg[nan] = win[:, nan].argmax(axis=0).astype(itype)
    return y, (tuple(x.shape), arg, None)


def maxpool_backward(ctx, dy, state):
    """dL/dx from ``dy = dL/dy`` and the ``state`` of ``maxpool_forward``."""
    x_shape, arg, geo = state
    if geo is not None:
        return kernels.maxpool_backward(dy, arg, geo, x_shape)
    xp = get_array_module(dy)
    pads, out = ctx.geometry(x_shape)
    dx = xp.zeros(tuple(x_shape[:2]) + tuple(s + lo + hi for s, (lo, hi) in zip(x_shape[2:], pads)), dtype=dy.dtype)
    if ctx.disjoint:              # each entry in at most one window: one scatter
        starts, offsets = ctx.flat_positions(dx.shape, out, xp)
        where = offsets.take(arg)
        where += starts
        dx.reshape(-1)[where.reshape(-1)] = dy.reshape(-1)
    else:
        for i, v in enumerate(ctx.offset_views(dx, out)):
            v += dy * (arg == i)
    return dx[(slice(None), slice(None)) + tuple(slice(lo, lo + s) for s, (lo, _) in zip(x_shape[2:], pads))]


class MaxPoolUnit:
    """One ``MaxPool`` run by ``maxpool_forward``/``maxpool_backward`` (``runner.py``)."""

    size = 1

    def __init__(self, context):
        self.context = context

    def forward(self, x):
        pool = self.context.layer
        x = pool.prepare_input(x)
        pool.clear_cache()
        y, self.state = maxpool_forward(self.context, x)
        self.out_shape = tuple(y.shape)
        return y

    def backward(self, g, need_input_grad):
        check_gradient(self.context.layer, g, self.out_shape)
        return maxpool_backward(self.context, g, self.state) if need_input_grad else None
