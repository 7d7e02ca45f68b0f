"""The second bank of bad inputs: the analysis tools, callbacks, loaders and result files refuse each
with the right exception and a message naming the argument, the expectation and the value received.

One row per bad input: ``(id, call, substrings the message must hold)``, grouped by exception type,
as in ``test_bad_inputs_table.py`` (the first bank).  The ``old-*`` rows are the first bank's ten that
were still bare NumPy/Python errors.  The command lines have their own table (``test_cli_errors.py``);
the result files' damaged contents theirs (``test_analysis_guards.py``).
"""
import gzip
import os
import struct
import tempfile

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.analysis import curvature as cv
from nn_from_scratch.analysis import separation as sep
from nn_from_scratch.analysis.fisher import fisher_test
from nn_from_scratch.analysis.gradients import association_statistic, input_gradients
from nn_from_scratch.analysis.permutation import PermutationTestResult, permutation_test
from nn_from_scratch.data import datasets
from nn_from_scratch.training import callbacks as cb
from nn_from_scratch.validation import DataError

CASES = []


def table(prefix, exc, rows):
    for name, fn, *needles in rows:
        CASES.append(pytest.param(fn, exc, tuple(needles), id=f"{prefix}-{name}"))


def mlp(seed=0):
    return nf.NeuralNetwork([nf.Linear(4, 6, name="hidden"), nf.ReLU(name="act"), nf.Linear(6, 3, name="out")],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=1)


X = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
Y = np.arange(30) % 3
NET = mlp()
FK = {"epochs": 1, "verbose": 0}
RAGGED = [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]


def result():
    return sep.class_separation(NET, X, Y, n_per_class=None, layers=["input", "out"])


