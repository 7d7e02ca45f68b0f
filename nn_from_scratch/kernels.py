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
    sgd_update(p, g, v, ...)      Keras SGD (momentum, Nesterov), in place
    adam_update(p, g, m, v, ...)  Keras Adam, in place
    rmsprop_update(p, g, v, ...)  Keras RMSprop (plain; centered/momentum use the reference), in place

Kernels are compiled on first use (CuPy caches them on disk).

Wired in: ``activations`` (the three backward steps), ``losses.SoftMaxLoss`` with
integer labels, ``optimizers.GradientDescent`` with momentum and plain
``optimizers.RMSProp``.  ``adam_update`` is ready (and tested against its
reference) but ``optimizers.Adam`` does not call it yet.  Why these steps: each
replaces 2-6 separate kernel launches and temporaries of the parameter's or the
activation's size by one pass; matrix products (cuBLAS) and reductions are left
to CuPy.  See docs/GPU.md.
"""
import functools

from .backend import get_array_module, is_device_array

__all__ = ["use_fused", "fused_enabled", "relu_backward", "sigmoid_backward", "tanh_backward",
           "softmax_xent", "sgd_update", "adam_update", "rmsprop_update"]

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
        "sgd_momentum": ("T g, T lr, T mom", "T p, T v", "v = mom * v - lr * g; p += v"),
        "sgd_nesterov": ("T g, T lr, T mom", "T p, T v", "v = mom * v - lr * g; p += mom * v - lr * g"),
        "adam": ("T g, T alpha, T b1, T b2, T eps", "T p, T m, T v",
                 "m += (g - m) * ((T)1 - b1); v += (g * g - v) * ((T)1 - b2); "
                 "p -= (m * alpha) / (sqrt(v) + eps)"),
        "rmsprop": ("T g, T lr, T rho, T eps", "T p, T v",
                    "v = rho * v + ((T)1 - rho) * (g * g); p -= (lr * g) / sqrt(v + eps)"),
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
    return dy * (y > 0)


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


def sgd_update(p, g, v, lr, momentum, nesterov):
    """Keras SGD with momentum, in place: ``v <- m v - lr g``; ``p <- p + v`` (or ``+ m v - lr g``)."""
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
        _elementwise("adam")(g, t(alpha), t(beta_1), t(beta_2), t(epsilon), p, m, v)
        return
    m += (g - m) * (1 - beta_1)
    v += (g * g - v) * (1 - beta_2)
    p -= (m * alpha) / (v ** 0.5 + epsilon)


def rmsprop_update(p, g, v, lr, rho, epsilon):
    """Keras RMSprop (no momentum, not centered), in place."""
    if fused_enabled(p, g, v):
        t = p.dtype.type
        _elementwise("rmsprop")(g, t(lr), t(rho), t(epsilon), p, v)
        return
    v *= rho
    v += (1 - rho) * (g * g)
    p -= (lr * g) / (v + epsilon) ** 0.5
