"""Optimisation with K-FAC / EKFAC against SGD + momentum and Adam.

Three models, each trained for a fixed budget of steps by every configuration of a small grid
(every run recorded)::

    seed_cnn     the seed lab's CNN (Conv 3x3 1->4, Conv 7x7 4->2, Linear 800->10; no biases),
                 bundled MNIST (4,000 train / 1,000 test, examples/networks.py)
    lenet5       LeNet-5 on the same data
    autoencoder  64-32-16-32-64 sigmoid autoencoder on sklearn's 8x8 digits (1,400 / 397), MSE

    SGD + momentum 0.9:   lr in {0.01, 0.03, 0.1}
    Adam:                 lr in {3e-4, 1e-3, 3e-3}
    KFAC, EKFAC:          lr in {0.01, 0.03} x damping in {1e-3, 1e-2, 1e-1}
                          (cov_every 10, inv_every 100, scale_every 10, kl_clip 1e-3, momentum 0.9,
                          empirical Fisher: the defaults)

Batch 64, one process (``workers=1``) for every optimizer, float32.  Every ``--eval-every`` steps the
training loss on a fixed subset of the training set is measured (outside the timed region).
Reported per run: the final training loss, the test accuracy (test MSE for the autoencoder) after
the budget, the steps and training seconds to a loss target, and the mean wall time of a step
(amortised: K-FAC's statistics every 10th step and eigendecompositions every 100th included).  The
target of each model is ``1.05 x`` the largest of the four optimizers' best final losses, so every
optimizer's best run reaches it and "steps to the target" compares the best configurations.

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/kfac_optimization.py --json opt.json \\
        --plot benchmarks/figures/kfac_optimization.png               # ~10 min on a busy 2-core VM
    PYTHONPATH=$PWD python benchmarks/kfac_optimization.py --quick    # smoke run
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nn_from_scratch import (EKFAC, KFAC, Adam, GradientDescent, Linear, MSELoss, NeuralNetwork, Sigmoid,
                             SoftMaxLoss)
from nn_from_scratch.examples.networks import lenet5_layers, seed_lab_layers  # noqa: E402
from nn_from_scratch.plotting import save_figure  # noqa: E402


def grid(quick=False):
    sgd = [("SGD+momentum", {"lr": lr}) for lr in ((0.03,) if quick else (0.01, 0.03, 0.1))]
    adam = [("Adam", {"lr": lr}) for lr in ((1e-3,) if quick else (3e-4, 1e-3, 3e-3))]
    kf = [(name, {"lr": lr, "damping": d}) for name in ("KFAC", "EKFAC")
          for lr in ((0.03,) if quick else (0.01, 0.03)) for d in ((1e-2,) if quick else (1e-3, 1e-2, 1e-1))]
    return sgd + adam + kf


def make_optimizer(name, cfg):
    if name == "SGD+momentum":
        return GradientDescent(momentum=0.9, **cfg)
    if name == "Adam":
        return Adam(**cfg)
    return (KFAC if name == "KFAC" else EKFAC)(**cfg)


def data(model, quick):
    if model == "autoencoder":
        from sklearn.datasets import load_digits
        X = (load_digits().data / 16.0).astype(np.float32)
        X = X[np.random.default_rng(0).permutation(len(X))]
        n = 400 if quick else 1400
        return X[:n], X[:n], X[1400:], X[1400:]
    from nn_from_scratch.data.datasets import load_mnist
    Xtr, ytr = load_mnist("train")
    Xte, yte = load_mnist("test")
    n = 512 if quick else len(ytr)
    return (Xtr[:n].reshape(-1, 1, 28, 28).astype(np.float32), ytr[:n], Xte.reshape(-1, 1, 28, 28).astype(np.float32),
            yte)


def build(model, opt, seed=0):
    if model == "seed_cnn":
        return NeuralNetwork(seed_lab_layers(batch_size=64, seed=seed), loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    if model == "lenet5":
        return NeuralNetwork(lenet5_layers(seed=seed), loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    rng = np.random.default_rng(seed)
    sizes = [64, 32, 16, 32, 64]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b, seed=rng))
        if i < len(sizes) - 2:
            layers.append(Sigmoid())
    return NeuralNetwork(layers, loss_fn=MSELoss(), optimizer=opt, workers=1)


def train(model, name, cfg, Xtr, ytr, Xte, yte, steps, eval_every, batch=64, seed=0):
    net = build(model, make_optimizer(name, cfg), seed)
    rng = np.random.default_rng(seed + 1)
    n = len(Xtr)
    Xev, yev = Xtr[:1000], ytr[:1000]
    curve = [(0, 0.0, float(net.evaluate(Xev, yev)[0]))]
    order, pos, elapsed = rng.permutation(n), 0, 0.0
    step_times = []
    for step in range(1, steps + 1):
        if pos + batch > n:
            order, pos = rng.permutation(n), 0
        sel = order[pos:pos + batch]
        pos += batch
        xb, yb = net._to_batch(Xtr[sel]), ytr[sel]
        t0 = time.perf_counter()
        loss, _ = net.train_step(xb, yb)
        dt = time.perf_counter() - t0
        elapsed += dt
        step_times.append(dt)
        if not np.isfinite(float(loss)):
            curve.append((step, elapsed, float("nan")))
            break
        if step % eval_every == 0 or step == steps:
            curve.append((step, elapsed, float(net.evaluate(Xev, yev)[0])))
    test_loss, test_acc = net.evaluate(Xte, yte)
    return {"model": model, "optimizer": name, "config": cfg, "curve": curve, "final_loss": curve[-1][2],
            "test_loss": float(test_loss), "test_accuracy": None if test_acc is None else float(test_acc),
            "mean_step_s": elapsed / len(step_times), "median_step_s": statistics.median(step_times)}


def to_target(run, target):
    for step, sec, loss in run["curve"]:
        if loss <= target:
            return step, sec
    return None, None


def summarise(runs):
    out = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mr = [r for r in runs if r["model"] == model]
        best = {}
        for r in mr:
            if np.isfinite(r["final_loss"]) and (r["optimizer"] not in best
                                                 or r["final_loss"] < best[r["optimizer"]]["final_loss"]):
                best[r["optimizer"]] = r
        target = 1.05 * max(b["final_loss"] for b in best.values())
        for r in mr:
            r["target"] = target
            r["steps_to_target"], r["seconds_to_target"] = to_target(r, target)
        step_time = {o: statistics.median(r["mean_step_s"] for r in mr if r["optimizer"] == o) for o in best}
        out[model] = {"target": target, "best": {o: b["config"] for o, b in best.items()},
                      "step_time_ratio_vs_sgd": {o: step_time[o] / step_time["SGD+momentum"] for o in step_time},
                      "mean_step_ms": {o: 1e3 * t for o, t in step_time.items()}}
    return out


def print_tables(runs, summary):
    for model, s in summary.items():
        print(f"\n## {model}: loss target {s['target']:.4f}; amortised step time / SGD step: "
              + ", ".join(f"{o} {v:.2f}x ({s['mean_step_ms'][o]:.1f} ms)" for o, v in s["step_time_ratio_vs_sgd"].items()))
        print("| optimizer | config | final train loss | test acc (AE: test MSE) | steps to target | s to target |")
        print("|---|---|---|---|---|---|")
        for r in (r for r in runs if r["model"] == model):
            test = r["test_accuracy"] if r["test_accuracy"] is not None else r["test_loss"]
            st = r["steps_to_target"]
            print(f"| {r['optimizer']} | {r['config']} | {r['final_loss']:.4f} | {test:.4f} | "
                  f"{st if st is not None else '-'} | "
                  f"{'%.1f' % r['seconds_to_target'] if st is not None else '-'} |")


def plot(runs, summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(summary)
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.3 * len(models)), squeeze=False)
    colors = {"SGD+momentum": "tab:gray", "Adam": "tab:blue", "KFAC": "tab:red", "EKFAC": "tab:green"}
    for row, model in zip(axes, models):
        for opt, cfg in summary[model]["best"].items():
            r = next(r for r in runs if r["model"] == model and r["optimizer"] == opt and r["config"] == cfg)
            c = np.array(r["curve"])
            label = f"{opt} {cfg}"
            row[0].plot(c[:, 0], c[:, 2], color=colors[opt], label=label)
            row[1].plot(c[:, 1], c[:, 2], color=colors[opt], label=label)
        for ax, xl in zip(row, ("step", "training seconds")):
            ax.axhline(summary[model]["target"], color="k", lw=0.7, ls=":")
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{model}\ntraining loss")
        row[0].legend(fontsize=7)
    fig.suptitle("Best run of each optimizer (dotted: the loss target)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)                 # atomic: never a half-written file
    print(f"plot: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one config per optimizer, 30 steps, small data")
    ap.add_argument("--models", default="seed_cnn,lenet5,autoencoder")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args(argv)
    steps = 30 if args.quick else args.steps
    print(f"load average at start: {os.getloadavg()}", flush=True)
    runs = []
    for model in args.models.split(","):
        Xtr, ytr, Xte, yte = data(model, args.quick)
        for name, cfg in grid(args.quick):
            r = train(model, name, cfg, Xtr, ytr, Xte, yte, steps, args.eval_every)
            runs.append(r)
            print(f"{model} {name} {cfg}: final loss {r['final_loss']:.4f}, step {1e3 * r['mean_step_s']:.1f} ms",
                  flush=True)
    summary = summarise(runs)
    print_tables(runs, summary)
    print(f"\nload average at end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "summary": summary}, f, indent=1)
    if args.plot:
        plot(runs, summary, args.plot)
    return runs, summary


if __name__ == "__main__":
    main()
