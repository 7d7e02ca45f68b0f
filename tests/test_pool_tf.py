"""MaxPool/AvgPool (1-3 spatial dims) against TensorFlow, with hypothesis-drawn configurations.

Reference: ``tf.nn.max_pool``/``tf.nn.avg_pool`` ("VALID"/"SAME") differentiated by
``tf.GradientTape`` with a random upstream gradient (tests/tf_reference.py).

Exactness: max pooling only selects and adds values.  Inputs are small integers
and upstream gradients random multiples of 1/8, so every forward value and every
gradient sum is exactly representable in float32 and float64 and the max-pool
comparison is *exact* (``assert_array_equal``), ties included.

Ties: inputs drawn "after a ReLU" (``max(integer, 0)``) are mostly zeros, so
windows hold many equal maxima.  TF's 1-D/2-D ``MaxPoolGrad`` routes a window's
gradient to its first maximum in row-major order, and we must agree exactly.
TF's CPU ``MaxPool3DGrad`` instead gives the full gradient to *every* tied
maximum (not a gradient of anything: an all-zero 2x2x2 window passes on 8x its
gradient), so 3-D max pooling is compared with TF on tie-free inputs, and the
3-D tie rule against the loop reference (tests/loop_reference.py) and PyTorch
(``max_pool3d``, first maximum) when PyTorch is installed.

dtypes: TF has no float64 3-D pooling kernels on the CPU, so 3-D runs in
float32 in TF (see tests/tf_reference.py); our layer runs in float64.  The
max-pool results are still exact (integer inputs, dyadic gradients); for average
pooling the only float32 rounding is the division by the window count (and the
sum of up to 27 such quotients in dL/dx), so 1e-6 relative to the largest value
(~16 float32 ulps) is the tolerance; in 1-D/2-D (float64 on both sides) it is
1e-12.

Example counts per run (derandomized, no database): 200 + 150 TF configurations.
"""
import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conv_strategies import rng_for, seeds
from loop_reference import out_size, pool_loop
from nn_from_scratch import AvgPool, AvgPool1D, AvgPool2D, AvgPool3D, MaxPool, MaxPool1D, MaxPool2D, MaxPool3D
from tf_reference import explicit_pairs, tf_pool, tf_same_pairs  # TF is imported lazily, on first use

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLASSES = {"max": (MaxPool, {1: MaxPool1D, 2: MaxPool2D, 3: MaxPool3D}),
           "avg": (AvgPool, {1: AvgPool1D, 2: AvgPool2D, 3: AvgPool3D})}
MAX_SPATIAL = {1: 12, 2: 7, 3: 5}
HAVE_TF = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def needs_tf():
    """Skip (only) the TF comparisons when TensorFlow is missing; loop-reference tests still run."""
    return pytest.importorskip("tensorflow")


@st.composite
def pool_geometries(draw, nd=None, paddings=("valid", "same")):
    nd = draw(st.integers(1, 3)) if nd is None else nd
    axes = st.lists
    pool = tuple(draw(axes(st.integers(1, 3), min_size=nd, max_size=nd)))
    stride_given = draw(st.booleans())
    stride = tuple(draw(axes(st.integers(1, 3), min_size=nd, max_size=nd))) if stride_given else pool
    kind = draw(st.sampled_from(paddings))
    if kind in ("valid", "same"):
        padding = draw(st.sampled_from([kind, kind.upper()]))
        pairs = None
    else:  # explicit: every window keeps at least one real entry (lo, hi < pool)
        pad = st.integers(0, 2)
        padding = tuple(draw(axes(st.tuples(pad, pad), min_size=nd, max_size=nd)))
        padding = tuple((min(lo, k - 1), min(hi, k - 1)) for (lo, hi), k in zip(padding, pool))
        pairs = explicit_pairs(padding, nd)
    low = [1 if kind == "same" else max(1, k - (lo + hi if pairs else 0))
           for k, (lo, hi) in zip(pool, pairs or ((0, 0),) * nd)]
    spatial = tuple(draw(st.integers(lo_s, lo_s + MAX_SPATIAL[nd] - 1)) for lo_s in low)
    if kind == "valid":
        pairs = ((0, 0),) * nd
    elif kind == "same":
        pairs = tf_same_pairs(spatial, pool, stride, (1,) * nd)
    out = tuple(out_size(S, k, s, 1, lo, hi) for S, k, s, (lo, hi) in zip(spatial, pool, stride, pairs))
    return dict(nd=nd, pool=pool, stride=stride, stride_spec=stride if stride_given else None,
                padding=padding, pairs=pairs, spatial=spatial, out=out)


