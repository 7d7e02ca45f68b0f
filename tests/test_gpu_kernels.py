"""The fused GPU kernels (``nn_from_scratch.kernels``) and their reference expressions.

Each kernel has a plain array expression that runs on NumPy (and on CuPy with
``kernels.use_fused(False)``).  Here:

* on every backend, the kernel functions against formulas written out in float64
  in this file (with edge cases: exact zeros for ReLU, logits of 1e4, K = 1, N = 1);
* on CuPy only (skipped without a GPU): the fused kernel against the reference
  expression on the same CuPy data (``use_fused(False)``) and against NumPy, to
  float32 rounding, including non-contiguous inputs and out-of-range labels;
* the window kernels (im2col, col2im, max pooling), on CuPy only, against the loop
  references of ``patches`` (``im2col_reference``/``col2im_reference``) and against
  the NumPy ``MaxPool``, over hypothesis-drawn geometries (1-3 d, stride, dilation,
  every padding spec), and the ``Convolution`` layer's GPU arrangement against the
  NumPy-style arrangements on the same CuPy data, in one chunk and in several.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nn_from_scratch as nf
from nn_from_scratch.engine import conv as engine_conv
from nn_from_scratch.engine import kernels

from engine_helpers import ThroughEngine
from nn_from_scratch.backend import to_numpy
from nn_from_scratch.layers.geometry import col2im_reference, im2col_reference
from conv_strategies import geometries, rng_for, seeds
from gpu_utils import assert_f32_agree, assert_f64_agree, requires_gpu

DTYPES = [np.float32, np.float64]


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)


def _xent64(z, t):
    """float64 reference: mean_n (logsumexp(z_n) - z_n[t_n]) and (softmax(z) - onehot(t)) / N."""
    z = np.asarray(z, dtype=np.float64)
    n, k = z.shape
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    loss = np.mean(lse - z[np.arange(n), t])
    p = np.exp(z - lse[:, None])
    return loss, (p - np.eye(k)[t]) / n


LOGIT_CASES = {
    "random": lambda rng: (3 * rng.standard_normal((7, 5)), rng.integers(0, 5, 7)),
    "huge_logits": lambda rng: (np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4 - 1.0], [-1e4, -1e4, -1e4 + 2.0],
                                          [1e4, 1e4, 1e4]]), np.array([1, 2, 2, 0])),
    "one_class": lambda rng: (rng.standard_normal((4, 1)), np.zeros(4, dtype=np.int64)),
    "one_sample": lambda rng: (rng.standard_normal((1, 6)), np.array([3])),
    "many_classes": lambda rng: (rng.standard_normal((3, 1000)), rng.integers(0, 1000, 3)),
}


# ---------------------------------------------------------------- every backend: against float64 formulas
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_backward_formulas(backend, rng, dtype):
    dy = rng.standard_normal((6, 7)).astype(dtype)
    x = rng.standard_normal((6, 7))
    x[0, :4] = 0.0                                           # ReLU's kink: slope 0 there
    y_relu = np.maximum(x, 0).astype(dtype)
    y_sig = (1 / (1 + np.exp(-x))).astype(dtype)
    y_tanh = np.tanh(x).astype(dtype)
    d = backend.asarray
    got = {
        "relu": to_numpy(kernels.relu_backward(d(dy), d(y_relu))),
        "sigmoid": to_numpy(kernels.sigmoid_backward(d(dy), d(y_sig))),
        "tanh": to_numpy(kernels.tanh_backward(d(dy), d(y_tanh))),
    }
    dy64 = dy.astype(np.float64)
    want = {
        "relu": dy64 * (x > 0),
        "sigmoid": dy64 * y_sig.astype(np.float64) * (1 - y_sig.astype(np.float64)),
        "tanh": dy64 * (1 - y_tanh.astype(np.float64) ** 2),
    }
    for k in got:
        assert got[k].dtype == dtype, k
        np.testing.assert_allclose(got[k], want[k], err_msg=k, **_tol(dtype))
    assert np.all(got["relu"][0, :4] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(LOGIT_CASES))
def test_softmax_xent_formula(backend, rng, case, dtype):
    z, t = LOGIT_CASES[case](rng)
    loss, grad = kernels.softmax_xent(backend.asarray(z, dtype=dtype), backend.asarray(t))
    want_loss, want_grad = _xent64(z.astype(dtype), t)
    assert loss.shape == () and grad.dtype == dtype
    loss, grad = float(to_numpy(loss)), to_numpy(grad)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(want_loss, rel=2e-6 if dtype == np.float32 else 1e-12, abs=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-7 if dtype == np.float32 else 1e-15)


def _opt_problem(rng, dtype):
    p = rng.standard_normal((5, 4)).astype(dtype)
    g = (rng.standard_normal((5, 4)) * 10.0 ** rng.uniform(-3, 1, (5, 4))).astype(dtype)
    s1 = np.abs(rng.standard_normal((5, 4))).astype(dtype)
    s2 = np.abs(rng.standard_normal((5, 4))).astype(dtype)
    return p, g, s1, s2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_update_formula(backend, rng, dtype, nesterov):
    p, g, v, _ = _opt_problem(rng, dtype)
    P, V = backend.asarray(p), backend.asarray(v)
    P_id, V_id = id(P), id(V)
    kernels.sgd_update(P, backend.asarray(g), V, 0.05, 0.9, nesterov)
    v_new = 0.9 * v.astype(np.float64) - 0.05 * g
    p_new = p + (0.9 * v_new - 0.05 * g if nesterov else v_new)
    assert id(P) == P_id and id(V) == V_id                    # in place
    np.testing.assert_allclose(to_numpy(V), v_new, **_tol(dtype))
    np.testing.assert_allclose(to_numpy(P), p_new, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_sgd_update_formula(backend, rng, dtype):
    p, g, _, _ = _opt_problem(rng, dtype)
    P = backend.asarray(p)
    P_id = id(P)
    kernels.sgd_update(P, backend.asarray(g), None, 0.05, 0.0, False)   # no velocity needed
    assert id(P) == P_id
    np.testing.assert_allclose(to_numpy(P), p.astype(np.float64) - 0.05 * g, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsprop_update_formula(backend, rng, dtype):
    p, g, v, _ = _opt_problem(rng, dtype)
    P, V = backend.asarray(p), backend.asarray(v)
    kernels.rmsprop_update(P, backend.asarray(g), V, 0.01, 0.9, 1e-7)
    v_new = 0.9 * v.astype(np.float64) + 0.1 * g.astype(np.float64) ** 2
    np.testing.assert_allclose(to_numpy(V), v_new, **_tol(dtype))
    np.testing.assert_allclose(to_numpy(P), p - 0.01 * g / np.sqrt(v_new + 1e-7), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_formula(backend, rng, dtype):
    # kernels.adam_update is not wired into optimizers.Adam yet; its formula is held here all the same
    p, g, m, v = _opt_problem(rng, dtype)
    P, M, V = backend.asarray(p), backend.asarray(m), backend.asarray(v)
    alpha = 0.01 * np.sqrt(1 - 0.999 ** 3) / (1 - 0.9 ** 3)
    kernels.adam_update(P, backend.asarray(g), M, V, alpha, 0.9, 0.999, 1e-7)
    m_new = 0.9 * m.astype(np.float64) + 0.1 * g
    v_new = 0.999 * v.astype(np.float64) + 0.001 * g.astype(np.float64) ** 2
    np.testing.assert_allclose(to_numpy(M), m_new, **_tol(dtype))
    np.testing.assert_allclose(to_numpy(V), v_new, **_tol(dtype))
    np.testing.assert_allclose(to_numpy(P), p - alpha * m_new / (np.sqrt(v_new) + 1e-7), **_tol(dtype))


def test_fused_only_for_device_arrays(backend):
    a = backend.xp.zeros(3)
    assert kernels.fused_enabled(a) is backend.is_gpu
    kernels.use_fused(False)
    assert kernels.fused_enabled(a) is False
    kernels.use_fused(True)
    assert kernels.fused_enabled(np.zeros(3)) is False       # NumPy data never take a kernel


# ---------------------------------------------------------------- CuPy only: fused against reference
def _both(fn, *arrays, inplace=False):
    """fn with the fused kernels on, then off: ((result, args), (result, args)).

    ``inplace``: fn updates its arguments, so each run gets its own copies.
    """
    outs = []
    for fused in (True, False):
        kernels.use_fused(fused)
        try:
            copies = [a.copy() for a in arrays] if inplace else list(arrays)
            res = fn(*copies)
            outs.append((res, copies))
        finally:
            kernels.use_fused(True)
    return outs


def _agree(dtype):
    return assert_f32_agree if dtype == np.float32 else assert_f64_agree


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@requires_gpu
def test_fused_elementwise_equals_reference(gpu, rng, dtype, name, layout):
    x = 3 * rng.standard_normal((33, 65))
    x[::7, ::5] = 0.0
    y = {"relu": np.maximum(x, 0), "sigmoid": 1 / (1 + np.exp(-x)), "tanh": np.tanh(x)}[name].astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    Y, DY = gpu.asarray(y), gpu.asarray(dy)
    if layout == "transposed":       # strided views: the ElementwiseKernel must follow the strides
        Y, DY = Y.T, DY.T
        y, dy = y.T, dy.T
    fn = getattr(kernels, f"{name}_backward")
    (fused, _f), (ref, _r) = _both(fn, DY, Y)
    if name == "relu":   # a select, no arithmetic: bitwise
        assert np.array_equal(to_numpy(fused), to_numpy(ref))
    _agree(dtype)(fused, ref, f"{name} fused vs reference (CuPy)")
    _agree(dtype)(fused, fn(dy, y), f"{name} fused (CuPy) vs NumPy")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(LOGIT_CASES))
@requires_gpu
def test_fused_softmax_xent_equals_reference(gpu, rng, case, dtype):
    z, t = LOGIT_CASES[case](rng)
    Z, T = gpu.asarray(z, dtype=dtype), gpu.asarray(t)
    (fused, _f), (ref, _r) = _both(kernels.softmax_xent, Z, T)
    np_loss, np_grad = kernels.softmax_xent(z.astype(dtype), t)
    agree = _agree(dtype)
    agree(fused[0], ref[0], f"{case}: loss fused vs reference")
    agree(fused[1], ref[1], f"{case}: grad fused vs reference")
    agree(fused[0], np_loss, f"{case}: loss fused vs NumPy")
    agree(fused[1], np_grad, f"{case}: grad fused vs NumPy")
    assert fused[1].dtype == dtype and fused[0].shape == ()


@requires_gpu
def test_fused_softmax_xent_non_contiguous_logits_and_bad_labels(gpu, rng):
    z = rng.standard_normal((6, 10)).astype(np.float32)
    Zt = gpu.asarray(z.T.copy()).T                      # a non-contiguous (transposed) view
    t = rng.integers(0, 10, 6)
    loss, grad = kernels.softmax_xent(Zt, gpu.asarray(t))
    want_loss, want_grad = _xent64(z, t)
    assert_f32_agree(loss, np.float64(want_loss), "transposed logits: loss")
    assert_f32_agree(grad, want_grad, "transposed logits: grad")
    # a label outside [0, K) turns its row into NaN instead of reading past the row
    bad = t.copy()
    bad[2] = 10
    loss, grad = kernels.softmax_xent(gpu.asarray(z), gpu.asarray(bad))
    g = to_numpy(grad)
    assert np.isnan(float(to_numpy(loss)))
    assert np.all(np.isnan(g[2])) and np.all(np.isfinite(np.delete(g, 2, axis=0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["plain_sgd", "sgd", "nesterov", "rmsprop", "adam"])
@requires_gpu
def test_fused_updates_equal_reference(gpu, rng, dtype, rule):
    p, g, s1, s2 = _opt_problem(rng, dtype)
    P, G, S1, S2 = (gpu.asarray(a) for a in (p, g, s1, s2))
    calls = {
        "plain_sgd": (lambda P, G, S1, S2: kernels.sgd_update(P, G, None, 0.05, 0.0, False)),
        "sgd": (lambda P, G, S1, S2: kernels.sgd_update(P, G, S1, 0.05, 0.9, False)),
        "nesterov": (lambda P, G, S1, S2: kernels.sgd_update(P, G, S1, 0.05, 0.9, True)),
        "rmsprop": (lambda P, G, S1, S2: kernels.rmsprop_update(P, G, S1, 0.01, 0.9, 1e-7)),
        "adam": (lambda P, G, S1, S2: kernels.adam_update(P, G, S1, S2, 0.003, 0.9, 0.999, 1e-7)),
    }
    (_, fused), (_, ref) = _both(calls[rule], P, G, S1, S2, inplace=True)
    host = [a.copy() for a in (p, g, s1, s2)]
    calls[rule](*host)
    for i, name in enumerate(["param", "grad", "state1", "state2"]):
        _agree(dtype)(fused[i], ref[i], f"{rule}: {name} fused vs reference")
        _agree(dtype)(fused[i], host[i], f"{rule}: {name} fused vs NumPy")
    assert np.array_equal(to_numpy(fused[1]), g)            # the gradient is read, never written


# ---------------------------------------------------------------- window kernels (GPU only)
WINDOW_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _geo(g, channels):
    return kernels.window_geometry(channels, g["spatial"], g["kernel"], g["stride"], g["pairs"], g["dilation"],
                                   g["out"])


def _merged(cols):
    """``(N, C*K, P)`` (the references' layout) -> ``(C*K, N*P)`` (the kernels')."""
    n, ck, p = cols.shape
    return cols.transpose(1, 0, 2).reshape(ck, n * p)


@requires_gpu
@settings(max_examples=60, **WINDOW_SETTINGS)
@given(g=geometries(), batch=st.integers(1, 3), channels=st.integers(1, 3), seed=seeds())
def test_im2col_and_col2im_kernels_equal_the_loop_references(gpu, g, batch, channels, seed):
    rng = rng_for(seed)
    x = rng.standard_normal((batch, channels) + g["spatial"])
    ref = im2col_reference(x, g["kernel"], g["stride"], g["padding"], g["dilation"])
    ck, width = ref.shape[1], batch * ref.shape[2]
    out = gpu.xp.full((ck, width), np.nan)              # poisoned: every entry must be written
    got = kernels.im2col_merged(gpu.asarray(x), _geo(g, channels), out)
    assert np.array_equal(to_numpy(got), _merged(ref))  # a gather: exact
    dcols = rng.standard_normal(ref.shape)
    want = col2im_reference(dcols, x.shape, g["kernel"], g["stride"], g["padding"], g["dilation"])
    dx = gpu.xp.full(x.shape, np.nan)
    kernels.col2im_merged(gpu.asarray(_merged(dcols)), _geo(g, channels), dx)
    assert_f64_agree(dx, want, f"col2im kernel vs loop reference, {g}")


@requires_gpu
@settings(max_examples=60, **WINDOW_SETTINGS)
@given(g=geometries(stride_with_dilation=False, modes=["plain", "stride"], padding_kinds=("valid", "same")),
       batch=st.integers(1, 3), channels=st.integers(1, 3), seed=seeds(), ties=st.booleans())
def test_maxpool_kernels_equal_the_numpy_layer(gpu, g, batch, channels, seed, ties):
    pairs = g["pairs"]
    if any(lo >= k or hi >= k for (lo, hi), k in zip(pairs, g["kernel"])):
        return                                           # MaxPool refuses windows of padding only
    rng = rng_for(seed)
    x = rng.standard_normal((batch, channels) + g["spatial"])
    if ties:                                             # many equal entries: the first maximum wins
        x = np.maximum(np.round(x), 0)
    make = lambda: nf.MaxPool(pool_size=g["kernel"], stride=g["stride"], padding=g["padding"],  # noqa: E731
                              ndim=g["nd"])
    host, dev = make(), ThroughEngine(make())           # the layer's own code on NumPy, the engine on CuPy
    y = host.forward(x)
    y_dev = dev.forward(gpu.asarray(x))
    assert dev.units()[0].state[2] is not None           # the kernel path ran (its window geometry)
    assert np.array_equal(to_numpy(y_dev), y)
    dy = rng.standard_normal(y.shape)
    assert_f64_agree(dev.backward(gpu.asarray(dy)), host.backward(dy), f"maxpool dL/dx, {g}")


@requires_gpu
def test_maxpool_kernel_propagates_nan_like_numpy(gpu):
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan
    host, dev = nf.MaxPool(pool_size=2), ThroughEngine(nf.MaxPool(pool_size=2))
    y, y_dev = host.forward(x), to_numpy(dev.forward(gpu.asarray(x)))
    assert np.isnan(y_dev[0, 0, 0, 0]) and np.array_equal(np.isnan(y_dev), np.isnan(y))
    assert np.array_equal(y_dev[~np.isnan(y)], y[~np.isnan(y)])


@pytest.mark.parametrize("chunk_bytes", [None, 3000], ids=["one_chunk", "chunks"])
@pytest.mark.parametrize("dtype", DTYPES)
@requires_gpu
def test_conv_kernel_arrangement_equals_the_other_arrangements(gpu, rng, dtype, chunk_bytes):
    """The engine's convolution on CuPy: "kernel" (the GPU default) against "patches", "rowshift"
    and "samplelast", same data, and the layer's own code."""
    from nn_from_scratch.engine.conv import KernelPatchProduct, PatchProduct, RowShiftProduct, SampleLastProduct
    cases = [((5, 3, 11, 9), dict(kernel_size=3, output_layers=4, padding="same")),
             ((4, 2, 13, 12), dict(kernel_size=(3, 2), output_layers=9, stride=(2, 1), padding=((1, 0), 2))),
             ((3, 2, 7, 6, 5), dict(kernel_size=(3, 2, 2), output_layers=3, dilation=(1, 2, 1))),
             ((6, 3, 17), dict(kernel_size=4, output_layers=5, stride=3, padding=2))]
    for shape, kw in cases:
        x = rng.standard_normal(shape).astype(dtype)
        results = {}
        for algorithm, cls in (("kernel", KernelPatchProduct), ("patches", PatchProduct),
                               ("rowshift", RowShiftProduct), ("samplelast", SampleLastProduct)):
            nf.set_seed(3)
            layer = ThroughEngine(nf.Convolution((None,) + shape[1:], dtype=dtype, **kw))
            # several chunks (patches gathered again), or one
            with engine_conv.settings(algorithm=algorithm, **({"gpu_chunk_bytes": chunk_bytes} if chunk_bytes else {})):
                y = layer.forward(gpu.asarray(x))
                if algorithm not in ("rowshift", "samplelast") or all(s == 1 for s in layer.stride):
                    assert type(layer.arrangement()) is cls
                dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
                dx = layer.backward(gpu.asarray(dy))
            results[algorithm] = (y, dx, layer.grads["W"], layer.grads["b"])
        nf.set_seed(3)
        own = nf.Convolution((None,) + shape[1:], dtype=dtype, **kw)
        y = own.forward(gpu.asarray(x))
        dx = own.backward(gpu.asarray(np.random.default_rng(1).standard_normal(y.shape).astype(dtype)))
        results["layer"] = (y, dx, own.grads["W"], own.grads["b"])
        for other in ("patches", "rowshift", "samplelast", "layer"):
            for got, ref, what in zip(results["kernel"], results[other], ("y", "dL/dx", "dL/dW", "dL/db")):
                _agree(dtype)(got, ref, f"{shape} {kw}: {what}, kernel vs {other}")


