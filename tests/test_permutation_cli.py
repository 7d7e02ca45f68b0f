"""python -m nn_from_scratch permutation-test: runs, writes the PNG maps, the .npz result and the
JSON summary (a tiny run: 200 digits, 1 epoch, B = 2), and the seed's per-minibatch loop."""
import json
import os
import subprocess
import sys

import numpy as np

from nn_from_scratch.analysis import permutation as pt
from nn_from_scratch.analysis.permutation_cli import build_seed_cnn, seed_loop_network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_writes_maps_result_and_summary(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "nn_from_scratch", "permutation-test", "--permutations", "2",
                        "--epochs", "1", "--n-train", "200", "--out", str(out), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["n_permutations"] == 2 and s["n_train"] == 200 and 0 <= s["test_accuracy"] <= 1
    assert set(s["significant_pixels"]) == {"maxT", "holm", "bh", "none"}
    assert s["scope"] == "global" and "do not localise" in s["statement"] and "do not localise" in r.stdout
    assert "warning: with B = 2 permutations" in r.stderr            # 1/3 > 0.05: nothing can pass max-T
    res = pt.PermutationTestResult.load(out / "result.npz")
    assert res.statistic.shape == (1, 28, 28) and res.null_distribution.shape == (2, 1, 28, 28)
    assert (out / "association_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "nn_from_scratch", "permutation-test", "--permutations", "0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--permutations must be >= 1, received 0" in bad.stderr


def test_cli_conditional_patches_sequential(tmp_path):
    out = tmp_path / "cond"
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "nn_from_scratch", "permutation-test", "--null", "conditional",
                        "--patch", "14", "--sequential", "1", "--permutations", "3", "--epochs", "1",
                        "--n-train", "200", "--out", str(out), "--no-progress", "--method", "holm"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["scope"] == "conditional" and s["n_patches"] == 4 and s["method"] == "holm" and s["sequential"] == 1
    assert "CONDITIONAL" in r.stdout
    # holm over 4 patches with B = 3: smallest adjusted p = 4/4 = 1 > 0.05
    assert "warning: with B = 3 permutations the smallest attainable holm-adjusted p-value over 4 tests is 1" \
        in r.stderr and "--permutations >= 79" in r.stderr
    res = pt.PermutationTestResult.load(out / "result.npz")
    assert res.scope == "conditional" and res.p_values.shape == (4,) and res.sequential == 1
    assert 1 <= min(s["fits_per_patch"]) and s["n_fits"] >= 1 + sum(s["fits_per_patch"])
    assert (out / "conditional_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refusals_name_the_flag():
    env = dict(os.environ, PYTHONPATH=ROOT)
    for argv, msg in ((["--null", "conditional", "--patch", "29"], "--patch must be an integer in [1, 28]"),
                      (["--null", "conditional", "--method", "maxT"], "--method maxT needs one joint null"),
                      (["--sequential", "3"], "--sequential belongs to --null conditional")):
        bad = subprocess.run([sys.executable, "-m", "nn_from_scratch", "permutation-test", *argv],
                             env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and msg in bad.stderr, bad.stderr


def test_too_few_permutations_warning():
    from nn_from_scratch.analysis.permutation_cli import too_few_permutations
    assert too_few_permutations("bh", 16, 19, 0.05) is None                 # 1/20 <= 0.05
    assert "use --permutations >= 319" in too_few_permutations("holm", 16, 99, 0.05)
    assert too_few_permutations("holm", 16, 319, 0.05) is None
    assert "use --permutations >= 19" in too_few_permutations("maxT", 784, 18, 0.05)


def test_cli_scheduler_runs_the_fits_on_a_dask_cluster(tmp_path):
    distributed = __import__("pytest").importorskip("distributed")
    from nn_from_scratch.analysis import permutation_cli
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  dashboard_address=None) as cl:
        s = permutation_cli.run(permutations=2, epochs=1, n_train=100, out=str(tmp_path / "d"), progress=False,
                                null="conditional", patch=14, scheduler=cl.scheduler_address)
    assert s["backend"] == "dask" and s["scheduler"].startswith("tcp://") and s["n_patches"] == 4


def test_seed_loop_repermutes_inside_every_minibatch():
    """The seed's loop trains on labels shuffled within each minibatch: its networks' statistic is far
    below that of a network trained on one fixed labelling (so its "null" rejects everywhere)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (256, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    fixed, _ = pt.train_replicate(build_seed_cnn, X, y, {"epochs": 3, "batch_size": 64}, seed=0, key=1)
    loop = seed_loop_network(build_seed_cnn, X, y, epochs=3, batch_size=64, seed=1)
    t_fixed = pt.association_statistic(pt.input_gradients(fixed, X)).sum()
    t_loop = pt.association_statistic(pt.input_gradients(loop, X)).sum()
    assert t_loop < t_fixed