def make_pool(kind, g, how, channels):
    generic, fixed = CLASSES[kind]
    pool_spec = g["pool"][0] if len(set(g["pool"])) == 1 and how == "fixed" else g["pool"]
    if how == "fixed":
        return fixed[g["nd"]](pool_size=pool_spec, stride=g["stride_spec"], padding=g["padding"])
    if how == "shape":
        return generic((None, channels) + g["spatial"], pool_size=pool_spec, stride=g["stride_spec"],
                       padding=g["padding"])
    return generic(pool_size=pool_spec, stride=g["stride_spec"], padding=g["padding"], ndim=g["nd"])


def relu_integers(rng, shape):
    """Mostly zeros and small repeated integers: windows full of ties."""
    return np.maximum(rng.integers(-4, 4, size=shape), 0).astype(np.float64)


def distinct(rng, shape):
    """A permutation of 0..n-1 (minus an offset): no ties anywhere."""
    return (rng.permutation(int(np.prod(shape))) - 7).reshape(shape).astype(np.float64)


def dyadic(rng, shape):
    """Random multiples of 1/8 in [-8, 8]: exact sums in float32 and float64."""
    return rng.integers(-64, 65, size=shape) / 8.0


def run_ours(layer, x, up):
    x_before, up_before = x.copy(), up.copy()
    y = layer.forward(x)
    dx = layer.backward(up)
    np.testing.assert_array_equal(x, x_before, err_msg="forward/backward modified the input")
    np.testing.assert_array_equal(up, up_before, err_msg="backward modified the upstream gradient")
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    return y, dx


def tf_dtype(nd):
    return np.float32 if nd == 3 else np.float64


def pool_smaller_than_stride(g):
    """Some axis's window is smaller than its stride (inputs between windows are skipped)."""
    return any(k < s for k, s in zip(g["pool"], g["stride"]))


@pytest.mark.usefixtures("needs_tf")
@settings(max_examples=200, **SETTINGS)
@given(g=pool_geometries(), batch=st.integers(1, 3), channels=st.integers(1, 4),
       how=st.sampled_from(["fixed", "shape", "ndim"]), data=st.sampled_from(["relu", "distinct"]), seed=seeds())
def test_max_pool_matches_tensorflow_exactly(g, batch, channels, how, data, seed):
    if g["nd"] == 3:
        data = "distinct"  # TF's 3-D max-pool gradient is wrong at ties (module docstring)
    rng = rng_for(seed)
    shape = (batch, channels) + g["spatial"]
    x = relu_integers(rng, shape) if data == "relu" else distinct(rng, shape)
    up = dyadic(rng, (batch, channels) + g["out"])
    layer = make_pool("max", g, how, channels)
    y, dx = run_ours(layer, x, up)
    if g["nd"] == 3 and pool_smaller_than_stride(g):
        # TensorFlow's CPU max_pool3d has been seen to return the wrong element and an all-zero
        # gradient when a window is smaller than its stride on some axis (pool (1, 1, 1), stride
        # (3, 1, 1), "same"; test_tf_max_pool3d_pool_smaller_than_stride shows its answer beside
        # ours and a direct loop). Such geometries are checked against the loop instead.
        y_ref, dx_ref = pool_loop(x, "max", g["pool"], g["stride"], g["pairs"], up)
    else:
        y_ref, dx_ref = tf_pool(x, "max", g["pool"], g["stride"], g["padding"], up, tf_dtype(g["nd"]))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    # the upstream gradient is passed on, not created or lost
    assert float(dx.sum()) == float(up.sum())


