"""Float64 finite differences for Convolution and MaxPool/AvgPool, 1-3 spatial dims.

``nn_from_scratch.gradcheck.check_layer`` compares dL/dx, dL/dW and dL/db (for
a random upstream gradient) with centred differences of ``<f(x), r>`` on every
coordinate.  Convolution and average pooling are linear, so the centred
difference is exact up to rounding (~1e-10 relative or better): the bound is
1e-7.  Max pooling is piecewise linear; coordinates where a perturbation moves
a window's argmax are kinks and are skipped by ``check_layer``, the rest must
agree to 1e-5.

The configurations cover stride, dilation, every padding form and stride
*with* dilation (which TF cannot check, see test_conv_tf.py).
"""
import numpy as np
import pytest

from nn_from_scratch import AvgPool, Convolution, MaxPool
from nn_from_scratch.checks.gradcheck import check_layer
from nn_from_scratch.engine import conv as engine_conv

from engine_helpers import ThroughEngine

CONV_TOL = 1e-7


def _run(layer, path):
    """The layer itself ("layer": its own code) or the layer run by the engine ("engine", as in ``fit``)."""
    return layer if path == "layer" else ThroughEngine(layer)
MAXPOOL_TOL = 1e-5

CONV_CASES = [
    # (spatial, C, F, kernel, stride, padding, dilation, bias)
    ((11,), 2, 3, 3, 2, ((1, 2),), 1, True),
    ((9,), 3, 2, 2, 1, "same", 3, False),
    ((13,), 1, 2, 3, 3, 1, 2, True),            # stride with dilation
    ((7, 6), 2, 3, (3, 2), (2, 1), "same", 1, True),
    ((8, 7), 3, 2, (2, 3), (2, 3), ((0, 1), (2, 0)), (2, 1), True),   # stride with dilation, pairs
    ((7, 8), 2, 2, 3, 1, "valid", 2, False),
    ((6, 5), 1, 4, (1, 3), (3, 2), (2, 0), (1, 2), True),
    ((5, 4, 6), 2, 2, (2, 3, 2), (1, 2, 2), 1, (2, 1, 1), True),      # stride with dilation
    ((4, 5, 3), 2, 3, 2, 2, "same", 1, False),
    ((5, 5, 4), 1, 2, (3, 1, 2), 1, ((1, 0), 2, (0, 1)), (1, 1, 2), True),
]


def _ids(cases):
    return [f"{len(c[0])}d-k{c[3]}-s{c[4]}-p{c[5]}-d{c[6]}" for c in cases]


@pytest.mark.parametrize("spatial,C,F,kernel,stride,padding,dilation,bias", CONV_CASES, ids=_ids(CONV_CASES))
@pytest.mark.parametrize("path", ["layer", "engine"])
def test_convolution_gradients_by_finite_differences(path, spatial, C, F, kernel, stride, padding, dilation, bias):
    rng = np.random.default_rng(len(spatial) * 100 + C * 10 + F)
    layer = Convolution((None, C) + spatial, kernel_size=kernel, output_layers=F, stride=stride, padding=padding,
                        dilation=dilation, use_bias=bias, dtype=np.float64)
    layer.set_params(W=rng.standard_normal(layer.W.shape), **({"b": rng.standard_normal(F)} if bias else {}))
    x = rng.standard_normal((2, C) + spatial)
    result = check_layer(_run(layer, path), x, kink_tol=None, seed=1)
    assert result.passed(CONV_TOL), str(result)
    assert result.skipped == 0
    expected = {"x", "W"} | ({"b"} if bias else set())
    assert set(result.per_array) == expected
    assert result.checked == x.size + layer.W.size + (F if bias else 0)


STRIDE_1_CASES = [c for c in CONV_CASES if c[4] == 1] + [((6, 7), 3, 9, (3, 2), 1, ((2, 0), 1), (1, 2), True)]


