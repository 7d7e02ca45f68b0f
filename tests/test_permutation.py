"""permutation_test, its p-values, adjustments, result file and figures.

References: hand-computed small cases, statsmodels' multipletests, a naive loop of the
Westfall-Young definition written here, and a recorder of every (sample, label) pair that
training sees (the fixed-permutation rule).
"""
import os

import numpy as np
import pytest

from nn_from_scratch import Linear, MSELoss, NeuralNetwork, SoftMaxLoss
from nn_from_scratch.analysis import permutation as pt
from permutation_helpers import FIT, build_mlp, make_data


# ------------------------------------------------------------------ p-value arithmetic
def test_p_value_extremes_and_ties():
    null = np.array([[1.0, 5.0, 2.0], [2.0, 6.0, 3.0], [3.0, 7.0, 2.0], [0.5, 8.0, 9.0]])    # B = 4
    t = np.array([10.0, 0.0, 3.0])
    p = pt.permutation_p_values(t, null)
    assert p[0] == 1 / 5            # above every null value: 1/(B+1)
    assert p[1] == 1.0              # below every null value: 1
    assert p[2] == (1 + 2) / 5      # ties count: 3.0 and 9.0 are >= 3.0


def test_holm_and_bh_hand_computed():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(pt.holm(p), [0.03, 0.06, 0.06, 0.02], rtol=1e-15)
    np.testing.assert_allclose(pt.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02], rtol=1e-15)


def test_holm_and_bh_match_statsmodels():
    from statsmodels.stats.multitest import multipletests
    p = np.random.default_rng(0).uniform(0, 0.2, size=30)
    np.testing.assert_allclose(pt.holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    np.testing.assert_allclose(pt.benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)


def test_max_t_hand_computed():
    t = np.array([3.0, 1.0, 2.0])
    null = np.array([[0.5, 0.2, 0.1], [1.0, 2.2, 0.5], [2.0, 1.5, 2.5]])
    # order j0 (3), j2 (2), j1 (1); successive maxima over {j0,j2,j1}, {j2,j1}, {j1}
    np.testing.assert_allclose(pt.max_t(t, null), [0.25, 0.75, 0.75], rtol=1e-15)
    np.testing.assert_allclose(pt.permutation_p_values(t, null), [0.25, 0.75, 0.5], rtol=1e-15)


def naive_max_t(t, null):
    B, m = null.shape
    order = sorted(range(m), key=lambda j: -t[j])
    adj, prev = np.zeros(m), 0.0
    for r, j in enumerate(order):
        rest = order[r:]
        c = sum(1 for b in range(B) if max(null[b, k] for k in rest) >= t[j])
        prev = max(prev, (1 + c) / (B + 1))
        adj[j] = prev
    return adj


def test_max_t_matches_the_definition_and_bounds():
    rng = np.random.default_rng(3)
    null = rng.gamma(2.0, size=(39, 12)) * np.linspace(0.5, 2, 12)
    t = rng.gamma(2.0, size=12) * 1.8
    adj = pt.max_t(t, null)
    np.testing.assert_allclose(adj, naive_max_t(t, null), rtol=1e-15)
    raw = pt.permutation_p_values(t, null)
    assert np.all(adj >= raw - 1e-15) and np.all(adj <= 1)
    # image-shaped statistics: the same numbers
    np.testing.assert_allclose(pt.max_t(t.reshape(3, 4), null.reshape(39, 3, 4)), adj.reshape(3, 4))


def test_result_adjusted_significant_and_bad_method():
    null = np.array([[0.5, 0.2, 0.1], [1.0, 2.2, 0.5], [2.0, 1.5, 2.5]])
    r = pt.PermutationTestResult(np.array([3.0, 1.0, 2.0]), null)
    np.testing.assert_allclose(r.adjusted("maxT"), [0.25, 0.75, 0.75])
    np.testing.assert_allclose(r.adjusted("holm"), pt.holm(r.p_values))
    np.testing.assert_allclose(r.adjusted("bonferroni"), np.minimum(1, 3 * r.p_values))
    np.testing.assert_array_equal(r.significant(0.3), [True, False, False])
    np.testing.assert_array_equal(r.significant(0.3, method="none"), [True, False, False])
    with pytest.raises(ValueError, match="method must be one of"):
        r.adjusted("fdr")
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        r.significant(1.5)
    nl = pt.PermutationTestResult(np.array([3.0, 1.0, 2.0]), null, "nonlinearity")
    with pytest.raises(ValueError, match="maxT' needs a joint null"):
        nl.adjusted("maxT")


# ------------------------------------------------------------------ the test itself
@pytest.fixture(scope="module")
def small_result():
    X, y = make_data(n=80, beta=1.5)
    return pt.permutation_test(build_mlp, X, y, FIT, n_permutations=19, output="output", progress=False), X, y


def test_association_test_finds_the_active_input(small_result):
    r, X, y = small_result
    assert r.statistic.shape == (3,) and r.null_distribution.shape == (19, 3)
    assert r.p_values[0] == 1 / 20                    # x1 acts on y: above all 19 nulls
    assert r.significant(0.05, "maxT")[0]
    # the observed statistic is the trained observed network's, from the same recipe
    net, _ = pt.train_replicate(build_mlp, X, y, FIT, seed=0, key=0)
    np.testing.assert_array_equal(r.statistic, pt.association_statistic(pt.input_gradients(net, X, "output")))


def test_save_load_round_trip_and_refusals(small_result, tmp_path):
    r, _, _ = small_result
    path = tmp_path / "res.npz"
    r.save(path)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    q = pt.PermutationTestResult.load(path)
    for a in ("statistic", "null_distribution", "p_values", "example"):
        np.testing.assert_array_equal(getattr(q, a), getattr(r, a))
    assert q.statistic_name == r.statistic_name and q.info["seed"] == 0
    np.testing.assert_array_equal(q.adjusted("maxT"), r.adjusted("maxT"))
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="is not a permutation-test result"):
        pt.PermutationTestResult.load(other)
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="is not a readable .npz file"):
        pt.PermutationTestResult.load(bad)
    with pytest.raises(FileNotFoundError):
        pt.PermutationTestResult.load(tmp_path / "missing.npz")


