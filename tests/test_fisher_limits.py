"""fisher_test's work and memory are bounded: long inputs in short blocks, absurd requests refused."""
import tracemalloc

import numpy as np
import pytest

from nn_from_scratch.analysis import fisher
from nn_from_scratch.analysis.fisher import fisher_test


def test_absurd_number_of_permutations_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"n_permutations=1000000000000 .*at most .*fewer permutations"):
        fisher_test(np.arange(30.0), np.arange(30.0) + 1, n_permutations=10 ** 12)
    with pytest.raises(ValueError, match=r"n_permutations=1000000000000"):
        fisher_test(np.arange(30.0), np.arange(30.0) + 1, paired=True, n_permutations=10 ** 12)


def test_long_paired_input_runs_in_bounded_memory():
    """10^6 paired values: the old 2,000-row block asked for ~16 GB; now one block is <= BLOCK_BYTES."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1_000_000)
    b = a + 0.01 * rng.standard_normal(1_000_000)
    tracemalloc.start()
    try:
        res = fisher_test(a, b, paired=True, n_permutations=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * fisher.BLOCK_BYTES, f"peak {peak / 2**20:.0f} MiB"
    assert 1 / 21 <= res.p_value <= 1


def test_short_inputs_keep_their_numbers_block_for_block():
    """Normal sizes keep the 2,000-row blocks, so their p-values are those of earlier versions:
    checked against a direct loop drawing the same random numbers in the same order."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(25), rng.standard_normal(25) + 0.3
    got = fisher_test(a, b, n_permutations=4500, seed=7)
    draw = np.random.default_rng(7)
    x = np.concatenate([a, b])
    T = a.mean() - b.mean()
    hits = 0
    for start in range(0, 4500, 2000):
        k = min(2000, 4500 - start)
        idx = draw.random((k, 50)).argsort(axis=1)[:, :25]
        s = x[idx].sum(axis=1)
        Ts = s / 25 - (x.sum() - s) / 25
        hits += int((np.abs(Ts) >= abs(T) - 1e-9 * max(1.0, np.abs(x).max())).sum())
    assert got.p_value == (1 + hits) / 4501


def test_exact_or_random_is_decided_without_a_huge_binomial():
    """comb(200000, 100000) alone took a second; the decision uses log C(N, m) first, and agrees
    with the exact count at the limit's edges."""
    import math
    import time
    for N, m in [(20, 10), (19, 9), (18, 9), (17, 8), (100, 2), (448, 2), (449, 2), (50, 1)]:
        assert fisher._n_splits_at_most(N, m, fisher.EXACT_LIMIT) == (math.comb(N, m) <= fisher.EXACT_LIMIT)
    a = np.arange(100_000.0)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="fewer permutations"):
        fisher_test(a, a + 1, n_permutations=10 ** 12)
    assert time.perf_counter() - t0 < 0.5


def test_unpaired_work_bound_counts_the_sort():
    """The unpaired test sorts each draw (about 6 times the paired cost per value): its bound is
    MAX_WORK / UNPAIRED_COST values, the paired one MAX_WORK; both refuse one past the bound."""
    n = 50
    limit_unpaired = fisher.MAX_WORK // fisher.UNPAIRED_COST // (2 * n)
    a, b = np.arange(float(n)), np.arange(float(n)) + 0.5
    with pytest.raises(ValueError, match="for the unpaired test, which sorts each draw"):
        fisher_test(a, b, n_permutations=limit_unpaired + 1)
    with pytest.raises(ValueError, match="fewer permutations"):
        fisher_test(a, b, paired=True, n_permutations=fisher.MAX_WORK // n + 1)