@pytest.mark.parametrize("algorithm", ["rowshift", "samplelast"])
@pytest.mark.parametrize("spatial,C,F,kernel,stride,padding,dilation,bias", STRIDE_1_CASES, ids=_ids(STRIDE_1_CASES))
def test_stride_1_arrangements_by_finite_differences(algorithm, spatial, C, F, kernel, stride, padding, dilation,
                                                     bias):
    """The engine's stride-1 arrangements forced, in several chunks (a chunk per 1-2 samples)."""
    rng = np.random.default_rng(len(spatial) * 100 + C * 10 + F + 7)
    layer = Convolution((None, C) + spatial, kernel_size=kernel, output_layers=F, stride=stride, padding=padding,
                        dilation=dilation, use_bias=bias, dtype=np.float64)
    layer.set_params(W=rng.standard_normal(layer.W.shape), **({"b": rng.standard_normal(F)} if bias else {}))
    x = rng.standard_normal((3, C) + spatial)
    engine = ThroughEngine(layer)
    with engine_conv.settings(algorithm=algorithm, chunk_bytes=4000):
        result = check_layer(engine, x, kink_tol=None, seed=2)
    assert result.passed(CONV_TOL), str(result)
    assert type(engine.arrangement()).__name__ == {"rowshift": "RowShiftProduct",
                                                   "samplelast": "SampleLastProduct"}[algorithm]
    assert result.checked == x.size + layer.W.size + (F if bias else 0)


POOL_CASES = [
    # (spatial, pool, stride, padding)
    ((10,), 3, 2, "same"),
    ((9,), 2, None, "valid"),
    ((8,), 3, 1, ((2, 1),)),
    ((7, 6), (2, 3), (1, 2), "same"),
    ((8, 8), 2, None, "valid"),
    ((7, 5), 3, 2, (1, (0, 2))),
    ((5, 4, 6), (2, 2, 3), (1, 2, 2), "same"),
    ((4, 4, 4), 2, None, "valid"),
    ((5, 3, 4), (3, 2, 2), (2, 1, 3), ((1, 1), 0, (0, 1))),
]


def _pool_ids(cases):
    return [f"{len(c[0])}d-k{c[1]}-s{c[2]}-p{c[3]}" for c in cases]


@pytest.mark.parametrize("spatial,pool,stride,padding", POOL_CASES, ids=_pool_ids(POOL_CASES))
@pytest.mark.parametrize("path", ["layer", "engine"])
def test_max_pool_gradient_by_finite_differences(path, spatial, pool, stride, padding):
    rng = np.random.default_rng(sum(spatial))
    layer = MaxPool(pool_size=pool, stride=stride, padding=padding, ndim=len(spatial))
    x = rng.standard_normal((2, 3) + spatial)  # continuous values: no ties
    result = check_layer(_run(layer, path), x, seed=2)
    assert result.passed(MAXPOOL_TOL), str(result)
    # eps = 1e-5 moves an argmax only for near-ties, which continuous data almost never has
    assert result.skipped <= 0.02 * x.size, str(result)


@pytest.mark.parametrize("spatial,pool,stride,padding", POOL_CASES, ids=_pool_ids(POOL_CASES))
@pytest.mark.parametrize("path", ["layer", "engine"])
def test_max_pool_gradient_with_ties_skips_only_kinks(path, spatial, pool, stride, padding):
    """After a ReLU most entries are 0: windows whose maximum is a tied 0 are kinks, skipped;
    the rest must still agree.  (ReLU(z - 1) for z ~ N(0, 1): 84% zeros, so all-zero windows are common.)"""
    rng = np.random.default_rng(sum(spatial) + 1)
    layer = MaxPool(pool_size=pool, stride=stride, padding=padding, ndim=len(spatial))
    x = np.maximum(rng.standard_normal((2, 2) + spatial) - 1.0, 0.0)
    result = check_layer(_run(layer, path), x, seed=3)
    assert result.passed(MAXPOOL_TOL), str(result)
    assert result.skipped > 0 and result.checked > 0, str(result)


