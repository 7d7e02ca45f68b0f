"""Fused GPU kernels for the hot element-wise and reduction steps, with their references.

On the GPU every separate array expression is a separate kernel launch and a
separate trip through device memory: ``dy * (y > 0)`` is two kernels and a
temporary.  The functions below compute such steps in one kernel when the data
are CuPy arrays, and with the plain array expression otherwise.  The plain
expression is the *reference*: it is what runs on NumPy, what the docstrings
state, and what the GPU tests compare the fused kernels against
(``use_fused(False)`` forces it on CuPy too).

    relu_backward(dy, y)          dx = dy * [y > 0]
    sigmoid_backward(dy, y)       dx = dy * y * (1 - y)
    tanh_backward(dy, y)          dx = dy * (1 - y^2)
    softmax_xent(z, t)            loss = -mean_n log softmax(z)[n, t_n],  dL/dz = (softmax(z) - onehot(t)) / N
    sgd_update(p, g, v, ...)      Keras SGD (plain, momentum, Nesterov), in place
    adam_update(p, g, m, v, ...)  Keras Adam, in place
    rmsprop_update(p, g, v, ...)  Keras RMSprop (plain; centered/momentum use the reference), in place
    im2col_merged(x, geo, out)    the patch matrix of a batch, (C*K, N*P)          (GPU only)
    col2im_merged(dcols, geo, dx) its adjoint                                      (GPU only)
    maxpool_forward / _backward   max pooling and its gradient, one launch each    (GPU only)
    accumulate_batch(...)         fit's per-batch loss/accuracy bookkeeping, one launch

Kernels are compiled on first use (CuPy caches them on disk).

Wired in, by the engine's runner (``runner.py``: the layers themselves run the reference
expressions): the backward steps of ``ReLU``, ``Sigmoid`` and ``Tanh`` (``fusion.ElementwiseUnit``),
``SoftMaxLoss`` with integer labels (``Runner.loss``); by the optimizers: ``optimizers.GradientDescent``, plain
``optimizers.RMSProp`` and ``optimizers.Adam`` (without amsgrad); the window kernels
in ``engine/conv.KernelPatchProduct`` (``Convolution`` on CuPy) and ``engine/pooling`` (``MaxPool``).
Why these steps: each replaces 2-60 separate kernel launches and temporaries by one
pass; matrix products (cuBLAS) and reductions are left to CuPy.  The window kernels'
references are the loop implementations in ``layers/geometry`` and the ``MaxPool`` layer
(they have no array-expression twin on CuPy: ``use_fused(False)`` runs the NumPy
arrangements on CuPy instead).  See docs/GPU.md.
"""
import functools

from ..backend import get_array_module, is_device_array

__all__ = ["use_fused", "fused_enabled", "relu_backward", "sigmoid_backward", "tanh_backward",
           "softmax_xent", "sgd_update", "adam_update", "rmsprop_update", "window_geometry", "im2col_merged",
           "col2im_merged", "maxpool_forward", "maxpool_backward", "window_kernels_fit", "accumulate_batch"]

_state = {"fused": True}


def use_fused(flag=True):
    """Turn the fused CuPy kernels on (default) or off (reference expressions everywhere)."""
    _state["fused"] = bool(flag)


def fused_enabled(*arrays):
    """True when the fused kernel should run: CuPy data and fusion switched on."""
    return _state["fused"] and any(is_device_array(a) for a in arrays)


