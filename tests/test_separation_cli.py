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
