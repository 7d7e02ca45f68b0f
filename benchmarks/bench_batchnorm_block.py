#!/usr/bin/env python3
"""Does the engine's ``BatchNorm -> ReLU -> MaxPool`` unit (``engine/batchnorm_block.py``) pay?
LeNet-5 with BatchNorm and Dropout (``lenet5_bn_dropout.py``'s network), one ``fit`` epoch on
Fashion-MNIST at batch 64, the unit on and off in turns (ABBA), in one run.

    PYTHONPATH=$PWD python benchmarks/bench_batchnorm_block.py --train 6400 --rounds 4
    PYTHONPATH=$PWD python benchmarks/bench_batchnorm_block.py --cpu-time    # CPU time, BLAS at 1 thread

Prints the per-step time of each (wall clock at default threads, or with ``--cpu-time`` this
thread's CPU time with BLAS held to one thread: steadier on a shared machine), best and median
over the rounds, and the ratio off/on (> 1: the unit pays).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lenet5_bn_dropout as bench  # noqa: E402
from nn_from_scratch.engine import batchnorm_block  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=6400)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--cpu-time", action="store_true")
    args = p.parse_args(argv)
    clock = time.perf_counter
    if args.cpu_time:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
        threadpool_limits(limits=1, user_api="blas")
        clock = time.thread_time
    X, y, _, _, _ = bench.load(args.train)
    nets = {True: bench.build(0), False: bench.build(0)}
    steps = -(-len(X) // 64)
    times = {True: [], False: []}
    print(f"load before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    for r in range(args.rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):       # ABBA
            batchnorm_block.BLOCK = on
            t = clock()
            nets[on].fit(X, y, epochs=1, batch_size=64, seed=r, verbose=0)
            times[on].append((clock() - t) / steps * 1e3)
    batchnorm_block.BLOCK = True
    for on in (True, False):
        v = times[on]
        print(f"unit {'on ' if on else 'off'}: best {min(v):.3f} ms, median {statistics.median(v):.3f} ms per step "
              f"({'CPU time, BLAS 1 thread' if args.cpu_time else 'wall clock, default threads'})")
    print(f"off/on: best {min(times[False]) / min(times[True]):.3f}x, "
          f"median {statistics.median(times[False]) / statistics.median(times[True]):.3f}x")
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}", flush=True)


if __name__ == "__main__":
    main()
