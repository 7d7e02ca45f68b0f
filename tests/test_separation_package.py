"""The separation package: its tables, log p-values in the far tail, figures not held by pyplot,
the layout of the package (no import circle) and the old import paths."""
import ast
import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from nn_from_scratch.analysis import separation as sep
from nn_from_scratch.analysis.separation import result as sep_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_DIR = os.path.join(ROOT, "nn_from_scratch", "analysis", "separation")


def _fr_moments(m, n, C):
    """Friedman & Rafsky's permutation mean and variance of R, their closed form (not ``_mst.moments``)."""
    N = m + n
    E = 2.0 * m * n / N
    V = (2.0 * m * n / (N * (N - 1))) * ((2.0 * m * n - N) / N
                                        + (C - N + 2.0) / ((N - 2.0) * (N - 3.0)) * (N * (N - 1.0) - 4.0 * m * n + 2))
    return E, V


def _log_phi_asymptotic(z):
    """log Phi(z) for z << 0 from the asymptotic series of Mills' ratio (error ~ 945 / z^10)."""
    s = 1 - 1 / z ** 2 + 3 / z ** 4 - 15 / z ** 6 + 105 / z ** 8
    return -z * z / 2 - math.log(-z) - 0.5 * math.log(2 * math.pi) + math.log(s)


