"""TensorFlow as an outside reference for convolution and pooling (test helper).

Everything here runs TensorFlow ops only (``tf.nn.convolution``/``tf.nn.conv2d``
/``tf.nn.max_pool``/``tf.nn.avg_pool`` under a ``tf.GradientTape``); nothing from ``nn_from_scratch``
is used, so the results are a reference no one here wrote.  Callers import
TensorFlow with ``pytest.importorskip("tensorflow")`` first.

Layouts
-------
nn_from_scratch is channels-first, TensorFlow channels-last:

=============  ==============================  ==============================
array          nn_from_scratch                 TensorFlow
=============  ==============================  ==============================
input/output   ``(N, C, *S)``  (NCL/NCHW/NCDHW)  ``(N, *S, C)`` (NLC/NHWC/NDHWC)
kernel         ``(F, C, *k)``                  ``(*k, C, F)``
bias           ``(F,)``                        ``(F,)``
=============  ==============================  ==============================

so ``x_tf = moveaxis(x, 1, -1)``, ``y = moveaxis(y_tf, -1, 1)`` and
``W_tf = W.transpose(2, .., nd+1, 1, 0)`` (spatial axes first, then C, then F).
Both libraries compute a cross-correlation (no kernel flip), so no other
conversion is needed.

Padding
-------
``tf.nn.convolution`` takes only ``"VALID"``/``"SAME"``; ``tf.nn.conv2d`` also
takes explicit ``[[0, 0], [lo, hi], [lo, hi], [0, 0]]`` paddings (2-D only, used
when there is no dilation, see below).  For the other explicit paddings the input is zero-padded with ``np.pad`` before a
``"VALID"`` convolution and ``dL/dx`` is the gradient w.r.t. the padded input
cropped back to the original extent (zero padding is linear, its adjoint is the
crop).

TensorFlow quirks worked around (TF 2.21, CPU)
-----------------------------------------------
* the eager gradient of ``Conv3D`` fails (``op.get_attr("data_format")`` is
  ``None`` in ``_Conv3DGrad``) unless ``data_format`` is passed explicitly, so
  it always is;
* ``tf.nn.conv2d`` with explicit paddings and ``dilations > 1`` computes the
  forward pass, but its input gradient (``Conv2DBackpropInput``) fails on the
  CPU ("do not yet support dilation rates larger than 1"), so explicit 2-D
  padding with dilation goes through ``np.pad`` as in 1-D/3-D (``tf.nn.convolution``
  with "VALID" handles dilation through space-to-batch);
* ``strides > 1`` together with ``dilations > 1`` is rejected by TF;
  ``conv_strided_via_subsampling`` gets that case as a stride-1 dilated
  convolution whose output is subsampled ``[::s]`` (exact for explicit padding);
* 3-D pooling has no float64 kernels on the CPU (``MaxPool3D``/``AvgPool3D``
  are registered for half/bfloat16/float only), so 3-D pooling runs in float32;
* the CPU ``MaxPool3DGrad`` sends the *full* upstream gradient to *every* tied
  maximum of a window (an all-zero 2x2x2 window passes 8x its gradient), while
  the 1-D/2-D ``MaxPoolGrad`` routes it to the first maximum in row-major order.
  The 3-D max-pool tests therefore use tie-free inputs against TF and check ties
  against a loop reference (and PyTorch when installed).
"""
import numpy as np

_DATA_FORMATS = {1: "NWC", 2: "NHWC", 3: "NDHWC"}


def _tf():
    import tensorflow as tf  # noqa: PLC0415  (optional dependency)
    return tf


# -- layouts -----------------------------------------------------------------------
def to_channels_last(x):
    """``(N, C, *S) -> (N, *S, C)``."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), 1, -1))


def to_channels_first(x):
    """``(N, *S, C) -> (N, C, *S)``."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1))


