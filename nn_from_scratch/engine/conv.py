"""The engine's convolution: the layer's formulas (``layers/conv.py``) in faster arrangements.

Both compute, for ``x: (N, C, *S)``, ``W: (F, C, *k)`` and ``g = dL/dy``::

    y     = W.reshape(F, C*K) @ im2col(x)            (per sample)
    dL/dW = sum_n g[n] @ im2col(x)[n].T
    dL/dx = col2im(W.reshape(F, C*K).T @ g)           = conv(g, flipped W)  (stride 1)

and differ in how much of the patch matrix they copy, and how:

``PatchProduct`` (any stride)
    copies the whole patch matrix of a chunk of samples (``patches.FlatShift`` for
    stride 1, ``patches.StridedPatches`` otherwise) and multiplies once per sample,
    or once per chunk with the samples side by side (``merged``, for >= 8 filters).

``RowShiftProduct`` (stride 1, a first kernel axis of 3 or more)
    copies only the patches of the kernel axes after the first (``row_patches``):
    moving the window one step along the first axis moves it by a whole row of the
    flat grid, so the ``k_1`` products of one chunk read the *same* copy at column
    offsets ``row_offsets[i]``::

        y = sum_i W[:, :, i].reshape(F, C*K') @ R[:, :, off_i : off_i + P]

    A ``k_1``-times smaller copy, ``k_1`` smaller products (dL/dx likewise, on the
    padded gradient with the flipped kernel).  The offsets are evenly spaced, so the
    ``k_1`` shifted operands are one strided view ``(m, k_1, C*K', P)`` and the ``k_1``
    products one batched ``matmul`` followed by a sum over ``i`` (two calls per chunk,
    whatever ``k_1``).

``SampleLastProduct`` (stride 1; NumPy's default for many filters and patch rows)
    the whole patch matrix at the exact output positions, with a chunk's samples laid out as
    the fastest axis, ``(C, *Sp, m)``: every copy and col2im slice-add is then one long
    contiguous block covering all samples of the chunk, and one product per pass covers the
    chunk (see the class).

``KernelPatchProduct`` (CuPy, any stride)
    the GPU arrangement: the patch matrix of a chunk, ``(C*K, m*P)``, gathered by one
    kernel (``kernels.im2col_merged``) straight from the unpadded input, one product per
    pass, and dL/dx by one col2im kernel (a gather over the kernel offsets, no atomics).
    On a GPU a step is bound by the number of launches, not by arithmetic: this path
    launches ~8 kernels per convolution per step where the two above launch 20-60.

A chunk's patch copy is sized to stay in the CPU cache (``SETTINGS["chunk_bytes"]``)
and lives in a scratch buffer kept per layer (no allocation per step).  Backward
gathers the patches again rather than keeping them: less memory, and the copy is
cheap next to the products.
"""
import itertools
import math

import numpy as np

from . import kernels
from ..backend import get_array_module
from ..layers.geometry import conv_output_shape, resolve_padding
from .patches import make_gatherer
from .settings import SETTINGS, check_gradient, chunks, settings  # noqa: F401 - settings: engine.conv.settings

__all__ = ["PatchProduct", "RowShiftProduct", "SampleLastProduct", "KernelPatchProduct", "choose_algorithm",
           "bias_gradient", "SETTINGS", "settings", "chunks", "ConvContext", "ConvUnit"]

class ConvContext:
    """What the arrangements below read of a ``Convolution`` (passed to them as ``layer``): the
    layer's public settings (kernel size, stride, padding, dilation, channels), the engine's
    ``SETTINGS``, and scratch buffers kept for that layer (``_buffer``) with the arrangement chosen
    for the last input (``arrangement``)."""

    def __init__(self, layer):
        self.layer = layer
        self.workspace = {}

    kernel_size = property(lambda self: self.layer.kernel_size)
    stride = property(lambda self: self.layer.stride)
    dilation = property(lambda self: self.layer.dilation)
    in_channels = property(lambda self: self.layer.in_channels)
    out_channels = property(lambda self: self.layer.out_channels)
    ndim = property(lambda self: self.layer.ndim)
    use_bias = property(lambda self: self.layer.use_bias)
    algorithm = property(lambda self: SETTINGS["algorithm"])
    merge_from_filters = property(lambda self: SETTINGS["merge_from_filters"])
    dx_strategy = property(lambda self: SETTINGS["dx_strategy"])

    def _pads(self, spatial):
        layer = self.layer
        return resolve_padding(layer.padding, spatial, layer.kernel_size, layer.stride, layer.dilation)

    def _chunks(self, n, bytes_per_sample, like, budget=None):
        if budget is None:
            budget = SETTINGS["gpu_chunk_bytes"] if get_array_module(like) is not np else SETTINGS["chunk_bytes"]
        return chunks(n, bytes_per_sample, budget)

    def _buffer(self, name, shape, like):
        """A reused scratch array (patch copies etc.): no allocation, no page faults per step."""
        buf = self.workspace.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or type(buf) is not type(like):
            buf = get_array_module(like).empty(shape, dtype=like.dtype)
            self.workspace[name] = buf
        return buf

    def arrangement(self, x):
        """The arrangement computing the layer on ``x`` (``choose_algorithm``), chosen again only when
        the input's array type, shape or dtype, the layer's settings or ``SETTINGS`` change (the
        choice builds index tables: worth keeping at small batches)."""
        layer = self.layer
        key = (type(x), tuple(x.shape), x.dtype, kernels.fused_enabled(x), tuple(sorted(SETTINGS.items())),
               repr(layer.padding), layer.stride, layer.dilation, layer.kernel_size, layer.in_channels,
               layer.out_channels)
        held = self.workspace.get("algorithm")
        if held is None or held[0] != key:
            held = self.workspace["algorithm"] = (key, choose_algorithm(self, x))
        return held[1]


