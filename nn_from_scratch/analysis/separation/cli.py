"""``python -m nn_from_scratch separation``: class separation at every layer, of a network trained
here (before and after training) or of a trained model file (``--model``).

**Training run** (default).  Trains a CNN of the reference library's shape
(``separation_cnn``: conv 3x3, ReLU, max-pool, conv 3x3, ReLU, max-pool, flatten, dense,
ReLU, dense; the softmax is inside ``SoftMaxLoss``, so the last analysed layer is the
logits) on the 5,000 bundled MNIST digits and measures the class separation at every layer
before and after training, on the training digits (500 per class) and on the official MNIST
test set (every image, about 1,000 per class, unequal sizes), then runs the Fisher tests
between stages and between consecutive layers.  Writes to ``--out`` (default
``outputs/separation``): ``{train,test}_{before,after}.json`` (``SeparationResult.from_json``
reads them), ``tests.txt`` / ``tests.json`` (the Fisher tables), ``histograms_train.png``,
``histograms_test.png``, ``curve.png``, ``heatmap_<layer>.png``, ``pca_<layer>.png`` and
``summary.json``.

**A trained model** (``--model FILE.npz``, a file of ``NeuralNetwork.save``; ``--import
MODULE`` first imports the modules, dotted names or ``.py`` paths, that define the model's
own layer classes).  Nothing is trained: the model is analysed as it is, on ``--data
FILE.npz`` (arrays ``X`` and ``y``, read with ``allow_pickle=False``) or, for a model taking
MNIST images (``(1, 28, 28)`` or ``(784,)``), on the official MNIST test set (the bundled
digits when it is not found); ``--test-per-class`` samples that many per class (default
all).  Writes ``separation.json``, ``tests.txt`` / ``tests.json`` (each layer against the
previous one), ``histograms.png``, ``curve.png``, ``heatmap_<last layer>.png`` and
``summary.json``.

Exit status: 0 done, 2 bad options or unreadable model/data.
"""
import json
import os
import sys
import time

import numpy as np

from ...cli_errors import ArgumentParser, command, check_options, output_directory, run as _run_cli
from ...examples.networks import separation_cnn  # the study's network, built in one place (re-exported)

__all__ = ["separation_cnn", "run", "run_model", "main"]


def _load(test_dir, seed):
    from ...data import datasets  # noqa: PLC0415
    from ...train import find_test_set  # noqa: PLC0415
    X, y = datasets.load_mnist("all")
    Xt, yt, where = find_test_set(test_dir)
    if Xt is None:
        X, y = datasets.load_mnist("train", test_fraction=0.2, seed=seed)
        Xt, yt = datasets.load_mnist("test", test_fraction=0.2, seed=seed)
        return X, y, Xt, yt, ("NOTE: the official MNIST test set was not found (looked in: " + ", ".join(where)
                              + "); the test split is 1,000 held-out bundled digits"), False
    return X, y, Xt, yt, f"training: the 5,000 bundled digits; test: the {where}", True


