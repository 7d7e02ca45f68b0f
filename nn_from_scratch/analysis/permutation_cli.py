"""``python -m nn_from_scratch permutation-test``: the seed's experiment (seed 000), done right.

    python -m nn_from_scratch permutation-test [--permutations 99] [--jobs 1] [--epochs 3] [--out DIR]

The seed's CNN::

    Convolution 15x15, 1 -> 2 channels (with bias)   (N, 1, 28, 28) -> (N, 2, 14, 14)
    ReLU
    Vectorization                                    (N, 2, 14, 14) -> (N, 392)
    Linear 392 -> 10                                 (N, 392)       -> (N, 10)
    SoftMaxLoss; SGD lr 0.001, momentum 0.9, batch 64 (the seed's recipe)

trained on the 5,000 MNIST digits bundled with the package (the seed's 60,000 are not on
this machine), inputs scaled to [-1, 1] as the seed's ``Normalize((0.5,), (0.5,))`` does.
The per-pixel association statistic ``T_j = (1/N) sum_i (d max-logit / d x_ij)^2`` over the
training images, its p-values from ``--permutations`` networks retrained on permuted labels
(one fixed permutation each, fresh initialization, the same recipe), and max-T adjusted
p-values.  The accuracy of the observed network on the official MNIST test set (looked for
as ``python -m nn_from_scratch train`` does: ``--test-dir``, ``$NN_FROM_SCRATCH_MNIST_DIR``,
``../shared/data/mnist``, ``~/.keras/datasets/mnist.npz``; else 1,000 held-out bundled digits).

Outputs in ``--out`` (default ``outputs/permutation_test``): ``association_maps.png`` (an
example digit, the statistic map, the ``-log10 p`` map with the max-T significant pixels
outlined), ``result.npz`` (``PermutationTestResult.load``), ``summary.json`` (settings,
accuracy, counts of significant pixels by method, the p-values of the always-blank pixels,
timings) and ``checkpoints/`` (a stopped run resumes: run the same command again).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

__all__ = ["build_seed_cnn", "seed_inputs", "seed_loop_network", "main", "run", "DEFAULTS"]

DEFAULTS = {"permutations": 99, "jobs": 1, "epochs": 3, "batch_size": 64, "lr": 1e-3, "momentum": 0.9,
            "seed": 0, "out": os.path.join("outputs", "permutation_test"), "backend": "loky", "alpha": 0.05}


def build_seed_cnn(seed, lr=DEFAULTS["lr"], momentum=DEFAULTS["momentum"], batch_size=DEFAULTS["batch_size"]):
    """The seed's CNN, freshly initialized from ``seed`` (Glorot-uniform weights, zero biases)."""
    from .. import Convolution, GradientDescent, Linear, NeuralNetwork, ReLU, SoftMaxLoss, Vectorization  # noqa: PLC0415
    return NeuralNetwork([Convolution((None, 1, 28, 28), kernel_size=15, output_layers=2, use_bias=True, seed=seed),
                          ReLU(), Vectorization(), Linear(392, 10, seed=seed + 1)], SoftMaxLoss(),
                         optimizer=GradientDescent(lr=lr, momentum=momentum), batch_size=batch_size)


class _SeedCNN:
    """A picklable ``build(seed)`` with the recipe's optimizer settings."""

    def __init__(self, lr, momentum, batch_size):
        self.lr, self.momentum, self.batch_size = lr, momentum, batch_size

    def __call__(self, seed):
        return build_seed_cnn(seed, self.lr, self.momentum, self.batch_size)


def seed_inputs(X):
    """The seed's input scaling: ``(x - 0.5) / 0.5``, pixels in [-1, 1], float32."""
    return ((np.asarray(X, dtype=np.float32) - 0.5) / 0.5).astype(np.float32)


def seed_loop_network(build, X, y, epochs, batch_size, seed):
    """A network trained as the seed's "permutation" loop does: shuffled minibatches, and inside
    EVERY minibatch a new random permutation of that minibatch's labels.  Not a permutation null:
    no fixed relabelling of the data set exists for the network to fit (see ``permutation.py``)."""
    rng = np.random.default_rng(seed)
    net = build(int(rng.integers(2 ** 31)))
    net.workers = 1
    n = len(y)
    for _ in range(epochs):
        order = rng.permutation(n)
        for a in range(0, n, batch_size):
            idx = order[a:a + batch_size]
            yb = y[idx][rng.permutation(len(idx))]
            net.train_step(net._to_batch(X[idx]), yb)
    return net


def _blank_pixels(X):
    """Pixels equal to their minimum in every training image (the always-blank border)."""
    flat = X.reshape(len(X), -1)
    return (flat == flat.min()).all(axis=0).reshape(X.shape[1:])


