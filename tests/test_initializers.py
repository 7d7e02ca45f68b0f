"""Initializers have the statistics of Keras's same-named initializers.

Large draws (n ~ 1e5 values) of ours and of Keras's initializers are compared
with each other and with the theoretical values.  Tolerances come from the
sample size (Z = 6 standard errors, so a correct initializer fails with
probability < 1e-8 per check, while e.g. a fan_in/fan_out mix-up (a factor 2
in variance here) or a missing truncation correction (12 % in std) is far
outside):

* sample mean: standard error sigma / sqrt(n);
* sample std: relative standard error sqrt((kurtosis - 1) / (4 n)), with the
  kurtosis of U(-a, a) (1.8) or of a normal truncated at +-2 (< 3, bound used);
* max |w|: for U(-a, a) it lies in [a (1 - 20/n), a] (miss probability e^-20);
  for the truncated normal of scale s (|w| <= 2 s) in [s (2 - 177/n), 2 s]
  (the density of |z| at 2 is 0.113, e^-0.113*177 = e^-20).

Shapes: a Dense-like (in, out) matrix and a convolution kernel, which we store
as (out, in, kh, kw) and Keras as (kh, kw, in, out): both give fan_in = in*kh*kw
and fan_out = out*kh*kw, with in != out so that swapped fans would show.
"""
import math

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.layers import initializers as init

Z = 6.0
TRUNC = 0.87962566103423978  # std of a unit normal truncated at +-2

DENSE = (500, 240)              # (fan_in, fan_out) = (500, 240)
CONV_OURS = (96, 24, 5, 5)      # (out, in, kh, kw): fan_in = 600, fan_out = 2400
CONV_KERAS = (5, 5, 24, 96)     # Keras layout of the same kernel


def fans(kind):
    return (500, 240) if kind == "dense" else (24 * 25, 96 * 25)


def theory(name, fan_in, fan_out):
    """(distribution, std of the values, bound on |w|) for a named initializer."""
    if name == "glorot_uniform":
        a = math.sqrt(6 / (fan_in + fan_out))
        return "uniform", a / math.sqrt(3), a
    if name == "he_uniform":
        a = math.sqrt(6 / fan_in)
        return "uniform", a / math.sqrt(3), a
    if name == "glorot_normal":
        s = math.sqrt(2 / (fan_in + fan_out)) / TRUNC
        return "truncated", math.sqrt(2 / (fan_in + fan_out)), 2 * s
    if name == "he_normal":
        s = math.sqrt(2 / fan_in) / TRUNC
        return "truncated", math.sqrt(2 / fan_in), 2 * s
    raise KeyError(name)


def check_stats(w, name, fan_in, fan_out, label):
    kind, std, bound = theory(name, fan_in, fan_out)
    w = np.asarray(w, dtype=np.float64).ravel()
    n = w.size
    kurt = 1.8 if kind == "uniform" else 3.0
    assert abs(w.mean()) <= Z * std / math.sqrt(n), f"{label}: mean {w.mean()}"
    rel = Z * math.sqrt((kurt - 1) / (4 * n))
    assert w.std() == pytest.approx(std, rel=rel), f"{label}: std {w.std()} vs {std}"
    m = np.abs(w).max()
    if kind == "uniform":
        lo = bound * (1 - 20 / n)
    else:
        lo = bound / 2 * (2 - 177 / n)
    # float32 rounding may put a value a hair above the bound
    assert lo <= m <= bound * (1 + 1e-6), f"{label}: max |w| {m} outside [{lo}, {bound}]"


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    import keras as k
    return k


NAMES = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal"]
KERAS_CLASS = {"glorot_uniform": "GlorotUniform", "glorot_normal": "GlorotNormal",
               "he_uniform": "HeUniform", "he_normal": "HeNormal"}


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("name", NAMES)
def test_ours_match_theory(name, kind):
    shape = DENSE if kind == "dense" else CONV_OURS
    w = init.get(name)(shape, np.random.default_rng(1))
    assert w.shape == shape
    check_stats(w, name, *fans(kind), f"ours {name} {kind}")


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("name", NAMES)
def test_keras_draws_match_the_same_theory_and_ours(keras, name, kind):
    kshape = DENSE if kind == "dense" else CONV_KERAS
    ours_shape = DENSE if kind == "dense" else CONV_OURS
    theirs = np.asarray(getattr(keras.initializers, KERAS_CLASS[name])(seed=3)(shape=kshape), dtype=np.float64)
    ours = init.get(name)(ours_shape, np.random.default_rng(4))
    # the theory above is Keras's own: its draws satisfy it for the same fans
    check_stats(theirs, name, *fans(kind), f"keras {name} {kind}")
    # and the two samples agree with each other (difference of two estimates: sqrt(2) standard errors)
    n = ours.size
    kurt = 1.8 if "uniform" in name else 3.0
    assert abs(ours.mean() - theirs.mean()) <= Z * math.sqrt(2) * ours.std() / math.sqrt(n)
    assert ours.std() == pytest.approx(theirs.std(), rel=Z * math.sqrt(2) * math.sqrt((kurt - 1) / (4 * n)))
    assert np.abs(ours).max() == pytest.approx(np.abs(theirs).max(), rel=200 / n)


