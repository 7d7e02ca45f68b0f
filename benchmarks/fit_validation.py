#!/usr/bin/env python3
"""Does ``fit``'s validation slow the training steps after it?  Step times per epoch.

    python benchmarks/fit_validation.py                      # LeNet-5, batch 50 and 256
    python benchmarks/fit_validation.py --batch-sizes 256 --runs 5

``fit(X, y, epochs=E, validation_data=...)`` on the MNIST digits, with every training
step's forward/backward timed (``perf_counter`` around ``NeuralNetwork._forward_backward``).
For each batch size it prints the median step and the mean of the first ``--first`` steps
of the epochs after a validation (2..E) divided by it: about 1 when a validation leaves the
CPU as it found it.  Before the workers ran the validation's forward passes too (issue 3,
seventh session) that ratio was ~2: the validation's multi-threaded BLAS left its threads
spinning for ~0.1 s on the core a split step's worker needs.  The wall time of each ``fit``
call is printed too.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.ensure_repo_on_path()


def run(batch, runs, epochs, first, n_train, n_val, X, y):
    net = common.build_ours("lenet5", batch)
    net.fit(X[:1000], y[:1000], epochs=1, batch_size=batch, verbose=0, seed=0)       # warm-up, workers
    times, inner = [], net._forward_backward

    def timed(*args, **kw):
        t = time.perf_counter()
        out = inner(*args, **kw)
        times.append(time.perf_counter() - t)
        return out
    net._forward_backward = timed
    steps = -(-n_train // batch)
    medians, afters, walls = [], [], []
    for _ in range(runs):
        del times[:]
        t0 = time.perf_counter()
        net.fit(X[:n_train], y[:n_train], epochs=epochs, batch_size=batch, verbose=0, seed=0,
                validation_data=(X[n_train:n_train + n_val], y[n_train:n_train + n_val]))
        walls.append(time.perf_counter() - t0)
        med = statistics.median(times)
        after = [t for e in range(1, epochs) for t in times[e * steps:e * steps + first]]
        medians.append(med)
        afters.append(statistics.mean(after) / med)
    net.stop_workers()
    print(f"lenet5 batch {batch:>4}: median step {1e3 * statistics.median(medians):6.2f} ms; first {first} steps "
          f"after a validation / median step: {statistics.median(afters):.2f} "
          f"(runs: {', '.join(f'{a:.2f}' for a in afters)}); fit wall time {statistics.median(walls):.3f} s "
          f"({epochs} epochs of {n_train} + validation of {n_val})", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="50,256")
    p.add_argument("--runs", type=int, default=3, help="fit calls per batch size (default 3)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--first", type=int, default=4, help="steps counted after each validation (default 4)")
    a = p.parse_args(argv)
    import warnings  # noqa: PLC0415
    import nn_from_scratch as nf  # noqa: PLC0415
    warnings.simplefilter("ignore", nf.TrainingWarning)     # 3 epochs at lr 0.01 may look "not learning"
    X, y = common.load_data()
    common.print_machine_info(common.machine_info())
    for batch in [int(b) for b in a.batch_sizes.split(",")]:
        run(batch, a.runs, a.epochs, a.first, 4000, 1000, X, y)


if __name__ == "__main__":
    main()
