"""Convolution -> ReLU -> 2x2 max pooling, run together by pooling phase (forward and backward).

For a 2-D convolution with stride 1 followed by a ReLU and 2x2 max pooling with stride 2, the
pooling keeps, of every 2x2 block of the convolution's output ``h``, the largest of its four
*phases* ``(a, b)``: the outputs at rows ``2u + a`` and columns ``2v + b``.  Each phase is
itself a convolution of the padded input's four polyphase planes ("space to depth")::

    P[c, a', b', r, s] = x_pad[c, 2r + a', 2s + b']                         (a', b' in {0, 1})
    h[f, 2u + a, 2v + b] = b_f + sum_{c,i,j} W[f, c, i, j] x_pad[c, 2u + a + i, 2v + b + j]
                         = b_f + sum_{c,t,s} Wbig[(a, b, f), (c, t, s)] P[c, t % 2, s % 2, u + t // 2, v + s // 2]

with the kernel at offset ``(a, b)`` in a zero ``T_h x T_w`` one,
``Wbig[(a, b, f), (c, t, s)] = W[f, c, t - a, s - b]`` (zero outside the kernel),
``T = 2 * ceil((k + 1) / 2)`` along an axis of kernel size ``k``.  So one matrix product gives
all four phases, the pooling is a maximum over four contiguous blocks, and the ReLU is applied
to the pooled values (``fusion.py``: max pooling commutes with the ReLU)::

    Q = [P[c, t % 2, s % 2, u + t // 2, v + s // 2]]        (C*T_h*T_w (+1: ones, the bias), U*V)
    O = Wbig @ Q                                           (4F, U*V): phase 2a + b in rows (2a + b)F ...
    y = relu(max_phase O),   arg = the phase of the maximum  (F, U, V),  U = H' // 2, V = W' // 2

and backward (``g = dL/dy`` masked by ``[y > 0]``, routed to the phase that held the maximum)::

    dO[(a, b, f), (u, v)] = g[f, u, v] [arg[f, u, v] == 2a + b]
    dL/dWbig = dO @ Q^T       dL/dW[f, c, i, j] = sum_{a, b} dL/dWbig[(a, b, f), (c, a + i, b + j)]
    dL/dQ = Wbig^T @ dO  ->  summed into the planes (the adjoint of gathering Q)  ->  dL/dx

``Q`` has ``C*T_h*T_w`` rows of ``U*V`` entries where the plain convolution's patch matrix has
``C*k_h*k_w`` rows of ``4*U*V`` (5x5 kernels: 36 % of the copying, for 44 % more multiply-adds:
``Wbig``'s zeros), the pooling and its gradient read and write contiguous blocks, and ``dL/dx``
sums 36 small slices instead of 25 four times larger ones.  Samples are laid out last within a
chunk (``P: (C, 2, 2, R, S, m)``), so every copy is a long contiguous run and one product serves
a chunk.  LeNet-5, one core, 128 samples: benchmarks/RESULTS.md, eleventh-session entry.

This is the fast path; the reference is the three layers one by one (``Convolution``,
``ReLU``, ``MaxPool``), which the TensorFlow cross-checks hold; tests/test_phase_pool.py holds
this module to them.  The engine (``fusion.PhaseBlockUnit``) runs a ``Convolution -> ReLU ->
MaxPool`` triple here
where ``applies`` says so (NumPy data, 2-D, stride and dilation 1, a 2x2 pool with stride 2 and
no padding, kernels whose extra multiply-adds stay small: ``MAX_EXTRA``), forward and backward.
"""
import numpy as np

from ..backend import get_array_module
from ..layers.base import ShapeError
from ..layers.geometry import conv_output_shape, resolve_padding
from .settings import SETTINGS, chunks

__all__ = ["applies", "PhasePool", "MAX_EXTRA"]

#: the largest ratio ``T_h*T_w / (k_h*k_w)`` (multiply-adds with ``Wbig``'s zeros over the plain
#: convolution's) run here: 5x5 kernels 1.44, 7x7 1.31; 3x3 (1.78) stays with the layers
MAX_EXTRA = 1.5


