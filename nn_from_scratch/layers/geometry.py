"""Patch gathering ("im2col") and its adjoint ("col2im") for 1, 2 and 3 spatial dims.

A convolution is a matrix product with the input's patches.  For an input
``x: (N, C, *S)`` and a kernel of spatial size ``k = (k_1, .., k_D)`` (volume
``K = prod(k)``), the *patch matrix* is::

    cols[n, (c, i_1, .., i_D), p] = x_pad[n, c, o_1*s_1 + i_1*d_1, .., o_D*s_D + i_D*d_D]

with ``p`` the flat (row-major) index of the output position ``(o_1, .., o_D)``,
``s`` the stride, ``d`` the dilation and ``x_pad`` the zero-padded input.  The
row index runs over ``(c, i_1, .., i_D)`` in row-major (channel-major) order,
the order of ``W.reshape(F, -1)`` for a kernel ``W: (F, C, *k)``, so that::

    conv(x, W)[n, f, p] = sum_j W.reshape(F, -1)[f, j] * cols[n, j, p]

The gathering-filter view
-------------------------
The patch matrix is itself a convolution: with the "gathering filter"
``G = eye(C*K).reshape(C*K, C, *k)`` (output channel ``j = (c, i)`` holds a single 1
at input channel ``c``, kernel offset ``i``), ``conv(x, G)`` has ``C*K`` output
channels and channel ``j`` at position ``p`` is exactly ``cols[n, j, p]``.  No
``groups=`` argument is involved: every output channel of ``G`` reads all input
channels (a grouped convolution would give each group only ``C/groups`` of them,
which is why the seed notebook's 2D test failed).  ``gathering_filter`` builds
``G``; the tests check the identity.

Output size along each axis::

    O = floor((S + pad_lo + pad_hi - d*(k - 1) - 1) / s) + 1

``padding`` may be an int, a per-axis tuple of ints or of ``(lo, hi)`` pairs,
``"valid"`` (no padding) or ``"same"`` (TensorFlow's rule: ``O = ceil(S / s)``,
total padding ``max((O-1)*s + d*(k-1) + 1 - S, 0)``, the smaller half first).

``im2col`` here: a strided view of the padded input (no copy) that one ``reshape``
turns into the patch matrix; ``col2im`` adds the patch matrix back with one
strided slice-add per kernel offset.  ``im2col_reference``/``col2im_reference`` are
plain loops over every index, kept beside them; the tests hold the two equal.
"""
import itertools
import math

import numpy as np

from ..backend import get_array_module
from .base import ShapeError

__all__ = ["as_tuple", "resolve_padding", "padding_to_json", "conv_output_shape", "pad_input", "patch_view",
           "im2col", "col2im", "im2col_reference", "col2im_reference", "gathering_filter"]


