"""``python -m nn_from_scratch permutation-test``: which pixels matter to the seed's CNN.

    python -m nn_from_scratch permutation-test [--null labels|conditional] [--patch 7] [--sequential H]
        [--permutations 99] [--jobs 1] [--scheduler ADDRESS] [--method bh] [--epochs 3] [--out DIR]

The seed's CNN::

    Convolution 15x15, 1 -> 2 channels (with bias)   (N, 1, 28, 28) -> (N, 2, 14, 14)
    ReLU
    Vectorization                                    (N, 2, 14, 14) -> (N, 392)
    Linear 392 -> 10                                 (N, 392)       -> (N, 10)
    SoftMaxLoss; SGD lr 0.001, momentum 0.9, batch 64 (the seed's recipe)

trained on the 5,000 MNIST digits bundled with the package (the seed's 60,000 are not on
this machine), inputs scaled to [-1, 1] as the seed's ``Normalize((0.5,), (0.5,))`` does.
The statistic is ``T = (1/N) sum_i (d max-logit / d x_ij)^2`` over the training images.

* ``--null labels`` (default): the GLOBAL test, ``--permutations`` networks retrained on
  permuted labels; exact for "y is independent of the whole image", and its per-pixel
  p-values do NOT say which pixels matter (docs/analysis/permutation.md).  Max-T by default.
* ``--null conditional``: the conditional test per ``--patch K`` square patch (``K = 7``: 16
  patches): each patch redrawn given the rest of the image, networks refitted;
  ``--sequential H`` stops a patch at ``H`` exceedances (Besag-Clifford).  BH by default;
  max-T is refused (no joint null across patches).

``--scheduler ADDRESS`` runs the fits on a running Dask cluster.  A warning is printed when
``--permutations`` is too small for any p-value to pass the adjustment at ``--alpha``.  The
accuracy of the observed network on the official MNIST test set (looked for as ``python -m
nn_from_scratch train`` does: ``--test-dir``, ``$NN_FROM_SCRATCH_MNIST_DIR``,
``../shared/data/mnist``, ``~/.keras/datasets/mnist.npz``; else 1,000 held-out bundled digits).

Outputs in ``--out`` (default ``outputs/permutation_test``): ``association_maps.png`` (global)
or ``conditional_maps.png`` (an example digit, the statistic map, the ``-log10 p`` map with
the significant pixels or patches outlined), ``result.npz`` (``PermutationTestResult.load``),
``summary.json`` (the scope and its plain statement, settings, accuracy, counts of
significant pixels or patches by method, the p-values of the always-blank pixels or patches,
fits, timings) and ``checkpoints/`` (a stopped run resumes: run the same command again).
"""
import json
import math
import os
import sys
import time

import numpy as np

from ..cli_errors import ArgumentParser, command, check_options, output_directory, run as _run_cli
from ..examples.networks import permutation_cnn

__all__ = ["build_seed_cnn", "seed_inputs", "seed_loop_network", "main", "run", "DEFAULTS"]

DEFAULTS = {"permutations": 99, "jobs": 1, "epochs": 3, "batch_size": 64, "lr": 1e-3, "momentum": 0.9,
            "seed": 0, "out": os.path.join("outputs", "permutation_test"), "backend": "loky", "alpha": 0.05,
            "null": "labels", "patch": 7}
#: the adjustment used when --method is not given
DEFAULT_METHOD = {"labels": "maxT", "conditional": "bh"}


def build_seed_cnn(seed, lr=DEFAULTS["lr"], momentum=DEFAULTS["momentum"], batch_size=DEFAULTS["batch_size"]):
    """The seed's CNN, freshly initialized from ``seed`` (``examples.networks.permutation_cnn``)."""
    return permutation_cnn(seed, lr=lr, momentum=momentum, batch_size=batch_size)


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


def too_few_permutations(method, n_tests, permutations, alpha):
    """The warning text when no p-value can pass ``method`` at ``alpha`` with ``B`` replicates, else None."""
    from .permutation import smallest_adjusted_p  # noqa: PLC0415
    smallest = smallest_adjusted_p(method, n_tests, permutations)
    if smallest <= alpha:
        return None
    m = n_tests if method in ("holm", "bonferroni") else 1
    need = math.ceil(m / alpha - 1 - 1e-9)
    return (f"warning: with B = {permutations} permutations the smallest attainable {method}-adjusted p-value over "
            f"{n_tests} tests is {smallest:.3g} > alpha = {alpha}: nothing can be significant; use --permutations >= "
            f"{need}")


