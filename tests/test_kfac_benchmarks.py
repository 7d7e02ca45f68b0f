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
