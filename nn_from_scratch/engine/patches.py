"""Fast patch gathering for the engine's convolutions: ``FlatShift`` (stride 1) and ``StridedPatches``.

The patch matrix and its adjoint are defined in ``layers/geometry.py`` (``im2col``/``col2im`` and
their loop references); this module gathers the same numbers faster.

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

from ..backend import get_array_module
from ..layers.geometry import conv_output_shape, pad_input, patch_view
# the geometry the gatherers build on, importable from here as from ``nn_from_scratch.patches`` of earlier versions
from ..layers.geometry import (as_tuple, col2im, col2im_reference, gathering_filter, im2col,  # noqa: F401
                               im2col_reference, padding_to_json, resolve_padding)

__all__ = [
    "FlatShift", "StridedPatches", "make_gatherer",
]


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