def test_swapped_fans_would_be_detected():
    # he_uniform with fan_out in place of fan_in: the std check must reject it
    w = init.he_uniform(CONV_OURS, np.random.default_rng(0), fans=(96 * 25, 24 * 25))
    with pytest.raises(AssertionError):
        check_stats(w, "he_uniform", *fans("conv"), "swapped")


def test_missing_truncation_correction_would_be_detected():
    rng = np.random.default_rng(0)
    s = math.sqrt(2 / 500)  # no division by 0.8796
    z = rng.standard_normal(DENSE)
    while (np.abs(z) > 2).any():
        z[np.abs(z) > 2] = rng.standard_normal(int((np.abs(z) > 2).sum()))
    with pytest.raises(AssertionError):
        check_stats(z * s, "he_normal", 500, 240, "uncorrected")


def test_zeros(keras):
    assert not np.any(init.zeros(CONV_OURS))
    assert not np.any(np.asarray(keras.initializers.Zeros()(shape=CONV_KERAS)))
    assert not np.any(nf.Linear(5, 3).W[0])  # the bias row starts at zero
    assert not np.any(nf.Convolution((None, 2, 5, 5), kernel_size=3, output_layers=4).b)


def test_compute_fans_by_hand():
    assert init.compute_fans((500, 240)) == (500, 240)
    assert init.compute_fans((96, 24, 5, 5)) == (24 * 25, 96 * 25)
    assert init.compute_fans((8, 3, 7)) == (3 * 7, 8 * 7)            # 1-d kernel (out, in, k)
    assert init.compute_fans((4, 2, 3, 3, 3)) == (2 * 27, 4 * 27)    # 3-d kernel


def test_keras_fans_for_its_layout(keras):
    from keras.src.initializers.random_initializers import compute_fans as keras_fans
    assert tuple(keras_fans(CONV_KERAS)) == init.compute_fans(CONV_OURS)
    assert tuple(keras_fans(DENSE)) == init.compute_fans(DENSE)


def test_layers_use_the_right_fans():
    nf.set_seed(0)
    conv = nf.Convolution((None, 24, 9, 9), kernel_size=5, output_layers=96, kernel_initializer="he_normal",
                          dtype=np.float64)
    check_stats(conv.W, "he_normal", 24 * 25, 96 * 25, "Convolution he_normal")
    lin = nf.Linear(500, 240, dtype=np.float64)  # glorot_uniform by default, like Keras's Dense
    check_stats(lin.W[1:], "glorot_uniform", 500, 240, "Linear glorot_uniform")
    assert lin.W.shape == (501, 240) and conv.W.shape == (96, 24, 5, 5)


@pytest.mark.parametrize("r", [0.05, 1.0])
def test_w_init_range_is_uniform(r):
    layer = nf.Linear(400, 300, W_init_range=r, seed=2, dtype=np.float64)
    w = layer.W[1:].ravel()
    n = w.size
    assert np.abs(w).max() <= r and np.abs(w).max() >= r * (1 - 20 / n)
    assert abs(w.mean()) <= Z * r / math.sqrt(3 * n)
    assert w.std() == pytest.approx(r / math.sqrt(3), rel=Z * math.sqrt(0.8 / (4 * n)))
    # U(-r, r) is flat: each tenth of the range holds a tenth of the values (binomial, 6 sigma)
    counts, _ = np.histogram(w, bins=10, range=(-r, r))
    assert np.all(np.abs(counts - n / 10) <= Z * math.sqrt(n * 0.1 * 0.9))
    conv = nf.Convolution((None, 8, 6, 6), kernel_size=3, output_layers=16, W_init_range=r, seed=2)
    assert np.abs(conv.W).max() <= r


def test_initializer_errors():
    with pytest.raises(ValueError, match=r"unknown initializer 'lecun'.*glorot_uniform"):
        init.get("lecun")
    with pytest.raises(ValueError, match=r"limit must be > 0, received -1"):
        init.uniform(-1)
    with pytest.raises(ValueError, match="unknown initializer"):
        nf.Linear(3, 2, kernel_initializer="nope")


def test_custom_callable_initializer():
    layer = nf.Linear(3, 2, kernel_initializer=lambda shape, rng: np.full(shape, 0.5))
    np.testing.assert_array_equal(layer.W[1:], np.full((3, 2), 0.5, dtype=np.float32))