class ConvUnit:
    """One ``Convolution`` run by the arrangement ``choose_algorithm`` picks (``runner.py``)."""

    size = 1

    def __init__(self, context):
        self.context = context

    def forward(self, x):
        conv = self.context.layer
        x = conv.prepare_input(x)           # the layer's own checks and cast
        conv.clear_cache()                  # its own backward must not use an older forward's cache
        self.arrangement = self.context.arrangement(x)
        y = self.arrangement.forward(x, conv.params["W"], conv.params.get("b"))
        self.out_shape = tuple(y.shape)
        return y

    def backward(self, g, need_input_grad):
        conv = self.context.layer
        check_gradient(conv, g, self.out_shape)
        g = g.astype(conv.dtype, copy=False)
        algo = self.arrangement
        dW, dx = algo.backward(g, conv.params["W"], need_input_grad)
        conv.grads["W"] = dW
        if conv.use_bias:   # the arrangement may have summed dL/db on the way (KernelPatchProduct)
            db = getattr(algo, "db", None)
            conv.grads["b"] = db if db is not None else bias_gradient(g)
        return dx


# _DW_NOTE: dL/dW = g @ cols.T has F (few) rows and a long inner dimension; OpenBLAS computes it
# 1.6-1.7x faster as ``(cols @ g.T).T`` (C*K rows): LeNet-5's second convolution on one core,
# 424 -> 245 us per merged chunk, 420 -> 251 us batched per sample (benchmarks/RESULTS.md).


def _flipped_kernel(W, ndim):
    """``W_flip[c, f, i] = W[f, c, k-1-i]``, contiguous ``(C, F, *k)``."""
    xp = get_array_module(W)
    return xp.ascontiguousarray(xp.flip(W, axis=tuple(range(2, 2 + ndim))).swapaxes(0, 1))


