"""Fisher permutation tests for a difference of means (unpaired, and paired by sign flips).

``fisher_test(a, b)`` tests whether two sets of values (e.g. the 45 pairwise class
separations at two layers) have the same mean.  The statistic is ``mean(a) - mean(b)``.

* unpaired: under the null the pooled values are exchangeable; every split of them into
  groups of ``len(a)`` and ``len(b)`` is equally likely;
* ``paired=True``: ``a[i]`` and ``b[i]`` belong together (the same class pair at two
  layers or two training stages); under the null each difference ``a[i] - b[i]`` is
  symmetric about 0, so every choice of signs is equally likely.  Much more powerful
  when the pairs differ a lot among themselves.

When the number of rearrangements is at most ``EXACT_LIMIT`` they are all enumerated
and ``p = #{T* as extreme as T} / #rearrangements`` (the observed one included);
otherwise ``n_permutations`` random ones are drawn and ``p = (1 + #{T* >= T}) / (B + 1)``,
never 0.  "As extreme" compares with a relative tolerance of 1e-9 so that rearrangements
equal to the observed one in exact arithmetic count, whatever the rounding.

Bounded work and memory: random rearrangements are drawn in blocks of at most
``_BLOCK`` rows and at most ``BLOCK_BYTES`` of memory (long inputs get shorter blocks, so
a paired test on a million values does not ask for gigabytes), and a request of more
than ``MAX_WORK`` drawn values in all (``n_permutations`` times the number of values; each
unpaired value counts ``UNPAIRED_COST`` times, as it is sorted) is refused with an error that
says how long it would be and what to do instead.  Whether to enumerate is decided from
``log C(m + n, m)`` first, so a long input does not compute a huge binomial coefficient.
"""
import itertools
import math
from collections import namedtuple

import numpy as np

__all__ = ["fisher_test", "FisherResult", "EXACT_LIMIT", "MAX_WORK", "BLOCK_BYTES", "UNPAIRED_COST"]

#: enumerate every rearrangement when there are at most this many
EXACT_LIMIT = 100_000
#: the most values (``n_permutations`` x number of values) one test may draw: ~10 minutes of work
MAX_WORK = 20_000_000_000
#: an unpaired rearrangement sorts its draws: one of its values costs about this many paired ones
#: (measured: 4.5e6 against 2.5e7 values/s; benchmarks/RESULTS.md), so it may draw MAX_WORK / 6
UNPAIRED_COST = 6
#: the most memory one block of random rearrangements may take
BLOCK_BYTES = 64 * 2 ** 20
_ALTERNATIVES = ("two-sided", "greater", "less")
_BLOCK = 2000

FisherResult = namedtuple("FisherResult", ["statistic", "p_value"])
FisherResult.__doc__ = "``(statistic, p_value)`` of ``fisher_test``; statistic = mean(a) - mean(b)."