# ------------------------------------------------------------------ class_separation, henze_penrose, compare_*
table("separation", sep.SeparationError, [
    ("net-none", lambda: sep.class_separation(None, X, Y), "net must be a NeuralNetwork", "NoneType"),
    ("X-1d", lambda: sep.class_separation(NET, np.zeros(30), Y), "X must hold samples", "(30,)"),
    ("X-nan", lambda: sep.class_separation(NET, np.full((30, 4), np.nan), Y, n_per_class=None), "X", "NaN"),
    ("y-none", lambda: sep.class_separation(NET, X, None), "y must be class indices", "received shape ()"),
    ("y-str", lambda: sep.class_separation(NET, X, np.array(["a"] * 30)), "y must be integer class indices", "<U1"),
    ("npc-float", lambda: sep.class_separation(NET, X, Y, n_per_class=2.5), "n_per_class", "2.5"),
    ("npc-0", lambda: sep.class_separation(NET, X, Y, n_per_class=0), "n_per_class", ">= 2", "received 0"),
    ("metric-unknown", lambda: sep.class_separation(NET, X, Y, n_per_class=None, metric="banana"), "metric",
     "'banana'"),
    ("metric-int", lambda: sep.class_separation(NET, X, Y, n_per_class=None, metric=3), "metric", "received 3"),
    ("precision", lambda: sep.class_separation(NET, X, Y, n_per_class=None, precision="float16"), "precision",
     "'float16'"),
    ("layers-int", lambda: sep.class_separation(NET, X, Y, n_per_class=None, layers=3), "layers", "received 3"),
    ("layers-empty", lambda: sep.class_separation(NET, X, Y, n_per_class=None, layers=[]), "layers=[]"),
    ("layers-unknown", lambda: sep.class_separation(NET, X, Y, n_per_class=None, layers=["nope"]), "['nope']"),
    ("classes-float", lambda: sep.class_separation(NET, X, Y, n_per_class=None, classes=[0, 1.5]), "classes",
     "1.5"),
    ("classes-one", lambda: sep.class_separation(NET, X, Y, n_per_class=None, classes=[0]), "at least 2 classes"),
    ("batch-neg", lambda: sep.class_separation(NET, X, Y, n_per_class=None, batch_size=-1), "batch_size",
     "received -1"),
    ("batch-0", lambda: sep.class_separation(NET, X, Y, n_per_class=None, batch_size=0), "batch_size", "received 0"),
    ("memory-budget", lambda: sep.class_separation(NET, X, Y, n_per_class=None, memory_budget=-1), "memory_budget",
     "-1"),
    ("seed-str", lambda: sep.class_separation(NET, X, Y, n_per_class=None, seed="a"), "seed", "'a'"),
    ("hp-metric", lambda: sep.henze_penrose(np.zeros((3, 2)), np.ones((3, 2)), metric="banana"), "metric",
     "'banana'"),
    ("hp-str", lambda: sep.henze_penrose("ab", np.ones((3, 2))), "Xa must hold numbers", "<U2"),
    ("hp-width", lambda: sep.henze_penrose(np.zeros((3, 2)), np.ones((3, 3))), "same size", "2 and 3"),
    ("compare-not-result", lambda: sep.compare_layers("x"), "result must be a SeparationResult", "str"),
])
table("separation", DataError, [
    ("X-ragged", lambda: sep.class_separation(NET, RAGGED, [0, 1]), "class_separation", "X", "ragged"),
    ("hp-none", lambda: sep.henze_penrose(None, np.ones((3, 2))), "Xa", "None"),
    ("hp-ragged", lambda: sep.henze_penrose(RAGGED, np.ones((3, 2))), "Xa", "ragged"),
])
table("separation", TypeError, [
    ("compare-paired-str", lambda: sep.compare_layers(result(), paired="yes"), "paired", "'yes'"),
    ("to_json-none", lambda: result().to_json(None), "to_json", "path", "None"),
    ("from_json-none", lambda: sep.SeparationResult.from_json(None), "from_json", "path", "None"),
])
table("separation", KeyError, [
    ("value-str", lambda: result().value("input", "a", 1), "class a", "'a'"),
    ("values-statistic", lambda: result().values("input", "Q"), "statistic", "'Q'"),
])
table("separation", FileNotFoundError, [
    ("to_json-no-dir", lambda: result().to_json("/no/such/dir/r.json"), "to_json", "/no/such/dir/r.json"),
])
table("separation", ValueError, [
    ("compare-permutations", lambda: sep.compare_layers(result(), n_permutations=0), "n_permutations",
     "received 0"),
    ("history-every", lambda: sep.SeparationHistory(X, Y, every=0), "every", "received 0"),
    ("history-npc", lambda: sep.SeparationHistory(X, Y, n_per_class=0), "n_per_class", "received 0"),
    ("history-length", lambda: sep.SeparationHistory(X, Y[:5]), "same length", "(5,)"),
    ("history-x-none", lambda: sep.SeparationHistory(None, Y), "X", "None"),
])
table("separation", TypeError, [
    ("history-before", lambda: sep.SeparationHistory(X, Y, before_training="yes"), "before_training", "'yes'"),
])

# ------------------------------------------------------------------ fisher_test
A30 = np.arange(30.0)
table("fisher", TypeError, [
    ("a-none", lambda: fisher_test(None, [1, 2]), "a must be real numbers", "NoneType"),
    ("a-str", lambda: fisher_test("abc", [1, 2]), "a must be real numbers", "str"),
    ("a-ragged", lambda: fisher_test([[1, 2], [3]], [1, 2]), "a must be real numbers", "list"),
    ("a-complex", lambda: fisher_test(np.array([1j, 2]), [1, 2]), "a must be real numbers", "complex128",
     "imaginary"),
    ("paired-str", lambda: fisher_test([1, 2], [3, 4], paired="yes"), "paired", "'yes'"),
])
table("fisher", ValueError, [
    ("nan", lambda: fisher_test([1, np.nan], [1, 2]), "a contains 1 NaN"),
    ("empty", lambda: fisher_test([], [1, 2]), "a is empty"),
    ("permutations-float", lambda: fisher_test(A30, A30, n_permutations=2.5), "n_permutations", "2.5"),
    ("permutations-0", lambda: fisher_test(A30, A30, n_permutations=0), "n_permutations", "received 0"),
    ("permutations-huge", lambda: fisher_test(A30, A30 + 1, n_permutations=10 ** 12), "n_permutations=1000000000000",
     "fewer permutations"),
    ("alternative", lambda: fisher_test([1, 2], [3, 4], alternative="up"), "alternative", "'up'"),
    ("paired-lengths", lambda: fisher_test([1, 2], [3, 4, 5], paired=True), "same length", "2 and 3"),
    ("seed-str", lambda: fisher_test(A30, A30, seed="a"), "seed", "'a'"),
    ("seed-neg", lambda: fisher_test(A30, A30, seed=-1), "seed", "-1"),
])