class PatchProduct:
    """Whole patch matrices, one product per sample (or per chunk when ``merged``).

    Per sample, the products write straight into an output on the patch grid, ``(N, F, P)``
    (for stride 1 the flat grid: ``P = O_1 * prod(Sp[1:])`` positions, some of them past a row's
    end), the bias is added over it in place, and ``y`` is its crop: a strided view, no copy
    (LeNet-5's first convolution, ReLU and pooling at 128 samples, one core: forward -8 %).
    """

    def __init__(self, layer, x_shape, pads):
        self.layer = layer
        self.gat = make_gatherer(x_shape, layer.kernel_size, layer.stride, pads, layer.dilation)
        self.out = self.gat.out
        self.merged = layer.out_channels >= layer.merge_from_filters

    def _flipped_is_cheaper(self):
        """dL/dx by the flipped-kernel convolution of dL/dy, or by col2im (scatter-add)?

        Flipped: gather F*K rows of the flat input length L, one product.
        col2im: a C*K-row product, then K slice-adds (read-modify-write) of C rows.
        """
        layer, gat = self.layer, self.gat
        if not hasattr(gat, "gradient_patches"):
            return False                    # strided: col2im
        if layer.dx_strategy != "auto":
            return layer.dx_strategy == "flipped"
        return layer.out_channels * gat.length <= 3 * layer.in_channels * gat.n_pos

    def forward(self, x, W, b):
        layer, gat = self.layer, self.gat
        xp = get_array_module(x)
        n, F = x.shape[0], W.shape[0]
        W2 = W.reshape(F, -1)
        ck, P = W2.shape[1], gat.n_pos
        src = gat.flatten(x)
        step, chunks = layer._chunks(n, ck * P * x.itemsize, x)
        cols_buf = layer._buffer("cols", (step * ck * P,), x)
        if self.merged:
            y = xp.empty((n, F) + gat.out, dtype=x.dtype)
            out_buf = layer._buffer("out", (step * F * P,), x)
        else:               # the products write the output on the patch grid; y is its crop (a view)
            y_grid = xp.empty((n, F, P), dtype=x.dtype)
        for a, b_ in chunks:
            m = b_ - a
            cols = gat.patches(src[a:b_], out=cols_buf[:m * ck * P], merged=self.merged)
            if self.merged:                                # (F, C*K) @ (C*K, m*P)
                yf = xp.matmul(W2, cols, out=out_buf[:m * F * P].reshape(F, m * P))
                _store(y[a:b_], gat.crop(yf.reshape(F, m, P).transpose(1, 0, 2)), b, xp)
            else:                                          # (F, C*K) @ (m, C*K, P)
                xp.matmul(W2, cols, out=y_grid[a:b_])
        if not self.merged:
            if b is not None:
                y_grid += b.reshape(-1, 1)
            y = gat.crop(y_grid)
        self.src = src
        self.held = (chunks[-1], cols_buf)                 # the buffer still holds the last chunk
        return y

    def backward(self, dy, W, need_input_grad):
        layer, gat, src = self.layer, self.gat, self.src
        xp = get_array_module(dy)
        n, F = dy.shape[0], W.shape[0]
        W2 = W.reshape(F, -1)
        ck, P = W2.shape[1], gat.n_pos
        merged = self.merged
        flipped = need_input_grad and self._flipped_is_cheaper()
        if flipped:
            gpad = gat.pad_gradient(dy)                    # (N, F, L + max_off)
            g_all = gat.gradient_on_grid(gpad)             # (N, F, P) view
        else:
            g_all = gat.expand(dy)                         # (N, F, P)
        dsrc = None
        if need_input_grad:
            dsrc = xp.empty(src.shape, dtype=dy.dtype) if flipped else gat.zeros_source(dy)
        step, chunks = layer._chunks(n, ck * P * dy.itemsize, dy)
        cols_buf = layer._buffer("cols", (step * ck * P,), dy)
        dW2 = xp.zeros_like(W2)
        for a, b_ in reversed(chunks):      # the last forward chunk first: its patches are still there
            m = b_ - a
            if self.held is not None and self.held[0] == (a, b_) and self.held[1] is cols_buf:
                cols = cols_buf[:m * ck * P].reshape((ck, m * P) if merged else (m, ck, P))
            else:
                cols = gat.patches(src[a:b_], out=cols_buf[:m * ck * P], merged=merged)
            if merged:
                g = layer._buffer("g", (step * F * P,), dy)[:m * F * P].reshape(F, m, P)
                xp.copyto(g, g_all[a:b_].transpose(1, 0, 2))
                g = g.reshape(F, m * P)
                dW2 += (cols @ g.T).T                       # one product per chunk (orientation: see _DW_NOTE)
            else:
                dw = layer._buffer("dw", (step, ck, F), dy)[:m]                     # (cols[n] @ g[n].T).T
                dW2 += xp.matmul(cols, g_all[a:b_].transpose(0, 2, 1), out=dw).sum(axis=0).T
            if need_input_grad and not flipped:                                     # col2im(W2.T @ g)
                dcols = layer._buffer("dcols", (step * ck * P,), dy)[:m * ck * P]
                if merged:
                    dcols = xp.matmul(W2.T, g, out=dcols.reshape(ck, m * P)).reshape(ck, m, P).transpose(1, 0, 2)
                else:
                    dcols = xp.matmul(W2.T, g_all[a:b_], out=dcols.reshape(m, ck, P))
                gat.scatter_add(dsrc[a:b_], dcols)
        self.held = None                                   # the buffer now holds the first chunk
        if not need_input_grad:
            return dW2.reshape(W.shape), None
        if flipped:
            Wf = _flipped_kernel(W, layer.ndim).reshape(layer.in_channels, -1)
            fk, L = Wf.shape[1], gat.length
            gstep, gchunks = layer._chunks(n, fk * L * dy.itemsize, dy)
            gcols_buf = layer._buffer("gcols", (gstep * fk * L,), dy)
            for a, b_ in gchunks:
                gcols = gat.gradient_patches(gpad[a:b_], out=gcols_buf[:(b_ - a) * fk * L])   # (m, F*K, L)
                xp.matmul(Wf, gcols, out=dsrc[a:b_])
        return dW2.reshape(W.shape), gat.unflatten(dsrc)


