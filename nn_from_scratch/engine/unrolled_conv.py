"""A convolution as one dense matrix: ``y = x @ A`` forward, ``dL/dx = dL/dy @ A.T`` backward.

A convolution is linear in its input, so with the samples flattened to rows,
``x: (N, C*|S|)`` and ``y: (N, F*|O|)`` (``|S|``, ``|O|`` the numbers of input and output
positions), it *is* a matrix ``A: (C*|S|, F*|O|)`` of the layer's weights::

    A[c*|S| + flat(s), f*|O| + flat(o)] = W[f, c, i]    for every tap with  s = o*stride + i*dilation - pad_lo
                                                        inside the image (zero padding drops the rest)
    y   = x @ A + b_rep          (b_rep[f*|O| + flat(o)] = b[f])
    dL/dx = dL/dy @ A.T          (no dL/dW: the path for input gradients only)

Each entry of ``A`` holds one weight, placed once: two taps of one ``(f, o, c)`` reach two
different pixels, so the ``(row, column)`` pairs are unique and one fancy-index assignment
builds ``A`` (no scatter-add, no col2im).  The index table depends only on the geometry and is
kept; the values are gathered from ``W`` again when the weights change.

When it pays (``unrolled_applies``).  The patch-matrix path costs ``nnz = F*C*(taps inside)``
multiply-adds per sample and pass but runs far from the machine's peak (patch copies, the
col2im scatter-add, small products); the dense products cost ``C*|S| * F*|O|`` and run near
the BLAS peak.  So ``A`` is used while its *density* ``nnz / (C*|S| * F*|O|)`` is at least
``MIN_DENSITY`` and it holds at most ``MAX_BYTES``.  For a valid stride-1 convolution the
density is about ``|k| / |S|``: 29 % for a 15x15 kernel on 28x28 (A 784 x 392, 2.4 MB in
float64), 10 % for 9x9, 1 % for 3x3.  ``MIN_DENSITY`` is the measured crossover
(``benchmarks/RESULTS.md``, "Input gradients: parameter-free backward and the unrolled
convolution": 1 -> 4 channels on 28x28, the matrix 0.75x the general path at density 0.10,
1.28x at 0.15, 3.8x at 0.29); the memory bound keeps ``A`` a small fraction of memory and its
build cheap.
"""
import math

import numpy as np

from ..backend import get_array_module, to_device
from ..layers.geometry import conv_output_shape, resolve_padding

__all__ = ["MIN_DENSITY", "MAX_BYTES", "ENABLED", "unrolled_geometry", "unrolled_applies", "UnrolledConv",
           "unrolled_matrix"]

#: use the unrolled matrix only where at least this fraction of its entries are weights
MIN_DENSITY = 0.12
#: and where it holds at most this many bytes
MAX_BYTES = 64 << 20
#: ``False``: never unroll (every convolution by the general input-gradient path; for comparisons)
ENABLED = True


def unrolled_geometry(spatial, kernel, stride, pads, dilation):
    """``(O, inside, flat_s)`` for one channel pair: the output shape ``O``; for each output position
    ``p`` (row-major over ``O``) and kernel tap ``t`` (row-major over ``kernel``) whether the tap reads
    inside the image (``inside: (|O|, |k|)`` bool) and the flat input position it reads (``flat_s``,
    valid where ``inside``)."""
    O = conv_output_shape(spatial, kernel, stride, pads, dilation)
    nd = len(spatial)
    o = np.indices(O).reshape(nd, -1)                      # (nd, |O|)
    i = np.indices(kernel).reshape(nd, -1)                 # (nd, |k|)
    st, di = np.array(stride).reshape(nd, 1, 1), np.array(dilation).reshape(nd, 1, 1)
    lo = np.array([p[0] for p in pads]).reshape(nd, 1, 1)
    pos = o[:, :, None] * st + i[:, None, :] * di - lo     # (nd, |O|, |k|)
    size = np.array(spatial).reshape(nd, 1, 1)
    inside = np.all((pos >= 0) & (pos < size), axis=0)
    flat_s = np.ravel_multi_index(tuple(np.where(inside, pos, 0)), tuple(spatial))
    return O, inside, flat_s


def _density(layer, spatial):
    """``(nnz, rows, cols)`` of ``A`` for ``layer`` (a ``Convolution``) on inputs of spatial shape ``spatial``."""
    pads = resolve_padding(layer.padding, spatial, layer.kernel_size, layer.stride, layer.dilation)
    O, inside, _ = unrolled_geometry(spatial, layer.kernel_size, layer.stride, pads, layer.dilation)
    F, C = layer.out_channels, layer.in_channels
    return F * C * int(inside.sum()), C * math.prod(spatial), F * math.prod(O)


