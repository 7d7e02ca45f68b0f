"""K-FAC / EKFAC with their default settings against Adam with its default settings, at equal epochs.

Each optimizer is constructed with no argument at all (``KFAC()``, ``EKFAC()``, ``Adam()``: what a
new user gets), trains the seed lab CNN and LeNet-5 (``examples/networks.py``) on the bundled
MNIST (4,000 training / 1,000 test images) for ``--epochs`` epochs, batch 64, one process, for each
of ``--seeds`` (the weights and the shuffling order); the test accuracy after every epoch is
recorded.  The goal: K-FAC's and EKFAC's mean test accuracy at least Adam's at every recorded
epoch, over the seeds.  ``--grid`` also runs K-FAC over a small grid of learning rates and damping
values (how the defaults were chosen).

    PYTHONPATH=$PWD python benchmarks/kfac_defaults.py --epochs 5 --seeds 0,1,2 --json d.json
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nn_from_scratch import EKFAC, KFAC, Adam, NeuralNetwork, SoftMaxLoss  # noqa: E402
from nn_from_scratch.data.datasets import load_mnist  # noqa: E402
from nn_from_scratch.examples.networks import lenet5_layers, seed_lab_layers  # noqa: E402

BATCH = 64


def data(n_train=None):
    Xtr, ytr = load_mnist("train")
    Xte, yte = load_mnist("test")
    n = len(ytr) if n_train is None else n_train
    return (Xtr[:n].reshape(-1, 1, 28, 28).astype(np.float32), ytr[:n],
            Xte.reshape(-1, 1, 28, 28).astype(np.float32), yte)


def build(model, opt, seed):
    layers = seed_lab_layers(batch_size=BATCH, seed=seed) if model == "seed_cnn" else lenet5_layers(seed=seed)
    return NeuralNetwork(layers, loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)


def run(model, name, make, seed, epochs, Xtr, ytr, Xte, yte):
    import warnings
    net = build(model, make(), seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = net.fit(Xtr, ytr, epochs=epochs, batch_size=BATCH, seed=seed, verbose=0, validation_data=(Xte, yte))
    acc = [float(a) for a in hist.history["val_accuracy"]]
    return {"model": model, "optimizer": name, "seed": seed, "test_accuracy": acc,
            "train_loss": [float(v) for v in hist.history["loss"]], "seconds": time.perf_counter() - t0,
            "warnings": sorted({str(w.message)[:80] for w in caught})}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="seed_cnn,lenet5")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-train", type=int, default=None, help="fewer training images (a loaded machine)")
    ap.add_argument("--grid", action="store_true", help="also K-FAC over lr x damping")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    Xtr, ytr, Xte, yte = data(args.n_train)
    configs = [("Adam()", Adam), ("KFAC()", KFAC), ("EKFAC()", EKFAC)]
    if args.grid:
        configs += [(f"KFAC(lr={lr}, damping={d})", (lambda lr=lr, d=d: KFAC(lr=lr, damping=d)))
                    for lr in (0.01, 0.03) for d in (1e-3, 1e-2, 1e-1, 3e-1)]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    runs = []
    for model in args.models.split(","):
        for name, make in configs:
            for seed in seeds:
                r = run(model, name, make, seed, args.epochs, Xtr, ytr, Xte, yte)
                runs.append(r)
                print(f"{model} {name} seed {seed}: test accuracy by epoch {np.round(r['test_accuracy'], 4).tolist()} "
                      f"({r['seconds']:.1f} s){' warnings: ' + '; '.join(r['warnings']) if r['warnings'] else ''}",
                      flush=True)
    print(f"\nmean test accuracy over seeds {seeds} after each epoch (batch {BATCH}, {len(ytr)} training images)")
    summary = {}
    for model in args.models.split(","):
        for name, _ in configs:
            accs = np.array([r["test_accuracy"] for r in runs if r["model"] == model and r["optimizer"] == name])
            summary.setdefault(model, {})[name] = {"mean": accs.mean(axis=0).tolist(), "min": accs.min(axis=0).tolist()}
            print(f"| {model} | {name} | " + " | ".join(f"{m:.4f}" for m in accs.mean(axis=0))
                  + f" | min over seeds at the end {accs[:, -1].min():.4f} |")
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        from nn_from_scratch.atomic import write_text_atomic
        write_text_atomic(args.json, json.dumps({"runs": runs, "summary": summary}, indent=1))
    return runs, summary


if __name__ == "__main__":
    main()