# ------------------------------------------------------------------ curvature
table("curvature", TypeError, [
    ("net-none", lambda: cv.kfac_factors(None, X, Y), "net must be a NeuralNetwork", "NoneType"),
    ("layer-relu", lambda: cv.kfac_factors(NET, X, Y, layers=["act"]), "layer 'act' is a ReLU"),
    ("ekfac-factors", lambda: cv.ekfac_scalings(NET, X, Y, "x"), "factors", "str"),
])
table("curvature", ValueError, [
    ("y-none", lambda: cv.kfac_factors(NET, X, None), "y", "needed"),
    ("fisher", lambda: cv.kfac_factors(NET, X, Y, fisher="banana"), "fisher", "'banana'"),
    ("mc-samples", lambda: cv.kfac_factors(NET, X, Y, fisher="mc", mc_samples=0), "mc_samples", "received 0"),
    ("batch-float", lambda: cv.kfac_factors(NET, X, Y, batch_size=2.5), "batch_size", "2.5"),
    ("batch-0", lambda: cv.kfac_factors(NET, X, Y, batch_size=0), "batch_size", "received 0"),
    ("layer-unknown", lambda: cv.kfac_factors(NET, X, Y, layers=["nope"]), "no layer 'nope'"),
    ("seed-str", lambda: cv.kfac_factors(NET, X, Y, fisher="mc", seed="a"), "seed", "'a'"),
    ("max-factor", lambda: cv.kfac_factors(NET, X, Y, max_factor_size=0), "max_factor_size", "received 0"),
    ("max-params-str", lambda: cv.fisher_block(NET, X, Y, "hidden", max_params="big"), "max_params", "'big'"),
    ("max-params-neg", lambda: cv.fisher_block(NET, X, Y, "hidden", max_params=-1), "max_params", "-1"),
    ("block-too-big", lambda: cv.fisher_block(NET, X, Y, "hidden", max_params=10), "P = 6 x 5 = 30",
     "max_params=10"),
    ("damping", lambda: cv.kfac_factors(NET, X, Y)["hidden"].solve(np.zeros((6, 5)), -1), "damping", "-1"),
])
table("curvature", DataError, [
    ("X-nan", lambda: cv.kfac_factors(NET, np.full((30, 4), np.nan, np.float32), Y), "kfac_factors", "NaN"),
    ("X-width", lambda: cv.kfac_factors(NET, np.zeros((30, 5), np.float32), Y), "shape (4,)", "(30, 5)"),
    ("y-length", lambda: cv.kfac_factors(NET, X, Y[:5]), "30 samples", "5 labels"),
])
table("curvature", nf.ShapeError, [
    ("solve-shape", lambda: cv.kfac_factors(NET, X, Y)["hidden"].solve(np.zeros((3, 3)), 0.1), "V must have shape",
     "(3, 3)"),
])

