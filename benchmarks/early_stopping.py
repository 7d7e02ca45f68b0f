#!/usr/bin/env python3
"""Early stopping with ``restore_best_weights`` on the main job's recipe, against fixed epochs.

    PYTHONPATH=$PWD python benchmarks/early_stopping.py                 # seeds 0-2
    PYTHONPATH=$PWD python benchmarks/early_stopping.py --seeds 0 1 2 3 4 --patience 2

The main job (``nn_from_scratch/train.py``: the seed lab's CNN, Adam lr 0.001, batch 16, 10
epochs, the 5,000 bundled MNIST digits, tested on the official 10,000) reports its last epoch.
Three runs per seed, all tested on the official test set, which selects nothing:

* ``fixed10``: the main job as it is (all 5,000 digits, 10 epochs, the last epoch's weights);
* ``fixed10_90``: the same on the first 90 % of the digits (what early stopping trains on);
* ``early``: ``fit(..., epochs=10, validation_split=0.1, callbacks=[EarlyStopping(monitor=
  "val_loss", patience=P, restore_best_weights=True)])``: the last 500 digits choose the epoch.

Printed per seed: the epoch it stopped at (1-based; 10 = ran out), the epoch whose weights it
kept, and the test accuracy of each run.  ``--json PATH`` writes every figure.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nn_from_scratch import EarlyStopping, train  # noqa: E402


def one(seed, patience, epochs, X, y, Xt, yt):
    out = {"seed": seed}
    t = time.perf_counter()
    net = train.build_model("adam", None, 16, seed)
    h = net.fit(X, y, epochs=epochs, batch_size=16, seed=seed, verbose=0, validation_data=(Xt, yt),
                validation_batch_size=train.EVAL_BATCH)
    out["fixed10"] = {"test_accuracy": h.history["val_accuracy"][-1],
                      "test_accuracy_per_epoch": h.history["val_accuracy"]}
    n90 = int(len(y) * 0.9)
    net = train.build_model("adam", None, 16, seed)
    h = net.fit(X[:n90], y[:n90], epochs=epochs, batch_size=16, seed=seed, verbose=0)
    out["fixed10_90"] = {"test_accuracy": net.evaluate(Xt, yt, batch_size=train.EVAL_BATCH)[1]}
    net = train.build_model("adam", None, 16, seed)
    es = EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    h = net.fit(X, y, epochs=epochs, batch_size=16, seed=seed, verbose=0, validation_split=0.1, callbacks=[es])
    out["early"] = {"test_accuracy": net.evaluate(Xt, yt, batch_size=train.EVAL_BATCH)[1],
                    "epochs_run": len(h.epoch), "best_epoch": es.best_epoch + 1,
                    "stopped_epoch": es.stopped_epoch + 1 if es.stopped_epoch else None,
                    "val_loss": h.history["val_loss"]}
    out["seconds"] = time.perf_counter() - t
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    X, y, Xt, yt, text, official = train.load_data(None, seed=0)
    print(text)
    rows = []
    print(f"{'seed':>4} {'fixed10':>8} {'fixed10_90':>10} {'early':>7} {'epochs run':>10} {'kept epoch':>10} {'s':>6}")
    for seed in args.seeds:
        r = one(seed, args.patience, args.epochs, X, y, Xt, yt)
        rows.append(r)
        print(f"{seed:>4} {100 * r['fixed10']['test_accuracy']:>7.2f}% {100 * r['fixed10_90']['test_accuracy']:>9.2f}% "
              f"{100 * r['early']['test_accuracy']:>6.2f}% {r['early']['epochs_run']:>10} "
              f"{r['early']['best_epoch']:>10} {r['seconds']:>6.0f}", flush=True)
    mean = {k: sum(r[k]["test_accuracy"] for r in rows) / len(rows) for k in ("fixed10", "fixed10_90", "early")}
    print("mean " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in mean.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"official_test_set": official, "patience": args.patience, "runs": rows, "mean": mean}, f,
                      indent=2)


if __name__ == "__main__":
    main()
