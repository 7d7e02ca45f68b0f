"""The K-FAC benchmark scripts run (smoke runs, small sizes) and produce their figures."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
pytest.importorskip("sklearn")


def test_approximation_benchmark_quick(tmp_path):
    import kfac_approximation
    rows = kfac_approximation.main(["--quick", "--json", str(tmp_path / "a.json")])
    assert [r["step"] for r in rows] == [0, 5, 20]
    for r in rows:
        for layer in r["layers"].values():
            for fisher in ("type2", "empirical"):
                assert 0 <= layer[fisher]["ekfac"] <= layer[fisher]["kfac"] + 1e-12
    assert (tmp_path / "a.json").exists()


def test_optimization_benchmark_quick(tmp_path):
    pytest.importorskip("matplotlib")
    import kfac_optimization
    runs, summary = kfac_optimization.main(["--quick", "--models", "autoencoder", "--plot", str(tmp_path / "o.png")])
    assert {r["optimizer"] for r in runs} == {"SGD+momentum", "Adam", "KFAC", "EKFAC"}
    assert set(summary["autoencoder"]["step_time_ratio_vs_sgd"]) == {"SGD+momentum", "Adam", "KFAC", "EKFAC"}
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_defaults_benchmark_runs(tmp_path):
    import json
    import kfac_defaults
    runs, summary = kfac_defaults.main(["--models", "seed_cnn", "--epochs", "1", "--seeds", "0", "--n-train", "256",
                                        "--json", str(tmp_path / "d.json")])
    assert {r["optimizer"] for r in runs} == {"Adam()", "KFAC()", "EKFAC()"}
    assert all(len(r["test_accuracy"]) == 1 and 0 <= r["test_accuracy"][0] <= 1 for r in runs)
    assert json.loads((tmp_path / "d.json").read_text())["summary"] == json.loads(json.dumps(summary))


def test_step_time_benchmark_runs():
    import kfac_step_time
    ratios = kfac_step_time.main("autoencoder", 1)
    assert set(ratios) == {"SGD+momentum", "KFAC", "EKFAC"} and ratios["SGD+momentum"] == 1.0
    assert all(r > 0 for r in ratios.values())