def run(epochs=5, n_per_class=500, test_per_class=None, out="outputs/separation", seed=0, test_dir=None,
        channels=(8, 16), hidden=64, batch_size=32, lr=1e-3, n_permutations=10000, n_train=None, verbose=True,
        print_fn=print):
    """Train, analyse before/after, test, write everything to ``out``; returns a summary dict.

    ``n_train``: train on a stratified seeded subset of this many bundled digits (default all).
    """
    import matplotlib  # noqa: PLC0415
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from ...training.optimizers import Adam  # noqa: PLC0415
    from ...atomic import write_json_atomic, write_text_atomic  # noqa: PLC0415
    from .. import separation as sep  # noqa: PLC0415
    start = time.perf_counter()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    X, y, Xt, yt, data_text, official = _load(test_dir, seed)
    if n_train is not None and n_train < len(y):
        per = -(-int(n_train) // 10)
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), min(per, int((y == c).sum())),
                                                  replace=False) for c in np.unique(y)]))
        X, y = X[keep], y[keep]
        data_text += f" (training on a stratified subset of {len(y)})"
    say = print_fn if verbose else (lambda *a, **k: None)
    say(data_text)
    net = separation_cnn(channels, hidden, batch_size=batch_size, optimizer=Adam(lr=lr), seed=seed)
    if verbose:
        net.summary(print_fn=print_fn)
    results, times = {}, {}

    def analyse(stage):
        for split, (XX, yy, k) in {"train": (X, y, n_per_class), "test": (Xt, yt, test_per_class)}.items():
            t = time.perf_counter()
            r = sep.class_separation(net, XX, yy, n_per_class=k, seed=seed)
            r.name = f"{split}, {stage} training"
            times[f"{split}_{stage}"] = time.perf_counter() - t
            results[f"{split}_{stage}"] = r
            say(f"{split} {stage} training: mean H per layer "
                + ", ".join(f"{lay} {h.mean():.3f}" for lay, h in zip(r.layers, r.H))
                + f"  ({times[f'{split}_{stage}']:.1f} s)")

    analyse("before")
    t = time.perf_counter()
    hist = net.fit(X, y, epochs=epochs, batch_size=batch_size, seed=seed, verbose=1 if verbose else 0,
                   validation_data=(Xt, yt))
    fit_s = time.perf_counter() - t
    acc = hist.history.get("val_accuracy", [None])[-1]
    analyse("after")
    tests = {
        "train: after vs before training": sep.compare_stages(results["train_before"], results["train_after"],
                                                             n_permutations=n_permutations, seed=seed),
        "test: after vs before training": sep.compare_stages(results["test_before"], results["test_after"],
                                                           n_permutations=n_permutations, seed=seed),
        "train, after training: each layer vs the previous": sep.compare_layers(
            results["train_after"], n_permutations=n_permutations, seed=seed),
        "test, after training: each layer vs the previous": sep.compare_layers(
            results["test_after"], n_permutations=n_permutations, seed=seed),
        "after training: test vs train": sep.compare_stages(results["train_after"], results["test_after"],
                                                            n_permutations=n_permutations, seed=seed),
    }
    files = []
    for key, r in results.items():
        files.append(r.to_json(os.path.join(out, f"{key}.json")))
    text = "\n\n".join(f"{title} (Fisher permutation tests, two-sided, paired sign-flip over the class pairs)\n"
                       f"{table.to_text()}" for title, table in tests.items())
    from ...plotting import save_figure  # noqa: PLC0415
    write_text_atomic(os.path.join(out, "tests.txt"), text + "\n")
    write_json_atomic(os.path.join(out, "tests.json"), {k: v.records() for k, v in tests.items()})
    files += [os.path.join(out, "tests.txt"), os.path.join(out, "tests.json")]
    last = results["test_after"].layers[-1]
    figs = {
        "histograms_train.png": sep.plot_histograms({"before": results["train_before"],
                                                     "after": results["train_after"]},
                                                    title="Training digits: pairwise H per layer"),
        "histograms_test.png": sep.plot_histograms({"before": results["test_before"], "after": results["test_after"]},
                                                   title="Test set: pairwise H per layer"),
        "curve.png": sep.plot_separation_curve([results[k] for k in
                                                ("train_before", "test_before", "train_after", "test_after")]),
        f"heatmap_{last}.png": sep.plot_heatmap(results["test_after"], last),
        "pca_fc1.png": sep.plot_pca(net, Xt, yt, "fc1", n_per_class=200, seed=seed,
                                    title="Test set at fc1 after training (PCA)"),
    }
    for name, fig in figs.items():
        files.append(save_figure(fig, os.path.join(out, name)))
    summary = {"data": data_text, "official_test_set": official, "epochs": epochs, "test_accuracy": acc,
               "fit_seconds": fit_s, "analysis_seconds": times, "wall_seconds": time.perf_counter() - start,
               "settings": {"n_per_class": n_per_class, "test_per_class": test_per_class, "seed": seed,
                            "channels": list(channels), "hidden": hidden, "batch_size": batch_size, "lr": lr,
                            "n_permutations": n_permutations},
               "mean_H": {k: dict(zip(r.layers, [float(h.mean()) for h in r.H])) for k, r in results.items()},
               "files": files}
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    summary["tests"] = tests
    return summary