@functools.lru_cache(maxsize=None)
def _elementwise(name):
    import cupy  # noqa: PLC0415 - only reached with CuPy arrays
    specs = {
        "relu_bw": ("T dy, T y", "T dx", "dx = y > (T)0 ? dy : (T)0"),
        "sigmoid_bw": ("T dy, T y", "T dx", "dx = dy * y * ((T)1 - y)"),
        "tanh_bw": ("T dy, T y", "T dx", "dx = dy * ((T)1 - y * y)"),
        # two kernels rather than a bool parameter: no branch, no scalar-type question
        "sgd": ("T g, T lr", "T p", "p -= lr * g"),
        "sgd_momentum": ("T g, T lr, T mom", "T p, T v", "v = mom * v - lr * g; p += v"),
        "sgd_nesterov": ("T g, T lr, T mom", "T p, T v", "v = mom * v - lr * g; p += mom * v - lr * g"),
        # one_minus_*: 1 - beta formed in float64 and rounded once to T, as the NumPy path and Keras
        # form it (float32(0.001), not 1 - float32(0.999), which is 1.3e-5 relative off)
        "adam": ("T g, T alpha, T one_minus_b1, T one_minus_b2, T eps", "T p, T m, T v",
                 "m += (g - m) * one_minus_b1; v += (g * g - v) * one_minus_b2; "
                 "p -= (m * alpha) / (sqrt(v) + eps)"),
        "rmsprop": ("T g, T lr, T rho, T one_minus_rho, T eps", "T p, T v",
                    "v = rho * v + one_minus_rho * (g * g); p -= (lr * g) / sqrt(v + eps)"),
    }
    inp, out, body = specs[name]
    return cupy.ElementwiseKernel(inp, out, body, f"nnfs_{name}")


_XENT_SRC = r"""
template<typename T>
__device__ void xent_row(const T* z, const long long* t, T* grad, T* loss, int n, int k, T inv_n) {
    int row = blockDim.x * blockIdx.x + threadIdx.x;
    if (row >= n) return;
    const T* zr = z + (long long)row * k;
    T* gr = grad + (long long)row * k;
    T m = zr[0];
    for (int j = 1; j < k; ++j) m = zr[j] > m ? zr[j] : m;
    T s = 0;
    for (int j = 0; j < k; ++j) { T e = exp(zr[j] - m); gr[j] = e; s += e; }
    T inv_s = (T)1 / s;
    long long label = t[row];
    if (label < 0 || label >= k) {          // never read outside the row: poison the row instead
        for (int j = 0; j < k; ++j) gr[j] = (T)nan("");
        loss[row] = (T)nan("");
        return;
    }
    for (int j = 0; j < k; ++j) gr[j] = (gr[j] * inv_s - (j == label ? (T)1 : (T)0)) * inv_n;
    loss[row] = log(s) + m - zr[label];
}
extern "C" __global__ void xent_f32(const float* z, const long long* t, float* g, float* l, int n, int k, float inv_n)
{ xent_row<float>(z, t, g, l, n, k, inv_n); }
extern "C" __global__ void xent_f64(const double* z, const long long* t, double* g, double* l, int n, int k, double inv_n)
{ xent_row<double>(z, t, g, l, n, k, inv_n); }
"""


@functools.lru_cache(maxsize=None)
def _xent_kernel(dtype_name):
    import cupy  # noqa: PLC0415
    module = cupy.RawModule(code=_XENT_SRC, options=("-std=c++11",))
    return module.get_function("xent_f32" if dtype_name == "float32" else "xent_f64")


def relu_backward(dy, y):
    """``dx = dy * [y > 0]`` (``y`` the ReLU's output; ``y > 0`` iff ``x > 0``)."""
    if fused_enabled(dy, y):
        return _elementwise("relu_bw")(dy, y)
    xp = get_array_module(dy)
    dx = xp.greater(y, 0, out=xp.empty(dy.shape, dtype=dy.dtype))   # [y > 0] as 0.0/1.0 in the output,
    dx *= dy                                                          # then times dy: two passes, no bool
    return dx                                                         # array (1.5x faster than dy * (y > 0))


def sigmoid_backward(dy, y):
    """``dx = dy * y * (1 - y)``."""
    if fused_enabled(dy, y):
        return _elementwise("sigmoid_bw")(dy, y)
    return dy * (y * (1 - y))


def tanh_backward(dy, y):
    """``dx = dy * (1 - y^2)``."""
    if fused_enabled(dy, y):
        return _elementwise("tanh_bw")(dy, y)
    return dy * (1 - y * y)


