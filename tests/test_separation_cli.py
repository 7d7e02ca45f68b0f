"""``python -m nn_from_scratch separation``: a tiny run writes every file, bad options exit 2."""
import json
import os

import numpy as np
import pytest

from nn_from_scratch.__main__ import main as cli
from nn_from_scratch.analysis import separation as sep
from nn_from_scratch.analysis.separation_cli import separation_cnn


def test_separation_cnn_has_the_seeds_layers():
    net = separation_cnn()
    assert [layer.name for layer in net.layers] == ["conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2",
                                                    "flatten", "fc1", "relu3", "fc2"]
    assert net.predict(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


def test_cli_writes_results_tables_and_pictures(tmp_path, capsys):
    out = tmp_path / "sep"
    rc = cli(["separation", "--epochs", "1", "--n-train", "200", "--n-per-class", "8", "--test-per-class", "8",
              "--channels", "2", "2", "--hidden", "8", "--permutations", "100", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "after training: test vs train" in printed and "Wall time" in printed
    names = set(os.listdir(out))
    assert {"train_before.json", "train_after.json", "test_before.json", "test_after.json", "tests.txt",
            "tests.json", "summary.json", "curve.png", "histograms_train.png", "histograms_test.png",
            "heatmap_fc2.png", "pca_fc1.png"} <= names
    assert not [n for n in names if n.startswith(".tmp-")]
    r = sep.SeparationResult.from_json(out / "test_after.json")
    assert r.layers[0] == "input" and r.layers[-1] == "fc2" and len(r.pairs) == 45
    assert set(r.m) == {8}
    tests = json.loads((out / "tests.json").read_text())
    assert len(tests["train: after vs before training"]) == 11
    assert tests["train: after vs before training"][0]["p_value"] == 1.0   # the input did not change
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,msg", [(["--epochs", "0"], "--epochs must be >= 1"),
                                      (["--test-per-class", "1"], "--test-per-class must be >= 2"),
                                      (["--lr", "-1"], "--lr must be > 0"),
                                      (["--n-train", "5"], "--n-train must be >= 20")])
def test_cli_bad_options(args, msg, capsys, tmp_path):
    assert cli(["separation", "--out", str(tmp_path)] + args) == 2
    assert msg in capsys.readouterr().err


def test_cli_too_many_per_class(capsys, tmp_path):
    rc = cli(["separation", "--epochs", "1", "--n-train", "100", "--n-per-class", "50", "--out", str(tmp_path),
              "--quiet", "--channels", "2", "2", "--hidden", "4"])
    assert rc == 2
    assert "n_per_class=None" in capsys.readouterr().err


def test_benchmark_quick_runs_and_agrees_with_the_baseline(tmp_path, capsys):
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("bench_separation",
                                                  os.path.join(root, "benchmarks", "bench_separation.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0      # 1 means an R differed from the baseline's
    figures = json.loads(out.read_text())
    assert figures["mismatches"] == 0 and figures["ours_s"] > 0 and figures["baseline_s"] > 0
    assert "ratio baseline / ours" in capsys.readouterr().out


# ----------------------------------------------------------------------------- --model
def _scipy_R(Za, Zb):
    """Cross edges of the Euclidean MST (SciPy), written here as the reference."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist
    Z = np.concatenate([Za, Zb]).reshape(len(Za) + len(Zb), -1).astype(np.float64)
    T = minimum_spanning_tree(cdist(Z, Z)).tocoo()
    return int(np.sum((T.row < len(Za)) != (T.col < len(Za))))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    from nn_from_scratch.data import datasets
    X, y = datasets.load_mnist("all")
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), 30, replace=False) for c in range(10)])
    from nn_from_scratch import Adam
    net = separation_cnn((2, 3), 8, seed=1, optimizer=Adam(lr=0.01))
    net.fit(X[keep], y[keep], epochs=3, batch_size=16, seed=0, verbose=0)
    d = tmp_path_factory.mktemp("model")
    net.save(d / "cnn.npz")
    sub = np.concatenate([np.flatnonzero(y == c)[:9] for c in (1, 4, 7)])
    np.savez(d / "data.npz", X=X[sub], y=y[sub])
    return d / "cnn.npz", d / "data.npz", X[sub], y[sub], net


def test_cli_model_analyses_the_saved_model_on_its_data(trained_model, tmp_path, capsys):
    from nn_from_scratch import NeuralNetwork
    path, data, X, y, net = trained_model
    out = tmp_path / "out"
    rc = cli(["separation", "--model", str(path), "--data", str(data), "--permutations", "99", "--out", str(out),
              "--quiet"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "each layer vs the previous" in printed
    assert {"separation.json", "tests.txt", "tests.json", "summary.json", "histograms.png", "curve.png",
            "heatmap_fc2.png"} <= set(os.listdir(out))
    r = sep.SeparationResult.from_json(out / "separation.json")
    assert r.classes == [1, 4, 7] and r.layers == ["input"] + [layer.name for layer in net.layers]
    assert list(r.m) == [9, 9, 9] and list(r.n) == [9, 9, 9]
    # the analysed model is the trained one (not a fresh network): its outputs give the same trees
    loaded = NeuralNetwork.load(path)
    with loaded.inference():
        outs = loaded.layer_outputs(X)
    outs["input"] = X
    for layer in ("input", "conv1", "relu2", "fc1", "fc2"):
        for (a, b), R in zip(r.pairs, r.values(layer, "R")):
            assert R == _scipy_R(outs[layer][y == a], outs[layer][y == b]), (layer, a, b)
    pred = net.predict(X).argmax(axis=1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert f"{100 * np.mean(pred == y):.2f}%" in printed


def test_cli_model_defaults_to_the_mnist_test_images(trained_model, tmp_path, capsys):
    path = trained_model[0]
    rc = cli(["separation", "--model", str(path), "--test-per-class", "4", "--permutations", "99", "--out",
              str(tmp_path), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    r = sep.SeparationResult.from_json(tmp_path / "separation.json")
    assert len(r.pairs) == 45 and set(r.m) == {4}


CUSTOM_LAYER = '''
import numpy as np
from nn_from_scratch.layers.activations import ReLU


class SeparationTestShiftedReLU(ReLU):
    """ReLU plus one (a layer class of the model's own)."""

    def _forward(self, x):
        return super()._forward(x) + 1
'''


def test_cli_model_with_its_own_layers_needs_import(tmp_path, capsys, monkeypatch):
    from nn_from_scratch import Linear, NeuralNetwork, SoftMaxLoss
    from nn_from_scratch.checks.grade import import_module
    from nn_from_scratch.layers import registry
    (tmp_path / "mylayers.py").write_text(CUSTOM_LAYER)
    mod = import_module(str(tmp_path / "mylayers.py"))
    rng = np.random.default_rng(0)
    net = NeuralNetwork([Linear(5, 6, seed=0, name="fc"), mod.SeparationTestShiftedReLU(name="act"),
                         Linear(6, 3, seed=1, name="out")], SoftMaxLoss(), input_shape=(5,))
    net.save(tmp_path / "m.npz")
    X = rng.standard_normal((30, 5)).astype(np.float32)
    y = np.repeat([0, 1, 2], 10)
    X[y == 2] += 3.0
    np.savez(tmp_path / "d.npz", X=X, y=y)
    monkeypatch.delitem(registry._REGISTRY, "SeparationTestShiftedReLU")
    args = ["separation", "--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "d.npz"), "--permutations",
            "99", "--quiet", "--out", str(tmp_path / "o")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "SeparationTestShiftedReLU" in err and "--import" in err
    assert cli(args + ["--import", str(tmp_path / "mylayers.py")]) == 0, capsys.readouterr().err
    r = sep.SeparationResult.from_json(tmp_path / "o" / "separation.json")
    assert r.layers == ["input", "fc", "act", "out"]
    with net.inference():
        Z = net.layer_outputs(X)["act"]
    assert np.all(Z >= 1)                                         # the custom forward ran
    assert r.values("act", "R")[1] == _scipy_R(Z[y == 0], Z[y == 2])


@pytest.mark.parametrize("extra,msg", [(["--epochs", "3"], "--epochs is an option of the training run"),
                                       (["--hidden", "8"], "--hidden is an option of the training run"),
                                       (["--data", "nothere.npz"], "cannot read 'nothere.npz'")])
def test_cli_model_bad_options(trained_model, extra, msg, tmp_path, capsys):
    assert cli(["separation", "--model", str(trained_model[0]), "--out", str(tmp_path)] + extra) == 2
    assert msg in capsys.readouterr().err


def test_cli_model_errors(tmp_path, capsys):
    assert cli(["separation", "--import", "x.py", "--out", str(tmp_path)]) == 2
    assert "--import goes with --model" in capsys.readouterr().err
    assert cli(["separation", "--model", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert "no model file" in capsys.readouterr().err
    from nn_from_scratch import Linear, NeuralNetwork, SoftMaxLoss
    NeuralNetwork([Linear(5, 3, seed=0)], SoftMaxLoss(), input_shape=(5,)).save(tmp_path / "m.npz")
    assert cli(["separation", "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path)]) == 2
    assert "give its samples with --data" in capsys.readouterr().err
    np.savez(tmp_path / "d.npz", X=np.zeros((4, 5)), labels=np.zeros(4))
    assert cli(["separation", "--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "d.npz"), "--out",
                str(tmp_path)]) == 2
    assert "must hold arrays named X and y" in capsys.readouterr().err