def _load_model(path, imports):
    """The network saved at ``path``, after importing ``imports``; unreadable -> ``SeparationError``."""
    from ...checks.grade import GradeError, import_module  # noqa: PLC0415
    from ...training.network import NeuralNetwork  # noqa: PLC0415
    from .result import SeparationError  # noqa: PLC0415
    for name in imports:
        try:
            import_module(name)
        except GradeError as exc:
            raise SeparationError(f"--import {name}: {exc}") from None
    if not os.path.isfile(path):
        raise SeparationError(f"--model: no model file {path!r}")
    try:
        return NeuralNetwork.load(path)
    except (OSError, ValueError) as exc:        # ModelFileError is a ValueError
        hint = ("; if the model has layer classes of its own, name their module with --import"
                if "unknown layer class" in str(exc) else "")
        raise SeparationError(f"cannot read the model {path!r}: {exc}{hint}") from None


def _model_data(net, data, test_dir, seed):
    """``(X, y, description)``: ``data`` (an .npz of X and y) or the MNIST test set for an MNIST model."""
    from .result import SeparationError  # noqa: PLC0415
    shape = tuple(net.input_shape or ())
    if data is not None:
        try:
            with np.load(data, allow_pickle=False) as f:
                missing = [k for k in ("X", "y") if k not in f.files]
                if missing:
                    raise SeparationError(f"--data {data!r} must hold arrays named X and y; it holds {f.files}")
                X, y = f["X"], f["y"]
        except (OSError, ValueError) as exc:
            raise SeparationError(f"--data: cannot read {data!r} as an .npz of arrays X and y: {exc}") from None
        if shape and None not in shape and tuple(X.shape[1:]) != shape:
            raise SeparationError(f"--data: the model takes samples of shape {shape}, {data!r} holds X of shape "
                                  f"{tuple(X.shape)}")
        return X, y, f"{len(X):,} samples from {data}"
    if shape not in ((1, 28, 28), (784,)):
        raise SeparationError(f"the model takes inputs of shape {shape or 'unknown'}, not MNIST images "
                              "(1, 28, 28) or (784,): give its samples with --data FILE.npz (arrays X and y)")
    from ...data import datasets  # noqa: PLC0415
    from ...train import find_test_set  # noqa: PLC0415
    X, y, where = find_test_set(test_dir)
    if X is None:
        X, y = datasets.load_mnist("all")
        where = ("the 5,000 bundled digits (NOTE: the official MNIST test set was not found; looked in: "
                 + ", ".join(where) + ")")
    return X.reshape((len(X),) + shape), y, where


