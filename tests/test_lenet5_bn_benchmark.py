"""Smoke test of benchmarks/lenet5_bn_dropout.py (tiny: 128 images, one epoch), where Fashion-MNIST is installed.

It checks the script's plumbing: the Keras twin of a network with BatchNorm and Dropout (Keras's
own Dropout in place of the cross-check's masked one) starts from our weights, and the report
says which fast paths apply.
"""
import json
import os
import sys

import pytest

from nn_from_scratch.engine import parallel

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import lenet5_bn_dropout as bench  # noqa: E402


@pytest.mark.skipif(not any(os.path.isdir(d) for d in bench.DIRS), reason="Fashion-MNIST is not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_lenet5_bn_dropout_benchmark_runs(tmp_path):
    pytest.importorskip("tensorflow")
    out = str(tmp_path / "r.json")
    bench.main(["--epochs", "1", "--train", "128", "--frameworks", "ours", "keras", "--json", out])
    with open(out) as f:
        r = json.load(f)
    # BatchNorm networks split too (engine/parallel/sync.py), into as many shards as plain ones
    assert r["fast_paths"]["split_shards_at_batch_64"] == parallel.shard_count(bench.build(0), 64)
    assert r["fast_paths"]["split_shards_at_batch_64"] == min(parallel.usable_cores(), 64 // parallel.policy.min_shard()) \
        or not parallel.split_allowed()
    assert r["fast_paths"]["relu_maxpool_pairs_fused"] == [6, 2][::-1]
    for fw in ("ours", "keras"):
        assert 0 <= r[fw]["test_accuracy"] <= 1 and r[fw]["samples_per_s"] > 0