# ------------------------------------------------------------------ input gradients
table("gradients", ValueError, [
    ("output", lambda: input_gradients(NET, X, output="banana"), "output must be one of", "'banana'"),
    ("callable-shape", lambda: input_gradients(NET, X, output=lambda o: o[:, :1]), "callable output=", "(30, 1)"),
    ("callable-nan", lambda: input_gradients(NET, X, output=lambda o: o * np.nan), "callable output=", "NaN"),
    ("callable-complex", lambda: input_gradients(NET, X, output=lambda o: o.astype(complex)), "real numbers",
     "complex128"),
    ("index-range", lambda: input_gradients(NET, X, output="logit", index=7), "index=7", "3 logits"),
    ("index-float", lambda: input_gradients(NET, X, output="logit", index=1.5), "index", "1.5"),
    ("batch-0", lambda: input_gradients(NET, X, batch_size=0), "batch_size", "received 0"),
    ("moments-ragged", lambda: association_statistic([np.zeros((2, 3)), np.zeros((2, 4))]), "(2, 4)", "(3,)"),
    ("moments-empty", lambda: association_statistic(np.zeros((0, 3))), "no samples"),
])
table("gradients", TypeError, [
    ("net-none", lambda: input_gradients(None, X), "net must be a NeuralNetwork", "NoneType"),
    ("moments-none", lambda: association_statistic(None), "D must be an array", "NoneType"),
])
table("gradients", DataError, [
    ("X-nan", lambda: input_gradients(NET, np.full((3, 4), np.nan, np.float32)), "input_gradients", "NaN"),
    ("X-width", lambda: input_gradients(NET, np.zeros((3, 5), np.float32)), "shape (4,)", "(3, 5)"),
    ("X-ragged", lambda: input_gradients(NET, RAGGED), "input_gradients", "X", "ragged"),
    ("X-str", lambda: input_gradients(NET, "abc"), "real numbers", "<U3"),
])

# ------------------------------------------------------------------ permutation_test and its result
table("permutation", TypeError, [
    ("build-net", lambda: permutation_test(NET, X, Y, FK), "build must be a callable", "NeuralNetwork"),
    ("build-none", lambda: permutation_test(lambda s: None, X, Y, FK), "build(seed) must return", "NoneType"),
    ("fit-kwargs-list", lambda: permutation_test(mlp, X, Y, [1]), "fit_kwargs must be a dict", "list"),
    ("fit-kwargs-key", lambda: permutation_test(mlp, X, Y, {"epochz": 1}), "fit_kwargs", "['epochz']"),
    ("progress-str", lambda: permutation_test(mlp, X, Y, FK, progress="yes"), "progress", "'yes'"),
    ("checkpoint-int", lambda: permutation_test(mlp, X, Y, FK, checkpoint_dir=3), "checkpoint_dir", "int 3"),
    ("load-none", lambda: PermutationTestResult.load(None), "path", "None"),
])
table("permutation", ValueError, [
    ("length", lambda: permutation_test(mlp, X, Y[:5], FK), "same number of samples", "(5,)"),
    ("B-float", lambda: permutation_test(mlp, X, Y, FK, n_permutations=2.5), "n_permutations", "2.5"),
    ("statistic", lambda: permutation_test(mlp, X, Y, FK, statistic="x"), "statistic", "'x'"),
    ("output", lambda: permutation_test(mlp, X, Y, FK, output="x"), "output must be one of", "'x'"),
    ("backend", lambda: permutation_test(mlp, X, Y, FK, backend="x"), "backend", "'x'"),
    ("jobs-0", lambda: permutation_test(mlp, X, Y, FK, n_jobs=0), "n_jobs", "received 0"),
    ("jobs-float", lambda: permutation_test(mlp, X, Y, FK, n_jobs=1.5), "n_jobs", "1.5"),
    ("seed-neg", lambda: permutation_test(mlp, X, Y, FK, seed=-1), "seed", "-1"),
    ("fit-kwargs-seed", lambda: permutation_test(mlp, X, Y, {"seed": 3}), "fit_kwargs must not contain 'seed'"),
    ("checkpoint-file", lambda: permutation_test(mlp, X, Y, FK, checkpoint_dir=__file__), "checkpoint_dir",
     "is a file"),
    ("example-shape", lambda: permutation_test(mlp, X, Y, FK, example=np.zeros(7)), "example", "(4,)", "(7,)"),
    ("groups-shape", lambda: permutation_test(mlp, X, Y, FK, null="conditional", groups=np.zeros(3, int)), "groups",
     "(3,)"),
    ("sampler", lambda: permutation_test(mlp, X, Y, FK, null="conditional", sampler="x"), "sampler", "'x'"),
    ("tested", lambda: permutation_test(mlp, X, Y, FK, null="conditional", tested=[99]), "tested", "[99]"),
    ("null", lambda: permutation_test(mlp, X, Y, FK, null="pixels"), "null must be one of", "'pixels'"),
    ("result-shapes", lambda: PermutationTestResult(np.zeros(3), np.zeros((2, 4))), "null_distribution", "(2, 4)"),
    ("result-alpha", lambda: PermutationTestResult(np.zeros(3), np.zeros((2, 3))).significant(alpha=2), "alpha",
     "2"),
    ("result-method", lambda: PermutationTestResult(np.zeros(3), np.zeros((2, 3))).adjusted("x"), "method", "'x'"),
    ("load-dir", lambda: PermutationTestResult.load(os.path.dirname(__file__)), "is a directory"),
])
table("permutation", DataError, [
    ("X-ragged", lambda: permutation_test(mlp, RAGGED, [0, 1], FK), "permutation_test", "X", "ragged"),
    ("y-none", lambda: permutation_test(mlp, X, None, FK), "permutation_test", "y", "None"),
])

