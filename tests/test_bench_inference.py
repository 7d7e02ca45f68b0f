"""Smoke tests of benchmarks/bench_inference.py and benchmarks/bench_batchnorm_block.py (tiny runs):
the PyTorch twin computes our networks' outputs (the script asserts it before timing), every
rate is positive and the printed ratios are the quotients of the rates.  Nothing here asserts a speed."""
import os
import re
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import bench_inference  # noqa: E402


def test_bench_inference_runs_and_its_ratios_add_up():
    pytest.importorskip("torch")
    lines = []
    res = bench_inference.run(list(bench_inference.NETS), [64], 1, ["torch"], print_fn=lambda s, **_: lines.append(s),
                              samples=150)
    assert set(res) == {f"{n}@64" for n in bench_inference.NETS}
    for key, row in res.items():
        assert set(row) == {"ours.predict", "ours.evaluate", "torch.predict", "torch.evaluate"}
        assert all(v > 0 for v in row.values())
    for line, row in zip(lines, res.values()):
        got = dict(re.findall(r"(predict|evaluate) ours/torch ([0-9.]+)x", line))
        for op, ratio in got.items():
            assert float(ratio) == pytest.approx(row[f"ours.{op}"] / row[f"torch.{op}"], abs=0.006)


def test_bench_batchnorm_block_runs(capsys):
    import lenet5_bn_dropout
    if not any(os.path.isdir(d) for d in lenet5_bn_dropout.DIRS):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    import bench_batchnorm_block
    from nn_from_scratch.engine import batchnorm_block
    bench_batchnorm_block.main(["--train", "128", "--rounds", "2", "--cpu-time"])
    out = capsys.readouterr().out
    assert re.search(r"unit on : best [0-9.]+ ms", out) and re.search(r"off/on: best [0-9.]+x", out)
    assert batchnorm_block.BLOCK is True                    # put back
