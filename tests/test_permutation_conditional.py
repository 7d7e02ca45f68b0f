"""The conditional permutation test (null="conditional"), its groups, samplers, sequential p-values,
and the global test's numbers kept (docs/analysis/permutation.md).

References: numbers of the label-permutation test computed by the module as it was before the
conditional test was added (recorded once, below); a naive loop of the conditional test's
definition; normal equations and an explicit-hat-matrix GCV for the residual sampler; hand-computed
Besag-Clifford p-values and a Monte Carlo check of their validity.
"""
import numpy as np
import pytest

from nn_from_scratch.analysis import permutation as pt
from nn_from_scratch.analysis.permutation import samplers
from permutation_helpers import FIT, build_mlp, make_data

# ------------------------------------------------------------------ null="labels": numbers unchanged
# Computed with the module before the conditional test existed (one file, permutation.py):
#   X, y = make_data(n=60, beta=0.7, seed=4)
#   permutation_test(build_mlp, X, y, FIT, n_permutations=5, output="output", progress=False, seed=5)
#   permutation_test(..., n_permutations=3, statistic="nonlinearity", features=[0, 2], seed=2)
ASSOC_STAT = [0.47330461647804967, 0.018130119978948832, 0.05088733278957806]
ASSOC_NULL = [[0.011227542071150842, 0.021596256972179057, 0.028203840436324713],
              [0.09779858172234247, 0.05136991065938443, 0.021428132931515898],
              [0.08031919238691894, 0.004481710772886623, 0.0028530042367357527],
              [0.005139256235341806, 0.016250969334103894, 0.015391633250753515],
              [0.010929704066237445, 0.04960017661264777, 0.05818220707795493]]
ASSOC_P = [0.16666666666666666, 0.6666666666666666, 0.3333333333333333]
NONLIN_STAT = [0.0024903768400318252, np.nan, 0.04634851578391583]
NONLIN_NULL = [[0.06908584868244612, np.nan, 0.005647907161942463],
               [0.10221705031405094, np.nan, 0.018905943269601495],
               [0.01417594160213335, np.nan, 0.012393017590586497]]
NONLIN_P = [1.0, np.nan, 0.25]


def test_label_permutation_numbers_unchanged_and_scope_global():
    X, y = make_data(n=60, beta=0.7, seed=4)
    r = pt.permutation_test(build_mlp, X, y, FIT, n_permutations=5, output="output", progress=False, seed=5)
    np.testing.assert_array_equal(r.p_values, ASSOC_P)
    # float32 networks: the input-gradient kernels may change the last bits, never more
    np.testing.assert_allclose(r.statistic, ASSOC_STAT, rtol=1e-6)
    np.testing.assert_allclose(r.null_distribution, ASSOC_NULL, rtol=1e-6)
    assert r.scope == "global" and r.joint_null and r.groups is None
    s = r.summary()
    assert s["scope"] == "global" and "do not localise" in s["statement"] and "GLOBAL" in s["statement"]
    assert "scope" not in r.info["fingerprint"] and "null" not in r.info["fingerprint"]     # old checkpoints resume
    nl = pt.permutation_test(build_mlp, X, y, FIT, n_permutations=3, statistic="nonlinearity", features=[0, 2],
                             output="output", progress=False, seed=2)
    np.testing.assert_array_equal(nl.p_values, NONLIN_P)
    np.testing.assert_allclose(nl.statistic, NONLIN_STAT, rtol=1e-6)
    np.testing.assert_allclose(nl.null_distribution, NONLIN_NULL, rtol=1e-6)
    assert nl.scope == "nonlinearity"