class RowShiftProduct:
    """Stride 1: patches of the trailing kernel axes only; the first axis as column offsets."""

    def __init__(self, layer, x_shape, pads):
        self.layer = layer
        self.gat = make_gatherer(x_shape, layer.kernel_size, (1,) * layer.ndim, pads, layer.dilation)
        self.out = self.gat.out
        self.offsets = self.gat.row_offsets
        self.width = math.prod(self.gat.padded)          # columns a row patch needs

    def _rows(self, src, width, name, step, like):
        """Row patches of a chunk (a view of ``src`` itself for 1-D kernels: nothing to gather)."""
        gat = self.gat
        if len(gat.kernel) == 1:
            return src
        n, c = src.shape[:2]
        k_rest = math.prod(gat.kernel[1:])
        buf = self.layer._buffer(name, (step * c * k_rest * width,), like)
        return gat.row_patches(src, width, out=buf[:n * c * k_rest * width])

    @staticmethod
    def _stack(W):
        """``W[:, :, i].reshape(F, C*K')`` for every ``i`` along the first kernel axis: ``(k_1, F, C*K')``."""
        xp = get_array_module(W)
        return xp.ascontiguousarray(xp.moveaxis(W, 2, 0)).reshape(W.shape[2], W.shape[0], -1)

    def _shifted(self, R, cols):
        """``(m, k_1, rows, cols)`` view of row patches ``R: (m, rows, width)``: the ``i``-th block
        starts at column ``row_offsets[i]`` (evenly spaced), so one batched product covers all
        ``k_1`` shifts."""
        xp = get_array_module(R)
        step = self.offsets[1] if len(self.offsets) > 1 else 0
        return xp.lib.stride_tricks.as_strided(
            R, shape=(R.shape[0], len(self.offsets), R.shape[1], cols),
            strides=(R.strides[0], step * R.itemsize, R.strides[1], R.strides[2]))

    def forward(self, x, W, b):
        layer, gat = self.layer, self.gat
        xp = get_array_module(x)
        n, C, F = x.shape[0], x.shape[1], W.shape[0]
        P, k1 = gat.n_pos, len(self.offsets)
        Ws = self._stack(W)                                                  # (k_1, F, C*K')
        src = gat.flatten(x)
        per_sample = C * math.prod(gat.kernel[1:]) * self.width + k1 * F * P      # row patches, products
        step, chunks = layer._chunks(n, per_sample * x.itemsize, x)
        parts_buf = layer._buffer("parts", (step, k1, F, P), x)
        acc_buf = layer._buffer("out", (step, F, P), x)
        y = xp.empty((n, F) + gat.out, dtype=x.dtype)
        for a, b_ in chunks:
            m = b_ - a
            R = self._rows(src[a:b_], self.width, "rows", step, x)              # (m, C*K', width)
            parts = xp.matmul(Ws, self._shifted(R, P), out=parts_buf[:m])      # (m, k_1, F, P)
            _store(y[a:b_], gat.crop(parts.sum(axis=1, out=acc_buf[:m])), b, xp)
        self.src = src
        return y

    def backward(self, dy, W, need_input_grad):
        layer, gat, src = self.layer, self.gat, self.src
        xp = get_array_module(dy)
        n, F = dy.shape[0], W.shape[0]
        C, P, k1 = src.shape[1], gat.n_pos, len(self.offsets)
        k_rest = math.prod(gat.kernel[1:])
        gpad = gat.pad_gradient(dy) if need_input_grad else None
        g_all = gat.gradient_on_grid(gpad) if need_input_grad else gat.expand(dy)   # (N, F, P)
        step, chunks = layer._chunks(n, (C * k_rest * self.width + k1 * C * k_rest * F) * dy.itemsize, dy)
        dw_buf = layer._buffer("dw", (step, k1, C * k_rest, F), dy)
        dWs = xp.zeros((k1, C * k_rest, F), dtype=dy.dtype)
        for a, b_ in chunks:
            m = b_ - a
            R = self._rows(src[a:b_], self.width, "rows", step, dy)
            gT = g_all[a:b_, None].transpose(0, 1, 3, 2)                     # (m, 1, P, F); see _DW_NOTE
            dWs += xp.matmul(self._shifted(R, P), gT, out=dw_buf[:m]).sum(axis=0)
        # (k_1, (C, K'), F) -> (F, C, k_1, K')
        dW = dWs.reshape(k1, C, k_rest, F).transpose(3, 1, 0, 2).reshape((F, C) + gat.kernel)
        if not need_input_grad:
            return dW, None
        # dL/dx: the flipped kernel over the padded gradient, with the same row shifts
        Wfs = self._stack(_flipped_kernel(W, layer.ndim))                         # (k_1, C, F*K')
        L = gat.length
        gwidth = L + self.offsets[-1]
        gstep, gchunks = layer._chunks(n, (F * k_rest * gwidth + k1 * C * L) * dy.itemsize, dy)
        dsrc = xp.empty(src.shape, dtype=dy.dtype)
        parts_buf = layer._buffer("dparts", (gstep, k1, C, L), dy)
        for a, b_ in gchunks:
            m = b_ - a
            Rg = self._rows(gpad[a:b_], gwidth, "grows", gstep, dy)              # (m, F*K', gwidth)
            xp.matmul(Wfs, self._shifted(Rg, L), out=parts_buf[:m]).sum(axis=1, out=dsrc[a:b_])
        return dW, gat.unflatten(dsrc)