def test_plots_return_pyplot_figures(small_result):
    import io

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    r, _, _ = small_result
    open_before = plt.get_fignums()
    fig = r.plot(feature_names=["a", "b", "c"])
    assert isinstance(fig, Figure) and plt.get_fignums() == open_before     # made by pyplot, left closed
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    img = pt.PermutationTestResult(np.arange(16.0).reshape(1, 4, 4), np.ones((9, 1, 4, 4)) * 7.5,
                                   example=np.zeros((1, 4, 4)))
    fig = img.plot()
    assert len([a for a in fig.axes if a.images]) == 3      # example, statistic map, -log10 p map
    with pytest.raises(ValueError, match="feature_names has 2 names for 3 features"):
        r.plot(feature_names=["a", "b"])


# ------------------------------------------------------------------ one fixed permutation per replicate
class RecordingLoss(MSELoss):
    """MSELoss that records, per training batch, the labels it is given with the batch's sample ids
    (column 0 of X holds each sample's id; the first layer keeps its last input)."""

    def __init__(self, first, log):
        super().__init__()
        self.first, self.log = first, log

    def forward(self, prediction, target, *args, **kwargs):
        self.log.append((self.first._cache["x"][:, 0].copy(), np.asarray(target)[:, 0].copy()))
        return super().forward(prediction, target, *args, **kwargs)


def consistent_permutation(log, y):
    """True when every batch of every epoch saw sample i with the same label, and these labels are
    y[pi] for one permutation pi of the data set."""
    seen = {}
    for ids, labels in log:
        for i, lab in zip(np.rint(ids * 100).astype(int), labels):
            if seen.setdefault(i, lab) != lab:
                return False
    return len(seen) == len(y) and sorted(seen.values()) == sorted(y.tolist())


