"""class_separation on networks: equal to henze_penrose on layer_outputs by hand, results, errors,
the Fisher-test tables, the training callback, the plots."""
import itertools

import numpy as np
import pytest

from nn_from_scratch import Convolution, Flatten, Linear, MaxPool, NeuralNetwork, ReLU
from nn_from_scratch.data import datasets
from nn_from_scratch.analysis import separation as sep

rng0 = np.random.default_rng(0)


def small_cnn(seed=0):
    return NeuralNetwork([
        Convolution((None, 1, 28, 28), kernel_size=3, output_layers=2, padding=1, seed=seed, name="conv1"),
        ReLU(name="relu1"), MaxPool(pool_size=2, name="pool1"), Flatten(name="flatten"),
        Linear(392, 16, seed=seed + 1, name="fc1"), ReLU(name="relu2"), Linear(16, 4, seed=seed + 2, name="fc2")],
        batch_size=32)


@pytest.fixture(scope="module")
def digits():
    X, y = datasets.load_mnist("all")
    keep = np.flatnonzero(y < 4)
    return X[keep], y[keep]


@pytest.fixture(scope="module")
def unequal(digits):
    """Classes 0..3 with 23, 31, 17, 26 samples (m != n in every pair)."""
    X, y = digits
    idx = np.concatenate([np.flatnonzero(y == c)[:k] for c, k in zip(range(4), (23, 31, 17, 26))])
    return X[idx], y[idx]


def test_equals_henze_penrose_on_layer_outputs(unequal):
    X, y = unequal
    net = small_cnn()
    res = sep.class_separation(net, X, y, n_per_class=None)
    outs = net.layer_outputs(X)
    outs["input"] = X
    assert res.layers == ["input", "conv1", "relu1", "pool1", "flatten", "fc1", "relu2", "fc2"]
    assert res.pairs == list(itertools.combinations(range(4), 2))
    for layer in res.layers:
        for (a, b) in res.pairs:
            hp = sep.henze_penrose(outs[layer][y == a], outs[layer][y == b])
            assert res.value(layer, a, b) == hp.H == res.value(layer, b, a)
            j = res.pairs.index((a, b))
            i = res.layers.index(layer)
            assert (res.R[i, j], res.z[i, j], res.m[j], res.n[j]) == (hp.R, hp.z, hp.m, hp.n)
    assert res.info["reshape_layers_copied"] == ["flatten"]
    np.testing.assert_array_equal(res.values("flatten"), res.values("pool1"))


def test_digits_reference_R_at_the_input():
    datasets_sk = pytest.importorskip("sklearn.datasets")
    X, y = datasets_sk.load_digits(return_X_y=True)
    net = NeuralNetwork([Linear(64, 10, seed=0, name="fc")])
    res = sep.class_separation(net, X, y, n_per_class=None, layers="input")
    ref = [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 6, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 5,
           1, 1, 2, 1, 2, 1, 1, 1, 4, 1, 1, 1, 1, 3, 5]          # research note 5.2 (SciPy)
    np.testing.assert_array_equal(res.R[0], ref)
    assert res.values("input").mean() == pytest.approx(0.991463, abs=1e-6)


def test_seeded_stratified_sample(digits):
    X, y = digits
    net = small_cnn()
    a = sep.class_separation(net, X, y, n_per_class=20, layers=["fc1"], seed=3)
    b = sep.class_separation(net, X, y, n_per_class=20, layers=["fc1"], seed=3)
    c = sep.class_separation(net, X, y, n_per_class=20, layers=["fc1"], seed=4)
    np.testing.assert_array_equal(a.H, b.H)
    assert a.info["indices"] == b.info["indices"] != c.info["indices"]
    for cl in range(4):
        idx = np.array(a.info["indices"][str(cl)])
        assert len(idx) == 20 and np.all(y[idx] == cl)
        assert not np.array_equal(idx, np.flatnonzero(y == cl)[:20])       # not the first n
    # the sample drawn is the one analysed
    picked = {cl: np.array(a.info["indices"][str(cl)]) for cl in range(4)}
    out = net.layer_outputs(X[np.concatenate([picked[c] for c in range(4)])])["fc1"]
    hp = sep.henze_penrose(out[:20], out[20:40])
    assert a.value("fc1", 0, 1) == hp.H