def as_tuple(value, n, name, minimum=1):
    """``value`` (int or length-n sequence) as an n-tuple of ints >= minimum (nothing rounded:
    ``2.5`` or ``True`` is refused, ``TypeError``)."""
    def integer(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    if integer(value):
        out = (int(value),) * n
    else:
        try:
            items = tuple(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a tuple of {n} ints, received {type(value).__name__} "
                            f"{value!r}") from None
        if len(items) != n or not all(integer(v) for v in items):
            raise (ValueError if all(integer(v) for v in items) else TypeError)(
                f"{name} must be an int or a tuple of {n} ints, received {value!r}")
        out = tuple(int(v) for v in items)
    if any(v < minimum for v in out):
        raise ValueError(f"{name} must be >= {minimum} along every axis, received {value!r}")
    return out


def resolve_padding(padding, spatial, kernel, stride, dilation):
    """Per-axis ``(lo, hi)`` zero padding for a spec (see module docstring)."""
    n = len(kernel)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * n
        if mode == "same":
            pads = []
            for size, k, s, d in zip(spatial, kernel, stride, dilation):
                out = -(-size // s)
                total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', received {padding!r}")
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        if p < 0:
            raise ValueError(f"padding must be >= 0, received {padding!r}")
        return ((p, p),) * n
    try:
        padding = tuple(padding)
    except TypeError:
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', received {padding!r}") from None
    if len(padding) != n:
        raise ValueError(f"padding must have one entry per spatial axis ({n}), received {padding!r}")
    pads = []
    for p in padding:
        try:
            pair = (int(p), int(p)) if isinstance(p, (int, np.integer)) else tuple(int(v) for v in p)
        except TypeError:
            pair = ()
        if len(pair) != 2 or min(pair) < 0:
            raise ValueError(f"padding entries must be ints >= 0 or (lo, hi) pairs, received {padding!r}")
        pads.append(pair)
    return tuple(pads)


def padding_to_json(padding):
    """A padding spec as JSON-able data (str, int or nested lists)."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, (int, np.integer)):
        return int(padding)
    return [padding_to_json(p) for p in padding]


def conv_output_shape(spatial, kernel, stride, pads, dilation):
    """Output spatial shape ``O`` (see module docstring); ValueError if empty."""
    out = []
    for size, k, s, (lo, hi), d in zip(spatial, kernel, stride, pads, dilation):
        span = d * (k - 1) + 1
        o = (size + lo + hi - span) // s + 1
        if o < 1:
            raise ShapeError(
                f"input of spatial shape {tuple(spatial)} is smaller than the (dilated) kernel "
                f"{tuple(d_ * (k_ - 1) + 1 for k_, d_ in zip(kernel, dilation))} with padding {pads}"
            )
        out.append(o)
    return tuple(out)


def pad_input(x, pads, value=0):
    """Zero-pad (or ``value``-pad) the spatial axes of ``x: (N, C, *S)``."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    xp = get_array_module(x)
    return xp.pad(x, ((0, 0), (0, 0)) + tuple(pads), mode="constant", constant_values=value)


def patch_view(x_padded, kernel, stride, dilation, out_shape):
    """Strided view ``(N, C, *k, *O)`` of the padded input: no copy.

    ``view[n, c, i_1..i_D, o_1..o_D] = x_pad[n, c, o*s + i*d]``.
    """
    xp = get_array_module(x_padded)
    n, c = x_padded.shape[:2]
    sn, sc = x_padded.strides[:2]
    sp = x_padded.strides[2:]
    shape = (n, c) + tuple(kernel) + tuple(out_shape)
    strides = (sn, sc) + tuple(st * d for st, d in zip(sp, dilation)) + tuple(st * s for st, s in zip(sp, stride))
    return xp.lib.stride_tricks.as_strided(x_padded, shape=shape, strides=strides)


def _geometry(x_shape, kernel, stride, padding, dilation):
    nd = len(x_shape) - 2
    kernel = as_tuple(kernel, nd, "kernel_size")
    stride = as_tuple(stride, nd, "stride")
    dilation = as_tuple(dilation, nd, "dilation")
    pads = resolve_padding(padding, x_shape[2:], kernel, stride, dilation)
    out = conv_output_shape(x_shape[2:], kernel, stride, pads, dilation)
    return kernel, stride, pads, dilation, out


def im2col(x, kernel, stride=1, padding=0, dilation=1):
    """The patch matrix ``cols: (N, C*K, P)`` of ``x: (N, C, *S)`` (see the module docstring).

    ``patch_view`` is a strided view ``(N, C, *k, *O)`` of the padded input that already holds
    every patch (no copy); one ``reshape`` copies it into the matrix, rows ``(c, i)``, columns ``p``.
    """
    kernel, stride, pads, dilation, out = _geometry(x.shape, kernel, stride, padding, dilation)
    view = patch_view(pad_input(x, pads), kernel, stride, dilation, out)
    n, c = x.shape[:2]
    return view.reshape(n, c * math.prod(kernel), math.prod(out))


def col2im(cols, x_shape, kernel, stride=1, padding=0, dilation=1):
    """The adjoint of ``im2col``: add ``cols: (N, C*K, P)`` back into an input-shaped ``(N, C, *S)``.

    Row ``(c, i)`` of the patch matrix came from the input positions ``o*s + i*d`` of channel
    ``c``, so kernel offset ``i`` adds its rows back there: one strided slice-add per offset
    (overlapping windows add up).  ``<im2col(x), cols> == <x, col2im(cols)>`` for all ``x``, ``cols``.
    """
    x_shape = tuple(x_shape)
    kernel, stride, pads, dilation, out = _geometry(x_shape, kernel, stride, padding, dilation)
    xp = get_array_module(cols)
    n, c = x_shape[:2]
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(x_shape[2:], pads))
    dx_pad = xp.zeros((n, c) + padded, dtype=cols.dtype)
    v = cols.reshape((n, c) + kernel + out)
    for i in itertools.product(*(range(k) for k in kernel)):
        where = tuple(slice(i_ * d, i_ * d + s * (o - 1) + 1, s) for i_, d, s, o in zip(i, dilation, stride, out))
        dx_pad[(slice(None), slice(None)) + where] += v[(slice(None), slice(None)) + i]
    crop = tuple(slice(lo, lo + s) for s, (lo, _) in zip(x_shape[2:], pads))
    return dx_pad[(slice(None), slice(None)) + crop]


def im2col_reference(x, kernel, stride=1, padding=0, dilation=1):
    """Readable loop version of ``im2col`` (NumPy only; for tests and teaching)."""
    x = np.asarray(x)
    kernel, stride, pads, dilation, out = _geometry(x.shape, kernel, stride, padding, dilation)
    n, c = x.shape[:2]
    xpad = np.pad(x, ((0, 0), (0, 0)) + pads)
    K, P = math.prod(kernel), math.prod(out)
    cols = np.zeros((n, c * K, P), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for ki, koff in enumerate(itertools.product(*(range(k) for k in kernel))):
                for p, opos in enumerate(itertools.product(*(range(o) for o in out))):
                    src = tuple(o * s + i * d for o, s, i, d in zip(opos, stride, koff, dilation))
                    cols[b, ch * K + ki, p] = xpad[(b, ch) + src]
    return cols


def col2im_reference(cols, x_shape, kernel, stride=1, padding=0, dilation=1):
    """Readable loop version of ``col2im`` (NumPy only; for tests and teaching)."""
    cols = np.asarray(cols)
    x_shape = tuple(x_shape)
    kernel, stride, pads, dilation, out = _geometry(x_shape, kernel, stride, padding, dilation)
    n, c = x_shape[:2]
    K = math.prod(kernel)
    xpad = np.zeros((n, c) + tuple(s + lo + hi for s, (lo, hi) in zip(x_shape[2:], pads)), dtype=cols.dtype)
    for b in range(n):
        for ch in range(c):
            for ki, koff in enumerate(itertools.product(*(range(k) for k in kernel))):
                for p, opos in enumerate(itertools.product(*(range(o) for o in out))):
                    dst = tuple(o * s + i * d for o, s, i, d in zip(opos, stride, koff, dilation))
                    xpad[(b, ch) + dst] += cols[b, ch * K + ki, p]
    crop = tuple(slice(lo, lo + s) for s, (lo, _) in zip(x_shape[2:], pads))
    return xpad[(slice(None), slice(None)) + crop]


def gathering_filter(in_channels, kernel, dtype=np.float64, xp=np):
    """The identity "gathering" kernel ``eye(C*K).reshape(C*K, C, *kernel)``.

    Convolving with it (no groups) yields the patch matrix as ``C*K`` channels.
    """
    kernel = tuple(int(k) for k in kernel)
    ck = int(in_channels) * math.prod(kernel)
    return xp.eye(ck, dtype=dtype).reshape((ck, int(in_channels)) + kernel)