def _taps(k):
    """``T``: the phase kernel's size along an axis of kernel size ``k`` (``k + 1`` rounded up to even)."""
    return 2 * -(-(k + 1) // 2)


def applies(conv, pool, x):
    """Does ``PhasePool`` compute ``conv -> ReLU -> pool`` on ``x`` (see the module docstring)?"""
    if get_array_module(x) is not np or getattr(x, "ndim", 0) != 4 or x.shape[0] == 0:
        return False
    if conv.ndim != 2 or conv.stride != (1, 1) or conv.dilation != (1, 1) or not conv.trainable:
        return False
    if x.shape[1] != conv.in_channels or np.dtype(x.dtype) != conv.dtype:
        return False                                  # the layer's own forward casts or raises
    kh, kw = conv.kernel_size
    if pool.ndim != 2 or pool.pool_size != (2, 2) or pool.stride != (2, 2) or pool.dilation != (1, 1):
        return False
    if _taps(kh) * _taps(kw) > MAX_EXTRA * kh * kw:
        return False
    try:
        out = conv.compute_output_shape(tuple(x.shape[1:]))[1:]          # (H', W')
    except ShapeError:                                # does not fit: the layer's forward says why
        return False
    return min(out) >= 2 and not any(lo or hi for lo, hi in resolve_padding(pool.padding, out, pool.pool_size, pool.stride, pool.dilation))


class PhasePool:
    """The plan for one input shape and dtype (geometry, chunks, reused buffers) and the state
    of its last forward for the backward (see the module docstring for the formulas)."""

    def __init__(self, conv, x_shape, dtype):
        self.x_shape, self.dtype = tuple(x_shape), np.dtype(dtype)
        n, C, H, W = self.x_shape
        self.kernel = conv.kernel_size
        self.use_bias = conv.use_bias
        pads = resolve_padding(conv.padding, (H, W), conv.kernel_size, conv.stride, conv.dilation)
        self.conv_out = conv_output_shape((H, W), self.kernel, (1, 1), pads, (1, 1))     # (H', W')
        self.U, self.V = self.conv_out[0] // 2, self.conv_out[1] // 2
        self.T = (_taps(self.kernel[0]), _taps(self.kernel[1]))
        # phase-plane rows and columns read: u + t // 2 <= U - 1 + T/2 - 1
        self.R, self.S = self.U + self.T[0] // 2 - 1, self.V + self.T[1] // 2 - 1
        self.F = F = conv.out_channels
        self.K = C * self.T[0] * self.T[1]
        self.K1 = self.K + (1 if self.use_bias else 0)
        UV = self.U * self.V
        per_sample = ((self.K1 + 4 * F + 3 * F) * UV + 4 * C * self.R * self.S) * self.dtype.itemsize
        self.step, self.chunks = chunks(n, per_sample, SETTINGS["phase_chunk_bytes"])
        self.buffers = {}
        # for each phase (a, b): (input slice, plane slice) along rows and along columns
        self.copies = {}
        covered = np.zeros((H, W), dtype=bool)
        for a in range(2):
            for b in range(2):
                rows = self._span(a, pads[0][0], H, self.R)
                cols = self._span(b, pads[1][0], W, self.S)
                if rows is not None and cols is not None:
                    self.copies[a, b] = (rows, cols)
                    covered[rows[0], cols[0]] = True
        self.covers_input = bool(covered.all())   # else dL/dx is zero where no plane reads x
        self.x, self.for_backward = None, True
        self.held = {}                            # chunk size -> the chunk its rows buffer holds

    @staticmethod
    def _span(a, lo, size, count):
        """Phase ``a`` along one axis: ``(input slice, plane slice)`` of the plane positions ``r``
        with ``0 <= 2r + a - lo < size`` (inside the input) and ``r < count``; None if none."""
        first = max(0, -(-(lo - a) // 2))
        last = min(count - 1, (size - 1 + lo - a) // 2)
        if first > last:
            return None
        return slice(2 * first + a - lo, 2 * last + a - lo + 1, 2), slice(first, last + 1)

    def _buffer(self, name, shape, dtype=None, fill=0):
        """A reused array per name and shape, filled with ``fill`` once, when it is made."""
        key = (name, shape)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = np.full(shape, fill, dtype=self.dtype if dtype is None else dtype)
        return buf

    def _wbig(self, W, b):
        """``(4F, K1)``: per phase ``(a, b)`` the kernel at offset ``(a, b)`` of a zero ``T_h x T_w``
        one; the bias last (the entries outside the kernel are never written: they stay zero)."""
        F, C, kh, kw = W.shape
        big = self._buffer("wbig", (4 * F, self.K1))
        phases = big[:, :self.K].reshape(2, 2, F, C, self.T[0], self.T[1])
        for a in range(2):
            for b_ in range(2):
                phases[a, b_, :, :, a:a + kh, b_:b_ + kw] = W
        if b is not None:
            big[:, self.K] = np.tile(b, 4)
        return big

    def _rows(self, x, a0, a1):
        """``Q: (K1, U*V*m)`` of the samples ``a0:a1``: the chunk's polyphase planes
        ``P: (C, 2, 2, R, S, m)`` (zero where ``x_pad`` is padding: those entries are never
        written), then row ``(c, t, s)`` = ``P[c, t % 2, s % 2, t//2 : t//2 + U, s//2 : s//2 + V]``
        (one strided copy); the last row ones when there is a bias."""
        m = a1 - a0
        C, th, tw = x.shape[1], self.T[0] // 2, self.T[1] // 2
        P = self._buffer("planes", (C, 2, 2, self.R, self.S, m))
        xt = np.moveaxis(x[a0:a1], 0, -1)                                  # (C, H, W, m) view
        for (a, b), ((src_r, dst_r), (src_c, dst_c)) in self.copies.items():
            P[:, a, b, dst_r, dst_c] = xt[:, src_r, src_c]
        Q = self._buffer("rows", (self.K1, self.U, self.V, m), fill=1)
        sc, sa, sb, sr, ss, sn = P.strides
        view = np.lib.stride_tricks.as_strided(P, shape=(C, th, 2, tw, 2, self.U, self.V, m),
                                               strides=(sc, sr, sa, ss, sb, sr, ss, sn))
        np.copyto(Q[:self.K].reshape(view.shape), view)
        self.held[m] = (a0, a1)
        return Q.reshape(self.K1, -1)

    def _held_rows(self, x, a0, a1):
        """``_rows``, without the copying when the buffer still holds that chunk of this ``x``."""
        m = a1 - a0
        if self.held.get(m) == (a0, a1):
            return self._buffer("rows", (self.K1, self.U, self.V, m), fill=1).reshape(self.K1, -1)
        return self._rows(x, a0, a1)

    def forward(self, x, W, b, for_backward=True):
        """``y = relu(maxpool(conv(x)))``, ``(N, F, U, V)`` (a new array); the maxima and their
        phases are kept per chunk (samples last) for ``backward`` and ``argmax``.
        ``for_backward=False`` (``predict``, ``evaluate``): only the maxima, three passes per chunk
        instead of eleven; ``backward`` and ``argmax`` then refuse."""
        n, F = x.shape[0], W.shape[0]
        UV = self.U * self.V
        Wbig = self._wbig(W, b)
        self.x, self.held = x, {}
        self.for_backward = for_backward
        y = np.empty((n, F, self.U, self.V), dtype=x.dtype)
        for ci, (a0, a1) in enumerate(self.chunks):
            m = a1 - a0
            Q = self._rows(x, a0, a1)
            O = np.matmul(Wbig, Q, out=self._buffer("out", (4 * F, UV * m))).reshape(4, F, UV * m)
            best = self._buffer(("best", ci), (F, UV * m))
            np.maximum(O[0], O[1], out=best)
            if for_backward:
                arg = self._buffer(("arg", ci), (F, UV * m), np.uint8)
                gt = self._buffer("gt", (F, UV * m), np.bool_)
                np.greater(O[1], O[0], out=gt)
                np.copyto(arg, gt.view(np.uint8))
            for i in (2, 3):                   # strict >: the first maximum (row-major) stays,
                if for_backward:               # i * gt with i rising: the last phase that raised it
                    np.greater(O[i], best, out=gt)
                np.maximum(best, O[i], out=best)
                if for_backward:
                    np.maximum(arg, gt.view(np.uint8) * np.uint8(i), out=arg)
            np.maximum(best, best.dtype.type(0), out=best)                  # the ReLU
            y[a0:a1] = np.moveaxis(best.reshape(F, self.U, self.V, m), -1, 0)
        return y

    def _require_backward_state(self):
        if self.x is None or not self.for_backward:
            raise RuntimeError("PhasePool: no forward kept what the backward needs (run forward with for_backward=True)")

    def argmax(self):
        """``(N, F, U, V)``: the phase ``2a + b`` of each window's maximum (``MaxPool``'s argmax)."""
        self._require_backward_state()
        F = self.F
        arg = np.empty((self.x.shape[0], F, self.U, self.V), dtype=np.uint8)
        for ci, (a0, a1) in enumerate(self.chunks):
            held = self._buffer(("arg", ci), (F, self.U * self.V * (a1 - a0)), np.uint8)
            arg[a0:a1] = np.moveaxis(held.reshape(F, self.U, self.V, a1 - a0), -1, 0)
        return arg

    def backward(self, dy, W, b, need_input_grad=True):
        """``(dL/dW, dL/db or None, dL/dx or None)`` from ``dy = dL/dy``, ``(N, F, U, V)``."""
        self._require_backward_state()
        x = self.x
        F, C, kh, kw = W.shape
        U, V, K = self.U, self.V, self.K
        UV = U * V
        dWbig_t = np.zeros((self.K1, 4 * F), dtype=dy.dtype)    # transposed: Q @ dO^T runs ~20 % faster
        part = np.empty_like(dWbig_t)                          # than dO @ Q^T for LeNet-5's 2nd block
        dx = None
        if need_input_grad:
            dx = (np.empty if self.covers_input else np.zeros)(x.shape, dtype=dy.dtype)
            WbigT = self._wbig(W, b)[:, :K].T     # from W as it is now, as the layers' backward would
        for ci in range(len(self.chunks) - 1, -1, -1):        # the last chunk first: its rows are held
            a0, a1 = self.chunks[ci]
            m = a1 - a0
            best = self._buffer(("best", ci), (F, UV * m))
            arg = self._buffer(("arg", ci), (F, UV * m), np.uint8)
            g = self._buffer("grad", (F, U, V, m))
            np.copyto(g, np.moveaxis(dy[a0:a1], 0, -1))
            g = g.reshape(F, UV * m)
            mask = self._buffer("mask", (F, UV * m))
            np.greater(best, 0, out=mask)                     # the ReLU's [y > 0], as 0.0 / 1.0
            g *= mask
            dO = self._buffer("dout", (4, F, UV * m))
            for i in range(4):                                # routed to the phase of the maximum
                np.equal(arg, i, out=dO[i])
                dO[i] *= g
            dO = dO.reshape(4 * F, UV * m)
            Q = self._held_rows(x, a0, a1)
            np.matmul(Q, dO.T, out=part)
            dWbig_t += part
            if need_input_grad:
                self._input_grad(np.matmul(WbigT, dO, out=self._buffer("drows", (K, UV * m))), dx, a0, a1)
        db = dWbig_t[K].reshape(4, F).sum(axis=0) if self.use_bias else None
        phases = dWbig_t[:K].T.reshape(2, 2, F, C, self.T[0], self.T[1])
        dW = phases[0, 0, :, :, :kh, :kw].copy()
        for a, b_ in ((0, 1), (1, 0), (1, 1)):
            dW += phases[a, b_, :, :, a:a + kh, b_:b_ + kw]
        return dW, db, dx

    def _input_grad(self, dQ, dx, a0, a1):
        """``dx[a0:a1]`` from ``dQ = dL/dQ``: summed into the planes (the adjoint of ``_rows``), then
        the planes copied back to the input's positions (padding dropped)."""
        m = a1 - a0
        C = dx.shape[1]
        Th, Tw = self.T
        U, V = self.U, self.V
        dP = self._buffer("dplanes", (C, 2, 2, self.R, self.S, m))
        dP[...] = 0
        dQ = dQ.reshape(C, Th, Tw, U, V, m)
        for t in range(Th):
            for s in range(Tw):
                dP[:, t % 2, s % 2, t // 2:t // 2 + U, s // 2:s // 2 + V] += dQ[:, t, s]
        dxt = np.moveaxis(dx[a0:a1], 0, -1)                                # (C, H, W, m) view
        for (a, b), ((src_r, dst_r), (src_c, dst_c)) in self.copies.items():
            dxt[:, src_r, src_c] = dP[:, a, b, dst_r, dst_c]
