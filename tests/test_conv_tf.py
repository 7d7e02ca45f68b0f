"""Convolution (1-3 spatial dims) against TensorFlow, with hypothesis-drawn configurations.

Reference: ``tf.nn.convolution`` / ``tf.nn.conv2d`` differentiated by
``tf.GradientTape`` with ``output_gradients=`` a random upstream gradient (see
tests/tf_reference.py for the layout conversions: ours NC(D)HW with kernel
(F, C, *k), TF's N(D)HWC with kernel (*k, C, F)).  Padding: "valid"/"same" go
to TF as such; explicit ints / per-axis ints / (lo, hi) pairs go to
``tf.nn.conv2d``'s explicit paddings in 2-D and through ``np.pad`` + "VALID"
in 1-D and 3-D.

TF refuses stride > 1 together with dilation > 1, so the main test draws one or
the other; the combination is checked against TF through subsampling (a
stride-1 dilated TF convolution read every s-th output) and against the naive
loop in tests/loop_reference.py.

Everything is float64 in TF and in our layer (TF has float64 CPU kernels for
Conv1D/2D/3D and their gradients); the tolerance 1e-10 relative to the largest
reference value is ~1e4 float64 ulps for sums of at most 5*27 products.

Example counts per run (derandomized, no database: the same examples in every
CI run): 400 + 60 + 60 TF configurations, 40 loop-reference configurations.
"""
import numpy as np
import pytest

from nn_from_scratch.engine import conv as engine_conv
from engine_helpers import ThroughEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conv_strategies import geometries, rng_for, seeds
from loop_reference import conv_loop
from nn_from_scratch import Conv1D, Conv2D, Conv3D, Convolution

from tf_reference import conv_strided_via_subsampling, tf_conv  # TF is imported lazily, on first use

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOL64 = 1e-10

ALIASES = {1: Conv1D, 2: Conv2D, 3: Conv3D}


@pytest.fixture(scope="module")
def needs_tf():
    """Skip (only) the TF comparisons when TensorFlow is missing; the loop-reference test still runs."""
    return pytest.importorskip("tensorflow")


def assert_close(got, ref, tol, what):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(got - ref).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3g}"


def make_layer(g, cin, cout, bias, how, dtype=np.float64, batch=None):
    """The same convolution built through the three public constructors."""
    kw = dict(stride=g["stride_spec"], padding=g["padding"], dilation=g["dilation_spec"], use_bias=bias,
              dtype=dtype)
    if how == "seed":  # the lab's form: full input shape, output_layers
        return Convolution((batch, cin) + g["spatial"], kernel_size=g["kernel_spec"], output_layers=cout, **kw)
    if how == "free":
        return Convolution(in_channels=cin, out_channels=cout, kernel_size=g["kernel_spec"], ndim=g["nd"], **kw)
    return ALIASES[g["nd"]](cin, cout, g["kernel_spec"], **kw)


def random_params(layer, rng):
    W = rng.standard_normal(layer.W.shape)
    b = rng.standard_normal(layer.out_channels) if layer.use_bias else None
    layer.set_params(W=W, **({"b": b} if b is not None else {}))
    return W, b


def run_ours(layer, x, upstream, need_input_grad=True):
    x_before, up_before = x.copy(), upstream.copy()
    y = layer.forward(x)
    dx = layer.backward(upstream, need_input_grad=need_input_grad)
    np.testing.assert_array_equal(x, x_before, err_msg="forward/backward modified the input")
    np.testing.assert_array_equal(upstream, up_before, err_msg="backward modified the upstream gradient")
    return y, dx, layer.W_grad, layer.b_grad


def check_against(ours, ref, bias, tol, label):
    y, dx, dW, db = ours
    y_r, dx_r, dW_r, db_r = ref
    assert_close(y, y_r, tol, f"{label} forward")
    if dx is not None:
        assert_close(dx, dx_r, tol, f"{label} dL/dx")
    assert_close(dW, dW_r, tol, f"{label} dL/dW")
    if bias:
        assert_close(db, db_r, tol, f"{label} dL/db")
    else:
        assert db is None