def test_each_replicate_trains_on_one_fixed_permutation():
    n = 40
    X = np.column_stack([np.arange(n) / 100, np.random.default_rng(0).standard_normal((n, 2))]).astype(np.float64)
    y = np.random.default_rng(1).standard_normal((n, 1))
    logs = []

    def build(seed):
        first = Linear(3, 1, seed=seed)
        log = []
        logs.append(log)
        return NeuralNetwork([first], RecordingLoss(first, log)).astype(np.float64)

    pt.permutation_test(build, X, y, {"epochs": 3, "batch_size": 8}, n_permutations=4, output="output",
                        progress=False)
    trained = [log for log in logs if log]
    assert len(trained) == 5                               # the observed network and 4 null networks
    for log in trained:
        assert len(log) == 3 * 5                           # 3 epochs of 5 shuffled minibatches
        assert consistent_permutation(log, y[:, 0])
    def labeling(log):
        pairs = {int(i): lab for ids, labs in log for i, lab in zip(np.rint(ids * 100), labs)}
        return tuple(pairs[i] for i in range(n))
    assert labeling(trained[0]) == tuple(y[:, 0])          # the observed network: the labels as given
    assert len({labeling(log) for log in trained}) == 5                             # a different permutation per replicate
    # the recorder catches the seed's loop: a new permutation of the labels drawn in every minibatch
    rng = np.random.default_rng(2)
    bad_log = []
    for _epoch in range(3):
        order = rng.permutation(n)
        for a in range(0, n, 8):
            idx = order[a:a + 8]
            bad_log.append((X[idx, 0], y[rng.permutation(n)[idx], 0]))
    assert not consistent_permutation(bad_log, y[:, 0])


# ------------------------------------------------------------------ bad input
def _shared_build():
    net = build_mlp(0)
    return lambda seed: net


def _trained_build(seed):
    X, y = make_data()
    net = build_mlp(seed)
    net.fit(X, y, epochs=1, verbose=0)
    return net


def _shared_layer_build():
    layer = Linear(8, 1, seed=0)

    def build(seed):
        net = build_mlp(seed)
        net.layers[2] = layer
        return net
    return build


@pytest.mark.parametrize("build,kwargs,err,match", [
    (build_mlp, {"n_permutations": 0}, ValueError, "n_permutations must be an integer >= 1, received 0"),
    (build_mlp, {"n_permutations": 2.5}, ValueError, "n_permutations must be an integer"),
    (build_mlp, {"X": np.zeros((59, 3), np.float32)}, ValueError, r"X and y must hold the same number of samples"),
    (_shared_build(), {}, ValueError, "returned the same network object"),
    (_shared_layer_build(), {}, ValueError, "share layer 2"),
    (lambda seed: build_mlp(7), {}, ValueError, "identical parameters: build ignores its seed"),
    (_trained_build, {}, ValueError, "already trained"),
    (lambda seed: "net", {}, TypeError, "must return a NeuralNetwork"),
    (build_mlp, {"output": "log_softmax"}, ValueError, "log_softmax' needs at least 2 logits"),
    (build_mlp, {"fit_kwargs": {"epochs": 1, "seed": 3}}, ValueError, "must not contain 'seed'"),
    (build_mlp, {"statistic": "variance"}, ValueError, "statistic must be one of"),
    (build_mlp, {"backend": "multiprocessing"}, ValueError, "backend must be one of"),
    (build_mlp, {"n_jobs": 0}, ValueError, "n_jobs must be a non-zero integer"),
    (build_mlp, {"statistic": "nonlinearity", "output": "max_logit"}, ValueError, "use output='output'"),
    (build_mlp, {"statistic": "nonlinearity", "features": [3]}, ValueError, r"column indices in \[0, 3\)"),
    (build_mlp, {"features": [0]}, ValueError, "features= selects the columns of the nonlinearity test"),
    (build_mlp, {"backend": "dask", "n_jobs": 2}, ValueError, "needs a running dask.distributed Client"),
])
def test_bad_inputs_are_named(build, kwargs, err, match):
    X, y = make_data()
    args = {"X": X, "fit_kwargs": {"epochs": 1}, "n_permutations": 3, "output": "output", "progress": False}
    args.update(kwargs)
    with pytest.raises(err, match=match):
        pt.permutation_test(build, y=y, **args)


def test_classifier_output_checks():
    X = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    y = np.arange(30) % 3

    def build(seed):
        return NeuralNetwork([Linear(4, 3, seed=seed)], SoftMaxLoss())
    with pytest.raises(ValueError, match="output='output' needs a network with a single output"):
        pt.permutation_test(build, X, y, {"epochs": 1}, n_permutations=2, output="output", progress=False)
    with pytest.raises(ValueError, match="nonlinearity' needs a regression network"):
        pt.permutation_test(build, X, y, {"epochs": 1}, n_permutations=2, statistic="nonlinearity",
                            output="output", progress=False)
    r = pt.permutation_test(build, X, y, {"epochs": 2}, n_permutations=3, output="log_softmax", progress=False)
    assert r.null_distribution.shape == (3, 4) and np.all(np.isfinite(r.p_values))