# ------------------------------------------------------------------ groups
def test_patch_groups_against_a_loop():
    g = pt.patch_groups((1, 28, 28), 7)
    assert g.shape == (1, 28, 28) and g.max() == 15 and np.bincount(g.ravel()).tolist() == [49] * 16
    for i in range(28):
        for j in range(28):
            assert g[0, i, j] == (i // 7) * 4 + j // 7
    h = pt.patch_groups((10, 10), 4)               # ragged edge: 3 x 3 patches, the last ones 4 x 2, 2 x 2
    assert h.max() == 8 and np.bincount(h.ravel()).tolist() == [16, 16, 8, 16, 16, 8, 8, 8, 4]
    assert (pt.patch_groups((3, 8, 8), 4)[0] == pt.patch_groups((3, 8, 8), 4)[2]).all()    # channels share


@pytest.mark.parametrize("shape,patch,err,match", [
    ((1, 28, 28), 29, ValueError, r"patch must be at most the image's smaller side 28 .* received 29"),
    ((1, 28, 28), 0, ValueError, "patch must be an integer >= 1, received 0"),
    ((1, 28, 28), 2.5, ValueError, "patch must be an integer >= 1, received 2.5"),
    ((28,), 7, ValueError, r"input_shape must have at least two axes .* received \(28,\)"),
    (None, 7, TypeError, "input_shape must be a tuple of axis sizes, received None"),
])
def test_patch_groups_bad_input(shape, patch, err, match):
    with pytest.raises(err, match=match):
        pt.patch_groups(shape, patch)


@pytest.mark.parametrize("groups,match", [
    (np.array([0, 1]), r"groups must be an integer array of one sample's shape \(3,\), received shape \(2,\)"),
    (np.array([0, 2, 2]), r"groups must use every id 0..2 \(no gaps\), received ids missing \[1\]"),
    (np.array([0, -1, 1]), "groups must hold ids 0..G-1, received a negative id -1"),
    (np.array([0.0, 0.5, 1.0]), "groups must hold integer group ids 0..G-1, received dtype float64"),
])
def test_bad_group_maps_are_named(groups, match):
    X, y = make_data()
    with pytest.raises(ValueError, match=match):
        pt.permutation_test(build_mlp, X, y, {"epochs": 1}, n_permutations=2, output="output", progress=False,
                            null="conditional", groups=groups)


# ------------------------------------------------------------------ the residual sampler
def corr_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    cov = np.array([[1, 0.8, 0.3, 0], [0.8, 1, 0.2, 0], [0.3, 0.2, 1, 0], [0, 0, 0, 1.0]])
    X = rng.multivariate_normal(np.zeros(4), cov, size=n)
    X = np.column_stack([X, np.full(n, 2.5)])                    # column 4 constant
    return X


def test_residual_sampler_is_least_squares_plus_permuted_residual_rows():
    X = corr_data()
    mask = np.array([True, False, True, False, False])            # group {x1, x3}
    A = np.column_stack([np.ones(len(X)), X[:, [1, 3]]])          # the rest, constant column dropped
    coef = np.linalg.solve(A.T @ A, A.T @ X[:, [0, 2]])           # normal equations
    fitted = A @ coef
    resid = X[:, [0, 2]] - fitted
    perm = np.random.default_rng(5).permutation(len(X))
    Xt = pt.residual_sampler(X, mask, np.random.default_rng(5))
    np.testing.assert_allclose(Xt[:, [0, 2]], fitted + resid[perm], rtol=1e-12, atol=1e-12)    # whole rows
    np.testing.assert_array_equal(Xt[:, [1, 3, 4]], X[:, [1, 3, 4]])
    assert samplers.fit_residual(X, mask).method == "least squares"


def test_constant_group_stays_constant_bitwise():
    X = corr_data().astype(np.float32)
    X[:, 4] = np.float32(0.1)                      # 0.1 is not exact in binary: still returned bit for bit
    for mask in (np.array([0, 0, 0, 0, 1], bool), np.array([1, 0, 0, 0, 1], bool)):
        Xt = pt.residual_sampler(X, mask, np.random.default_rng(1))
        np.testing.assert_array_equal(Xt[:, 4], X[:, 4])
        assert Xt.dtype == np.float32
    blank = np.zeros((30, 1, 6, 6), np.float32)
    blank[:, 0, 2:4, 2:4] = np.random.default_rng(0).standard_normal((30, 2, 2))
    g = pt.patch_groups((1, 6, 6), 3)
    for k in range(4):                             # every 3x3 patch holds 1 varying pixel at most + blanks
        Xt = pt.residual_sampler(blank, g == k, np.random.default_rng(k))
        np.testing.assert_array_equal(Xt[(slice(None),) + np.nonzero(blank.std(0) == 0)],
                                      blank[(slice(None),) + np.nonzero(blank.std(0) == 0)])


def test_ridge_branch_picks_the_gcv_minimum_of_an_explicit_hat_matrix(monkeypatch):
    monkeypatch.setattr(samplers, "OLS_MAX_RATIO", 0.0)          # force ridge on a small problem
    rng = np.random.default_rng(2)
    n, q = 40, 12
    Z = rng.standard_normal((n, q)) @ rng.standard_normal((q, q)) * 0.5
    X = np.column_stack([Z[:, :3].sum(1) + rng.standard_normal(n), Z])
    mask = np.zeros(q + 1, bool)
    mask[0] = True
    fit = samplers.fit_residual(X, mask)
    assert fit.method == "ridge (GCV)"
    R = X[:, 1:] - X[:, 1:].mean(0)
    yc = X[:, 0] - X[:, 0].mean()
    scale = np.linalg.eigvalsh(R.T @ R).mean()
    best = None
    for t in samplers._RIDGE_GRID:
        lam = t * scale
        H = R @ np.linalg.solve(R.T @ R + lam * np.eye(q), R.T)
        rss = np.sum((yc - H @ yc) ** 2)
        df = np.trace(H) + 1
        gcv = rss / (n * (1 - df / n) ** 2)
        if best is None or gcv < best[0]:
            best = (gcv, lam, H @ yc)
    assert fit.penalty == pytest.approx(best[1], rel=1e-12)
    np.testing.assert_allclose(fit.fitted[:, 0], X[:, 0].mean() + best[2], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ the test against its definition
def naive_conditional(X, y, seed, B, group_map):
    """The conditional test written out: one observed network, per group B refits on redrawn X_G."""
    net, _ = pt.train_replicate(build_mlp, X, y, FIT, seed=seed, key=0)
    T = pt.association_statistic(pt.input_gradients(net, X, "output"))
    G = group_map.max() + 1
    t0 = np.array([T[group_map == g].sum() for g in range(G)])
    null = np.zeros((B, G))
    for g in range(G):
        for b in range(1, B + 1):
            rng = np.random.default_rng(pt.replicate_seeds(seed, (b, g))[2])
            Xb = pt.residual_sampler(X, group_map == g, rng)
            nb, _ = pt.train_replicate(build_mlp, Xb, y, FIT, seed=seed, key=(b, g), permute=False)
            null[b - 1, g] = pt.association_statistic(pt.input_gradients(nb, Xb, "output"))[group_map == g].sum()
    p = np.array([(1 + (null[:, g] >= t0[g]).sum()) / (B + 1) for g in range(G)])
    return t0, null, p


def test_conditional_equals_its_definition_written_as_a_loop():
    X, y = make_data(n=50, beta=1.5, seed=3)
    gm = np.array([0, 1, 0])
    r = pt.permutation_test(build_mlp, X, y, FIT, n_permutations=4, output="output", progress=False, seed=9,
                            null="conditional", groups=gm)
    t0, null, p = naive_conditional(X, y, 9, 4, gm)
    assert r.scope == "conditional" and r.p_values.shape == (2,) and r.null_distribution.shape == (4, 2)
    np.testing.assert_array_equal(r.groups, gm)
    np.testing.assert_allclose(r.statistic, t0, rtol=1e-12)
    np.testing.assert_allclose(r.null_distribution, null, rtol=1e-12)
    np.testing.assert_array_equal(r.p_values, p)
    assert r.info["n_fits"] == 1 + 2 * 4


def test_conditional_finds_the_active_feature_and_keeps_a_constant_one_exchangeable():
    X, y = make_data(n=80, beta=1.5, seed=1)
    X[:, 2] = 0.5
    r = pt.permutation_test(build_mlp, X, y, FIT, n_permutations=9, output="output", progress=False, seed=5,
                            null="conditional")
    assert r.p_values[0] == 0.1                     # x1 acts: above all 9 nulls
    assert r.statistic[2] > 0                       # the constant input's derivative is not zero ...
    assert r.p_values[2] > 0.1                      # ... and its null networks see the same column
    np.testing.assert_array_equal(r.adjusted("holm"), pt.holm(r.p_values))
    np.testing.assert_array_equal(r.adjusted("bh"), pt.benjamini_hochberg(r.p_values))
    with pytest.raises(ValueError, match="no joint null across groups.*received 'maxT'"):
        r.adjusted("maxT")
    with pytest.raises(ValueError, match="no joint null across groups"):
        r.significant(0.05, "maxT")
    with pytest.raises(ValueError, match="no joint null across groups"):
        r.plot(method="maxT")
    s = r.summary(method="bh")
    assert s["scope"] == "conditional" and "localises" in s["statement"] and s["n_groups"] == 3


# ------------------------------------------------------------------ sequential p-values
def test_sequential_p_values_hand_computed():
    t = np.array([5.0, 5.0, 5.0, 5.0])
    null = np.array([[6.0, 1.0, 6.0, 1.0],
                     [1.0, 1.0, 7.0, 1.0],
                     [6.0, 1.0, np.nan, 6.0],
                     [np.nan, 1.0, np.nan, np.nan],
                     [np.nan, 5.0, np.nan, np.nan]])             # B = 5, h = 2
    p = pt.sequential_p_values(t, null, 2)
    assert p[0] == 2 / 3              # second exceedance at L = 3
    assert p[1] == (1 + 1) / 6        # never two exceedances: (1 + 1)/(B + 1); the tie counts
    assert p[2] == 2 / 2              # stopped at L = 2
    assert np.isnan(p[3])             # undrawn before either rule applied
    full = np.random.default_rng(0).standard_normal((9, 6))
    tt = np.random.default_rng(1).standard_normal(6)
    np.testing.assert_array_equal(pt.sequential_p_values(tt, full, 10), pt.permutation_p_values(tt, full))
    with pytest.raises(ValueError, match="h must be an integer >= 1, received 0"):
        pt.sequential_p_values(t, null, 0)


def test_sequential_p_values_are_valid_by_monte_carlo():
    """Exchangeable (T_0, T_1..T_B): P(p <= u) <= u at every attainable u (binomial bound, 0.999)."""
    from scipy.stats import binom
    rng = np.random.default_rng(0)
    R, B, h = 20000, 19, 3
    vals = rng.standard_normal((R, B + 1))
    p = np.array([pt.sequential_p_values(v[:1], v[1:, None], h)[0] for v in vals])
    attainable = sorted(set(np.round(p, 12)))
    assert len(attainable) > 10
    for u in attainable:
        count = int((p <= u + 1e-12).sum())
        assert count <= binom.ppf(0.999, R, min(u, 1.0)), (u, count / R)
    # and not trivially conservative: at u = 1/(B+1) the rate is u
    assert abs((p <= 1 / (B + 1) + 1e-12).mean() - 1 / (B + 1)) < 0.01


def test_sequential_run_uses_the_same_replicates_and_stops_null_groups_early():
    X, y = make_data(n=60, beta=1.5, seed=2)
    kw = dict(n_permutations=9, output="output", progress=False, seed=4, null="conditional")
    full = pt.permutation_test(build_mlp, X, y, FIT, **kw)
    seq = pt.permutation_test(build_mlp, X, y, FIT, sequential=2, **kw)
    np.testing.assert_array_equal(seq.statistic, full.statistic)
    used = seq.fits_per_group()
    for g in range(3):
        L = used[g]
        np.testing.assert_array_equal(seq.null_distribution[:L, g], full.null_distribution[:L, g])
        assert np.isnan(seq.null_distribution[L:, g]).all()
    np.testing.assert_array_equal(seq.p_values, pt.sequential_p_values(full.statistic, full.null_distribution, 2))
    assert used[0] == 9 and seq.p_values[0] == 0.1                   # the active feature: all B
    assert used[1:].max() < 9                                        # null features stop early
    assert seq.info["n_fits_used"] == 1 + used.sum() <= seq.info["n_fits"]


# ------------------------------------------------------------------ samplers given by the user
def shift_sampler(X, mask, rng):
    out = np.array(X, copy=True)
    out[:, mask] = out[rng.permutation(len(X))][:, mask]
    return out


@pytest.mark.parametrize("sampler,err,match", [
    (lambda X, m, rng: X[:, :2].copy(), ValueError,
     r"sampler must return an array of X's shape \(60, 3\), received shape \(60, 2\) for group 0"),
    (lambda X, m, rng: X + 1, ValueError, r"sampler must change only the inputs of the group .* changed 2 input"),
    (lambda X, m, rng: np.full(X.shape, np.nan, X.dtype), ValueError, "sampler must return finite real numbers"),
    (lambda X, m, rng: X.__setitem__((slice(None), 0), 0.0), ValueError, "tried to write into X"),
    (lambda X, m, rng: [[0.0]], ValueError, r"sampler must return an array of shape \(60, 3\)"),
    ("gibbs", ValueError, r"sampler must be one of \('residual', 'marginal'\) or a callable"),
    (3, TypeError, "sampler must be one of .* received int"),
])
def test_bad_samplers_are_named_before_any_training(sampler, err, match):
    X, y = make_data()
    trained = []

    def build(seed):
        trained.append(seed)
        return build_mlp(seed)
    with pytest.raises(err, match=match):
        pt.permutation_test(build, X, y, {"epochs": 1}, n_permutations=2, output="output", progress=False,
                            null="conditional", sampler=sampler)
    assert len(trained) == 2                  # the two checking builds; no network trained


def test_user_sampler_equals_the_builtin_marginal_one():
    X, y = make_data(n=40)
    kw = dict(n_permutations=3, output="output", progress=False, seed=1, null="conditional")
    a = pt.permutation_test(build_mlp, X, y, FIT, sampler=shift_sampler, **kw)
    b = pt.permutation_test(build_mlp, X, y, FIT, sampler="marginal", **kw)
    np.testing.assert_array_equal(a.null_distribution, b.null_distribution)
    assert a.info["fingerprint"]["sampler"].endswith("shift_sampler")


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kwargs,match", [
    ({"null": "conditional", "statistic": "nonlinearity"}, "statistic='nonlinearity' asks another question"),
    ({"null": "permute"}, r"null must be one of \('labels', 'conditional'\), received 'permute'"),
    ({"groups": np.array([0, 1, 2])}, "groups= belongs to null='conditional'"),
    ({"sequential": 3}, "sequential= belongs to null='conditional'"),
    ({"sampler": "marginal"}, "sampler= belongs to null='conditional'"),
    ({"null": "conditional", "sequential": 0}, "sequential must be an integer >= 1, received 0"),
    ({"null": "conditional", "features": [0]}, "features= selects the columns of the nonlinearity test"),
])
def test_conditional_refusals_are_named(kwargs, match):
    X, y = make_data()
    with pytest.raises(ValueError, match=match):
        pt.permutation_test(build_mlp, X, y, {"epochs": 1}, n_permutations=2, output="output", progress=False,
                            **kwargs)