# ------------------------------------------------------------------ callbacks
table("callbacks", TypeError, [
    ("es-baseline-str", lambda: cb.EarlyStopping(baseline="x"), "EarlyStopping", "baseline", "'x'"),
    ("es-restore-str", lambda: cb.EarlyStopping(restore_best_weights="no"), "restore_best_weights", "'no'"),
    ("mc-path-none", lambda: cb.ModelCheckpoint(None), "ModelCheckpoint", "path", "None"),
    ("mc-best-only-str", lambda: cb.ModelCheckpoint("m.npz", save_best_only="yes"), "save_best_only", "'yes'"),
    ("mc-threshold-str", lambda: cb.ModelCheckpoint("m.npz", initial_value_threshold="x"), "initial_value_threshold",
     "'x'"),
    ("csv-none", lambda: cb.CSVLogger(None), "CSVLogger", "filename", "None"),
    ("csv-append-str", lambda: cb.CSVLogger("log.csv", append="no"), "append", "'no'"),
    ("lrs-not-callable", lambda: cb.LearningRateScheduler(3), "schedule must be callable", "int"),
    ("lambda-hook", lambda: cb.LambdaCallback(on_epoch_end=3), "on_epoch_end must be callable", "int"),
    ("lambda-unknown", lambda: cb.LambdaCallback(on_foo=lambda: 0), "unknown hook(s) ['on_foo']"),
    ("fit-not-callback", lambda: mlp().fit(X, Y, epochs=1, verbose=0, callbacks=[3]), "callbacks[0] is int"),
])
table("callbacks", ValueError, [
    ("es-baseline-nan", lambda: cb.EarlyStopping(baseline=float("nan")), "baseline", "nan"),
    ("es-patience", lambda: cb.EarlyStopping(patience=-1), "patience", "-1"),
    ("es-mode", lambda: cb.EarlyStopping(mode="up"), "mode", "'up'"),
    ("es-min-delta", lambda: cb.EarlyStopping(min_delta=np.nan), "min_delta", "nan"),
    ("csv-separator", lambda: cb.CSVLogger("log.csv", separator=""), "separator", "''"),
    ("rlr-factor", lambda: cb.ReduceLROnPlateau(factor=1.5), "factor", "1.5"),
    ("rlr-min-lr", lambda: cb.ReduceLROnPlateau(min_lr=-1), "min_lr", "-1"),
])
table("callbacks", cb.CallbackError, [
    ("lrs-nan", lambda: mlp().fit(X, Y, epochs=1, verbose=0,
                                  callbacks=[cb.LearningRateScheduler(lambda e, lr: float("nan"))]),
     "LearningRateScheduler", "nan"),
])


# ------------------------------------------------------------------ loaders
def _idx_dir(n_declared):
    """A test-set directory whose image header declares ``n_declared`` images of 28 x 28 (no data)."""
    d = tempfile.mkdtemp(prefix="idx-overflow-")
    with gzip.open(os.path.join(d, "t10k-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", n_declared, 28, 28))
    with gzip.open(os.path.join(d, "t10k-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", n_declared))
    return d