class SampleLastProduct:
    """Stride 1: whole patch matrices at the exact output positions, the samples of a chunk fastest.

    A chunk of ``m`` samples is laid out as ``src[c, *s, n]``, ``(C, *Sp, m)``: zero-padded,
    the sample index fastest.  For every window offset ``i`` and output row, the numbers a
    patch row needs are then one contiguous block of ``O_last * m`` (all samples, a whole row
    of positions), so the patch copy and col2im move ``C*K*prod(O[:-1])`` long blocks per
    chunk whatever its size (the other arrangements copy one sample's rows at a time, and it
    is the count of those short copies that costs), no flat-shift columns are computed, and
    each product covers the chunk::

        cols  = src[:, o + i*d, :]               (C*K, P*m),  P = prod(O)
        y     = W2 @ cols                        (F, P*m)   -> (m, F, *O) (+ b)
        dL/dW = (cols @ g.T).T                   g = dL/dy as (F, P*m)   (see _DW_NOTE)
        dsrc  = col2im(W2.T @ g)                 (C, *Sp, m) -> (m, C, *S)

    It pays with four transposing copies per chunk (input, output, dL/dy, dL/dx): worth it
    where the patch matrix is large next to them and the filters many.  LeNet-5's 6->16 5x5
    layer, forward + backward with BLAS at one thread (as in a split step): 25 samples
    1.03-1.58 -> 0.91-1.01 ms, 128 samples 5.6-8.5 -> 5.2-6.1 ms; not its 1->6 first layer
    (the output is 6x the input) nor the seed CNN's 4->2 7x7 layer (2 filters per patch
    copy); ``choose_algorithm`` says where.
    """

    def __init__(self, layer, x_shape, pads):
        self.layer = layer
        self.x_shape = tuple(x_shape)
        self.kernel, self.dilation, self.pads = tuple(layer.kernel_size), tuple(layer.dilation), tuple(pads)
        self.padded = tuple(s + lo + hi for s, (lo, hi) in zip(self.x_shape[2:], pads))
        self.out = conv_output_shape(self.x_shape[2:], self.kernel, (1,) * len(self.kernel), pads, self.dilation)
        self.n_pos = math.prod(self.out)
        self.srcs, self.held, self.col2im_pairs = [], None, {}

    def _body(self, a):
        """The unpadded positions of ``a: (rows, *Sp, m)``: ``(rows, *S, m)``."""
        return a[(slice(None),) + tuple(slice(lo, lo + s) for (lo, _), s in zip(self.pads, self.x_shape[2:]))]

    def _to_grid(self, x):
        """``(C, *Sp, m)``: the samples of ``x: (m, C, *S)`` zero-padded, sample fastest."""
        xp = get_array_module(x)
        shape = (x.shape[1],) + self.padded + (x.shape[0],)
        padded = any(lo or hi for lo, hi in self.pads)
        src = xp.zeros(shape, dtype=x.dtype) if padded else xp.empty(shape, dtype=x.dtype)
        self._body(src)[...] = xp.moveaxis(x, 0, -1)
        return src

    def _patches(self, src, buf):
        """The chunk's patch matrix ``(C*K, P*m)`` copied from ``src: (C, *Sp, m)`` into ``buf``."""
        xp = get_array_module(src)
        grid = src.strides[1:-1]
        view = xp.lib.stride_tricks.as_strided(      # [c, *i, *o, n] = src[c, *(o + i*d), n]
            src, shape=src.shape[:1] + self.kernel + self.out + src.shape[-1:],
            strides=src.strides[:1] + tuple(d * s for d, s in zip(self.dilation, grid)) + grid + src.strides[-1:])
        xp.copyto(buf.reshape(view.shape), view)
        return buf.reshape(-1, self.n_pos * src.shape[-1])

    def _col2im(self, dcols, C, m):
        """``(C, *Sp, m)``: the patch-matrix gradient ``dcols: (C*K, P*m)`` added back, one
        slice-add per kernel offset.

        The sum lands in a reused buffer, and the ``K`` (destination, source) slice pairs are
        made once per buffer and chunk size (``_slice_pairs``): at small chunks, building the
        views cost as much as the additions (LeNet-5's 6->16 layer at 25 samples: 25 pairs).
        The result is overwritten by the next call: copy out what is needed first.
        """
        xp = get_array_module(dcols)
        dsrc, pairs = self._slice_pairs(dcols, C, m)
        dsrc.fill(0)
        for dst, src in pairs:
            xp.add(dst, src, out=dst)
        return dsrc

    def _slice_pairs(self, dcols, C, m):
        """The col2im buffer ``(C, *Sp, m)`` and, for every kernel offset ``i``, the pair
        ``(buffer[:, i*d : i*d + O], dcols rows of offset i)``, for the flat scratch array
        ``dcols`` (the first ``C*K*P*m`` entries); kept per chunk size while ``dcols`` is the same."""
        held = self.col2im_pairs
        if held.get("dcols") is not dcols:
            held.clear()
            held["dcols"] = dcols
        if m not in held:
            K, size = math.prod(self.kernel), C * math.prod(self.padded)
            step = dcols.size // (C * K * self.n_pos)
            flat = self.layer._buffer("col2im", (size * step,), dcols)
            dsrc = flat[:size * m].reshape((C,) + self.padded + (m,))
            parts = dcols[:C * K * self.n_pos * m].reshape((C, K) + self.out + (m,))
            offsets = itertools.product(*(range(k) for k in self.kernel))
            held[m] = dsrc, [(dsrc[(slice(None),) + tuple(slice(i * d, i * d + o)
                                                        for i, d, o in zip(idx, self.dilation, self.out))],
                              parts[:, j]) for j, idx in enumerate(offsets)]
        return held[m]

    def _plan(self, a, W):
        """What forward and backward share for a batch ``a`` (the input or dL/dy): ``W2 = W`` as
        ``(F, C*K)``, ``ck = C*K``, the chunk size and chunks, and the patch-matrix buffer."""
        F = W.shape[0]
        W2 = W.reshape(F, -1)
        ck = W2.shape[1]
        step, chunks = self.layer._chunks(a.shape[0], (ck + F) * self.n_pos * a.itemsize, a)
        return W2, ck, step, chunks, self.layer._buffer("cols", (step * ck * self.n_pos,), a)

    def forward(self, x, W, b):
        layer = self.layer
        xp = get_array_module(x)
        n, F, P = x.shape[0], W.shape[0], self.n_pos
        W2, ck, step, chunks, cols_buf = self._plan(x, W)
        out_buf = layer._buffer("out", (step * F * P,), x)
        y = xp.empty((n, F) + self.out, dtype=x.dtype)
        self.srcs = []
        for a, b_ in chunks:
            m = b_ - a
            src = self._to_grid(x[a:b_])
            yT = xp.matmul(W2, self._patches(src, cols_buf[:ck * P * m]), out=out_buf[:F * P * m].reshape(F, P * m))
            _store(y[a:b_], xp.moveaxis(yT.reshape((F,) + self.out + (m,)), -1, 0), b, xp)
            self.srcs.append(src)
        self.held = (chunks[-1], cols_buf)                 # the buffer still holds the last chunk
        return y

    def backward(self, dy, W, need_input_grad):
        layer = self.layer
        xp = get_array_module(dy)
        n, F, P, C = dy.shape[0], W.shape[0], self.n_pos, self.x_shape[1]
        W2, ck, step, chunks, cols_buf = self._plan(dy, W)
        g_buf = layer._buffer("g", (step * F * P,), dy)
        dW2T = xp.zeros((ck, F), dtype=dy.dtype)
        dx = xp.empty((n, C) + self.x_shape[2:], dtype=dy.dtype) if need_input_grad else None
        for k in reversed(range(len(chunks))):   # the last forward chunk first: its patches are still there
            a, b_ = chunks[k]
            m = b_ - a
            if self.held is not None and self.held[0] == (a, b_) and self.held[1] is cols_buf:
                cols = cols_buf[:ck * P * m].reshape(ck, P * m)
            else:
                cols = self._patches(self.srcs[k], cols_buf[:ck * P * m])
            g = g_buf[:F * P * m].reshape((F,) + self.out + (m,))
            xp.copyto(g, xp.moveaxis(dy[a:b_], 0, -1))
            g = g.reshape(F, P * m)
            dW2T += cols @ g.T                                           # see _DW_NOTE
            if need_input_grad:                                          # col2im(W2.T @ g)
                dcols = layer._buffer("dcols", (step * ck * P,), dy)
                xp.matmul(W2.T, g, out=dcols[:ck * P * m].reshape(ck, P * m))
                dx[a:b_] = xp.moveaxis(self._body(self._col2im(dcols, C, m)), -1, 0)
        self.held = None                                   # the buffer now holds the first chunk
        return dW2T.T.reshape(W.shape), dx