def run(permutations=DEFAULTS["permutations"], jobs=DEFAULTS["jobs"], epochs=DEFAULTS["epochs"],
        out=DEFAULTS["out"], seed=DEFAULTS["seed"], batch_size=DEFAULTS["batch_size"], lr=DEFAULTS["lr"],
        momentum=DEFAULTS["momentum"], backend=DEFAULTS["backend"], test_dir=None, progress=True,
        alpha=DEFAULTS["alpha"], n_train=None):
    """The experiment; returns the summary dictionary (also written to ``out/summary.json``)."""
    import matplotlib  # noqa: PLC0415
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from ..plotting import save_figure  # noqa: PLC0415
    from ..atomic import write_json_atomic  # noqa: PLC0415
    from ..train import load_data  # noqa: PLC0415
    from . import permutation as pt  # noqa: PLC0415

    t0 = time.perf_counter()
    X, y, X_test, y_test, data_text, official = load_data(test_dir, seed=0)
    if n_train is not None:
        X, y = X[:n_train], y[:n_train]
    X, X_test = seed_inputs(X), seed_inputs(X_test)
    os.makedirs(out, exist_ok=True)
    build = _SeedCNN(lr, momentum, batch_size)
    fit_kwargs = {"epochs": int(epochs), "batch_size": int(batch_size)}
    print(data_text, flush=True)

    t = time.perf_counter()
    net, _ = pt.train_replicate(build, X, y, fit_kwargs, seed=seed, key=0)
    train_s = time.perf_counter() - t
    _, acc = net.evaluate(X_test, y_test)
    print(f"observed network: {100 * acc:.2f} % on the {'official test set' if official else 'held-out digits'} "
          f"({train_s:.1f} s to train)", flush=True)

    res = pt.permutation_test(build, X, y, fit_kwargs, n_permutations=int(permutations), output="max_logit",
                              n_jobs=int(jobs), backend=backend, seed=seed, progress=progress,
                              checkpoint_dir=os.path.join(out, "checkpoints"), example=X[0])
    res.save(os.path.join(out, "result.npz"))
    fig = res.plot(alpha=alpha, method="maxT")
    save_figure(fig, os.path.join(out, "association_maps.png"))
    plt.close(fig)

    blank = _blank_pixels(X)
    p = res.p_values
    summary = {
        "experiment": "seed 000: association test of the seed's CNN (conv 1->2 15x15, ReLU, flatten, linear 392->10)",
        "data": data_text, "official_test_set": bool(official), "n_train": int(len(y)),
        "recipe": {"optimizer": "SGD", "lr": lr, "momentum": momentum, **fit_kwargs, "inputs": "(x - 0.5) / 0.5"},
        "test_accuracy": float(acc), "observed_train_seconds": train_s,
        "n_permutations": res.n_permutations, "n_jobs": int(jobs), "backend": backend, "seed": seed,
        "alpha": alpha,
        "significant_pixels": {m: int(res.significant(alpha, m).sum()) for m in ("maxT", "holm", "bh", "none")},
        "blank_pixels": {"count": int(blank.sum()), "mean_p": float(p[blank].mean()) if blank.any() else None,
                         "fraction_p_le_alpha": float((p[blank] <= alpha).mean()) if blank.any() else None,
                         "significant_maxT": int(res.significant(alpha, "maxT")[blank].sum())},
        "min_p": float(np.nanmin(p)), "smallest_attainable_p": 1.0 / (res.n_permutations + 1),
        "replicates_resumed": res.info["replicates_resumed"],
        "permutation_test_seconds": res.info["wall_time_s"], "total_seconds": time.perf_counter() - t0,
        "files": ["association_maps.png", "result.npz", "summary.json", "checkpoints/"],
    }
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    print(json.dumps({k: summary[k] for k in ("test_accuracy", "significant_pixels", "blank_pixels",
                                                "permutation_test_seconds")}, indent=1))
    print(f"wrote {out}/association_maps.png, result.npz, summary.json")
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nn_from_scratch permutation-test",
                                 description="The seed's permutation test (association of each pixel with the "
                                             "network's output), on the bundled MNIST digits.")
    ap.add_argument("--permutations", type=int, default=DEFAULTS["permutations"], help="B, the null networks (99)")
    ap.add_argument("--jobs", type=int, default=DEFAULTS["jobs"], help="parallel retrainings (joblib n_jobs; 1)")
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs of every training (3)")
    ap.add_argument("--out", default=DEFAULTS["out"], help="output directory (outputs/permutation_test)")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--backend", default=DEFAULTS["backend"], choices=["loky", "threading", "sequential"])
    ap.add_argument("--test-dir", default=None, help="where the official MNIST test set is")
    ap.add_argument("--n-train", type=int, default=None, help="use only the first N training digits (quick runs)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    for name in ("permutations", "jobs", "epochs", "batch_size"):
        v = getattr(args, name)
        if name != "jobs" and v < 1 or name == "jobs" and v == 0:
            ap.error(f"--{name.replace('_', '-')} must be {'a non-zero integer' if name == 'jobs' else '>= 1'}, "
                     f"received {v}")
    run(permutations=args.permutations, jobs=args.jobs, epochs=args.epochs, out=args.out, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, backend=args.backend, test_dir=args.test_dir,
        progress=not args.no_progress, n_train=args.n_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
