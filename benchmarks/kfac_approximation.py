"""How well do K-FAC and EKFAC approximate the true Fisher blocks of a small CNN, over training?

A small CNN on ``sklearn.datasets.load_digits`` (1,797 8x8 images, shipped with scikit-learn)::

    Conv 1->4, 3x3, pad 1 -> ReLU -> Conv 4->4, 3x3, stride 2 -> ReLU -> Flatten -> Linear 36->10

(40, 148 and 370 parameters per block) is trained with SGD + momentum; at checkpoints, on a fixed
set of training images, the exact per-layer block ``F`` (``curvature.fisher_block``: per-example
gradients stacked, type-2 = the exact expectation over the softmax, and empirical = the labels) is
compared with ``K = kron(G, A)`` and with EKFAC ``E`` (K's eigenbasis, re-estimated scalings)::

    ||F - K||_F / ||F||_F,     ||F - E||_F / ||F||_F          (E <= K always: checked)

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/kfac_approximation.py                # ~1 min on a busy 2-core VM
    PYTHONPATH=$PWD python benchmarks/kfac_approximation.py --quick        # smoke run
    ... --json approx.json --plot benchmarks/figures/kfac_approximation.png
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nn_from_scratch import Convolution, Flatten, GradientDescent, Linear, NeuralNetwork, ReLU, SoftMaxLoss
from nn_from_scratch.analysis import curvature  # noqa: E402
from nn_from_scratch.plotting import save_figure  # noqa: E402


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images / 16.0).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


def small_cnn(seed=0):
    rng = np.random.default_rng(seed)
    return NeuralNetwork([Convolution((None, 1, 8, 8), kernel_size=3, output_layers=4, padding=1, seed=rng,
                                      dtype=np.float64, name="conv1"), ReLU(name="relu1"),
                          Convolution((None, 4, 8, 8), kernel_size=3, output_layers=4, stride=2, seed=rng,
                                      dtype=np.float64, name="conv2"), ReLU(name="relu2"), Flatten(name="flat"),
                          Linear(36, 10, seed=rng, dtype=np.float64, name="fc")],
                         loss_fn=SoftMaxLoss(), optimizer=GradientDescent(0.05, momentum=0.9), workers=1)


def run(checkpoints, n_train, n_eval, batch_size, seed=0):
    X, y = digits()
    Xt, yt = X[:n_train], y[:n_train]
    Xe, ye = Xt[:n_eval], yt[:n_eval]
    net = small_cnn(seed)
    rng = np.random.default_rng(seed)
    rows, step = [], 0
    order = rng.permutation(n_train)
    pos = 0
    for target in checkpoints:
        while step < target:
            if pos + batch_size > n_train:
                order, pos = rng.permutation(n_train), 0
            sel = order[pos:pos + batch_size]
            pos += batch_size
            net.train_step(Xt[sel], yt[sel])
            step += 1
        loss, acc = net.evaluate(Xt, yt)
        row = {"step": step, "train_loss": float(loss), "train_accuracy": float(acc), "layers": {}}
        for fisher in ("type2", "empirical"):
            errs = curvature.approximation_errors(net, Xe, ye, fisher=fisher, batch_size=128)
            for name, e in errs.items():
                assert e["ekfac"] <= e["kfac"] + 1e-12, (step, fisher, name, e)
                row["layers"].setdefault(name, {})[fisher] = {"kfac": e["kfac"], "ekfac": e["ekfac"],
                                                               "params": e["params"]}
        rows.append(row)
        print(f"step {step:4d}  loss {loss:.3f}  acc {acc:.3f}  " + "  ".join(
            f"{name}: K {v['type2']['kfac']:.3f} E {v['type2']['ekfac']:.3f} | emp K {v['empirical']['kfac']:.3f} "
            f"E {v['empirical']['ekfac']:.3f}" for name, v in row["layers"].items()), flush=True)
    return rows


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    steps = [r["step"] for r in rows]
    names = list(rows[0]["layers"])
    colors = dict(zip(names, ["tab:blue", "tab:orange", "tab:green", "tab:red"]))
    for ax, fisher in zip(axes, ("type2", "empirical")):
        for name in names:
            ax.plot(steps, [r["layers"][name][fisher]["kfac"] for r in rows], "-o", color=colors[name],
                    label=f"{name} K-FAC")
            ax.plot(steps, [r["layers"][name][fisher]["ekfac"] for r in rows], "--s", color=colors[name],
                    label=f"{name} EKFAC")
        ax.set_title(f"{fisher} Fisher")
        ax.set_xlabel("training step (SGD + momentum, batch 64)")
        ax.set_xscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(r"$\|F - \tilde F\|_F / \|F\|_F$")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Small CNN on digits: relative Frobenius error of the Kronecker approximations per layer")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)                 # atomic: never a half-written file
    print(f"plot: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 checkpoints, 256 images (smoke run)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--plot", help="write the figure (PNG) here")
    args = ap.parse_args(argv)
    if args.quick:
        checkpoints, n_train, n_eval = [0, 5, 20], 256, 64
    else:
        checkpoints, n_train, n_eval = [0, 10, 30, 100, 300, 1000], 1024, 256
    t0 = time.perf_counter()
    rows = run(checkpoints, n_train, n_eval, batch_size=64)
    print(f"elapsed {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
