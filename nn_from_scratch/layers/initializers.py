"""Weight initializers with the statistics of Keras's same-named ones.

For a weight with fan-in ``fan_in`` and fan-out ``fan_out`` (a Linear layer:
in/out features; a convolution: channels times kernel volume)::

    glorot_uniform  U(-a, a),  a = sqrt(6 / (fan_in + fan_out))
    glorot_normal   truncated N(0, s^2) at +-2s,  s = sqrt(2 / (fan_in + fan_out)) / 0.8796...
    he_uniform      U(-a, a),  a = sqrt(6 / fan_in)
    he_normal       truncated N(0, s^2) at +-2s,  s = sqrt(2 / fan_in) / 0.8796...
    zeros           0
    uniform(r)      U(-r, r)   (the seed lab's ``W_init_range``)

0.87962566103423978 is the standard deviation of a unit normal truncated at
+-2, so the truncated draws have variance exactly ``2/fan``, as in Keras.

Values are drawn on the host with ``numpy.random.Generator`` (so a seed gives
the same weights on every backend) and moved to the default backend.
"""
import numpy as np

from .. import backend

__all__ = ["get", "set_seed", "default_rng", "glorot_uniform", "glorot_normal",
           "he_uniform", "he_normal", "zeros", "uniform", "compute_fans"]

_TRUNC_STD = 0.87962566103423978
_global = {"rng": np.random.default_rng()}


def set_seed(seed):
    """Seed the generator that layers use when they are given no ``seed``."""
    _global["rng"] = np.random.default_rng(seed)


def default_rng(seed=None):
    """A Generator for ``seed``, or the global one (see ``set_seed``) for None."""
    if seed is None:
        return _global["rng"]
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def compute_fans(shape):
    """(fan_in, fan_out) as Keras computes them for our layouts.

    * ``(in, out)``: a dense matrix.
    * ``(out, in, *kernel)``: a convolution kernel (our layout).
    """
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def _truncated_normal(rng, std, shape):
    """N(0, std^2) truncated at +-2 std, by redrawing the outliers."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def glorot_uniform(shape, rng, fans=None):
    fan_in, fan_out = fans or compute_fans(shape)
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, shape)


def glorot_normal(shape, rng, fans=None):
    fan_in, fan_out = fans or compute_fans(shape)
    return _truncated_normal(rng, np.sqrt(2.0 / (fan_in + fan_out)) / _TRUNC_STD, shape)


def he_uniform(shape, rng, fans=None):
    fan_in, _ = fans or compute_fans(shape)
    a = np.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, shape)


def he_normal(shape, rng, fans=None):
    fan_in, _ = fans or compute_fans(shape)
    return _truncated_normal(rng, np.sqrt(2.0 / fan_in) / _TRUNC_STD, shape)


def zeros(shape, rng=None, fans=None):
    return np.zeros(shape)


def uniform(limit):
    """U(-limit, limit): the seed lab's ``W_init_range``."""
    limit = float(limit)
    if not limit > 0:
        raise ValueError(f"uniform initializer: limit must be > 0, received {limit}")

    def init(shape, rng, fans=None):
        return rng.uniform(-limit, limit, shape)

    init.__name__ = f"uniform({limit})"
    return init


_BY_NAME = {
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "zeros": zeros,
}


def get(spec):
    """An initializer from a name, a ``("uniform", r)`` pair, or a callable."""
    if callable(spec):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "uniform":
        return uniform(spec[1])
    try:
        return _BY_NAME[spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown initializer {spec!r}; expected one of {sorted(_BY_NAME)}, "
            "('uniform', r) or a callable(shape, rng)"
        ) from None


def initialize(spec, shape, dtype, rng, fans=None):
    """Draw a parameter array on the host and place it on the default backend."""
    values = get(spec)(tuple(shape), rng, fans) if fans else get(spec)(tuple(shape), rng)
    return backend.to_device(np.asarray(values, dtype=dtype))
