"""A small seeded version of benchmarks/conditional_validity.py (the full one: figures and tables in
benchmarks/RESULTS.md).

Bounds are binomial, set before looking at the results: each is exceeded with probability < 0.001
by a correct test.  A broken null fails them: the marginal sampler (the group's rows permuted,
ignoring the other inputs) is run on the correlated design and shown to exceed the bound the
residual sampler stays under.
"""
import os
import sys

import numpy as np
from scipy.stats import binom

from nn_from_scratch.analysis import permutation as pt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import conditional_validity as cv  # noqa: E402


def test_complete_null_p_values_uniform_per_patch_blank_patch_included():
    """y independent of X: P(p <= k/(B+1)) inside the two-sided binomial band, for every k and patch."""
    R, B = 60, 4
    p = np.array([cv.t0_replicate(r, b=B, n=60, base_seed=11)["p"] for r in range(R)])      # (R, 4 patches)
    assert p.shape == (R, 4)
    for k in range(1, B + 1):
        lo, hi = binom.ppf(0.0005, R, k / (B + 1)), binom.ppf(0.9995, R, k / (B + 1))
        counts = (p <= k / (B + 1) + 1e-12).sum(axis=0)
        assert ((counts >= lo) & (counts <= hi)).all(), (k, counts, lo, hi)


def correlated_null(r, sampler, R_seed=21, n=100, rho=0.95, B=9):
    """x2 is a conditional null with corr(x1, x2) = rho; y = x1 + noise; only x2 is tested."""
    rng = np.random.default_rng([R_seed, r])
    cov = np.eye(4)
    cov[0, 1] = cov[1, 0] = rho
    X = rng.multivariate_normal(np.zeros(4), cov, size=n)
    y = X[:, 0] + rng.standard_normal(n)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    y = ((y - y.mean()) / y.std()).reshape(-1, 1).astype(np.float32)
    res = pt.permutation_test(cv.TabularMLP(4), X, y, {"epochs": 60, "batch_size": n}, n_permutations=B,
                              output="output", progress=False, seed=r, null="conditional", tested=[1], sampler=sampler)
    return res.p_values[1]


def test_correlated_null_calibrated_with_the_residual_sampler_and_the_check_catches_a_marginal_one():
    B = 9
    bound = lambda R: binom.ppf(0.999, R, 1 / (B + 1))     # noqa: E731 - rejections at alpha = 1/(B+1)
    R = 80
    p = np.array([correlated_null(r, "residual") for r in range(R)])
    assert (p <= 1 / (B + 1) + 1e-12).sum() <= bound(R), p
    assert p.mean() > 0.4                                        # not a degenerate all-ones answer either
    R = 40
    p = np.array([correlated_null(r, "marginal") for r in range(R)])
    assert (p <= 1 / (B + 1) + 1e-12).sum() > bound(R), p        # the broken null fails the same check


def test_simulation_command_line_refuses_a_bad_workers_count(tmp_path, capsys):
    import pytest  # noqa: PLC0415
    with pytest.raises(SystemExit):
        cv.main(["t1", "--workers", "0", "--replicates", "1", "--out", str(tmp_path)])
    assert "--workers: expected an integer >= 1, received 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                     # refused before any replicate was written
