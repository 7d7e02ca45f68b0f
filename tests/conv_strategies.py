"""Hypothesis strategies for convolution / pooling geometries (test helper).

A geometry is a dict::

    nd        number of spatial axes (1-3)
    spatial   input spatial shape (axes drawn independently: non-square)
    kernel, stride, dilation   per-axis tuples
    padding   the spec handed to the library: "valid"/"same" (any case), an int,
              per-axis ints, per-axis (lo, hi) pairs, or a mix of the two
    pairs     the same padding as explicit per-axis (lo, hi) pairs, computed here
              from the spec's definition (TF's rule for "same"), not by the library
    tf_padding  "valid", "same" or the pairs: what ``tf_reference.tf_conv`` takes
    stride_spec, dilation_spec, kernel_spec   the values as passed (int or tuple)

Every geometry drawn has a non-empty output (the spatial size is drawn after
the kernel so that the dilated kernel fits the padded input).
"""
import numpy as np
from hypothesis import strategies as st

from loop_reference import out_size
from tf_reference import explicit_pairs, tf_same_pairs

MAX_SPATIAL = {1: 10, 2: 6, 3: 4}

PADDING_KINDS = ("valid", "same", "int", "tuple", "pairs", "mixed")


def _spec(draw, values):
    """An int when all axes agree (half the time), else the tuple."""
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return tuple(values)


@st.composite
def geometries(draw, nd=None, stride_with_dilation=True, padding_kinds=PADDING_KINDS, max_kernel=3,
               max_stride=3, max_dilation=3, max_pad=2, max_spatial=None, modes=None):
    """A random convolution geometry (see module docstring).

    ``stride_with_dilation=False`` never draws stride > 1 together with
    dilation > 1 on any axis (TensorFlow refuses that combination).  ``modes``
    restricts the draw to some of "plain", "stride", "dilation", "both"
    ("both": stride and dilation drawn in 2..max on every axis).
    """
    nd = draw(st.integers(1, 3)) if nd is None else nd
    axes = st.lists
    kernel = tuple(draw(axes(st.integers(1, max_kernel), min_size=nd, max_size=nd)))
    if modes is None:
        modes = ["plain", "stride", "dilation"] + (["both"] if stride_with_dilation else [])
    mode = draw(st.sampled_from(modes))
    low = 2 if mode == "both" else 1
    stride = (tuple(draw(axes(st.integers(low, max_stride), min_size=nd, max_size=nd)))
              if mode in ("stride", "both") else (1,) * nd)
    dilation = (tuple(draw(axes(st.integers(low, max_dilation), min_size=nd, max_size=nd)))
                if mode in ("dilation", "both") else (1,) * nd)
    kind = draw(st.sampled_from(padding_kinds))
    if kind == "valid":
        padding = draw(st.sampled_from(["valid", "VALID", "Valid"]))
    elif kind == "same":
        padding = draw(st.sampled_from(["same", "SAME"]))
    elif kind == "int":
        padding = draw(st.integers(0, max_pad))
    elif kind == "tuple":
        padding = tuple(draw(axes(st.integers(0, max_pad), min_size=nd, max_size=nd)))
    else:
        pair = st.tuples(st.integers(0, max_pad), st.integers(0, max_pad))
        entry = pair if kind == "pairs" else st.one_of(st.integers(0, max_pad), pair)
        padding = tuple(draw(axes(entry, min_size=nd, max_size=nd)))
    top = max_spatial or MAX_SPATIAL[nd]
    if kind == "same":
        spatial = tuple(draw(axes(st.integers(1, top), min_size=nd, max_size=nd)))
        pairs = tf_same_pairs(spatial, kernel, stride, dilation)
        tf_padding = "same"
    else:
        pairs = ((0, 0),) * nd if kind == "valid" else explicit_pairs(padding, nd)
        spatial = tuple(
            draw(st.integers(lo_s, lo_s + top - 1))
            for lo_s in (max(1, d * (k - 1) + 1 - lo - hi) for k, d, (lo, hi) in zip(kernel, dilation, pairs))
        )
        tf_padding = "valid" if kind == "valid" else pairs
    out = tuple(out_size(S, k, s, d, lo, hi)
                for S, k, s, d, (lo, hi) in zip(spatial, kernel, stride, dilation, pairs))
    assert min(out) >= 1, (spatial, kernel, stride, dilation, pairs)
    return dict(nd=nd, spatial=spatial, kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                pairs=pairs, tf_padding=tf_padding, out=out, kernel_spec=_spec(draw, kernel),
                stride_spec=_spec(draw, stride), dilation_spec=_spec(draw, dilation))


def seeds():
    """An integer seed for NumPy data inside a hypothesis example."""
    return st.integers(0, 2**32 - 1)


def rng_for(seed):
    return np.random.default_rng(seed)