def run(permutations=DEFAULTS["permutations"], jobs=DEFAULTS["jobs"], epochs=DEFAULTS["epochs"],
        out=DEFAULTS["out"], seed=DEFAULTS["seed"], batch_size=DEFAULTS["batch_size"], lr=DEFAULTS["lr"],
        momentum=DEFAULTS["momentum"], backend=DEFAULTS["backend"], test_dir=None, progress=True,
        alpha=DEFAULTS["alpha"], n_train=None, null=DEFAULTS["null"], patch=DEFAULTS["patch"], sequential=None,
        method=None, scheduler=None):
    """The experiment; returns the summary dictionary (also written to ``out/summary.json``)."""
    import matplotlib  # noqa: PLC0415
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from ..plotting import save_figure  # noqa: PLC0415
    from ..atomic import write_json_atomic  # noqa: PLC0415
    from ..train import load_data  # noqa: PLC0415
    from . import permutation as pt  # noqa: PLC0415

    method = method or DEFAULT_METHOD[null]
    if null == "conditional" and method == "maxT":
        raise ValueError("permutation-test: --method maxT needs one joint null of all tests; the conditional test "
                         "has a separate null per patch: use --method bh or holm")
    t0 = time.perf_counter()
    X, y, X_test, y_test, data_text, official = load_data(test_dir, seed=0)
    if n_train is not None:
        X, y = X[:n_train], y[:n_train]
    X, X_test = seed_inputs(X), seed_inputs(X_test)
    groups = pt.patch_groups((1, 28, 28), patch) if null == "conditional" else None
    n_tests = int(groups.max()) + 1 if groups is not None else 28 * 28
    warning = too_few_permutations(method, n_tests, int(permutations), alpha)
    if warning:
        print(warning, file=sys.stderr, flush=True)
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

    client = None
    if scheduler is not None:
        from distributed import Client  # noqa: PLC0415
        client = Client(scheduler)
        backend, jobs = "dask", (jobs if jobs != 1 else -1)
    try:
        extra = {"null": "conditional", "groups": groups, "sequential": sequential} if null == "conditional" else {}
        res = pt.permutation_test(build, X, y, fit_kwargs, n_permutations=int(permutations), output="max_logit",
                                  n_jobs=int(jobs), backend=backend, seed=seed, progress=progress,
                                  checkpoint_dir=os.path.join(out, "checkpoints"), example=X[0], **extra)
    finally:
        if client is not None:
            client.close()
    res.save(os.path.join(out, "result.npz"))
    fig = res.plot(alpha=alpha, method=method)
    maps = "conditional_maps.png" if null == "conditional" else "association_maps.png"
    save_figure(fig, os.path.join(out, maps))
    plt.close(fig)

    blank = _blank_pixels(X)
    p = res.p_values
    methods = ("holm", "bh", "none") if null == "conditional" else ("maxT", "holm", "bh", "none")
    summary = {
        "experiment": "the seed's CNN (conv 1->2 15x15, ReLU, flatten, linear 392->10) on the bundled MNIST digits",
        "scope": res.scope, "statement": res.statement, "null": null,
        "data": data_text, "official_test_set": bool(official), "n_train": int(len(y)),
        "recipe": {"optimizer": "SGD", "lr": lr, "momentum": momentum, **fit_kwargs, "inputs": "(x - 0.5) / 0.5"},
        "test_accuracy": float(acc), "observed_train_seconds": train_s,
        "n_permutations": res.n_permutations, "n_jobs": int(jobs), "backend": backend, "seed": seed,
        "scheduler": scheduler, "alpha": alpha, "method": method, "warning": warning,
        "min_p": float(np.nanmin(p)), "smallest_attainable_p": 1.0 / (res.n_permutations + 1),
        "n_fits": res.info["n_fits"], "replicates_resumed": res.info["replicates_resumed"],
        "permutation_test_seconds": res.info["wall_time_s"],
    }
    if null == "conditional":
        gmap = res.groups.reshape(-1)
        blank_groups = [g for g in range(res.n_groups) if blank.reshape(-1)[gmap == g].all()]
        summary.update({
            "patch": patch, "n_patches": res.n_groups, "sequential": sequential,
            "p_values": [float(v) for v in p], "adjusted": [float(v) for v in res.adjusted(method)],
            "fits_per_patch": res.fits_per_group().tolist(), "n_fits_used": res.info["n_fits_used"],
            "significant_patches": {m: int(res.significant(alpha, m).sum()) for m in methods},
            "blank_patches": {"ids": blank_groups, "p_values": [float(p[g]) for g in blank_groups],
                              "significant": int(res.significant(alpha, method)[blank_groups].sum())},
        })
    else:
        summary.update({
            "significant_pixels": {m: int(res.significant(alpha, m).sum()) for m in methods},
            "blank_pixels": {"count": int(blank.sum()), "mean_p": float(p[blank].mean()) if blank.any() else None,
                             "fraction_p_le_alpha": float((p[blank] <= alpha).mean()) if blank.any() else None,
                             "significant_maxT": int(res.significant(alpha, "maxT")[blank].sum())},
        })
    summary["total_seconds"] = time.perf_counter() - t0
    summary["files"] = [maps, "result.npz", "summary.json", "checkpoints/"]
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    print(res.statement)
    keys = ("test_accuracy", "significant_patches", "blank_patches", "p_values", "n_fits") if null == "conditional" \
        else ("test_accuracy", "significant_pixels", "blank_pixels")
    print(json.dumps({k: summary[k] for k in keys + ("permutation_test_seconds",)}, indent=1))
    print(f"wrote {out}/{maps}, result.npz, summary.json")
    return summary


