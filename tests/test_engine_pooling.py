"""The engine's max pooling (engine/pooling.py, ``MaxPoolUnit``) against the ``MaxPool`` layer's own code.

The reference is the layer's ``forward``/``backward`` (layers/pooling.py: a patch view and
``argmax``), which the TensorFlow and loop-reference tests hold (tests/test_pool_tf.py).  Max
pooling only selects values and adds gradients, so the unit must give the layer's numbers *bit
for bit*: the same maxima, and each window's gradient routed to the same entry.  That matters
for ties: inputs drawn "after a ReLU" (``max(integer, 0)``) are mostly zeros and few distinct
positive values, so windows hold many equal maxima, and the *first* maximum in row-major order
must get the gradient in both (checked against the loop reference as well).  Overlapping windows
(stride < pool size) take the unit's slice-add backward, disjoint ones its one scatter.
"""
import numpy as np
import pytest

from engine_helpers import ThroughEngine
from loop_reference import pool_loop
from nn_from_scratch import MaxPool
from nn_from_scratch.engine.pooling import MaxPoolUnit

# (ndim, MaxPool keywords, input shape)
GEOMETRIES = [
    (1, dict(pool_size=2), (3, 2, 9)),                                       # odd length: last entry dropped
    (1, dict(pool_size=3, stride=1), (2, 3, 10)),                            # overlapping
    (1, dict(pool_size=4, stride=3, padding="same"), (2, 2, 11)),
    (1, dict(pool_size=2, stride=3), (2, 2, 13)),                            # gaps between windows
    (2, dict(pool_size=2), (3, 2, 8, 6)),                                    # LeNet's 2x2
    (2, dict(pool_size=3, stride=2), (2, 2, 9, 7)),                          # overlapping
    (2, dict(pool_size=(2, 3), padding="same"), (2, 2, 7, 8)),               # -inf padded windows
    (2, dict(pool_size=3, stride=1, padding=1), (2, 3, 6, 5)),               # overlapping, padded
    (2, dict(pool_size=(3, 2), stride=(1, 2)), (2, 2, 7, 6)),                # overlapping along one axis
    (2, dict(pool_size=1), (2, 2, 3, 4)),                                    # the identity
    (3, dict(pool_size=2), (2, 2, 4, 6, 4)),
    (3, dict(pool_size=(2, 3, 2), stride=1), (2, 2, 4, 5, 3)),               # overlapping
    (3, dict(pool_size=3, stride=2, padding="same"), (1, 3, 5, 6, 7)),
]
IDS = [f"{nd}d-{'-'.join(f'{k}{v}' for k, v in kw.items())}-{'x'.join(map(str, s[2:]))}"
       for nd, kw, s in GEOMETRIES]
DTYPES = [np.float64, np.float32]