def kernel_to_tf(W):
    """``(F, C, *k) -> (*k, C, F)``."""
    W = np.asarray(W)
    nd = W.ndim - 2
    return np.ascontiguousarray(W.transpose(tuple(range(2, 2 + nd)) + (1, 0)))


def kernel_from_tf(K):
    """``(*k, C, F) -> (F, C, *k)``."""
    K = np.asarray(K)
    nd = K.ndim - 2
    return np.ascontiguousarray(K.transpose((nd + 1, nd) + tuple(range(nd))))


def explicit_pairs(padding, nd):
    """An int / per-axis int / per-axis ``(lo, hi)`` spec as ``((lo, hi),) * nd``.

    Written here from the spec's definition (not with the library's
    ``resolve_padding``), for use as TF's explicit padding.
    """
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * nd
    assert len(padding) == nd
    return tuple((int(p), int(p)) if isinstance(p, (int, np.integer)) else (int(p[0]), int(p[1]))
                 for p in padding)


def tf_same_pairs(spatial, kernel, stride, dilation):
    """TF's documented "SAME" padding: ``O = ceil(S/s)``, smaller half first."""
    out = []
    for S, k, s, d in zip(spatial, kernel, stride, dilation):
        o = -(-S // s)
        total = max((o - 1) * s + (k - 1) * d + 1 - S, 0)
        out.append((total // 2, total - total // 2))
    return tuple(out)


# -- convolution ---------------------------------------------------------------------
def _conv_tf(tf, x, K, stride, padding, dilation):
    """``x`` NDHWC-style tensor, ``K`` (*k, C, F); padding "VALID"/"SAME" or pairs (2-D only)."""
    nd = len(stride)
    if isinstance(padding, str):
        return tf.nn.convolution(x, K, strides=list(stride), padding=padding, dilations=list(dilation),
                                 data_format=_DATA_FORMATS[nd])
    assert nd == 2
    pads = [[0, 0]] + [list(p) for p in padding] + [[0, 0]]
    return tf.nn.conv2d(x, K, strides=[1, *stride, 1], padding=pads, dilations=[1, *dilation, 1],
                        data_format="NHWC")


def tf_conv(x, W, b, stride, padding, dilation, upstream=None):
    """Convolution by TensorFlow, in nn_from_scratch's layouts.

    ``x: (N, C, *S)``, ``W: (F, C, *k)``, ``b: (F,)`` or None; ``padding`` is
    ``"valid"``, ``"same"`` or per-axis ``(lo, hi)`` pairs.  Returns ``y`` and,
    when ``upstream`` (shape of ``y``) is given, ``(y, dx, dW, db)`` with
    ``db`` None without bias.  Computes in the dtype of ``x``.
    """
    tf = _tf()
    x = np.asarray(x)
    nd = x.ndim - 2
    stride, dilation = tuple(stride), tuple(dilation)
    crop = None
    if isinstance(padding, str):
        tf_pad = padding.upper()
    else:
        pairs = explicit_pairs(padding, nd)
        if nd == 2 and all(d == 1 for d in dilation):
            tf_pad = pairs
        else:
            x = np.pad(x, ((0, 0), (0, 0)) + pairs)
            crop = tuple(slice(lo, x.shape[2 + i] - hi) for i, (lo, hi) in enumerate(pairs))
            tf_pad = "VALID"
    return _differentiate(tf, x, W, b, upstream, crop,
                          lambda xt, Kt: _conv_tf(tf, xt, Kt, stride, tf_pad, dilation))


def _differentiate(tf, x, W, b, upstream, crop, conv):
    """Run ``conv(x_tf, W_tf)`` (+ bias) under a tape; ``(y, dx, dW, db)`` in our layouts.

    Without ``upstream`` only ``y``.  ``crop`` (slices of the spatial axes) cuts the
    explicit padding out of ``dx``.
    """
    xt = tf.constant(to_channels_last(x))
    Kt = tf.constant(kernel_to_tf(W).astype(x.dtype))
    bt = None if b is None else tf.constant(np.asarray(b, dtype=x.dtype))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        tape.watch(Kt)
        if bt is not None:
            tape.watch(bt)
        y = conv(xt, Kt)
        if bt is not None:
            y = tf.nn.bias_add(y, bt)
    y_ours = to_channels_first(y.numpy())
    if upstream is None:
        return y_ours
    sources = [xt, Kt] + ([bt] if bt is not None else [])
    grads = tape.gradient(y, sources, output_gradients=tf.constant(to_channels_last(upstream).astype(x.dtype)))
    dx = to_channels_first(grads[0].numpy())
    if crop is not None:
        dx = dx[(slice(None), slice(None)) + crop]
    return y_ours, dx, kernel_from_tf(grads[1].numpy()), grads[2].numpy() if bt is not None else None


def conv_strided_via_subsampling(x, W, b, stride, pairs, dilation, upstream):
    """Stride *and* dilation (which TF refuses together) from TF ops.

    With explicit padding ``pairs``, output ``o`` of the strided convolution is
    output ``o*s`` of the stride-1 convolution of the same padded input, so::

        y = conv(pad(x), W, stride=1, dilation=d)[..., ::s]

    and TF differentiates through the subsampling (a strided slice) itself.
    Returns ``(y, dx, dW, db)`` in nn_from_scratch's layouts.
    """
    tf = _tf()
    x = np.asarray(x)
    nd = x.ndim - 2
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(pairs))
    crop = tuple(slice(lo, xpad.shape[2 + i] - hi) for i, (lo, hi) in enumerate(pairs))

    def strided(xt, Kt):
        full = _conv_tf(tf, xt, Kt, (1,) * nd, "VALID", tuple(dilation))
        return full[(slice(None),) + tuple(slice(None, None, s) for s in stride) + (slice(None),)]

    return _differentiate(tf, xpad, W, b, upstream, crop, strided)


def tf_grouped_conv(x, K_tf, stride, padding, dilation):
    """Grouped convolution as TF infers it: ``K_tf: (*k, C/groups, F)``.

    TF's ``Conv2D`` op (used for 1-D and 2-D) runs grouped convolutions on the
    CPU when the kernel has fewer input channels than ``x``; ``Conv3D`` does not
    (it raises ``InvalidArgumentError``: "Number of channels in filter (1) must
    match last dimension of input").  Returns ``(N, F, *O)``.
    """
    tf = _tf()
    x = np.asarray(x)
    y = _conv_tf(tf, tf.constant(to_channels_last(x)), tf.constant(np.asarray(K_tf, dtype=x.dtype)),
                 tuple(stride), padding.upper(), tuple(dilation))
    return to_channels_first(y.numpy())


# -- pooling -------------------------------------------------------------------------
def tf_pool(x, kind, pool_size, stride, padding, upstream, dtype):
    """Max (``kind="max"``) or average pooling by ``tf.nn.max_pool``/``tf.nn.avg_pool``.

    (Not ``tf.nn.pool``: it refuses ``strides > window_shape``, citing a CPU/GPU
    inconsistency; the pooling ops themselves accept it and on the CPU are the
    reference we want.)

    ``x: (N, C, *S)`` (cast to ``dtype``), ``padding`` "valid"/"same".
    Returns ``(y, dx)`` in channels-first layout, as ``dtype`` arrays.
    """
    tf = _tf()
    nd = np.asarray(x).ndim - 2
    xt = tf.constant(to_channels_last(np.asarray(x, dtype=dtype)))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        op = tf.nn.max_pool if kind == "max" else tf.nn.avg_pool
        y = op(xt, ksize=list(pool_size), strides=list(stride), padding=padding.upper(),
               data_format=_DATA_FORMATS[nd])
    dx = tape.gradient(y, xt, output_gradients=tf.constant(to_channels_last(np.asarray(upstream, dtype=dtype))))
    return to_channels_first(y.numpy()), to_channels_first(dx.numpy())