table("loaders", TypeError, [
    ("model-none", lambda: nf.NeuralNetwork.load(None), "path", "NoneType"),
    ("mnist-normalize", lambda: datasets.load_mnist(normalize="yes"), "normalize", "'yes'"),
    ("mnist-seed", lambda: datasets.load_mnist(seed="a"), "seed", "'a'"),
    ("mnist-npz-none", lambda: datasets.load_mnist_npz(None), "load_mnist_npz", "path", "None"),
    ("idx-int", lambda: datasets.load_mnist_idx(3), "load_mnist_idx", "directory", "int 3"),
])
table("loaders", ValueError, [
    ("mnist-split", lambda: datasets.load_mnist(split=3), "split", "received 3"),
    ("mnist-fraction-nan", lambda: datasets.load_mnist(test_fraction=np.nan), "test_fraction", "nan"),
    ("fashion-split", lambda: datasets.load_fashion_mnist(split="x"), "split", "'x'"),
    ("model-dir", lambda: nf.NeuralNetwork.load(os.path.dirname(__file__)), "is a directory"),
])

# ------------------------------------------------------------------ the first bank's ten
def _step_with(grad):
    net = mlp()
    net.forward(X)
    net.backward(np.ones((30, 3), np.float32))
    net.layers[0]._grads["W"] = grad
    net.optimizer.step(net.layers)


def _backward_list():
    layer = nf.Linear(4, 3, name="lin")
    layer.forward(X)
    return layer.backward(np.ones((30, 3)).tolist())


def _set_w_list():
    layer = nf.Linear(4, 3, name="lin")
    layer.W = np.zeros((5, 3)).tolist()


def _fashion_overflow():
    return datasets.load_mnist_idx(_idx_dir(2 ** 31 - 1))


table("old", ValueError, [
    ("softmax-axis5", lambda: nf.Softmax(axis=5).forward(np.ones((2, 3), np.float32)), "axis=5", "rank 2"),
    ("softmax-axis5-shape", lambda: nf.Softmax((5, 3), axis=5), "axis=5", "1..1"),
    ("step-wrong-shape", lambda: _step_with(np.ones((2, 2), np.float32)), "step", "parameter 'W'", "(5, 6)",
     "(2, 2)"),
])
table("old", RuntimeError, [
    ("step-none", lambda: _step_with(None), "no gradient for parameter 'W'"),
])
table("old", TypeError, [
    ("astype-int32", lambda: mlp().astype(np.int32).fit(X, Y, epochs=1, verbose=0), "astype", "floating",
     "int32"),
    ("upstream-list", _backward_list, "upstream gradient must be an array", "list"),
    ("W-list", _set_w_list, "parameter 'W' must be an array", "(5, 3)", "list"),
    ("idx-directory-none", lambda: datasets.load_mnist_idx(directory=None), "load_mnist_idx", "directory", "None"),
])
table("old", DataError, [
    ("fit-y-none", lambda: mlp().fit(X, None, epochs=1, verbose=0), "fit", "y", "None"),
    ("ragged-fit", lambda: mlp().fit(RAGGED, [0, 1], epochs=1, verbose=0), "fit", "X", "ragged", "[2, 4]"),
    ("ragged-predict", lambda: mlp().predict(RAGGED), "predict", "X", "ragged"),
])
CASES.append(pytest.param(_fashion_overflow, "DatasetError", ("header announces", "2147483647"),
                          id="old-idx-header-overflow"))


# ------------------------------------------------------------------ the table itself
@pytest.mark.parametrize("call,exc,needles", CASES)
def test_bad_input_is_refused_clearly(call, exc, needles):
    if exc == "DatasetError":
        exc = datasets.DatasetError
    with pytest.raises(exc) as err:
        call()
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in the message: {msg}"
    assert "Traceback" not in msg


def test_the_bank_covers_every_tool_and_its_rows_are_distinct():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 150, len(ids)
    groups = {i.split("-")[0] for i in ids}
    assert groups == {"separation", "fisher", "curvature", "gradients", "permutation", "callbacks", "loaders",
                      "old"}, groups
    assert sum(i.startswith("old-") for i in ids) >= 10