def softmax_xent(z, t):
    """Mean softmax cross-entropy of logits ``z: (N, K)`` with integer labels ``t: (N,)``.

    Returns ``(loss, dL/dz)``: the loss as a 0-d array (no device->host read)
    and ``(softmax(z) - onehot(t)) / N``.  Labels must lie in ``[0, K)`` (the
    callers validate them); the fused kernel turns a row with a label outside
    into NaN rather than reading past the row.  One thread per row.  Reference::

        s = z - max(z);  log p = s - log sum exp(s);  loss = -mean log p[n, t_n]
    """
    xp = get_array_module(z)
    n, k = z.shape
    if fused_enabled(z) and z.dtype.name in ("float32", "float64") and n > 0:
        zc = xp.ascontiguousarray(z)
        tc = xp.ascontiguousarray(t.astype(xp.int64, copy=False))
        grad = xp.empty_like(zc)
        rows = xp.empty(n, dtype=z.dtype)
        threads = 128
        _xent_kernel(z.dtype.name)(((n + threads - 1) // threads,), (threads,),
                                   (zc, tc, grad, rows, xp.int32(n), xp.int32(k), z.dtype.type(1.0 / n)))
        return rows.mean(), grad
    shifted = z - z.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    log_p = shifted - xp.log(s)
    rows = xp.arange(n)
    loss = -log_p[rows, t].sum() / n
    grad = e / s
    grad[rows, t] -= 1
    grad *= z.dtype.type(1.0 / n)
    return loss, grad


_STATS_SRC = r"""
template<typename T>
__device__ void batch_stats(const T* out, const long long* labels, const T* loss, T* sum_loss,
                            long long* sum_correct, T* losses, int b, int n, int k, T m) {
    __shared__ long long counts[256];
    const int tid = threadIdx.x;
    long long c = 0;
    for (int r = tid; r < n; r += blockDim.x) {          // argmax of each row: the first maximum
        const T* row = out + (long long)r * k;
        int best = 0; T bv = row[0];
        for (int j = 1; j < k; ++j) if (row[j] > bv) { bv = row[j]; best = j; }
        c += (best == labels[r]);
    }
    counts[tid] = c;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (tid < s) counts[tid] += counts[tid + s];
        __syncthreads();
    }
    if (tid == 0) {
        sum_loss[0] = sum_loss[0] + loss[0] * m;
        sum_correct[0] += counts[0];
        losses[b] = loss[0];
    }
}
extern "C" __global__ void stats_f32(const float* o, const long long* t, const float* l, float* sl, long long* sc,
                                     float* ls, int b, int n, int k, float m)
{ batch_stats<float>(o, t, l, sl, sc, ls, b, n, k, m); }
extern "C" __global__ void stats_f64(const double* o, const long long* t, const double* l, double* sl,
                                     long long* sc, double* ls, int b, int n, int k, double m)
{ batch_stats<double>(o, t, l, sl, sc, ls, b, n, k, m); }
"""


@functools.lru_cache(maxsize=None)
def _stats_kernel(dtype_name):
    import cupy  # noqa: PLC0415
    module = cupy.RawModule(code=_STATS_SRC, options=("-std=c++11",))
    return module.get_function("stats_f32" if dtype_name == "float32" else "stats_f64")


def accumulate_batch(sum_loss, sum_correct, losses, b, loss, out, labels):
    """A training batch's figures, in place: ``losses[b] = loss``, ``sum_loss += loss * m`` and
    ``sum_correct += #(argmax(out, axis=1) == labels)`` (``m`` = the batch's rows).

    ``sum_loss`` (0-d, the dtype of ``out``), ``sum_correct`` (0-d int64) and ``losses`` live
    on the device; ``labels`` are integer class indices ``(m,)``.  One single-block kernel on
    the GPU instead of seven launches; the reference expressions on NumPy (and with
    ``use_fused(False)``).  The argmax is the first maximum of a row, as ``argmax``'s.
    """
    n, k = out.shape
    if fused_enabled(out) and out.dtype.name in ("float32", "float64") and sum_loss.dtype == out.dtype:
        xp = get_array_module(out)
        oc = xp.ascontiguousarray(out)
        tc = xp.ascontiguousarray(labels.astype(xp.int64, copy=False))
        lc = loss.astype(out.dtype, copy=False).reshape(1)
        _stats_kernel(out.dtype.name)((1,), (256,), (oc, tc, lc, sum_loss, sum_correct, losses, xp.int32(b),
                                                     xp.int32(n), xp.int32(k), out.dtype.type(n)))
        return
    losses[b:b + 1] = loss
    sum_loss += loss * n
    sum_correct += (out.argmax(axis=1) == labels).sum()


def sgd_update(p, g, v, lr, momentum, nesterov):
    """Keras SGD, in place: ``p <- p - lr g`` (``momentum == 0``, ``v`` unused, may be None);
    with momentum ``v <- m v - lr g``; ``p <- p + v`` (or ``+ m v - lr g``)."""
    if momentum == 0:
        if fused_enabled(p, g):
            _elementwise("sgd")(g, p.dtype.type(lr), p)
        else:
            p -= lr * g
        return
    if fused_enabled(p, g, v):
        t = p.dtype.type
        _elementwise("sgd_nesterov" if nesterov else "sgd_momentum")(g, t(lr), t(momentum), p, v)
        return
    v *= momentum
    v -= lr * g
    if nesterov:
        p += momentum * v - lr * g
    else:
        p += v


def adam_update(p, g, m, v, alpha, beta_1, beta_2, epsilon):
    """Keras Adam, in place, with ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t)``."""
    if fused_enabled(p, g, m, v):
        t = p.dtype.type
        _elementwise("adam")(g, t(alpha), t(1 - beta_1), t(1 - beta_2), t(epsilon), p, m, v)
        return
    m += (g - m) * (1 - beta_1)
    v += (g * g - v) * (1 - beta_2)
    p -= (m * alpha) / (v ** 0.5 + epsilon)


def rmsprop_update(p, g, v, lr, rho, epsilon):
    """Keras RMSprop (no momentum, not centered), in place."""
    if fused_enabled(p, g, v):
        t = p.dtype.type
        _elementwise("rmsprop")(g, t(lr), t(rho), t(1 - rho), t(epsilon), p, v)
        return
    v *= rho
    v += (1 - rho) * (g * g)
    p -= (lr * g) / (v + epsilon) ** 0.5


# ---------------------------------------------------------------------------------------------
# Window kernels: patch gathering (im2col), its adjoint (col2im) and max pooling, in one launch
# each.  They exist for the GPU only: there the NumPy-oriented paths (strided views, one slice
# per kernel offset, products per sample) cost tens of launches per layer, and a training step
# waits on the launches, not on the arithmetic (benchmarks/RESULTS.md, gpu_kernels.py).  The
# readable references are ``layers/geometry.im2col_reference`` / ``col2im_reference`` and the NumPy
# ``MaxPool``; the GPU tests hold these kernels equal to them.
#
# Geometry: every input is seen as 3-d, ``(N, C, S1, S2, S3)``, the missing leading spatial
# axes of 1-d and 2-d inputs being of size 1 (kernel 1, stride 1, dilation 1, no padding).
# ``window_geometry`` packs it as the int32 scalars the kernels take, in the order of _GEO
# (Python ints: CuPy converts them to the declared int32).

_GEO = ("int32 C, int32 S1, int32 S2, int32 S3, int32 k1, int32 k2, int32 k3, int32 s1, int32 s2, "
        "int32 s3, int32 d1, int32 d2, int32 d3, int32 p1, int32 p2, int32 p3, int32 O1, int32 O2, int32 O3")

# decode an output position p = (o1, o2, o3).  All index arithmetic is 32-bit (64-bit division
# is emulated on the GPU and made these kernels 2-4x slower): the callers use them only for
# arrays of fewer than 2**31 entries (``window_kernels_fit``).
_DECODE_P = "const int o3 = p % O3, t_ = p / O3, o2 = t_ % O2, o1 = t_ / O2;"

_WINDOW_SPECS = {
    # cols[(c, i1, i2, i3), n*P + p] = x[n, c, o*s + i*d - pad]  (0 outside the input)
    "im2col": ("raw T x, int32 m, " + _GEO, "T cols", """
        const int P = O1 * O2 * O3, MP = m * P;
        const int e = (int)i, col = e % MP, j = e / MP;
        const int n = col / P, p = col - n * P;
        """ + _DECODE_P + """
        const int i3 = j % k3, u3 = j / k3, i2 = u3 % k2, u2 = u3 / k2, i1 = u2 % k1, c = u2 / k1;
        const int z1 = o1 * s1 + i1 * d1 - p1, z2 = o2 * s2 + i2 * d2 - p2, z3 = o3 * s3 + i3 * d3 - p3;
        T v = (T)0;
        if (z1 >= 0 && z1 < S1 && z2 >= 0 && z2 < S2 && z3 >= 0 && z3 < S3)
            v = x[(((n * C + c) * S1 + z1) * S2 + z2) * S3 + z3];
        cols = v;
    """),
    # dx[n, c, z] = sum of dcols[(c, i), n*P + p] over the (i, p) with o*s + i*d - pad = z
    "col2im": ("raw T dcols, int32 m, " + _GEO, "T dx", """
        const int P = O1 * O2 * O3, MP = m * P;
        const int e = (int)i, z3 = e % S3, t3 = e / S3, z2 = t3 % S2, t2 = t3 / S2, z1 = t2 % S1, t1 = t2 / S1;
        const int c = t1 % C, n = t1 / C;
        const int base = n * P;
        T acc = (T)0;
        for (int i1 = 0; i1 < k1; ++i1) {
            const int q1 = z1 + p1 - i1 * d1;
            if (q1 < 0 || q1 % s1 != 0 || q1 / s1 >= O1) continue;
            for (int i2 = 0; i2 < k2; ++i2) {
                const int q2 = z2 + p2 - i2 * d2;
                if (q2 < 0 || q2 % s2 != 0 || q2 / s2 >= O2) continue;
                for (int i3 = 0; i3 < k3; ++i3) {
                    const int q3 = z3 + p3 - i3 * d3;
                    if (q3 < 0 || q3 % s3 != 0 || q3 / s3 >= O3) continue;
                    const int j = ((c * k1 + i1) * k2 + i2) * k3 + i3;
                    acc += dcols[j * MP + base + ((q1 / s1) * O2 + q2 / s2) * O3 + q3 / s3];
                }
            }
        }
        dx = acc;
    """),
    # y = max over the window (padding = -inf); arg = row-major offset of the FIRST maximum
    # (strict >, TensorFlow's tie rule); a NaN in the window makes y NaN, as numpy.maximum does
    "maxpool_fw": ("raw T x, T neg_inf, " + _GEO, "T y, int32 arg", """
        const int e = (int)i, P = O1 * O2 * O3, p = e % P, nc = e / P;
        """ + _DECODE_P + """
        const int base = nc * S1 * S2 * S3;
        T best = neg_inf; int a = 0;
        for (int i1 = 0; i1 < k1; ++i1) {
            const int z1 = o1 * s1 + i1 - p1;
            for (int i2 = 0; i2 < k2; ++i2) {
                const int z2 = o2 * s2 + i2 - p2;
                for (int i3 = 0; i3 < k3; ++i3) {
                    const int z3 = o3 * s3 + i3 - p3;
                    const int k = (i1 * k2 + i2) * k3 + i3;
                    const bool inside = z1 >= 0 && z1 < S1 && z2 >= 0 && z2 < S2 && z3 >= 0 && z3 < S3;
                    const T v = inside ? x[base + (z1 * S2 + z2) * S3 + z3] : neg_inf;
                    if (k == 0) { best = v; continue; }
                    if (v > best) a = k;
                    if (v > best || v != v) best = v;
                }
            }
        }
        y = best; arg = a;
    """),
    # dx[n, c, z] = sum of dy[n, c, o] over the windows o holding z at the offset arg[n, c, o]
    "maxpool_bw": ("raw T dy, raw int32 arg, " + _GEO, "T dx", """
        const int e = (int)i, z3 = e % S3, t3 = e / S3, z2 = t3 % S2, t2 = t3 / S2, z1 = t2 % S1, nc = t2 / S1;
        const int base = nc * O1 * O2 * O3;
        T acc = (T)0;
        for (int i1 = 0; i1 < k1; ++i1) {
            const int q1 = z1 + p1 - i1;
            if (q1 < 0 || q1 % s1 != 0 || q1 / s1 >= O1) continue;
            for (int i2 = 0; i2 < k2; ++i2) {
                const int q2 = z2 + p2 - i2;
                if (q2 < 0 || q2 % s2 != 0 || q2 / s2 >= O2) continue;
                for (int i3 = 0; i3 < k3; ++i3) {
                    const int q3 = z3 + p3 - i3;
                    if (q3 < 0 || q3 % s3 != 0 || q3 / s3 >= O3) continue;
                    const int o = base + ((q1 / s1) * O2 + q2 / s2) * O3 + q3 / s3;
                    if (arg[o] == (i1 * k2 + i2) * k3 + i3) acc += dy[o];
                }
            }
        }
        dx = acc;
    """),
}

#: the window kernels index with 32-bit ints: every array they touch has fewer entries
INT32_LIMIT = 2 ** 31 - 1


def window_kernels_fit(*sizes):
    """True when arrays of these numbers of entries can go through the window kernels."""
    return all(int(s) <= INT32_LIMIT for s in sizes)


@functools.lru_cache(maxsize=None)
def _window_kernel(name):
    import cupy  # noqa: PLC0415 - only reached with CuPy arrays
    inp, out, body = _WINDOW_SPECS[name]
    return cupy.ElementwiseKernel(inp, out, body, f"nnfs_{name}")


def window_geometry(channels, spatial, kernel, stride, pads, dilation, out):
    """The int32 scalars of a window kernel: ``(C, S, k, s, d, pad_lo, O)``, each spatial tuple as 3-d."""
    def three(values, fill):
        values = tuple(int(v) for v in values)
        return (fill,) * (3 - len(values)) + values
    lo = tuple(p[0] for p in pads)
    return ((int(channels),) + three(spatial, 1) + three(kernel, 1) + three(stride, 1) + three(dilation, 1)
            + three(lo, 0) + three(out, 1))


def im2col_merged(x, geo, out):
    """``out[(c, i), n*P + p] = x_pad[n, c, o*s + i*d]`` for ``x: (m, C, *S)`` (C-contiguous), one launch.

    ``out``: ``(C*K, m*P)``, the patch matrices of the m samples side by side (``merged``).
    """
    _window_kernel("im2col")(x, x.shape[0], *geo, out)
    return out


def col2im_merged(dcols, geo, out):
    """The adjoint of ``im2col_merged``: ``out: (m, C, *S)`` (C-contiguous) receives the sums, one launch."""
    _window_kernel("col2im")(dcols, out.shape[0], *geo, out)
    return out


def maxpool_forward(x, geo, out_shape):
    """Max pooling of ``x: (N, C, *S)`` (C-contiguous) in one launch: ``(y, arg)``, both ``out_shape``.

    ``arg`` (int32): the row-major window offset of each window's first maximum.
    """
    xp = get_array_module(x)
    y = xp.empty(out_shape, dtype=x.dtype)
    arg = xp.empty(out_shape, dtype=xp.int32)
    _window_kernel("maxpool_fw")(x, x.dtype.type(-float("inf")), *geo, y, arg)
    return y, arg


def maxpool_backward(dy, arg, geo, x_shape):
    """``dL/dx`` of ``maxpool_forward``: each ``dy`` goes to its window's ``arg`` entry (one launch)."""
    xp = get_array_module(dy)
    dx = xp.empty(x_shape, dtype=dy.dtype)
    _window_kernel("maxpool_bw")(xp.ascontiguousarray(dy), arg, *geo, dx)
    return dx
