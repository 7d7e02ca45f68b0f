"""A small seeded version of benchmarks/permutation_validity.py (the full one: R = 200 per cell,
figures in benchmarks/RESULTS.md).  n = 100, p = 4, B = 19, the benchmark's recipe.

Bounds are binomial, set before looking at the results: under a level-0.05 test the number of
rejections in R replicates is Bin(R, 0.05); each upper bound below is exceeded with probability
< 0.002 by a correct test.  A broken null (re-permuting per minibatch, a different recipe for the
null networks, statistics on permuted inputs) rejects nearly always and fails them; a broken
statistic or gradient loses the power and fails the lower bounds.
"""
import os
import sys

import numpy as np
import pytest
from scipy.stats import binom

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import permutation_validity as pv  # noqa: E402

N = 100
FIT = {"epochs": 60, "batch_size": N}


def rejections(settings, R, name):
    reps = [pv.one_replicate(name, r, base_seed=7, n=N, fit=FIT, gam=False, settings=settings) for r in range(R)]
    p = np.array([rep["net"] for rep in reps], dtype=float)
    return (np.nan_to_num(p, nan=2.0) <= 0.05 + 1e-12).sum(axis=0), reps


def upper(R, tail=0.002):
    """The smallest k with P(Bin(R, 0.05) > k) < tail."""
    return int(binom.ppf(1 - tail, R, 0.05))


def test_association_type_one_error_under_the_complete_null():
    R = 40
    rej, _ = rejections(("association", "linear", 0.0, 0.0), R, "ci_null")
    assert rej[0] <= upper(R), rej
    assert rej.sum() <= upper(4 * R, 0.0005), rej      # all four features (dependent; loose)


def test_association_power_and_ols_blind_to_a_quadratic():
    R = 12
    rej, _ = rejections(("association", "linear", 1.0, 0.0), R, "ci_linear")
    assert rej[0] >= R - 1, rej                          # y = x1 + noise: power ~1
    rej, reps = rejections(("association", "quadratic", 1.0, 0.0), R, "ci_quadratic")
    assert rej[0] >= R - 3, rej                          # the network finds x1^2 ...
    ols = np.array([rep["ols"][0] for rep in reps])
    assert (ols <= 0.05).sum() <= upper(R, 0.01)        # ... the linear model has power ~alpha for it


def test_nonlinearity_test_calibrated_for_a_linear_effect_and_powerful_for_a_quadratic():
    R = 30
    rej, _ = rejections(("nonlinearity", "linear", 1.0, 0.0), R, "ci_nl_linear")
    assert rej[0] <= upper(R), rej
    assert np.isnan(np.array(_[0]["net"][1:], dtype=float)).all()      # only x1 tested
    R = 12
    rej, _ = rejections(("nonlinearity", "quadratic+linear", 1.0, 0.0), R, "ci_nl_quadratic")
    assert rej[0] >= R // 2, rej