config = dict(batch=st.integers(1, 4), cin=st.integers(1, 5), cout=st.integers(1, 5), bias=st.booleans(),
              how=st.sampled_from(["seed", "free", "alias"]), seed=seeds())


@pytest.mark.usefixtures("needs_tf")
@settings(max_examples=400, **SETTINGS)
@given(g=geometries(stride_with_dilation=False), second_batch=st.one_of(st.none(), st.integers(1, 4)),
       need_input_grad=st.booleans(), **config)
def test_convolution_matches_tensorflow(g, batch, cin, cout, bias, how, seed, second_batch, need_input_grad):
    rng = rng_for(seed)
    layer = make_layer(g, cin, cout, bias, how)
    W, b = random_params(layer, rng)
    if how == "seed":
        assert layer.output_shape == (cout,) + g["out"]
    # a second batch (other size, new data) through the same layer catches stale caches
    for n in [batch] + ([second_batch] if second_batch else []):
        x = rng.standard_normal((n, cin) + g["spatial"])
        up = rng.standard_normal((n, cout) + g["out"])
        ours = run_ours(layer, x, up, need_input_grad)
        if not need_input_grad:
            assert ours[1] is None
        ref = tf_conv(x, W, b, g["stride"], g["tf_padding"], g["dilation"], up)
        check_against(ours, ref, bias, TOL64, f"{g['nd']}-D conv {g}")


STRATEGIES = [  # (samples per chunk: "one" forces a chunk per sample, algorithm, merged layout, dL/dx route)
    ("one", "patches", False, "col2im"), ("one", "patches", True, "flipped"),
    ("all", "patches", True, "col2im"), ("all", "patches", False, "flipped"),
    ("one", "rowshift", False, "auto"), ("all", "rowshift", False, "auto"),
    ("one", "samplelast", False, "auto"), ("all", "samplelast", False, "auto"), ("all", "auto", False, "auto"),
]


@pytest.mark.usefixtures("needs_tf")
@settings(max_examples=90, **SETTINGS)
@given(g=geometries(stride_with_dilation=False), batch=st.integers(2, 4), cin=st.integers(1, 4),
       cout=st.integers(1, 12), bias=st.booleans(), seed=seeds(), strategy=st.sampled_from(STRATEGIES))
def test_every_internal_strategy_matches_tensorflow(g, batch, cin, cout, bias, seed, strategy):
    """The engine's variants of the convolution (chunking, whole or row patches, merged patch
    matrices, dL/dx by the flipped kernel or by col2im, the samples-last layout), run through the
    engine as ``fit`` runs them, are all the same convolution: each is held to TF on its own (row
    patches and samples-last need stride 1; with a stride the engine falls back to whole patches)."""
    chunking, algorithm, merged, dx_route = strategy
    rng = rng_for(seed)
    x = rng.standard_normal((batch, cin) + g["spatial"])
    up = rng.standard_normal((batch, cout) + g["out"])
    with engine_conv.settings(chunk_bytes=1 if chunking == "one" else 1 << 40,
                              merge_from_filters=1 if merged else 1 << 30, dx_strategy=dx_route, algorithm=algorithm):
        layer = make_layer(g, cin, cout, bias, "free")
        W, b = random_params(layer, rng)
        engine = ThroughEngine(layer)
        ours = run_ours(engine, x, up)
        assert type(engine.units()[0]).__name__ == "ConvUnit"
    ref = tf_conv(x, W, b, g["stride"], g["tf_padding"], g["dilation"], up)
    check_against(ours, ref, bias, TOL64, f"{g['nd']}-D conv {g} strategy {strategy}")