@pytest.mark.usefixtures("needs_tf")
@settings(max_examples=150, **SETTINGS)
@given(g=pool_geometries(), batch=st.integers(1, 3), channels=st.integers(1, 4),
       how=st.sampled_from(["fixed", "shape", "ndim"]), seed=seeds())
def test_avg_pool_matches_tensorflow(g, batch, channels, how, seed):
    rng = rng_for(seed)
    shape = (batch, channels) + g["spatial"]
    x = rng.integers(-9, 10, size=shape).astype(np.float64) if g["nd"] == 3 else rng.standard_normal(shape)
    up = dyadic(rng, (batch, channels) + g["out"]) if g["nd"] == 3 else rng.standard_normal((batch, channels) + g["out"])
    layer = make_pool("avg", g, how, channels)
    y, dx = run_ours(layer, x, up)
    y_tf, dx_tf = tf_pool(x, "avg", g["pool"], g["stride"], g["padding"], up, tf_dtype(g["nd"]))
    tol = 1e-6 if g["nd"] == 3 else 1e-12
    for got, ref in ((y, y_tf), (dx, dx_tf)):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * max(1.0, float(np.abs(ref).max())))


@settings(max_examples=60, **SETTINGS)
@given(g=pool_geometries(paddings=("valid", "same", "explicit")), kind=st.sampled_from(["max", "avg"]),
       batch=st.integers(1, 2), channels=st.integers(1, 3), seed=seeds())
def test_pools_match_loop_reference(g, kind, batch, channels, seed):
    """All paddings (explicit (lo, hi) too, which TF pooling lacks), ties included, vs loops."""
    rng = rng_for(seed)
    x = relu_integers(rng, (batch, channels) + g["spatial"])
    up = dyadic(rng, (batch, channels) + g["out"])
    layer = make_pool(kind, g, "ndim", channels)
    y, dx = run_ours(layer, x, up)
    y_ref, dx_ref = pool_loop(x, kind, g["pool"], g["stride"], g["pairs"], up)
    if kind == "max":
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, dx_ref)
    else:
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12 * max(1.0, float(np.abs(y_ref).max())))
        np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-12 * max(1.0, float(np.abs(dx_ref).max())))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_ties_route_to_first_maximum(nd):
    """All-zero input (a dead ReLU layer): each window passes its gradient to its first entry."""
    x = np.zeros((1, 1) + (4,) * nd)
    up = dyadic(np.random.default_rng(nd), (1, 1) + (2,) * nd)
    layer = MaxPool(pool_size=2, ndim=nd)
    layer.forward(x)
    dx = layer.backward(up)
    expected = np.zeros_like(x)
    expected[(0, 0) + (slice(0, None, 2),) * nd] = up[0, 0]
    np.testing.assert_array_equal(dx, expected)
    if nd < 3 and HAVE_TF:  # TF agrees in 1-D/2-D
        np.testing.assert_array_equal(tf_pool(x, "max", (2,) * nd, (2,) * nd, "valid", up, np.float64)[1], expected)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_max_pool_3d_ties_match_pytorch(padding):
    """3-D ties against PyTorch's max_pool3d (first maximum in d, h, w order).

    "same" padding is applied by hand with -inf (PyTorch pads symmetrically only).
    """
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    pool, stride, spatial = (2, 3, 2), (1, 2, 2), (5, 6, 3)
    x = relu_integers(rng, (2, 3) + spatial)
    pairs = ((0, 0),) * 3 if padding == "valid" else tf_same_pairs(spatial, pool, stride, (1, 1, 1))
    xt = torch.tensor(np.pad(x, ((0, 0), (0, 0)) + pairs, constant_values=-np.inf), requires_grad=True)
    yt = torch.nn.functional.max_pool3d(xt, pool, stride)
    up = dyadic(rng, tuple(yt.shape))
    yt.backward(torch.tensor(up))
    crop = (slice(None), slice(None)) + tuple(slice(lo, lo + S) for (lo, _), S in zip(pairs, spatial))
    layer = MaxPool3D(pool_size=pool, stride=stride, padding=padding)
    y, dx = run_ours(layer, x, up)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy()[crop])