@pytest.mark.parametrize("spatial,pool,stride,padding", POOL_CASES, ids=_pool_ids(POOL_CASES))
def test_avg_pool_gradient_by_finite_differences(spatial, pool, stride, padding):
    rng = np.random.default_rng(sum(spatial) + 2)
    layer = AvgPool(pool_size=pool, stride=stride, padding=padding, ndim=len(spatial))
    x = rng.standard_normal((2, 3) + spatial)
    result = check_layer(layer, x, kink_tol=None, seed=4)
    assert result.passed(CONV_TOL), str(result)
    assert result.checked == x.size


@pytest.mark.parametrize("algorithm", ["patches", "rowshift", "samplelast"])
@pytest.mark.parametrize("dx_strategy", ["flipped", "col2im"])
@pytest.mark.parametrize("padding", [0, 2, ((1, 0), (0, 2))])
def test_kept_arrangement_and_buffers_leave_no_trace_of_earlier_batches(algorithm, dx_strategy, padding):
    """The engine keeps a layer's chosen arrangement and scratch buffers from call to call: batches
    of other sizes and contents in between must leave no trace.  Reference: the layer's own code
    (a fresh layer with the same weights for every batch)."""
    rng = np.random.default_rng(7)
    kw = dict(in_channels=3, out_channels=4, kernel_size=(3, 4), padding=padding, dtype=np.float64, seed=3)
    used = ThroughEngine(Convolution(**kw))
    with engine_conv.settings(algorithm=algorithm, dx_strategy=dx_strategy, chunk_bytes=3000):   # several chunks
        for n in (5, 5, 2, 5, 7, 7, 3):                     # repeated sizes: the same arrangement again
            x = rng.standard_normal((n, 3, 9, 8)) * 10
            fresh = Convolution(**kw)
            y, y_ref = used.forward(x), fresh.forward(x)
            g = rng.standard_normal(y.shape)
            dx, dx_ref = used.backward(g), fresh.backward(g)
            np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
            for k in ("W", "b"):
                np.testing.assert_allclose(used.grads[k], fresh.grads[k], rtol=1e-12, atol=1e-12)
    other = {"patches": "rowshift", "rowshift": "samplelast", "samplelast": "patches"}[algorithm]
    with engine_conv.settings(algorithm=other):                                 # a setting changes:
        used.forward(rng.standard_normal((4, 3, 9, 8)))                         # chosen again
    names = {"patches": "PatchProduct", "rowshift": "RowShiftProduct", "samplelast": "SampleLastProduct"}
    assert type(used.arrangement()).__name__ == names[other]


@pytest.mark.parametrize("geometry,expected", [
    (dict(in_channels=6, out_channels=16, kernel_size=5), "SampleLastProduct"),            # LeNet-5, 2nd
    (dict(in_channels=1, out_channels=6, kernel_size=5, padding=2), "PatchProduct"),        # LeNet-5, 1st
    (dict(in_channels=4, out_channels=2, kernel_size=7), "RowShiftProduct"),               # seed CNN, 2nd
    (dict(in_channels=6, out_channels=16, kernel_size=5, stride=2), "PatchProduct"),        # strided
])
def test_auto_arrangement_on_numpy(geometry, expected):
    """Which arrangement "auto" picks on NumPy (each is held to TF and finite differences
    elsewhere; this pins the choice the benchmarks were measured with)."""
    from nn_from_scratch.engine.conv import ConvContext, choose_algorithm
    layer = ConvContext(Convolution(**geometry))
    x = np.zeros((2, geometry["in_channels"], 14, 14), dtype=np.float32)
    assert type(choose_algorithm(layer, x)).__name__ == expected
    with engine_conv.settings(algorithm="samplelast"):   # forced: stride 1 only, else whole patches
        want = "PatchProduct" if geometry.get("stride", 1) != 1 else "SampleLastProduct"
        assert type(choose_algorithm(layer, x)).__name__ == want
