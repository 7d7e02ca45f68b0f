"""Patch gathering (im2col/col2im), the gathering-filter identity, adjoint identities, errors.

References no one here wrote: the loop versions ``im2col_reference``/
``col2im_reference`` (plain loops over every index, beside the fast path),
``tests/loop_reference.py`` and TensorFlow's convolution.  Data are integer-valued
floats where the fast and loop paths only differ in summation order, so their
results must be *equal*, not merely close.
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conv_strategies import geometries, rng_for, seeds
from loop_reference import conv_loop, out_size
from nn_from_scratch import AvgPool, Convolution, MaxPool, ShapeError
from nn_from_scratch.layers.geometry import (col2im, col2im_reference, conv_output_shape, gathering_filter,
                                             im2col, im2col_reference, resolve_padding)

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _x(rng, batch, channels, spatial, integer=False, dtype=np.float64):
    shape = (batch, channels) + tuple(spatial)
    if integer:
        return rng.integers(-9, 10, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _geom_args(g):
    return g["kernel_spec"], g["stride_spec"], g["padding"], g["dilation_spec"]


# -- geometry helpers ----------------------------------------------------------------
@settings(max_examples=150, **SETTINGS)
@given(g=geometries())
def test_resolve_padding_and_output_shape_match_definition(g):
    """Every padding spec resolves to its (lo, hi) pairs; O follows the size formula."""
    pairs = resolve_padding(g["padding"], g["spatial"], g["kernel"], g["stride"], g["dilation"])
    assert tuple(tuple(p) for p in pairs) == g["pairs"]
    out = conv_output_shape(g["spatial"], g["kernel"], g["stride"], pairs, g["dilation"])
    assert tuple(out) == g["out"]
    if isinstance(g["padding"], str) and g["padding"].lower() == "same":
        # TF's "SAME": O = ceil(S / s) on every axis
        assert tuple(out) == tuple(-(-S // s) for S, s in zip(g["spatial"], g["stride"]))


# -- fast path == loop reference -----------------------------------------------------
@settings(max_examples=200, **SETTINGS)
@given(g=geometries(), batch=st.integers(1, 3), channels=st.integers(1, 3), seed=seeds())
def test_im2col_and_col2im_equal_loop_references(g, batch, channels, seed):
    rng = rng_for(seed)
    x = _x(rng, batch, channels, g["spatial"], integer=True)
    x_before = x.copy()
    args = _geom_args(g)
    cols = im2col(x, *args)
    K, P = int(np.prod(g["kernel"])), int(np.prod(g["out"]))
    assert cols.shape == (batch, channels * K, P)
    np.testing.assert_array_equal(cols, im2col_reference(x, *args))
    np.testing.assert_array_equal(x, x_before)

    r = rng.integers(-9, 10, size=cols.shape).astype(np.float64)
    r_before = r.copy()
    back = col2im(r, x.shape, *args)
    assert back.shape == x.shape
    np.testing.assert_array_equal(back, col2im_reference(r, x.shape, *args))
    np.testing.assert_array_equal(r, r_before)


@settings(max_examples=150, **SETTINGS)
@given(g=geometries(), batch=st.integers(1, 3), channels=st.integers(1, 3), seed=seeds())
def test_the_engines_gatherers_equal_the_layers_im2col_and_col2im(g, batch, channels, seed):
    """``engine/patches.py`` (``FlatShift`` for stride 1, ``StridedPatches`` otherwise) gathers the
    patch matrix of ``layers/geometry.im2col`` and adds it back as ``col2im`` does (exact, integers)."""
    from nn_from_scratch.engine.patches import make_gatherer
    from nn_from_scratch.layers.geometry import as_tuple, resolve_padding
    rng = rng_for(seed)
    x = _x(rng, batch, channels, g["spatial"], integer=True)
    kernel, stride, padding, dilation = _geom_args(g)
    nd = len(g["spatial"])
    k, s, d = as_tuple(kernel, nd, "k"), as_tuple(stride, nd, "s"), as_tuple(dilation, nd, "d")
    gat = make_gatherer(x.shape, k, s, resolve_padding(padding, x.shape[2:], k, s, d), d)
    want = im2col(x, kernel, stride, padding, dilation)                      # (N, C*K, P)
    cols = gat.patches(gat.flatten(x))                                        # (N, C*K, P on the gatherer's grid)
    got = gat.crop(cols).reshape(want.shape)
    np.testing.assert_array_equal(got, want)
    r = rng.integers(-9, 10, size=want.shape).astype(np.float64)
    dsrc = gat.zeros_source(r)
    gat.scatter_add(dsrc, gat.expand(r.reshape(want.shape[:2] + tuple(g["out"]))))
    np.testing.assert_array_equal(gat.unflatten(dsrc), col2im(r, x.shape, kernel, stride, padding, dilation))


@settings(max_examples=40, **SETTINGS)
@given(g=geometries(), seed=seeds())
def test_im2col_col2im_keep_float32(g, seed):
    rng = rng_for(seed)
    x = _x(rng, 2, 2, g["spatial"], integer=True, dtype=np.float32)
    args = _geom_args(g)
    cols = im2col(x, *args)
    assert cols.dtype == np.float32
    np.testing.assert_array_equal(cols, im2col_reference(x, *args))
    back = col2im(cols, x.shape, *args)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, col2im_reference(cols, x.shape, *args))


def test_im2col_known_1d_example():
    """A hand-worked case: x = [0..5], k=2, stride 2, dilation 2, pad (1, 0)."""
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 6)
    # x_pad = [0, 0, 1, 2, 3, 4, 5]; positions o*2 + i*2 for o in 0..2, i in 0..1
    expected = np.array([[[0, 1, 3], [1, 3, 5]]], dtype=np.float64)
    np.testing.assert_array_equal(im2col(x, 2, stride=2, padding=((1, 0),), dilation=2), expected)
    np.testing.assert_array_equal(im2col_reference(x, 2, stride=2, padding=((1, 0),), dilation=2), expected)


# -- adjoint identities --------------------------------------------------------------
def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


@settings(max_examples=120, **SETTINGS)
@given(g=geometries(), batch=st.integers(1, 3), channels=st.integers(1, 3), seed=seeds())
def test_im2col_col2im_adjoint(g, batch, channels, seed):
    """<im2col(x), r> == <x, col2im(r)> in float64."""
    rng = rng_for(seed)
    x = _x(rng, batch, channels, g["spatial"])
    args = _geom_args(g)
    cols = im2col(x, *args)
    r = rng.standard_normal(cols.shape)
    lhs = float(np.vdot(cols, r))
    rhs = float(np.vdot(x, col2im(r, x.shape, *args)))
    assert _rel(lhs, rhs) <= 1e-10, (lhs, rhs)


@settings(max_examples=80, **SETTINGS)
@given(g=geometries(), batch=st.integers(1, 3), cin=st.integers(1, 3), cout=st.integers(1, 3), seed=seeds())
def test_convolution_adjoint_identities(g, batch, cin, cout, seed):
    """Bias off the layer is linear in x and in W: <conv(x), r> == <x, dx(r)> == <W, dW(r)>."""
    rng = rng_for(seed)
    layer = Convolution(in_channels=cin, out_channels=cout, kernel_size=g["kernel_spec"], stride=g["stride_spec"],
                        padding=g["padding"], dilation=g["dilation_spec"], ndim=g["nd"], use_bias=False,
                        dtype=np.float64)
    layer.set_params(W=rng.standard_normal(layer.W.shape))
    x = _x(rng, batch, cin, g["spatial"])
    y = layer.forward(x)
    assert y.shape == (batch, cout) + g["out"]
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    lhs = float(np.vdot(y, r))
    assert _rel(lhs, float(np.vdot(x, dx))) <= 1e-10
    assert _rel(lhs, float(np.vdot(layer.W, layer.W_grad))) <= 1e-10


# -- the gathering filter ------------------------------------------------------------
@pytest.mark.parametrize("channels,kernel", [(1, (3,)), (3, (4,)), (2, (2, 3)), (3, (1, 2)), (2, (2, 1, 3))])
def test_gathering_filter_layout(channels, kernel):
    """G = eye(C*K).reshape(C*K, C, *k): channel j = (c, i) has one 1, at input channel c, offset i."""
    G = gathering_filter(channels, kernel)
    K = int(np.prod(kernel))
    assert G.shape == (channels * K, channels) + kernel
    assert G.dtype == np.float64
    for j in range(channels * K):
        c, flat_i = divmod(j, K)
        expected = np.zeros((channels,) + kernel)
        expected[(c,) + np.unravel_index(flat_i, kernel)] = 1.0
        np.testing.assert_array_equal(G[j], expected)
    assert gathering_filter(channels, kernel, dtype=np.float32).dtype == np.float32


def _patches_from_channels_last_conv(y, batch, ck):
    """(N, C*K, *O) conv output -> (N, C*K, P) patch-matrix layout."""
    return y.reshape(batch, ck, -1)


@settings(max_examples=60, **SETTINGS)
@given(g=geometries(stride_with_dilation=False), batch=st.integers(1, 2), channels=st.integers(1, 3), seed=seeds())
def test_gathering_filter_convolution_by_tensorflow_is_the_patch_matrix(g, batch, channels, seed):
    """tf.nn.convolution(x, G) with NO groups == im2col(x) == im2col_reference(x).

    G goes to TF's (*k, C, C*K) kernel layout and x to channels-last (see
    tests/tf_reference.py); TF's output (N, *O, C*K) back to (N, C*K, *O) and
    flattened over O is the patch matrix (N, C*K, P).
    """
    pytest.importorskip("tensorflow")
    from tf_reference import tf_conv

    rng = rng_for(seed)
    x = _x(rng, batch, channels, g["spatial"])
    G = gathering_filter(channels, g["kernel"])
    y = tf_conv(x, G, None, g["stride"], g["tf_padding"], g["dilation"])
    ck = G.shape[0]
    got = _patches_from_channels_last_conv(y, batch, ck)
    args = _geom_args(g)
    # every TF output is one x value times 1.0 plus exact zeros: equality is exact
    np.testing.assert_array_equal(got, im2col(x, *args))
    np.testing.assert_array_equal(got, im2col_reference(x, *args))


@settings(max_examples=60, **SETTINGS)
@given(g=geometries(), batch=st.integers(1, 2), channels=st.integers(1, 3), seed=seeds())
def test_gathering_filter_in_our_convolution_is_the_patch_matrix(g, batch, channels, seed):
    """Our Convolution loaded with G (bias off, C*K filters) outputs the patch matrix."""
    rng = rng_for(seed)
    x = _x(rng, batch, channels, g["spatial"])
    G = gathering_filter(channels, g["kernel"])
    ck = G.shape[0]
    layer = Convolution(in_channels=channels, out_channels=ck, kernel_size=g["kernel_spec"], stride=g["stride_spec"],
                        padding=g["padding"], dilation=g["dilation_spec"], ndim=g["nd"], use_bias=False,
                        dtype=np.float64)
    layer.set_params(W=G)
    got = layer.forward(x).reshape(batch, ck, -1)
    np.testing.assert_array_equal(got, im2col_reference(x, *_geom_args(g)))


@pytest.mark.parametrize("nd,spatial,kernel,stride,padding", [
    (1, (9,), (3,), (1,), "valid"),
    (1, (8,), (2,), (3,), "same"),
    (2, (6, 5), (2, 3), (1, 1), "valid"),
    (2, (7, 6), (3, 2), (2, 1), "same"),
    (3, (4, 5, 3), (2, 2, 2), (1, 1, 1), "valid"),
])
@pytest.mark.parametrize("channels", [2, 3])
def test_grouped_gathering_convolution_is_not_the_patch_matrix(nd, spatial, kernel, stride, padding, channels):
    """The seed notebook's bug: ``groups=C`` with the gathering filter is NOT im2col.

    A grouped convolution with ``groups=C`` has kernels with ``C/groups = 1``
    input channel, and group ``g`` (output channels ``g*K .. g*K+K-1``) reads
    input channel ``g`` only.  Handed the seed's ``(C*K, C, *k)`` filter it can
    use just one input-channel slice ``G[:, c0:c0+1]``, which is non-zero only
    for the output channels of channel ``c0``: the result is the patch matrix
    for group ``c0`` (if ``g == c0``) and zeros elsewhere, for every ``c0``.
    (Re-slicing the filter per group, ``G[j, j // K]``, would repair it; we
    check that too, which also shows TF's grouped convolution itself is right.)

    TF runs grouped convolutions on the CPU through its Conv2D op (1-D and
    2-D); the CPU Conv3D op has no grouped kernel in TF 2.21 and raises
    ``InvalidArgumentError`` -- the 3-D case is skipped then.
    """
    tf = pytest.importorskip("tensorflow")
    from tf_reference import kernel_to_tf, tf_grouped_conv

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, channels) + spatial)
    G = gathering_filter(channels, kernel)
    K = int(np.prod(kernel))
    patches = im2col_reference(x, kernel, stride, padding, 1)
    mismatch = []
    for c0 in range(channels):
        try:
            y = tf_grouped_conv(x, kernel_to_tf(G[:, c0:c0 + 1]), stride, padding, (1,) * nd)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
            assert nd == 3, exc
            pytest.skip(f"TensorFlow's CPU Conv3D has no grouped convolution: {str(exc).splitlines()[0]}")
        got = y.reshape(patches.shape)
        mismatch.append(not np.allclose(got, patches))
        block = slice(c0 * K, (c0 + 1) * K)
        np.testing.assert_array_equal(got[:, block], patches[:, block])
        rest = np.ones(channels * K, bool)
        rest[block] = False
        np.testing.assert_array_equal(got[:, rest], 0.0)
    assert all(mismatch)
    # the per-group re-sliced filter is the patch matrix again
    depthwise = np.stack([G[j, j // K] for j in range(channels * K)])[:, None]
    y = tf_grouped_conv(x, kernel_to_tf(depthwise), stride, padding, (1,) * nd)
    np.testing.assert_array_equal(y.reshape(patches.shape), patches)


def test_grouped_gathering_convolution_is_fine_for_one_channel():
    """With C = 1 grouping changes nothing, which is why a 1-channel check cannot catch the bug."""
    pytest.importorskip("tensorflow")
    from tf_reference import kernel_to_tf, tf_grouped_conv

    x = np.random.default_rng(5).standard_normal((2, 1, 7, 6))
    G = gathering_filter(1, (3, 2))
    y = tf_grouped_conv(x, kernel_to_tf(G), (2, 1), "same", (1, 1))
    np.testing.assert_array_equal(y.reshape(2, 6, -1), im2col_reference(x, (3, 2), (2, 1), "same", 1))


# -- error messages ------------------------------------------------------------------
def _conv(**kw):
    base = dict(input_shape=(None, 2, 5, 4), kernel_size=3, output_layers=3, name="conv_under_test")
    base.update(kw)
    return Convolution(**base)


def test_kernel_larger_than_padded_input_names_layer_and_shapes():
    with pytest.raises(ShapeError) as info:
        _conv(kernel_size=(6, 3))
    msg = str(info.value)
    assert "conv_under_test" in msg and "(5, 4)" in msg and "(6, 3)" in msg
    # dilation counts: k=3, d=3 spans 7 > 5
    with pytest.raises(ShapeError, match=r"conv_under_test.*\(5, 4\).*\(7, 7\)"):
        _conv(dilation=3)
    # padding makes room: 5 + 1 + 1 >= 7 on both axes (4 + 2 + 1 = 7)
    assert _conv(kernel_size=7, padding=((1, 1), (2, 1))).output_shape == (3, 1, 1)
    with pytest.raises(ShapeError, match="conv_under_test"):
        _conv(kernel_size=7, padding=((1, 1), (1, 1)))


def test_kernel_larger_than_input_at_forward_time():
    layer = Convolution(in_channels=2, out_channels=3, kernel_size=(3, 2), ndim=2, name="late_conv")
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros((1, 2, 2, 5), np.float32))
    msg = str(info.value)
    assert "late_conv" in msg and "(2, 5)" in msg and "(3, 2)" in msg
    layer.forward(np.zeros((1, 2, 3, 2), np.float32))  # the smallest that fits


@pytest.mark.parametrize("padding", ["full", -1, 1.5, None, (1, 2, 3), ((1, 2, 3), (0, 0)), ((-1, 0), 0), (1,),
                                     (1, 1.5)])
def test_bad_padding_spec_names_layer(padding):
    with pytest.raises(ValueError) as info:
        _conv(padding=padding)
    msg = str(info.value)
    assert "conv_under_test" in msg, msg
    assert "padding" in msg and repr(padding) in msg, msg


@pytest.mark.parametrize("kw,name", [(dict(kernel_size=0), "kernel_size"), (dict(kernel_size=(3,)), "kernel_size"),
                                     (dict(stride=(1, 0)), "stride"), (dict(dilation=(1, 1, 1)), "dilation")])
def test_bad_kernel_stride_dilation_names_layer(kw, name):
    with pytest.raises(ValueError, match=f"conv_under_test.*{name}.*{re.escape(repr(next(iter(kw.values()))))}"):
        _conv(**kw)


@pytest.mark.parametrize("cls", [MaxPool, AvgPool])
def test_bad_pool_padding_and_small_input_name_layer(cls):
    with pytest.raises(ValueError, match="pool_under_test.*padding.*'full'"):
        cls((None, 1, 4, 4), pool_size=2, padding="full", name="pool_under_test")
    layer = cls(pool_size=(3, 2), name="pool_under_test2")
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros((1, 1, 2, 5)))
    msg = str(info.value)
    assert "pool_under_test2" in msg and "(2, 5)" in msg and "(3, 2)" in msg


def test_wrong_channel_count_names_layer_and_shapes():
    layer = _conv()
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros((4, 3, 5, 4), np.float32))
    msg = str(info.value)
    assert "conv_under_test" in msg and "2 input channel" in msg and "(4, 3, 5, 4)" in msg
    free = Convolution(in_channels=3, out_channels=2, kernel_size=2, ndim=1, name="free_conv")
    with pytest.raises(ShapeError, match=r"free_conv.*3 input channel.*\(1, 1, 9\)"):
        free.forward(np.zeros((1, 1, 9)))
    with pytest.raises(ShapeError, match=r"free_conv.*3-d input.*\(1, 3, 9, 9\)"):
        free.forward(np.zeros((1, 3, 9, 9)))


def test_patch_functions_raise_for_empty_output():
    with pytest.raises(ShapeError, match=r"\(3, 4\).*\(4, 2\)"):
        im2col(np.zeros((1, 1, 3, 4)), (4, 2))
    with pytest.raises(ValueError, match="padding"):
        resolve_padding("full", (5,), (3,), (1,), (1,))
    assert out_size(5, 3, 2, 1, 0, 0) == 2  # sanity of the test helper itself
    y = conv_loop(np.ones((1, 1, 5)), np.ones((1, 1, 3)), None, (2,), ((0, 0),), (1,))
    np.testing.assert_array_equal(y, [[[3.0, 3.0]]])
