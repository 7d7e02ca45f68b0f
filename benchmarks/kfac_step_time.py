"""Amortised step time of KFAC / EKFAC against SGD + momentum on one model (issue 20).

300 steps on one batch of 64; steps 100-299 timed: the mean (amortised: statistics every 10th
step, eigendecompositions every 100th), and the medians of the plain, statistics and inverse steps.

    PYTHONPATH=$PWD python benchmarks/kfac_step_time.py seed_cnn      # or lenet5, autoencoder
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kfac_optimization as ko  # noqa: E402


def main(model="seed_cnn"):
    Xtr, ytr, _, _ = ko.data(model, True)
    print(f"{model}; load average {os.getloadavg()}")
    for name, cfg in [("SGD+momentum", {"lr": 0.03}), ("KFAC", {"lr": 0.03, "damping": 1e-2}),
                      ("EKFAC", {"lr": 0.03, "damping": 1e-2})]:
        net = ko.build(model, ko.make_optimizer(name, cfg))
        xb, yb = net._to_batch(Xtr[:64]), ytr[:64]
        ts = []
        for _ in range(300):
            t = time.perf_counter()
            net.train_step(xb, yb)
            ts.append(time.perf_counter() - t)
        ts, idx = np.array(ts[100:]), np.arange(100, 300)
        stat, inv = idx % 10 == 0, idx % 100 == 0
        print(f"{name}: mean {ts.mean() * 1e3:.1f} ms; plain steps median {np.median(ts[~stat]) * 1e3:.1f}; "
              f"statistics steps median {np.median(ts[stat & ~inv]) * 1e3:.1f}; inverse steps "
              f"{np.round(ts[inv] * 1e3, 1).tolist()} ms")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