def test_kernel_chunks_stay_under_the_int32_index_limit(monkeypatch):
    """The window kernels index with 32-bit ints: chunks are capped, too-large samples fall back."""
    from nn_from_scratch.engine.conv import ConvContext, KernelPatchProduct, _kernel_sizes_fit
    layer = ConvContext(nf.Convolution((None, 3, 10, 10), kernel_size=3, output_layers=4, padding=1))
    pads = layer._pads((10, 10))
    kp = KernelPatchProduct(layer, (8, 3, 10, 10), pads)
    assert kp.sample_entries == 27 * 100                 # the patch matrix: C*K rows, P columns
    assert kp._chunks(8, np.zeros(1, np.float32)) == (8, [(0, 8)])
    monkeypatch.setattr(kernels, "INT32_LIMIT", 3 * 2700 + 5)
    step, chunks = kp._chunks(8, np.zeros(1, np.float32))
    assert (step, chunks) == (3, [(0, 3), (3, 6), (6, 8)])
    assert _kernel_sizes_fit(layer, (8, 3, 10, 10), pads)
    monkeypatch.setattr(kernels, "INT32_LIMIT", 2699)    # one sample's patch matrix is too large
    assert not _kernel_sizes_fit(layer, (8, 3, 10, 10), pads)


@requires_gpu
def test_conv_and_pool_fall_back_beyond_the_int32_index_limit(gpu, rng, monkeypatch):
    from nn_from_scratch.engine.conv import ConvContext, KernelPatchProduct, choose_algorithm
    x = gpu.asarray(rng.standard_normal((4, 3, 10, 10)).astype(np.float32))
    conv = ThroughEngine(nf.Convolution((None, 3, 10, 10), kernel_size=3, output_layers=4, padding=1))
    pool = ThroughEngine(nf.MaxPool(pool_size=2))
    assert type(choose_algorithm(ConvContext(conv.layers[0]), x)) is KernelPatchProduct
    y_kernel, p_kernel = to_numpy(conv.forward(x)), to_numpy(pool.forward(x))
    monkeypatch.setattr(kernels, "INT32_LIMIT", 1000)
    assert type(choose_algorithm(ConvContext(conv.layers[0]), x)) is not KernelPatchProduct
    assert_f32_agree(conv.forward(x), y_kernel, "conv: NumPy-style arrangement on CuPy vs the kernel")
    assert np.array_equal(to_numpy(pool.forward(x)), p_kernel)
    assert pool.units()[0].state[2] is None              # the array-expression path ran