def test_smallest_adjusted_p():
    assert pt.smallest_adjusted_p("holm", 16, 99) == 16 / 100
    assert pt.smallest_adjusted_p("bonferroni", 16, 19) == 0.8
    assert pt.smallest_adjusted_p("bh", 16, 19) == 1 / 20
    assert pt.smallest_adjusted_p("maxT", 784, 39) == 1 / 40
    assert pt.smallest_adjusted_p("holm", 784, 39) == 1.0
    with pytest.raises(ValueError, match="method must be one of"):
        pt.smallest_adjusted_p("fdr", 3, 9)


# ------------------------------------------------------------------ files and figures
def test_conditional_result_save_load_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    g = pt.patch_groups((1, 8, 8), 4)
    null = rng.uniform(size=(9, 4))
    null[5:, 2] = np.nan
    r = pt.PermutationTestResult(np.array([2.0, 0.5, 0.99, 0.1]), null, groups=g, scope="conditional",
                                 sequential=2, example=np.zeros((1, 8, 8)))
    q = pt.PermutationTestResult.load(r.save(tmp_path / "c.npz"))
    assert q.scope == "conditional" and q.sequential == 2
    np.testing.assert_array_equal(q.groups, g)
    np.testing.assert_array_equal(q.p_values, r.p_values)
    np.testing.assert_array_equal(r.map(r.p_values)[0, 0, :4], [r.p_values[0]] * 4)
    fig = r.plot(method="bh")
    assert "CONDITIONAL" in fig.get_suptitle() and "4 groups" in fig.get_suptitle()
    assert "groups significant" in fig.axes[2].get_title()
    glob = pt.PermutationTestResult(np.ones((1, 4, 4)), np.zeros((3, 1, 4, 4)))
    assert "GLOBAL" in glob.plot().get_suptitle() and "do not localise" in glob.plot().get_suptitle()
    tab = pt.PermutationTestResult(np.ones(3), np.zeros((3, 3)))
    assert "GLOBAL" in tab.plot().axes[0].get_title()
    with pytest.raises(ValueError, match="scope='conditional' needs groups"):
        pt.PermutationTestResult(np.ones(3), np.ones((2, 3)), scope="conditional")


def test_tested_subset_runs_only_those_groups():
    X, y = make_data(n=50, beta=1.5, seed=3)
    kw = dict(n_permutations=3, output="output", progress=False, seed=9, null="conditional")
    full = pt.permutation_test(build_mlp, X, y, FIT, **kw)
    sub = pt.permutation_test(build_mlp, X, y, FIT, tested=[2, 0], **kw)
    assert sub.info["n_fits"] == 1 + 2 * 3 and sub.info["tested"] == [0, 2]
    np.testing.assert_array_equal(sub.null_distribution[:, [0, 2]], full.null_distribution[:, [0, 2]])
    np.testing.assert_array_equal(sub.p_values[[0, 2]], full.p_values[[0, 2]])
    assert np.isnan(sub.p_values[1]) and np.isnan(sub.null_distribution[:, 1]).all()
    with pytest.raises(ValueError, match=r"tested must be distinct group ids in \[0, 3\), received \[3\]"):
        pt.permutation_test(build_mlp, X, y, FIT, tested=[3], **kw)