def unrolled_applies(layer, x_shape, itemsize):
    """Does the input-gradient path run ``layer`` on inputs of shape ``x_shape`` (``(N, C, *S)``) as the
    dense matrix ``A``?  Yes while ``A``'s density is at least ``MIN_DENSITY`` and it holds at most
    ``MAX_BYTES`` (``itemsize`` bytes per entry).  The size is checked before any table is built."""
    spatial = tuple(x_shape[2:])
    if not ENABLED:
        return False
    pads = resolve_padding(layer.padding, spatial, layer.kernel_size, layer.stride, layer.dilation)
    O = conv_output_shape(spatial, layer.kernel_size, layer.stride, pads, layer.dilation)
    rows, cols = layer.in_channels * math.prod(spatial), layer.out_channels * math.prod(O)
    if rows * cols * itemsize > MAX_BYTES:
        return False
    nnz, _, _ = _density(layer, spatial)
    return nnz >= MIN_DENSITY * rows * cols


class UnrolledConv:
    """The matrix ``A`` of one ``Convolution`` for inputs of one spatial shape (see the module docstring).

    ``matrix(W)``: ``A`` for the weights ``W: (F, C, *k)``, rebuilt only when ``W`` differs from the
    weights it was built from (compared entry by entry: ``W`` is small wherever ``A`` is used).
    ``forward(x, W, b)``: ``y = x @ A (+ b_rep)``, shape ``(N, F, *O)``; ``input_gradient(g)``:
    ``g @ A.T``, shape of the last ``x``.
    """

    def __init__(self, layer, x_shape):
        spatial = tuple(x_shape[2:])
        pads = resolve_padding(layer.padding, spatial, layer.kernel_size, layer.stride, layer.dilation)
        O, inside, flat_s = unrolled_geometry(spatial, layer.kernel_size, layer.stride, pads, layer.dilation)
        F, C, K = layer.out_channels, layer.in_channels, math.prod(layer.kernel_size)
        nS, nO = math.prod(spatial), math.prod(O)
        p, t = np.nonzero(inside)                          # the taps inside, (position, tap) pairs
        s = flat_s[p, t]
        f = np.arange(F).reshape(F, 1, 1)
        c = np.arange(C).reshape(1, C, 1)
        rows = c * nS + s                                  # (1, C, n_in)
        cols = f * nO + p                                  # (F, 1, n_in)
        self.flat_index = (rows * (F * nO) + cols).reshape(-1)        # into A.reshape(-1), (F*C*n_in,)
        self.weight_index = ((f * C + c) * K + t).reshape(-1)         # into W.reshape(-1)
        self.shape = (C * nS, F * nO)
        self.out_shape = (F,) + tuple(O)
        self.in_shape = (C,) + spatial
        self._built = None                                 # (W copy, b copy, A, b_rep)
        self._device_index = None

    def _indices(self, like):
        held = self._device_index
        if held is None or type(held[0]) is not type(like):
            held = self._device_index = (to_device(self.flat_index, like=like, dtype=self.flat_index.dtype),
                                         to_device(self.weight_index, like=like, dtype=self.weight_index.dtype))
        return held

    def matrix(self, W, b=None):
        """``(A, b_rep)`` for the weights ``W`` and bias ``b`` (``b_rep`` None without bias).

        On NumPy ``A`` is kept while the weights are unchanged (a comparison: ~2 us against a
        ~0.7 ms build for the 784 x 392 matrix); on a GPU it is rebuilt at every call (one
        scatter kernel), since comparing would read a device value back to the host."""
        xp = get_array_module(W)
        held = self._built
        if (xp is np and held is not None and type(held[0]) is type(W) and held[0].dtype == W.dtype
                and bool(xp.array_equal(held[0], W))
                and (b is None) == (held[1] is None) and (b is None or bool(xp.array_equal(held[1], b)))):
            return held[2], held[3]
        A = unrolled_matrix(W, self, xp)
        b_rep = None if b is None else xp.repeat(b, math.prod(self.out_shape[1:]))
        self._built = (W.copy(), None if b is None else b.copy(), A, b_rep)
        return A, b_rep

    def forward(self, x, W, b=None):
        n = x.shape[0]
        A, b_rep = self.matrix(W, b)
        y = x.reshape(n, self.shape[0]) @ A
        if b_rep is not None:
            y += b_rep
        return y.reshape((n,) + self.out_shape)

    def input_gradient(self, g):
        n = g.shape[0]
        A = self._built[2]
        return (g.reshape(n, self.shape[1]) @ A.T).reshape((n,) + self.in_shape)


def unrolled_matrix(W, unrolled, xp=None):
    """The dense ``A: (C*|S|, F*|O|)`` of ``unrolled`` (an ``UnrolledConv``) filled from ``W`` (one assignment)."""
    xp = get_array_module(W) if xp is None else xp
    flat, widx = unrolled._indices(W)
    A = xp.zeros(unrolled.shape, dtype=W.dtype)
    A.reshape(-1)[flat] = W.reshape(-1)[widx]
    return A