def _tree_C(X):
    """C (adjacent edge pairs) of the Euclidean MST of X, from SciPy's tree."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist
    T = minimum_spanning_tree(cdist(X, X)).tocoo()
    deg = np.bincount(np.concatenate([T.row, T.col]), minlength=len(X)).astype(float)
    return float((deg * (deg - 1) / 2).sum()), T


# ----------------------------------------------------------------------------- log p
def test_log_p_is_finite_where_phi_underflows():
    rng = np.random.default_rng(0)
    m = n = 800
    A = rng.standard_normal((m, 3))
    B = rng.standard_normal((n, 3)) + 40.0           # two far clusters: R = 1
    r = sep.henze_penrose(A, B)
    assert r.R == 1
    C, _ = _tree_C(np.concatenate([A, B]))
    E, V = _fr_moments(m, n, C)
    z = (1 - E) / math.sqrt(V)
    assert z < -38.5 and r.z == pytest.approx(z, rel=1e-12)
    assert r.p_value == 0.0                          # Phi(z) underflows in float64 ...
    assert math.isfinite(r.log_p)                    # ... its logarithm does not
    assert r.log_p == pytest.approx(_log_phi_asymptotic(z), rel=1e-12)
    assert r.log10_p == pytest.approx(r.log_p / math.log(10), rel=1e-15)
    assert r.log10_p < -300


@pytest.mark.parametrize("shift", [0.0, 0.5, 1.5])
def test_log_p_is_the_log_of_p_where_p_does_not_underflow(shift):
    rng = np.random.default_rng(1)
    r = sep.henze_penrose(rng.standard_normal((60, 2)), rng.standard_normal((45, 2)) + shift)
    from scipy.stats import norm
    assert r.p_value == pytest.approx(norm.cdf(r.z), rel=1e-12)
    assert r.log_p == pytest.approx(math.log(norm.cdf(r.z)), rel=1e-12)


def test_result_carries_log_p_per_pair_through_json(tmp_path):
    res = _far_result()
    assert res.log_p.shape == res.H.shape
    np.testing.assert_array_equal(res.p_value[0], 0.0)
    for j in range(len(res.pairs)):
        assert res.log_p[0, j] == pytest.approx(_log_phi_asymptotic(res.z[0, j]), rel=1e-12)
    back = sep.SeparationResult.from_json(res.to_json(tmp_path / "r.json"))
    np.testing.assert_array_equal(back.log_p, res.log_p)
    # a file written before log_p existed still reads; log_p comes from z
    import json
    data = json.loads((tmp_path / "r.json").read_text())
    del data["log_p"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = sep.SeparationResult.from_json(tmp_path / "old.json")
    np.testing.assert_allclose(old.log_p, res.log_p, rtol=1e-15)


def _far_result():
    """A SeparationResult of three far apart Gaussian classes of 800 points (as class_separation builds it)."""
    rng = np.random.default_rng(2)
    X = [rng.standard_normal((800, 3)) + 50.0 * k for k in range(3)]
    stats = [sep.henze_penrose(X[a], X[b]) for a, b in itertools.combinations(range(3), 2)]
    arrays = {k: [[getattr(s, k) for s in stats]] for k in ("H", "R", "z", "p_value", "log_p", "R_min", "R_max")}
    return sep.SeparationResult(["input"], [0, 1, 2], arrays, [800] * 3, [800] * 3)


# ----------------------------------------------------------------------------- tables
def _small_result():
    rng = np.random.default_rng(3)
    layers, classes = ["input", "fc1", "fc2"], [0, 1, 2, 5]
    P = 6
    H = rng.uniform(-0.1, 1, (3, P))
    arrays = {"H": H, "R": rng.integers(1, 40, (3, P)).astype(float), "z": rng.normal(-3, 2, (3, P)),
              "p_value": rng.uniform(0, 1, (3, P)), "R_min": np.zeros((3, P)), "R_max": np.zeros((3, P))}
    arrays["log_p"] = np.log(arrays["p_value"])
    return sep.SeparationResult(layers, classes, arrays, [20, 20, 20, 21, 21, 22], [21, 22, 23, 22, 23, 23])


def _check_rows(rows, res, start, stop):
    pairs = list(itertools.combinations(res.classes, 2))
    keys = [(layer, a, b) for layer in res.layers for a, b in pairs][start:stop]
    assert len(rows) == len(keys)
    for row, (layer, a, b) in zip(rows, keys):
        i, j = res.layers.index(layer), pairs.index((a, b))
        assert (row["layer"], row["class_a"], row["class_b"]) == (layer, a, b)
        assert row["H"] == res.H[i, j] and row["z"] == res.z[i, j] and row["R"] == res.R[i, j]
        assert row["log10_p"] == pytest.approx(math.log10(res.p_value[i, j]), rel=1e-12)
        assert (row["m"], row["n"]) == (res.m[j], res.n[j])


def test_table_without_pandas_is_rows_of_dicts_and_slices_to_rows(monkeypatch):
    monkeypatch.setattr(sep_result, "_pandas", lambda: None)
    res = _small_result()
    t = res.table
    assert isinstance(t, sep.Rows) and len(t) == 3 * 6
    first = t[:3]
    assert isinstance(first, sep.Rows) and all(isinstance(r, dict) for r in first)
    _check_rows(list(first), res, 0, 3)
    _check_rows(list(t[5:11]), res, 5, 11)
    _check_rows([t[7]], res, 7, 8)
    _check_rows(list(t), res, 0, 18)
    assert t[-1]["layer"] == "fc2" and (t[-1]["class_a"], t[-1]["class_b"]) == (2, 5)
    text = str(first).splitlines()
    assert len(text) == 2 + 3 and text[0].split()[:4] == ["layer", "class_a", "class_b", "H"]
    np.testing.assert_array_equal(t["H"], res.H.ravel())
    assert res.records() == t.records()


def test_table_with_pandas_is_a_dataframe_and_slices_to_rows():
    pd = pytest.importorskip("pandas")
    res = _small_result()
    t = res.table
    assert isinstance(t, pd.DataFrame) and len(t) == 18
    first = t[:3]
    assert isinstance(first, pd.DataFrame) and len(first) == 3
    _check_rows(first.to_dict("records"), res, 0, 3)
    _check_rows(t.iloc[4:9].to_dict("records"), res, 4, 9)


def test_summary_and_comparisons_slice_to_rows():
    res = _small_result()
    s = res.summary()
    assert [r["layer"] for r in s[1:]] == ["fc1", "fc2"]
    assert s[1:][0]["mean"] == pytest.approx(res.H[1].mean(), rel=1e-15)
    assert s[0]["max"] == res.H[0].max() and s[2]["min"] == res.H[2].min()
    cmp = sep.compare_layers(res, n_permutations=99)
    assert [(r["layer_from"], r["layer_to"]) for r in cmp[:2]] == [("input", "fc1"), ("fc1", "fc2")]
    assert cmp[1:][0]["mean_to"] == pytest.approx(res.H[2].mean(), rel=1e-15)


# ----------------------------------------------------------------------------- figures
def test_confusion_matrix_figure_is_not_held_by_pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from nn_from_scratch.training import metrics
    before = plt.get_fignums()
    fig = metrics.plot_confusion_matrix(np.array([[5, 1], [2, 7]]), class_names=["a", "b"])
    assert isinstance(fig, Figure) and plt.get_fignums() == before
    assert [t.get_text() for t in fig.axes[0].texts] == ["5", "1", "2", "7"]


def test_heatmap_and_curve_figures_draw_the_values():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    before = plt.get_fignums()
    res = _small_result()
    fig = sep.plot_heatmap(res, "fc1")
    assert isinstance(fig, Figure)
    img = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.ma.filled(img, np.nan), res.matrix("fc1"))
    fig = sep.plot_separation_curve(res, band=False)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), res.H.mean(axis=1), rtol=1e-15)
    assert plt.get_fignums() == before


# ----------------------------------------------------------------------------- the package
def _imports(path):
    """Module names (relative ones as written, with their dots) imported anywhere in ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out += [base] + [f"{base}.{a.name}" if base.endswith(".") is False else base + a.name
                             for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


@pytest.mark.parametrize("core", ["core.py", "result.py", "_mst.py"])
def test_the_core_imports_neither_plots_nor_history(core):
    names = _imports(os.path.join(PKG_DIR, core))
    bad = [n for n in names if n.rstrip(".").split(".")[-1] in ("plots", "history", "cli")
           or "separation_plots" in n or "separation_history" in n or "matplotlib" in n]
    assert not bad, f"{core} imports {bad}"


def test_plots_and_history_do_not_import_each_other_at_module_level():
    for mod, other in (("plots.py", "history"), ("history.py", "plots")):
        tree = ast.parse(open(os.path.join(PKG_DIR, mod), encoding="utf-8").read())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [getattr(n, "module", None) or "" for n in top] + [a.name for n in top for a in n.names]
        assert not any(other in x for x in names), (mod, names)


def test_importing_the_analysis_loads_neither_plots_history_nor_matplotlib():
    code = ("import sys; import nn_from_scratch.analysis.separation as s; "
            "print(sorted(m for m in sys.modules if m.startswith('matplotlib') or m.endswith(('separation.plots', "
            "'separation.history')))); s.plot_heatmap; print('nn_from_scratch.analysis.separation.plots' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT}).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


@pytest.mark.parametrize("old,new", [("separation_plots", "plots"), ("separation_history", "history"),
                                     ("_mst", "_mst"), ("separation_cli", "cli")])
def test_old_module_paths_are_the_package_modules(old, new):
    import importlib
    a = importlib.import_module(f"nn_from_scratch.analysis.{old}")
    b = importlib.import_module(f"nn_from_scratch.analysis.separation.{new}")
    assert a is b


def test_every_public_name_of_the_old_module_is_there():
    names = ["henze_penrose", "HPResult", "class_separation", "SeparationResult", "SeparationError", "fisher_test",
             "FisherResult", "compare_layers", "compare_stages", "SeparationHistory", "Table", "plot_histograms",
             "plot_separation_curve", "plot_heatmap", "plot_pca", "plot_history", "EXACT_LIMIT", "MEMORY_BUDGET",
             "INPUT"]
    assert set(names) <= set(sep.__all__)
    ns = {}
    exec("from nn_from_scratch.analysis.separation import *", ns)
    assert all(n in ns for n in names)
    from nn_from_scratch.analysis.separation_plots import plot_heatmap, save_figure  # noqa: F401
    from nn_from_scratch.analysis.separation_history import SeparationHistory
    from nn_from_scratch.analysis.separation_cli import main, run, separation_cnn  # noqa: F401
    assert SeparationHistory is sep.SeparationHistory and plot_heatmap is sep.plot_heatmap