def _values(x, name):
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.dtype.kind not in "fiub":
        got = type(x).__name__ if raw is None else f"{type(x).__name__} of dtype {raw.dtype}"
        raise TypeError(f"fisher_test: {name} must be real numbers (an array or a list of one shape), received "
                        f"{got}" + (" (the imaginary part would be dropped)" if raw is not None and
                                    raw.dtype.kind == "c" else ""))
    a = raw.astype(np.float64)
    a = a.ravel()
    if a.size == 0:
        raise ValueError(f"fisher_test: {name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"fisher_test: {name} contains {int((~np.isfinite(a)).sum())} NaN/Inf value(s)")
    return a


def _count(Ts, T, alternative, tol):
    if alternative == "two-sided":
        return int((np.abs(Ts) >= abs(T) - tol).sum())
    if alternative == "greater":
        return int((Ts >= T - tol).sum())
    return int((Ts <= T + tol).sum())


def _block_rows(width):
    """Rows per block: ``_BLOCK``, fewer when a row of ``width`` float64 values is long."""
    return max(1, min(_BLOCK, BLOCK_BYTES // (8 * 3 * max(1, width))))


def _n_splits_at_most(N, m, limit):
    """``math.comb(N, m) <= limit`` without the exact big integer when it is far above the limit
    (``comb(200000, 100000)`` alone takes a second): ``log C(N, m)`` from ``lgamma`` first."""
    log_c = math.lgamma(N + 1) - math.lgamma(m + 1) - math.lgamma(N - m + 1)
    if log_c > math.log(limit) + 1.0:
        return False
    return math.comb(N, m) <= limit


def _check_work(n_permutations, width, cost=1):
    work = n_permutations * width
    if work * cost > MAX_WORK:
        raise ValueError(
            f"fisher_test: n_permutations={n_permutations} rearrangements of {width} values would draw "
            f"{work:.3g} random values (at most {MAX_WORK / cost:.3g}, about 10 minutes, are allowed"
            f"{' for the unpaired test, which sorts each draw' if cost > 1 else ''}); use fewer "
            f"permutations (the p-value's resolution is 1/(n_permutations + 1): 10,000 resolves 1e-4)")


def fisher_test(a, b, paired=False, n_permutations=10000, alternative="two-sided", seed=0):
    """``(statistic, p_value)`` of the Fisher permutation test for ``mean(a) - mean(b)``.

    ``alternative``: ``"two-sided"`` (|T*| >= |T|), ``"greater"`` (T* >= T: a's mean is
    larger) or ``"less"``.  ``paired=True``: the sign-flip test on ``a - b`` (same length).
    Exact when the rearrangements (``C(m+n, m)``, or ``2^n`` paired) are at most
    ``EXACT_LIMIT``, otherwise ``n_permutations`` random ones (seeded by ``seed``).
    """
    a, b = _values(a, "a"), _values(b, "b")
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"fisher_test: alternative must be one of {_ALTERNATIVES}, received {alternative!r}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 1:
        raise ValueError(f"fisher_test: n_permutations must be an int >= 1, received {n_permutations!r}")
    if not isinstance(paired, (bool, np.bool_)):
        raise TypeError(f"fisher_test: paired must be True or False, received {type(paired).__name__} {paired!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"fisher_test: seed must be an int >= 0, received {seed!r}")
    rng = np.random.default_rng(seed)
    scale = max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))
    tol = 1e-9 * scale
    if paired:
        if len(a) != len(b):
            raise ValueError(f"fisher_test: paired=True needs a and b of the same length, received "
                             f"{len(a)} and {len(b)}")
        d = a - b
        T = float(d.mean())
        n = len(d)
        if n < 64 and 2 ** n <= EXACT_LIMIT:
            signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1)
            return FisherResult(T, _count(signs @ d / n, T, alternative, tol) / 2 ** n)
        _check_work(n_permutations, n)
        hits, rows = 0, _block_rows(n)
        for start in range(0, n_permutations, rows):
            k = min(rows, n_permutations - start)
            signs = rng.integers(0, 2, size=(k, n)) * 2.0 - 1.0
            hits += _count(signs @ d / n, T, alternative, tol)
        return FisherResult(T, (1 + hits) / (n_permutations + 1))
    m, n = len(a), len(b)
    x = np.concatenate([a, b])
    total = float(x.sum())
    T = float(a.mean() - b.mean())
    N = m + n

    def stats(sum_a):
        return sum_a / m - (total - sum_a) / n

    if _n_splits_at_most(N, m, EXACT_LIMIT):
        combos = np.array(list(itertools.combinations(range(N), m)), dtype=np.intp).reshape(-1, m)
        Ts = stats(x[combos].sum(axis=1))
        return FisherResult(T, _count(Ts, T, alternative, tol) / len(combos))
    _check_work(n_permutations, N, UNPAIRED_COST)
    hits, rows = 0, _block_rows(N)
    for start in range(0, n_permutations, rows):
        k = min(rows, n_permutations - start)
        idx = rng.random((k, N)).argsort(axis=1)[:, :m]
        hits += _count(stats(x[idx].sum(axis=1)), T, alternative, tol)
    return FisherResult(T, (1 + hits) / (n_permutations + 1))