class KernelPatchProduct:
    """CuPy: patch matrices gathered by one kernel, one product per pass (see the module docstring).

    Forward, per chunk of m samples (one chunk unless ``gpu_chunk_bytes`` says otherwise)::

        cols = im2col(x)          (C*K, m*P)   one kernel
        yf   = W2 @ cols          (F, m*P)     one product
        y    = yf as (m, F, P) + b             one kernel

    Backward: ``g = dy as (F, m*P)`` (one copy), ``dW2 += g @ cols.T``, ``db += g.sum(1)``
    (a row sum: CuPy's sum of ``dy`` over axes (0, 2, ..) is several times slower),
    ``dcols = W2.T @ g``, ``dx = col2im(dcols)`` (one kernel).  The last chunk's ``cols`` are still in the buffer
    when the backward starts (with one chunk: all of them); the others are gathered again.
    """

    def __init__(self, layer, x_shape, pads):
        self.layer = layer
        spatial = tuple(x_shape[2:])
        self.out = conv_output_shape(spatial, layer.kernel_size, layer.stride, pads, layer.dilation)
        self.geo = kernels.window_geometry(x_shape[1], spatial, layer.kernel_size, layer.stride, pads,
                                           layer.dilation, self.out)
        self.n_pos = math.prod(self.out)
        self.ck = layer.in_channels * math.prod(layer.kernel_size)
        # the largest per-sample array a chunk's kernels index: input, patch matrix, output
        self.sample_entries = max(math.prod(x_shape[1:]), self.ck * self.n_pos, layer.out_channels * self.n_pos)

    def _chunks(self, n, like):
        """The layer's chunks of samples, each also under the kernels' 2**31 entries."""
        itemsize = like.itemsize
        step, chunks = self.layer._chunks(n, self.sample_entries * itemsize, like)
        if step * self.sample_entries > kernels.INT32_LIMIT:
            step = max(1, kernels.INT32_LIMIT // self.sample_entries)
            chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
        return step, chunks

    def _gather(self, x, a, b_, buf):
        """The patch matrix ``(C*K, m*P)`` of samples ``a:b_`` into ``buf``."""
        width = (b_ - a) * self.n_pos
        return kernels.im2col_merged(x[a:b_], self.geo, buf[:self.ck * width].reshape(self.ck, width))

    def forward(self, x, W, b):
        layer, ck, P = self.layer, self.ck, self.n_pos
        xp = get_array_module(x)
        x = xp.ascontiguousarray(x)
        n, F = x.shape[0], W.shape[0]
        W2 = W.reshape(F, ck)
        step, chunks = self._chunks(n, x)
        cols_buf = layer._buffer("cols", (step * ck * P,), x)
        out_buf = layer._buffer("out", (step * F * P,), x)
        y = xp.empty((n, F) + self.out, dtype=x.dtype)
        for a, b_ in chunks:
            m = b_ - a
            yf = xp.matmul(W2, self._gather(x, a, b_, cols_buf), out=out_buf[:m * F * P].reshape(F, m * P))
            _store(y[a:b_].reshape(m, F, P), yf.reshape(F, m, P).transpose(1, 0, 2), b, xp)
        self.x = x
        self.held = (chunks[-1], cols_buf)
        return y

    def backward(self, dy, W, need_input_grad):
        layer, x, ck, P = self.layer, self.x, self.ck, self.n_pos
        xp = get_array_module(dy)
        n, F = dy.shape[0], W.shape[0]
        W2 = W.reshape(F, ck)
        step, chunks = self._chunks(n, dy)
        cols_buf = layer._buffer("cols", (step * ck * P,), dy)
        g_buf = layer._buffer("g", (step * F * P,), dy)
        g_all = dy.reshape(n, F, P)
        dx = xp.empty(x.shape, dtype=dy.dtype) if need_input_grad else None
        dW2 = db = None
        for a, b_ in reversed(chunks):      # the last forward chunk first: its patches are still there
            m = b_ - a
            if self.held is not None and self.held[0] == (a, b_) and self.held[1] is cols_buf:
                cols = cols_buf[:ck * m * P].reshape(ck, m * P)
            else:
                cols = self._gather(x, a, b_, cols_buf)
            g = g_buf[:m * F * P].reshape(F, m, P)
            xp.copyto(g, g_all[a:b_].transpose(1, 0, 2))
            g = g.reshape(F, m * P)
            dW2 = g @ cols.T if dW2 is None else dW2 + g @ cols.T
            db = g.sum(axis=1) if db is None else db + g.sum(axis=1)
            if need_input_grad:
                dcols = layer._buffer("dcols", (step * ck * P,), dy)[:ck * m * P].reshape(ck, m * P)
                kernels.col2im_merged(xp.matmul(W2.T, g, out=dcols), self.geo, dx[a:b_])
        self.held = None                    # the buffer now holds the first chunk
        self.db = db
        return dW2.reshape(W.shape), dx


def _store(dst, cropped, b, xp):
    """``dst[...] = cropped (+ b per filter)``.

    NumPy: a copy, then the bias added in place over ``dst``'s contiguous rows (LeNet-5's first
    convolution at 128 samples, one core: forward 1.07 -> 1.00 ms; the one-pass ``add`` with a
    cropped, broadcast operand runs in 28-element pieces).  CuPy: one kernel (a GPU step is
    bound by its number of launches).
    """
    if b is None:
        dst[...] = cropped
    elif xp is np:
        dst[...] = cropped
        dst += b.reshape((-1,) + (1,) * (cropped.ndim - 2))
    else:
        xp.add(cropped, b.reshape((-1,) + (1,) * (cropped.ndim - 2)), out=dst)


def bias_gradient(dy):
    """``dL/db[f] = sum over samples n and positions p of dy[n, f, p]``, for ``dy: (N, F, *O)``.

    As one matrix-vector product ``dy as (N*F, P) @ ones(P)``, then a sum over ``N``: BLAS
    reads ``dy`` once, 2-4x faster than NumPy's sum over axes (0, 2, ...) (LeNet-5 at 128 samples:
    0.110 -> 0.036 ms and 0.074 -> 0.017 ms; rounding as that of the pairwise sum, ~1e-7 in float32).
    """
    xp = get_array_module(dy)
    n, F = dy.shape[:2]
    P = math.prod(dy.shape[2:])
    return (dy.reshape(n * F, P) @ xp.ones(P, dtype=dy.dtype)).reshape(n, F).sum(axis=0)


def _kernel_sizes_fit(layer, x_shape, pads):
    """The window kernels' 32-bit indices reach every entry of one sample's input and patch matrix
    (``KernelPatchProduct`` keeps its chunks under 2**31 entries)."""
    out = conv_output_shape(x_shape[2:], layer.kernel_size, layer.stride, pads, layer.dilation)
    ck = layer.in_channels * math.prod(layer.kernel_size)
    return kernels.window_kernels_fit(math.prod(x_shape[1:]), ck * math.prod(out))


#: "auto" on NumPy takes ``SampleLastProduct`` (stride 1) from this many patch rows ``C*K`` on,
#: with at least ``layer.merge_from_filters`` filters: LeNet-5's 6->16 5x5 layer (150 rows, 16
#: filters), not its 1->6 first layer (25 rows) nor the seed CNN's 4->2 7x7 one (2 filters)
SAMPLE_LAST_FROM_ROWS = 32


def choose_algorithm(layer, x):
    """Which arrangement computes ``layer`` (a ``ConvContext``) on ``x`` (``SETTINGS["algorithm"]``
    may force one).

    "auto": ``KernelPatchProduct`` for CuPy data (fused kernels on, fewer than 2**31 entries
    in the input and in the batch's patch matrix); otherwise, for stride 1 on NumPy with
    many filters and patch rows (``SAMPLE_LAST_FROM_ROWS``), ``SampleLastProduct``; else
    ``RowShiftProduct`` where it copies less and its products stay reasonably sized, else
    ``PatchProduct``.  Forced: "kernel" (CuPy only, else as "auto"), "samplelast" and
    "rowshift" (stride 1 only, else "patches"), "patches".
    """
    x_shape = x.shape
    pads = layer._pads(x_shape[2:])
    want = layer.algorithm
    stride_1 = all(s == 1 for s in layer.stride)
    if want in ("auto", "kernel"):
        if kernels.fused_enabled(x) and _kernel_sizes_fit(layer, x_shape, pads):
            return KernelPatchProduct(layer, x_shape, pads)
        k_rest = math.prod(layer.kernel_size[1:])
        if (get_array_module(x) is np and layer.out_channels >= layer.merge_from_filters
                and layer.in_channels * math.prod(layer.kernel_size) >= SAMPLE_LAST_FROM_ROWS):
            want = "samplelast"
        else:
            want = "rowshift" if layer.kernel_size[0] >= 3 and layer.in_channels * k_rest >= 16 else "patches"
    if want == "samplelast" and stride_1:
        return SampleLastProduct(layer, x_shape, pads)
    if want == "rowshift" and stride_1:
        return RowShiftProduct(layer, x_shape, pads)
    return PatchProduct(layer, x_shape, pads)