def run_model(model, imports=(), data=None, n_per_class=None, out="outputs/separation", seed=0, test_dir=None,
              n_permutations=10000, verbose=True, print_fn=print):
    """Analyse the trained model saved at ``model`` (nothing is trained); returns a summary dict.

    ``imports``: modules defining the model's own layer classes, imported first.  ``data``: an
    ``.npz`` with arrays ``X`` and ``y`` (default: the MNIST test set for a model of MNIST
    images).  ``n_per_class``: a seeded sample of that many per class (default every sample).
    """
    import matplotlib  # noqa: PLC0415
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from ...atomic import write_json_atomic, write_text_atomic  # noqa: PLC0415
    from ...plotting import save_figure  # noqa: PLC0415
    from .. import separation as sep  # noqa: PLC0415
    start = time.perf_counter()
    say = print_fn if verbose else (lambda *a, **k: None)
    net = _load_model(os.fspath(model), list(imports))
    X, y, data_text = _model_data(net, data, test_dir, seed)
    say(f"model {model}: {len(net.layers)} layers ({', '.join(layer.name for layer in net.layers)}); data: "
        f"{data_text}")
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    t = time.perf_counter()
    r = sep.class_separation(net, X, y, n_per_class=n_per_class, seed=seed)
    analysis_s = time.perf_counter() - t
    r.name = os.path.basename(os.fspath(model))
    say("mean H per layer: " + ", ".join(f"{lay} {h.mean():.3f}" for lay, h in zip(r.layers, r.H))
        + f"  ({analysis_s:.1f} s)")
    accuracy = None
    labels = np.asarray(y).reshape(-1)
    out_shape = tuple(net.output_shape or ())
    if len(out_shape) == 1 and out_shape[0] > 1 and labels.dtype.kind in "iu":
        idx = np.concatenate([np.asarray(v, dtype=np.int64) for v in r.info["indices"].values()])
        pred = np.concatenate([np.asarray(net.predict(X[idx[a:a + 512]])).argmax(axis=1)
                               for a in range(0, len(idx), 512)])
        accuracy = float(np.mean(pred == labels[idx]))
    tests = {"each layer vs the previous": sep.compare_layers(r, n_permutations=n_permutations, seed=seed)}
    files = [r.to_json(os.path.join(out, "separation.json"))]
    text = "\n\n".join(f"{title} (Fisher permutation tests, two-sided, paired sign-flip over the class pairs)\n"
                         f"{table.to_text()}" for title, table in tests.items())
    write_text_atomic(os.path.join(out, "tests.txt"), text + "\n")
    write_json_atomic(os.path.join(out, "tests.json"), {k: v.records() for k, v in tests.items()})
    files += [os.path.join(out, "tests.txt"), os.path.join(out, "tests.json")]
    last = r.layers[-1]
    figs = {"histograms.png": sep.plot_histograms(r, title=f"{r.name}: pairwise H per layer"),
            "curve.png": sep.plot_separation_curve(r),
            f"heatmap_{last}.png": sep.plot_heatmap(r, last)}
    for name, fig in figs.items():
        files.append(save_figure(fig, os.path.join(out, name)))
    summary = {"model": os.fspath(model), "data": data_text, "accuracy": accuracy, "analysis_seconds": analysis_s,
               "wall_seconds": time.perf_counter() - start,
               "settings": {"n_per_class": n_per_class, "seed": seed, "n_permutations": n_permutations,
                            "imports": list(imports)},
               "mean_H": dict(zip(r.layers, [float(h.mean()) for h in r.H])), "files": files}
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    summary["tests"] = tests
    summary["result"] = r
    return summary


def _parser():
    p = ArgumentParser(
        prog="python -m nn_from_scratch separation",
        description="Train a CNN of the reference library's shape on the bundled MNIST digits and write the class "
                    "separation (Henze-Penrose) of every layer before and after training, on the training digits "
                    "and the official test set, with Fisher permutation tests and plots; or (--model) analyse a "
                    "trained model file.")
    p.add_argument("--model", metavar="FILE.npz", default=None,
                   help="analyse this trained model (NeuralNetwork.save) instead of training one")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="with --model: import this module first (a dotted name or a .py path defining the "
                        "model's own layers); may be repeated")
    p.add_argument("--data", metavar="FILE.npz", default=None,
                   help="with --model: the samples to analyse, arrays X and y (default: the MNIST test set)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 5)")
    p.add_argument("--n-per-class", type=int, default=None,
                   help="training digits analysed per class (default 500: all bundled)")
    p.add_argument("--test-per-class", type=int, default=None,
                   help="test images (with --model: samples) analysed per class (default: every one, "
                        "~1,000 per class, unequal)")
    p.add_argument("--out", default="outputs/separation", help="output directory (default outputs/separation)")
    p.add_argument("--seed", type=int, default=0, help="weights, shuffling and samples (default 0)")
    p.add_argument("--test-dir", metavar="DIR", default=None, help="where the official MNIST test set is")
    p.add_argument("--channels", type=int, nargs=2, default=None, help="conv1 and conv2 channels (default 8 16)")
    p.add_argument("--hidden", type=int, default=None, help="fc1 units (default 64)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 32)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 0.001)")
    p.add_argument("--permutations", type=int, default=10000, help="Monte Carlo permutations (default 10000)")
    p.add_argument("--n-train", type=int, default=None,
                   help="train on a stratified subset of this many bundled digits (default: all 5,000)")
    p.add_argument("--quiet", action="store_true", help="print only the result lines")
    return p