# ---------------------------------------------------------------- fit's per-batch bookkeeping
@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulate_batch_formula(backend, rng, dtype):
    """losses[b] = loss; sum_loss += loss * m; sum_correct += #(first argmax == label), over 3 batches."""
    xp = backend.xp
    sum_loss, sum_correct = xp.zeros((), dtype=dtype), xp.zeros((), dtype=np.int64)
    losses = xp.zeros(3, dtype=dtype)
    want_loss, want_correct = 0.0, 0
    for b, (m, k) in enumerate([(7, 5), (300, 10), (1, 3)]):    # more rows than the kernel's threads
        out = np.round(rng.standard_normal((m, k)), 1).astype(dtype)   # rounding makes ties
        out[0, :] = 0.5                                           # a row of equal values: class 0 wins
        labels = rng.integers(0, k, m)
        labels[0] = 0
        loss = dtype(rng.uniform(0.1, 3.0))
        first_max = np.array([next(j for j in range(k) if row[j] == row.max()) for row in out])
        want_loss += float(loss) * m
        want_correct += int((first_max == labels).sum())
        kernels.accumulate_batch(sum_loss, sum_correct, losses, b, backend.asarray(np.array(loss)),
                                 backend.asarray(out), backend.asarray(labels))
        assert float(to_numpy(losses)[b]) == float(loss)
    assert int(to_numpy(sum_correct)) == want_correct
    np.testing.assert_allclose(float(to_numpy(sum_loss)), want_loss, rtol=1e-6 if dtype == np.float32 else 1e-14)


@requires_gpu
def test_fused_accumulate_batch_equals_reference(gpu, rng):
    out = gpu.asarray(rng.standard_normal((1000, 10)).astype(np.float32))
    labels = gpu.asarray(rng.integers(0, 10, 1000))
    loss = gpu.asarray(np.array(1.25, dtype=np.float32))
    results = []
    for fused in (True, False):
        kernels.use_fused(fused)
        try:
            sums = (gpu.xp.full((), 2.5, dtype=np.float32), gpu.xp.full((), 3, dtype=np.int64),
                    gpu.xp.zeros(2, dtype=np.float32))
            kernels.accumulate_batch(*sums, 1, loss, out, labels)
            results.append([to_numpy(a) for a in sums])
        finally:
            kernels.use_fused(True)
    for got, ref in zip(*results):
        assert np.array_equal(got, ref)