def _inputs(shape, dtype, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "relu-ties":       # mostly zeros, few distinct positive values: tied maxima everywhere
        x = np.maximum(rng.integers(-3, 3, shape), 0)
    elif kind == "negative-ties":  # all <= 0: ties at the top among negatives and zeros
        x = -rng.integers(0, 2, shape)
    else:
        x = rng.standard_normal(shape)
    return x.astype(dtype), rng.standard_normal(shape[:2]).astype(dtype)


def _upstream(y, g):
    """A different upstream value for every window (so a gradient sent to the wrong entry shows)."""
    return (g.reshape(g.shape + (1,) * (y.ndim - 2))
            * np.arange(1, y[0, 0].size + 1, dtype=y.dtype).reshape(y.shape[2:])).astype(y.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["relu-ties", "negative-ties", "normal"])
@pytest.mark.parametrize("nd,kw,shape", GEOMETRIES, ids=IDS)
def test_the_unit_gives_the_layers_numbers_bit_for_bit(nd, kw, shape, kind, dtype):
    x, g = _inputs(shape, dtype, kind, seed=len(shape) * 7 + shape[-1])
    x0 = x.copy()
    pool = MaxPool(ndim=nd, **kw)
    y0 = pool.forward(x)
    up = _upstream(y0, g)
    up0 = up.copy()
    dx0 = pool.backward(up)

    engine = ThroughEngine(MaxPool(ndim=nd, **kw))
    y = engine.forward(x)
    assert [type(u) for u in engine.units()] == [MaxPoolUnit]          # the unit ran, not the layer
    dx = engine.backward(up)
    assert y.dtype == y0.dtype == dtype and dx.dtype == dx0.dtype == dtype
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dx, dx0)
    np.testing.assert_array_equal(x, x0)                               # inputs left alone
    np.testing.assert_array_equal(up, up0)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, up)
    # the first layer of a network: no dL/dx
    assert engine.backward(up, need_input_grad=False) is None
    # and again (the unit's index tables and buffers reused): the same numbers
    np.testing.assert_array_equal(engine.forward(x), y0)
    np.testing.assert_array_equal(engine.backward(up), dx0)
    if kind == "relu-ties":       # the ties are there: windows whose maximum is shared
        assert (x == 0).mean() > 0.3 and (x > 0).sum() > 3 * len(np.unique(x[x > 0]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("nd,kw,shape", GEOMETRIES, ids=IDS)
def test_ties_go_to_the_first_maximum_in_row_major_order_in_both(nd, kw, shape, dtype):
    """Both against the loop reference (which takes the first maximum of each window, row-major),
    on ReLU'd integer inputs (ties at zero and between positive values); dyadic upstream values
    keep the overlapping windows' sums exact in the loop's order too."""
    x, _ = _inputs(shape, dtype, "relu-ties", seed=3)
    g = (np.random.default_rng(4).integers(1, 9, shape[:2]) / 8).astype(dtype)   # every sum exact, any order
    layer = MaxPool(ndim=nd, **kw)
    pairs = layer._pads(shape[2:])
    y0 = layer.forward(x)
    up = _upstream(y0, g)
    y_ref, dx_ref = pool_loop(x, "max", layer.pool_size, layer.stride, pairs, up)
    dx0 = layer.backward(up)
    engine = ThroughEngine(MaxPool(ndim=nd, **kw))
    y = engine.forward(x)
    dx = engine.backward(up)
    for got_y, got_dx in ((y0, dx0), (y, dx)):
        np.testing.assert_array_equal(got_y, y_ref.astype(dtype))
        np.testing.assert_array_equal(got_dx, dx_ref.astype(dtype))


def test_an_all_tied_window_sends_its_whole_gradient_to_its_first_entry():
    x = np.zeros((1, 1, 4, 4))
    up = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    want = np.zeros_like(x)
    want[0, 0, ::2, ::2] = up[0, 0]
    for run in (MaxPool(pool_size=2), ThroughEngine(MaxPool(pool_size=2))):
        run.forward(x)
        np.testing.assert_array_equal(run.backward(up), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_other_batch_sizes_after_one_another(dtype):
    """One unit, input shapes changing from call to call (its kept index tables per shape)."""
    engine = ThroughEngine(MaxPool(pool_size=2))
    for n, hw in [(3, (8, 6)), (1, (8, 6)), (5, (4, 10)), (3, (8, 6))]:
        x, g = _inputs((n, 2) + hw, dtype, "relu-ties", seed=n)
        pool = MaxPool(pool_size=2)
        y0 = pool.forward(x)
        up = _upstream(y0, g)
        np.testing.assert_array_equal(engine.forward(x), y0)
        np.testing.assert_array_equal(engine.backward(up), pool.backward(up))


def test_the_layer_the_unit_ran_has_no_cache_of_its_own():
    """After the unit's forward, the layer's own ``backward`` says no forward ran (and names it)."""
    from nn_from_scratch.layers.base import NotReadyError
    pool = MaxPool(pool_size=2, name="pool7")
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    pool.forward(x)                         # an older forward of the layer's own
    engine = ThroughEngine(pool)
    y = engine.forward(x)
    with pytest.raises(NotReadyError, match="pool7"):
        pool.backward(np.ones_like(y))


# A window holding NaN: the output is NaN either way, and dL/dx goes to its first NaN (the layer's
# argmax takes NaN as the maximum; the unit's strict ``>`` never sees past it, so it looks again).
def test_a_window_holding_nan_routes_its_gradient_as_the_layer_does():
    x = np.array([[[1.0, np.nan, 3.0, 0.0]]])
    pool = MaxPool(ndim=1, pool_size=4)
    y0 = pool.forward(x)
    dx0 = pool.backward(np.ones_like(y0))
    engine = ThroughEngine(MaxPool(ndim=1, pool_size=4))
    y = engine.forward(x)
    np.testing.assert_array_equal(y, y0)                      # both NaN
    np.testing.assert_array_equal(engine.backward(np.ones_like(y)), dx0)