def test_memory_budget_splits_passes_with_the_same_result(unequal, monkeypatch):
    X, y = unequal
    net = small_cnn()
    one = sep.class_separation(net, X, y, n_per_class=None)
    monkeypatch.setattr(sep.core, "MEMORY_BUDGET", 40_000)        # less than one layer's outputs: one pass each
    calls = []
    real = net.layer_outputs
    monkeypatch.setattr(net, "layer_outputs", lambda x: calls.append(len(x)) or real(x))
    many = sep.class_separation(net, X, y, n_per_class=None, batch_size=50)
    np.testing.assert_array_equal(one.H, many.H)
    assert sum(calls) > 4 * len(X)
    monkeypatch.setattr(sep.core, "MEMORY_BUDGET", 2 ** 30)
    calls.clear()
    again = sep.class_separation(net, X, y, n_per_class=None, batch_size=50, memory_budget=40_000)
    np.testing.assert_array_equal(one.H, again.H)
    assert sum(calls) > 4 * len(X)


def test_results_table_matrix_json(unequal, tmp_path):
    X, y = unequal
    res = sep.class_separation(small_cnn(), X, y, n_per_class=None, layers=["input", "fc2"])
    t = res.rows()
    assert len(t) == 2 * 6 and t.columns[:10] == ("layer", "class_a", "class_b", "H", "R", "z", "p_value", "log10_p",
                                                  "m", "n")
    assert t[0]["layer"] == "input" and (t[0]["class_a"], t[0]["class_b"]) == (0, 1)
    assert (t[0]["m"], t[0]["n"]) == (23, 31)
    M = res.matrix("fc2")
    assert M.shape == (4, 4) and np.all(np.isnan(np.diag(M)))
    np.testing.assert_array_equal(M, M.T)
    assert M[2, 3] == res.value("fc2", 3, 2)
    path = res.to_json(tmp_path / "r.json")
    back = sep.SeparationResult.from_json(path)
    for k in ("H", "R", "z", "p_value", "log_p", "R_min", "R_max"):
        np.testing.assert_array_equal(getattr(back, k), getattr(res, k))
    assert back.layers == res.layers and back.classes == res.classes and back.info == res.info
    df = res.to_pandas()
    assert list(df.columns[:4]) == ["layer", "class_a", "class_b", "H"] and len(df) == 12
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(sep.SeparationError, match="not a separation result"):
        sep.SeparationResult.from_json(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:100])
    with pytest.raises(sep.SeparationError, match="not a readable"):
        sep.SeparationResult.from_json(tmp_path / "cut.json")
    with pytest.raises(KeyError, match="layers"):
        res.value("conv9", 0, 1)
    with pytest.raises(KeyError, match="two different classes"):
        res.value("fc2", 1, 1)


def test_bad_input_messages(digits):
    X, y = digits
    net = small_cnn()
    with pytest.raises(sep.SeparationError, match=r"class 3 has 1"):
        yy = y.copy()
        yy[np.flatnonzero(y == 3)[1:]] = 2
        sep.class_separation(net, X, yy, n_per_class=None)
    with pytest.raises(sep.SeparationError, match=r"n_per_class=600.*only 500.*n_per_class=None.*0: 500"):
        sep.class_separation(net, X, y, n_per_class=600)
    with pytest.raises(sep.SeparationError, match="non-integer"):
        sep.class_separation(net, X, y + 0.5, n_per_class=5)
    with pytest.raises(sep.SeparationError, match=">= 0"):
        sep.class_separation(net, X, y - 1, n_per_class=5)
    with pytest.raises(sep.SeparationError, match="one-hot"):
        sep.class_separation(net, X, np.eye(4)[y], n_per_class=5)
    with pytest.raises(sep.SeparationError, match="integer class indices"):
        sep.class_separation(net, X, y.astype(str), n_per_class=5)
    with pytest.raises(sep.SeparationError, match=r"unknown layer name\(s\) \['conv3'\].*'relu1'"):
        sep.class_separation(net, X, y, n_per_class=5, layers=["conv3"])
    with pytest.raises(sep.SeparationError, match="classes \\[7\\] have no samples"):
        sep.class_separation(net, X, y, n_per_class=5, classes=[0, 7])
    with pytest.raises(sep.SeparationError, match="NeuralNetwork"):
        sep.class_separation(object(), X, y)
    broken = small_cnn()
    broken.layers[4].params["W"][3, 2] = np.nan
    with pytest.raises(sep.SeparationError, match="layer 'fc1' contains NaN"):
        sep.class_separation(broken, X, y, n_per_class=5)


