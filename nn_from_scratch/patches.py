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

Fast path: a strided view of the padded input (no copy) that one ``reshape``
turns into the patch matrix; ``col2im`` adds the patch matrix back with one
strided slice-add per kernel offset (or per output position when there are
fewer of those).  ``im2col_reference``/``col2im_reference`` are plain loops over
every index, kept beside them; the tests hold the two equal.

Stride 1: the flat-shift layout (``FlatShift``)
-----------------------------------------------
With stride 1 a patch row is a *shifted copy* of the flattened input.  Flatten
the padded sample to ``xf[n, c, q]`` (``q`` the row-major index in the padded
grid ``Sp``, with strides ``st``) and let the output index run over the whole
padded width instead of the valid one: ``q = o_1*st_1 + o_2*st_2 + ...`` for
``o_1 < O_1`` and *every* value of the other coordinates.  Then::

    cols_flat[n, (c, i), q] = xf[n, c, q + offset(i)],   offset(i) = sum_k i_k*d_k*st_k

so each row of the patch matrix is one contiguous slice of ``xf`` (fast to copy,
and ``col2im`` becomes one contiguous slice-add per kernel offset).  The extra
columns (coordinates past the valid output size) compute numbers nobody reads:
they are cropped from the output, and the upstream gradient is zero there, so
they add nothing to ``dL/dW`` or ``dL/dx``.  The cost is a factor
``prod(Sp[1:]) / prod(O[1:])`` more columns; the gain is long contiguous copies
instead of many short strided ones.
"""
import itertools
import math

import numpy as np

from .backend import get_array_module
from .interfaces import ShapeError

__all__ = [
    "as_tuple", "resolve_padding", "padding_to_json", "conv_output_shape", "pad_input", "im2col", "col2im",
    "im2col_reference", "col2im_reference", "gathering_filter", "patch_view", "FlatShift",
    "StridedPatches", "make_gatherer",
]


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


def _gather(view, n_kernel_axes, out=None, merged=False):
    """Copy a patch view ``(n, C, *k, *positions)`` into the patch matrix.

    ``merged=False``: ``(n, C*K, P)``, one matrix per sample.  ``merged=True``:
    ``(C*K, n*P)``, the samples side by side, so that one matrix product covers
    the whole chunk (better for BLAS when the filter count is not tiny).
    With ``out`` (a C-contiguous buffer of that size, e.g. a reused workspace)
    the copy goes there: no fresh allocation, no page faults.
    """
    n = view.shape[0]
    split = 2 + n_kernel_axes
    rows = math.prod(view.shape[1:split])
    p = math.prod(view.shape[split:])
    xp = get_array_module(view)
    if merged:
        moved = view.transpose(tuple(range(1, split)) + (0,) + tuple(range(split, view.ndim)))
        if out is None:
            out = xp.empty(moved.shape, dtype=view.dtype)
        xp.copyto(out.reshape(moved.shape), moved)
        return out.reshape(rows, n * p)
    if out is None:
        return view.reshape(n, rows, p)
    xp.copyto(out.reshape(view.shape), view)
    return out.reshape(n, rows, p)


class StridedPatches:
    """Patch gathering for any stride, in the standard layout (see module docstring).

    Same interface as ``FlatShift``::

        flatten(x)        -> x_pad: (N, C, *Sp)       zero-padded input
        patches(x_pad[a:b]) -> (b-a, C*K, P)          the patch matrix (im2col)
        crop(y)           (n, F, P) -> (n, F, *O)
        expand(g)         (n, F, *O) -> (n, F, P)
        scatter_add(dx_pad, dcols)                    adjoint of patches (in place)
        unflatten(dx_pad) -> (N, C, *S)               drop padding
    """

    def __init__(self, x_shape, kernel, stride, pads, dilation):
        self.x_shape = tuple(x_shape)
        self.kernel, self.stride, self.pads, self.dilation = tuple(kernel), tuple(stride), tuple(pads), tuple(dilation)
        self.out = conv_output_shape(x_shape[2:], kernel, stride, pads, dilation)
        self.n_pos = math.prod(self.out)
        self.K = math.prod(kernel)

    def flatten(self, x):
        return pad_input(x, self.pads)

    def zeros_source(self, like):
        """Zeros shaped like ``flatten(x)`` for the whole batch (module/dtype of ``like``)."""
        xp = get_array_module(like)
        padded = tuple(s + lo + hi for s, (lo, hi) in zip(self.x_shape[2:], self.pads))
        return xp.zeros(self.x_shape[:2] + padded, dtype=like.dtype)

    def patches(self, x_pad, out=None, merged=False):
        """The patch matrix ``(n, C*K, P)``, or ``(C*K, n*P)`` merged (into ``out`` when given)."""
        view = patch_view(x_pad, self.kernel, self.stride, self.dilation, self.out)
        return _gather(view, len(self.kernel), out, merged)

    def crop(self, y):
        return y.reshape(y.shape[:2] + self.out)

    def expand(self, g):
        return g.reshape(g.shape[:2] + (self.n_pos,))

    def scatter_add(self, dx_pad, dcols):
        n, c = dx_pad.shape[:2]
        v = dcols.reshape((n, c) + self.kernel + self.out)
        nd = len(self.kernel)
        if self.K <= self.n_pos:
            # one strided slice-add per kernel offset i: positions o*s + i*d for all o
            for idx in itertools.product(*(range(k) for k in self.kernel)):
                sl = tuple(slice(i * d, i * d + s * (o - 1) + 1, s)
                           for i, d, s, o in zip(idx, self.dilation, self.stride, self.out))
                dx_pad[(slice(None), slice(None)) + sl] += v[(slice(None), slice(None)) + idx]
        else:
            # fewer output positions than kernel offsets: one slice-add per position
            for pos in itertools.product(*(range(o) for o in self.out)):
                sl = tuple(slice(p * s, p * s + d * (k - 1) + 1, d)
                           for p, s, d, k in zip(pos, self.stride, self.dilation, self.kernel))
                dx_pad[(slice(None), slice(None)) + sl] += v[(slice(None), slice(None)) + (slice(None),) * nd + pos]

    def unflatten(self, dx_pad):
        crop = tuple(slice(lo, lo + s) for s, (lo, _) in zip(self.x_shape[2:], self.pads))
        return dx_pad[(slice(None), slice(None)) + crop]


def im2col(x, kernel, stride=1, padding=0, dilation=1):
    """Patch matrix ``cols: (N, C*K, P)`` of ``x: (N, C, *S)`` (see module docstring)."""
    kernel, stride, pads, dilation, _ = _geometry(x.shape, kernel, stride, padding, dilation)
    g = StridedPatches(x.shape, kernel, stride, pads, dilation)
    return g.patches(g.flatten(x))


def col2im(cols, x_shape, kernel, stride=1, padding=0, dilation=1):
    """Adjoint of ``im2col``: scatter-add ``cols: (N, C*K, P)`` into ``(N, C, *S)``.

    ``<im2col(x), cols> == <x, col2im(cols)>`` for every ``x`` and ``cols``.
    """
    x_shape = tuple(x_shape)
    kernel, stride, pads, dilation, _ = _geometry(x_shape, kernel, stride, padding, dilation)
    g = StridedPatches(x_shape, kernel, stride, pads, dilation)
    dx_pad = g.zeros_source(cols)
    g.scatter_add(dx_pad, cols)
    return g.unflatten(dx_pad)


class FlatShift:
    """Stride-1 patch gathering in the flat-shift layout (see module docstring).

    ``x: (N, C, *S)`` with padding ``pads`` and dilation ``d`` (stride must be 1)::

        flatten(x)        -> xf: (N, C, L)             zero-padded, flattened samples
        patches(xf[a:b])  -> (b-a, C*K, Pf)           patch matrix over the flat grid
        crop(yf)          (n, F, Pf) -> (n, F, *O)     keep the valid outputs
        expand(g)         (n, F, *O) -> (n, F, Pf)     zeros at the extra columns
        scatter_add(dxf, dcols)                       adjoint of patches (in place)
        unflatten(dxf)    (N, C, L) -> (N, C, *S)      drop padding

    with ``Pf = O_1 * prod(Sp[1:])`` and ``L = prod(Sp) + sum_{k>1} (k_k - 1)*d_k*st_k``
    (the tail lets the last window's extra columns read zeros).
    """

    def __init__(self, x_shape, kernel, pads, dilation):
        spatial = tuple(x_shape[2:])
        self.x_shape = tuple(x_shape)
        self.kernel, self.pads, self.dilation = tuple(kernel), tuple(pads), tuple(dilation)
        self.padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads))
        self.out = conv_output_shape(spatial, kernel, (1,) * len(kernel), pads, dilation)
        st = [1] * len(self.padded)
        for k in range(len(self.padded) - 2, -1, -1):
            st[k] = st[k + 1] * self.padded[k + 1]
        self.steps = tuple(st)
        self.offsets = [sum(i * d * s for i, d, s in zip(idx, dilation, st))
                        for idx in itertools.product(*(range(k) for k in kernel))]
        self.n_pos = self.out[0] * st[0]
        self.length = math.prod(self.padded) + sum((k - 1) * d * s for k, d, s in
                                                      zip(kernel[1:], dilation[1:], st[1:]))

    def zeros_source(self, like):
        """Zeros shaped like ``flatten(x)`` for the whole batch (module/dtype of ``like``)."""
        xp = get_array_module(like)
        return xp.zeros(self.x_shape[:2] + (self.length,), dtype=like.dtype)

    def _grid(self, xf):
        """``(N, C, *Sp)`` view of the padded grid at the start of ``xf: (N, C, L)``.

        Built with ``as_strided``, which is a view on NumPy and CuPy alike (a
        ``reshape`` of the non-contiguous slice ``xf[:, :, :prod(Sp)]`` is a view
        only when the library manages one; writing into a silent copy would lose
        the data).
        """
        xp = get_array_module(xf)
        it = xf.itemsize
        return xp.lib.stride_tricks.as_strided(
            xf, shape=tuple(xf.shape[:2]) + self.padded,
            strides=tuple(xf.strides[:2]) + tuple(s * it for s in self.steps))

    def flatten(self, x):
        xf = self.zeros_source(x)
        body = self._grid(xf)
        body[(slice(None), slice(None)) + tuple(slice(lo, lo + s) for (lo, _), s in
                                                zip(self.pads, self.x_shape[2:]))] = x
        return xf

    def _window_view(self, src, width):
        """``(n, C, *k, width)`` view: ``view[n, c, i, p] = src[n, c, p + offset(i)]``."""
        xp = get_array_module(src)
        it = src.itemsize
        return xp.lib.stride_tricks.as_strided(
            src, shape=tuple(src.shape[:2]) + self.kernel + (width,),
            strides=tuple(src.strides[:2]) + tuple(d * s * it for d, s in zip(self.dilation, self.steps)) + (it,))

    def patches(self, xf, out=None, merged=False):
        """The patch matrix ``(n, C*K, Pf)``, or ``(C*K, n*Pf)`` merged (into ``out`` when given)."""
        return _gather(self._window_view(xf, self.n_pos), len(self.kernel), out, merged)

    # -- row patches: gather only the kernel axes after the first ----------------------
    # The first kernel axis moves the window by whole rows of the flat grid, i.e. by
    # ``row_offsets[i] = i*d_1*st_1`` columns: a matrix product can take that shift as a
    # column offset of its operand instead of a copy (``Convolution``'s row-shift mode).
    @property
    def row_offsets(self):
        return [i * self.dilation[0] * self.steps[0] for i in range(self.kernel[0])]

    def row_patches(self, src, width, out=None):
        """``(n, C*K', width)`` with ``K' = prod(k[1:])``: ``[n, (c, i'), q] = src[n, c, q + offset(0, i')]``."""
        xp = get_array_module(src)
        it = src.itemsize
        view = xp.lib.stride_tricks.as_strided(
            src, shape=tuple(src.shape[:2]) + self.kernel[1:] + (width,),
            strides=tuple(src.strides[:2]) + tuple(d * s * it for d, s in zip(self.dilation[1:], self.steps[1:]))
            + (it,))
        return _gather(view, len(self.kernel) - 1, out)

    # -- the input gradient as a convolution with the flipped kernel ------------------
    # dxf[n, c, q] = sum_{f, i} W[f, c, i] gf[n, f, q - offset(i)]; with gpad[t] = gf[t - max_off]
    # this is sum_{f, i'} W[f, c, k-1-i'] gpad[n, f, q + offset(i')]: the same flat-shift
    # patches, taken from the padded gradient, times the flipped kernel.
    @property
    def max_offset(self):
        return self.offsets[-1]

    def pad_gradient(self, g):
        """``gpad: (N, F, L + max_off)``: ``g`` on the flat grid, shifted right by ``max_off``."""
        xp = get_array_module(g)
        n, f = g.shape[:2]
        gpad = xp.zeros((n, f, self.length + self.max_offset), dtype=g.dtype)
        it = gpad.itemsize
        grid = xp.lib.stride_tricks.as_strided(
            gpad[:, :, self.max_offset:], shape=(n, f, self.out[0]) + self.padded[1:],
            strides=tuple(gpad.strides[:2]) + tuple(s * it for s in self.steps))
        grid[(slice(None), slice(None), slice(None)) + tuple(slice(0, o) for o in self.out[1:])] = g
        return gpad

    def gradient_on_grid(self, gpad):
        """``(N, F, Pf)`` view of ``g`` on the flat grid (zeros at the extra columns)."""
        return gpad[:, :, self.max_offset:self.max_offset + self.n_pos]

    def gradient_patches(self, gpad, out=None):
        """``(n, F*K, L)``: flat-shift patches of the padded gradient (pair with the flipped kernel)."""
        return _gather(self._window_view(gpad, self.length), len(self.kernel), out)

    def crop(self, yf):
        n, f = yf.shape[:2]
        full = yf.reshape((n, f, self.out[0]) + self.padded[1:])
        return full[(slice(None), slice(None), slice(None)) + tuple(slice(0, o) for o in self.out[1:])]

    def expand(self, g):
        xp = get_array_module(g)
        n, f = g.shape[:2]
        gf = xp.zeros((n, f, self.out[0]) + self.padded[1:], dtype=g.dtype)
        gf[(slice(None), slice(None), slice(None)) + tuple(slice(0, o) for o in self.out[1:])] = g
        return gf.reshape(n, f, self.n_pos)

    def scatter_add(self, dxf, dcols):
        n, c = dxf.shape[:2]
        v = dcols.reshape(n, c, len(self.offsets), self.n_pos)
        for ki, off in enumerate(self.offsets):
            dxf[:, :, off:off + self.n_pos] += v[:, :, ki]

    def unflatten(self, dxf):
        body = self._grid(dxf)
        return body[(slice(None), slice(None)) + tuple(slice(lo, lo + s) for (lo, _), s in
                                                       zip(self.pads, self.x_shape[2:]))]


def make_gatherer(x_shape, kernel, stride, pads, dilation):
    """``FlatShift`` when every stride is 1 (faster), else ``StridedPatches``."""
    if all(s == 1 for s in stride):
        return FlatShift(x_shape, kernel, pads, dilation)
    return StridedPatches(x_shape, kernel, stride, pads, dilation)


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