@pytest.mark.usefixtures("needs_tf")
def test_tensorflow_pool_reference_layout_on_a_hand_example():
    """Pin the helper's layout handling with a case worked by hand."""
    x = np.array([[[1.0, 5.0, 2.0, 2.0, 0.0], [0.0, -1.0, 3.0, 3.0, 7.0]]])   # (1, 2, 5): two channels
    up = np.array([[[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]]])
    y, dx = tf_pool(x, "max", (2,), (2,), "same", up, np.float64)
    np.testing.assert_array_equal(y, [[[5.0, 2.0, 0.0], [0.0, 3.0, 7.0]]])
    np.testing.assert_array_equal(dx, [[[0.0, 1.0, 2.0, 0.0, 4.0], [8.0, 0.0, 16.0, 0.0, 32.0]]])
    ours = MaxPool1D(2, padding="same")
    np.testing.assert_array_equal(ours.forward(x), y)
    np.testing.assert_array_equal(ours.backward(up), dx)


@pytest.mark.parametrize("cls", [MaxPool, AvgPool])
@pytest.mark.parametrize("padding", [2, ((0, 3),), ((2, 0),)])
def test_padding_that_leaves_a_window_without_input_is_refused(cls, padding):
    """A window lying entirely in the padding would output -inf (max) or 0/0 (avg): refused."""
    with pytest.raises(ValueError, match="padpool.*padding must be smaller than pool_size"):
        layer = cls(pool_size=2, padding=padding, ndim=1, name="padpool")
        layer.forward(np.arange(4.0).reshape(1, 1, 4))


#: The geometry in which TensorFlow's max_pool3d was seen to answer wrongly (a fresh install took the
#: newest TensorFlow and Hypothesis drew it): a window smaller than its stride, "same" padding.
TF_POOL3D_SUSPECT = [((4, 3, 3), (1, 1, 1), (3, 1, 1)), ((5, 2, 2), (1, 1, 1), (3, 1, 1)),
                     ((5, 4, 4), (2, 1, 1), (3, 2, 2)), ((6, 3, 5), (1, 2, 1), (2, 3, 3))]


@pytest.mark.usefixtures("needs_tf")
@pytest.mark.parametrize("spatial, pool, stride", TF_POOL3D_SUSPECT)
def test_tf_max_pool3d_pool_smaller_than_stride(spatial, pool, stride):
    """The evidence for the exclusion above: TF's answer beside ours and a direct loop.

    Ours must equal the loop exactly (selection and addition only).  TensorFlow's
    answer is shown in the failure message; where it differs from the loop it must
    be the kind of wrong answer that was reported (a wrong element or a lost
    gradient), which is why the Hypothesis comparison uses the loop for these
    geometries.  Where this TensorFlow build answers right, nothing is excluded
    that it gets right: the loop it is replaced by agrees with it.
    """
    import tensorflow as tf
    rng = np.random.default_rng(20261206)
    shape = (2, 3) + spatial
    x = distinct(rng, shape)
    pairs = tf_same_pairs(spatial, pool, stride, (1, 1, 1))
    out = tuple(out_size(S, k, s, 1, lo, hi) for S, k, s, (lo, hi) in zip(spatial, pool, stride, pairs))
    up = dyadic(rng, (2, 3) + out)
    ours_y, ours_dx = run_ours(MaxPool(pool_size=pool, stride=stride, padding="same", ndim=3), x, up)
    loop_y, loop_dx = pool_loop(x, "max", pool, stride, pairs, up)
    np.testing.assert_array_equal(ours_y, loop_y)
    np.testing.assert_array_equal(ours_dx, loop_dx)
    tf_y, tf_dx = tf_pool(x, "max", pool, stride, "same", up, np.float32)
    same_y, same_dx = np.array_equal(tf_y, loop_y), np.array_equal(tf_dx, loop_dx)
    if not (same_y and same_dx):
        wrong_element = not same_y
        lost_gradient = float(np.abs(tf_dx).sum()) < float(np.abs(loop_dx).sum())
        assert wrong_element or lost_gradient, (
            f"TensorFlow {tf.__version__} differs from the loop in a new way: forward equal {same_y}, "
            f"gradient equal {same_dx}\nTF y {tf_y.ravel()[:8]}\nloop y {loop_y.ravel()[:8]}")