def test_compare_layers_and_stages(unequal):
    X, y = unequal
    before = sep.class_separation(small_cnn(), X, y, n_per_class=None)
    t = sep.compare_layers(before, n_permutations=500)
    assert len(t) == len(before.layers) - 1
    row = t[4]
    assert (row["layer_from"], row["layer_to"]) == ("flatten", "fc1")
    st, p = sep.fisher_test(before.values("fc1"), before.values("flatten"), paired=True)   # 2^6: exact
    assert (row["statistic"], row["p_value"]) == (st, p)
    assert row["change"] == pytest.approx(before.values("fc1").mean() - before.values("flatten").mean())
    after = sep.class_separation(small_cnn(seed=5), X, y, n_per_class=None)
    s = sep.compare_stages(before, after, paired=False)
    assert list(s["layer"]) == before.layers
    assert s[7]["p_value"] == sep.fisher_test(after.values("fc2"), before.values("fc2")).p_value
    assert s[0]["p_value"] == 1.0 and s[0]["change"] == 0          # the input does not change
    other = sep.class_separation(small_cnn(), X, y, n_per_class=None, classes=[0, 1, 2])
    with pytest.raises(sep.SeparationError, match="different classes"):
        sep.compare_stages(before, other)


def test_separation_history_records_the_epochs_asked_for(unequal):
    X, y = unequal
    net = small_cnn()
    from nn_from_scratch.optimizers import Adam
    net.optimizer = Adam(lr=0.01)
    hist = sep.SeparationHistory(X, y, every=2, layers=["input", "fc1", "fc2"], n_per_class=None)
    net.fit(X, y, epochs=5, batch_size=16, verbose=0, seed=0, callbacks=[hist])
    assert hist.epochs == [0, 2, 4]
    final = sep.class_separation(net, X, y, n_per_class=None, layers=["input", "fc1", "fc2"])
    assert not np.array_equal(hist.results[4].values("fc2"), hist.results[0].values("fc2"))   # training moved it
    np.testing.assert_array_equal(hist.results[0].values("input"), final.values("input"))
    assert hist.results[2].name == "epoch 2"
    net.fit(X, y, epochs=1, batch_size=16, verbose=0, seed=1, callbacks=[hist])   # continues the count
    assert hist.epochs == [0, 2, 4]
    hist2 = sep.SeparationHistory(X, y, every=1, layers=["fc2"], n_per_class=None, before_training=False)
    net.fit(X, y, epochs=2, batch_size=16, verbose=0, seed=1, callbacks=[hist2])
    assert hist2.epochs == [1, 2]
    np.testing.assert_array_equal(hist2.results[2].H, sep.class_separation(net, X, y, n_per_class=None,
                                                                           layers=["fc2"]).H)
    tab = hist.table()
    assert len(tab) == 9 and tab[0]["epoch"] == 0
    with pytest.raises(ValueError, match="every"):
        sep.SeparationHistory(X, y, every=0)


def test_plots_return_figures_not_held_by_pyplot(unequal):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    open_before = plt.get_fignums()
    X, y = unequal
    net = small_cnn()
    a = sep.class_separation(net, X, y, n_per_class=None)
    b = sep.class_separation(small_cnn(seed=3), X, y, n_per_class=None)
    figs = [sep.plot_histograms({"before": a, "after": b}), sep.plot_separation_curve([a, b]),
            sep.plot_heatmap(a, "fc2"), sep.plot_pca(net, X, y, "fc1", n_per_class=10),
            *sep.plot_histograms(a, layers=["input", "fc2"], by_layer=True)]
    for fig in figs:
        assert isinstance(fig, Figure) and fig.canvas is not None and fig.axes
    assert plt.get_fignums() == open_before           # none left open in pyplot's registry
    fig = sep.plot_histograms({"before": a, "after": b})
    assert len(fig.axes) == 2 * len(a.layers)
    hist = sep.SeparationHistory(X, y, layers=["fc2"], n_per_class=None)
    hist.record(0, net)
    hist.record(1, small_cnn(seed=3))
    assert isinstance(hist.plot(), Figure) and isinstance(sep.plot_history(hist), Figure)
    assert plt.get_fignums() == open_before
    with pytest.raises(KeyError, match="no layer"):
        sep.plot_heatmap(a, "nope")