#: training options: their defaults, and refused with --model
_TRAINING = {"epochs": 5, "n_per_class": 500, "channels": (8, 16), "hidden": 64, "batch_size": 32, "lr": 1e-3,
             "n_train": None}


def _error(text):
    print(f"error: {text}", file=sys.stderr)
    return 2


@command("python -m nn_from_scratch separation")
def main(argv=None):
    args = _parser().parse_args(argv)
    if args.model is None:
        for name in ("imports", "data"):
            if getattr(args, name):
                flag = "--import" if name == "imports" else "--data"
                return _error(f"{flag} goes with --model FILE.npz (a trained model to analyse)")
        for name, default in _TRAINING.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    else:
        given = [name for name in _TRAINING if getattr(args, name) is not None]
        if given:
            return _error(f"--{given[0].replace('_', '-')} is an option of the training run; --model analyses the "
                          "trained model as it is (use --test-per-class to sample the data)")
    if args.n_train is not None and args.n_train < 20:
        return _error(f"--n-train must be >= 20, received {args.n_train}")
    for name in ("epochs", "n_per_class", "hidden", "batch_size", "permutations"):
        v = getattr(args, name)
        if v is not None and v < 1:
            return _error(f"--{name.replace('_', '-')} must be >= 1, received {v}")
    if args.test_per_class is not None and args.test_per_class < 2:
        return _error(f"--test-per-class must be >= 2, received {args.test_per_class}")
    if args.lr is not None and not args.lr > 0:
        return _error(f"--lr must be > 0, received {args.lr}")
    check_options(args, {"seed": ("int>=", 0)})
    if args.channels is not None and min(args.channels) < 1:
        return _error(f"--channels must be two integers >= 1, received {args.channels}")
    output_directory(args.out)
    from ...data import datasets  # noqa: PLC0415
    from .result import SeparationError  # noqa: PLC0415
    try:
        if args.model is not None:
            res = run_model(args.model, imports=args.imports, data=args.data, n_per_class=args.test_per_class,
                            out=args.out, seed=args.seed, test_dir=args.test_dir, n_permutations=args.permutations,
                            verbose=not args.quiet)
        else:
            res = run(epochs=args.epochs, n_per_class=args.n_per_class, test_per_class=args.test_per_class,
                      out=args.out, seed=args.seed, test_dir=args.test_dir, channels=tuple(args.channels),
                      hidden=args.hidden, batch_size=args.batch_size, lr=args.lr, n_permutations=args.permutations,
                      n_train=args.n_train, verbose=not args.quiet)
    except (SeparationError, datasets.DatasetError) as exc:
        return _error(str(exc))
    for title, table in res["tests"].items():
        print(f"\n{title}\n{table.to_text()}")
    if res.get("accuracy") is not None:
        print(f"\nAccuracy of the model on the analysed samples: {100 * res['accuracy']:.2f}%")
    if res.get("test_accuracy") is not None:
        print(f"\nTest accuracy after {res['epochs']} epochs: {100 * res['test_accuracy']:.2f}%")
    print(f"Wall time: {res['wall_seconds']:.1f} s; files in {os.path.dirname(res['files'][0])}")
    return 0


if __name__ == "__main__":
    sys.exit(_run_cli(main))
