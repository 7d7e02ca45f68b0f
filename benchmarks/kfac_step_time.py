"""Amortised step time of KFAC / EKFAC against SGD + momentum on one model, interleaved.

One batch of 64; each optimizer (its defaults: statistics every 10th step, eigendecompositions every
100th; SGD + momentum lr 0.03) first runs 100 untimed steps, then ``--rounds`` rounds of 100 timed
steps each, the optimizers' order reversed every other round (ABC CBA ...: a load that drifts
during the run weighs on all of them alike).  Reported: the mean step (amortised: every kind of
step in proportion) and its ratio to SGD's, and the medians of the plain, statistics and
eigendecomposition steps.  Goals: K-FAC at most 1.6x, EKFAC at most 2x an SGD step.

    PYTHONPATH=$PWD python benchmarks/kfac_step_time.py seed_cnn      # or lenet5, autoencoder
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kfac_optimization as ko  # noqa: E402

from nn_from_scratch import EKFAC, KFAC, GradientDescent  # noqa: E402

OPTIMIZERS = {"SGD+momentum": lambda: GradientDescent(lr=0.03, momentum=0.9), "KFAC": KFAC, "EKFAC": EKFAC}


def main(model="seed_cnn", rounds=4):
    rounds = int(rounds)
    Xtr, ytr, _, _ = ko.data(model, True)
    print(f"{model}; load average {os.getloadavg()}")
    nets = {name: ko.build(model, make()) for name, make in OPTIMIZERS.items()}
    xb, yb = nets["SGD+momentum"]._to_batch(Xtr[:64]), ytr[:64]
    times = {name: [] for name in nets}
    for name, net in nets.items():
        for _ in range(100):
            net.train_step(xb, yb)
    for r in range(rounds):
        for name in (list(nets) if r % 2 == 0 else list(nets)[::-1]):
            net = nets[name]
            for _ in range(100):
                t = time.perf_counter()
                net.train_step(xb, yb)
                times[name].append(time.perf_counter() - t)
    idx = np.arange(100, 100 + 100 * rounds)
    stat, inv = idx % 10 == 0, idx % 100 == 0
    sgd = np.mean(times["SGD+momentum"])
    out = {}
    for name, ts in times.items():
        ts = np.array(ts)
        out[name] = ts.mean() / sgd
        print(f"{name}: mean {ts.mean() * 1e3:.2f} ms = {ts.mean() / sgd:.2f}x SGD; plain steps median "
              f"{np.median(ts[~stat]) * 1e3:.2f}; statistics steps median {np.median(ts[stat & ~inv]) * 1e3:.1f}; "
              f"eigendecomposition steps median {np.median(ts[inv]) * 1e3:.1f} ms")
    print(f"load average {os.getloadavg()}")
    return out


if __name__ == "__main__":
    main(*sys.argv[1:3])