@command("python -m nn_from_scratch permutation-test")
def main(argv=None):
    ap = ArgumentParser(prog="python -m nn_from_scratch permutation-test",
                                 description="Which pixels matter to the seed's CNN on the bundled MNIST digits: the "
                                             "global label-permutation test, or the conditional test per patch.")
    ap.add_argument("--null", default=DEFAULTS["null"], choices=["labels", "conditional"],
                    help="labels: the global test (does not localise); conditional: per patch (default labels)")
    ap.add_argument("--patch", type=int, default=DEFAULTS["patch"], help="patch side of --null conditional (7)")
    ap.add_argument("--sequential", type=int, default=None, metavar="H",
                    help="--null conditional: stop a patch at H exceedances (Besag-Clifford)")
    ap.add_argument("--permutations", type=int, default=DEFAULTS["permutations"], help="B, the null networks (99)")
    ap.add_argument("--jobs", type=int, default=DEFAULTS["jobs"], help="parallel retrainings (joblib n_jobs; 1)")
    ap.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="run the fits on the running Dask cluster at ADDRESS (tcp://host:port)")
    ap.add_argument("--method", default=None, choices=["maxT", "holm", "bh", "bonferroni", "none"],
                    help="multiple-testing adjustment (maxT for labels, bh for conditional)")
    ap.add_argument("--alpha", type=float, default=DEFAULTS["alpha"])
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
    check_options(args, {"seed": ("int>=", 0), "lr": ("float>", 0.0), "n_train": ("int>=", 20)})
    if not 0 < args.alpha < 1:
        ap.error(f"--alpha must be in (0, 1), received {args.alpha}")
    if args.null == "conditional":
        if not 1 <= args.patch <= 28:
            ap.error(f"--patch must be an integer in [1, 28] (the image is 28x28), received {args.patch}")
        if args.sequential is not None and args.sequential < 1:
            ap.error(f"--sequential must be >= 1, received {args.sequential}")
        if args.method == "maxT":
            ap.error("--method maxT needs one joint null of all tests; --null conditional has a separate null per "
                     "patch: use --method bh or holm")
    elif args.sequential is not None:
        ap.error(f"--sequential belongs to --null conditional, received --sequential {args.sequential} with "
                 "--null labels")
    output_directory(args.out)
    run(permutations=args.permutations, jobs=args.jobs, epochs=args.epochs, out=args.out, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, backend=args.backend, test_dir=args.test_dir,
        progress=not args.no_progress, n_train=args.n_train, null=args.null, patch=args.patch,
        sequential=args.sequential, method=args.method, scheduler=args.scheduler, alpha=args.alpha)
    return 0


if __name__ == "__main__":
    sys.exit(_run_cli(main))