@pytest.mark.usefixtures("needs_tf")
@settings(max_examples=60, **SETTINGS)
@given(g=geometries(modes=["both"]), **config)
def test_stride_with_dilation_matches_tensorflow_by_subsampling(g, batch, cin, cout, bias, how, seed):
    rng = rng_for(seed)
    layer = make_layer(g, cin, cout, bias, how, batch=batch)
    W, b = random_params(layer, rng)
    x = rng.standard_normal((batch, cin) + g["spatial"])
    up = rng.standard_normal((batch, cout) + g["out"])
    ref = conv_strided_via_subsampling(x, W, b, g["stride"], g["pairs"], g["dilation"], up)
    check_against(run_ours(layer, x, up), ref, bias, TOL64, f"{g['nd']}-D strided dilated conv {g}")


@settings(max_examples=40, **SETTINGS)
@given(g=geometries(max_spatial=4, max_kernel=2), batch=st.integers(1, 2), cin=st.integers(1, 3),
       cout=st.integers(1, 3), bias=st.booleans(), seed=seeds())
def test_convolution_matches_loop_reference(g, batch, cin, cout, bias, seed):
    """All geometries, stride+dilation included, against the defining sums (tests/loop_reference.py)."""
    rng = rng_for(seed)
    layer = make_layer(g, cin, cout, bias, "free")
    W, b = random_params(layer, rng)
    x = rng.standard_normal((batch, cin) + g["spatial"])
    up = rng.standard_normal((batch, cout) + g["out"])
    ref = conv_loop(x, W, b, g["stride"], g["pairs"], g["dilation"], up)
    check_against(run_ours(layer, x, up), ref, bias, TOL64, f"{g['nd']}-D conv vs loops {g}")


@pytest.mark.usefixtures("needs_tf")
@settings(max_examples=60, **SETTINGS)
@given(g=geometries(stride_with_dilation=False), **config)
def test_float32_convolution_close_to_tensorflow_float64(g, batch, cin, cout, bias, how, seed):
    """The default float32 layer against the float64 TF result.

    Inputs and weights are drawn in float32 (so both sides see the same
    numbers).  Each output/gradient entry is a sum of at most a few hundred
    products of O(1) values; float32 rounding (eps = 6e-8) gives errors around
    1e-6 relative to the largest value, 1e-4 leaves a margin and still fails
    for any wrong index or missing term (those are O(1) errors).
    """
    rng = rng_for(seed)
    layer = make_layer(g, cin, cout, bias, how, dtype=np.float32, batch=batch)
    W = rng.standard_normal(layer.W.shape).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    layer.set_params(W=W, **({"b": b} if bias else {}))
    x = rng.standard_normal((batch, cin) + g["spatial"]).astype(np.float32)
    up = rng.standard_normal((batch, cout) + g["out"]).astype(np.float32)
    ours = run_ours(layer, x, up)
    for arr in ours:
        assert arr is None or arr.dtype == np.float32
    ref = tf_conv(x.astype(np.float64), W.astype(np.float64), None if b is None else b.astype(np.float64),
                  g["stride"], g["tf_padding"], g["dilation"], up.astype(np.float64))
    check_against(ours, ref, bias, 1e-4, f"{g['nd']}-D float32 conv {g}")


@pytest.mark.usefixtures("needs_tf")
def test_tensorflow_reference_layouts_on_a_hand_example():
    """Pin the helper's layout conversion with a case worked by hand (so a
    transposed helper cannot agree with a transposed layer)."""
    x = np.arange(12, dtype=np.float64).reshape(1, 2, 6)        # channel 0: 0..5, channel 1: 6..11
    W = np.zeros((2, 2, 2))
    W[0, 0] = [1.0, 0.0]   # filter 0: x[c=0, o]
    W[1, 1] = [0.0, 10.0]  # filter 1: 10 * x[c=1, o + 1]
    y = tf_conv(x, W, np.array([0.5, -1.0]), (2,), "valid", (1,))
    np.testing.assert_array_equal(y, [[[0.5, 2.5, 4.5], [69.0, 89.0, 109.0]]])
    layer = Conv1D(2, 2, 2, stride=2, padding="valid", dtype=np.float64)
    layer.set_params(W=W, b=np.array([0.5, -1.0]))
    np.testing.assert_array_equal(layer.forward(x), y)
