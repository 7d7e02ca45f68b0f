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
    res = pt.PermutationTestResult.load(out / "result.npz")
    assert res.statistic.shape == (1, 28, 28) and res.null_distribution.shape == (2, 1, 28, 28)
    assert (out / "association_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "nn_from_scratch", "permutation-test", "--permutations", "0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--permutations must be >= 1, received 0" in bad.stderr


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
