"""Issue 22, item 9: every public entry point refuses bad arguments with the right exception and a
message that names the argument (or the layer), the expectation and the value received.

One row per bad input: ``(id, call, exception type, substrings the message must hold)``.
Before issue 22, 52 of 150 such inputs gave a bare Python/NumPy error or a silently wrong result
(``Convolution(output_layers=2.7)`` built 2 filters, ``fit(batch_size=0)`` used the default,
``evaluate(batch_size=-1)`` returned ``(0.0, 0.0)``, label -1 trained on the last class, ...).
"""
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.training import optimizers
from nn_from_scratch.interfaces import NotReadyError
from nn_from_scratch.training.serialization import ModelFileError

CASES = []


def case(name, exc, *needles):
    """Register the decorated zero-argument function as a row of the table."""
    def register(fn):
        CASES.append(pytest.param(fn, exc, needles, id=name))
        return fn
    return register


def mlp(**kw):
    return nf.NeuralNetwork([nf.Linear(4, 6, name="hidden"), nf.ReLU(name="act"), nf.Linear(6, 3, name="out")],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=1, **kw)


def regression():
    return nf.NeuralNetwork([nf.Linear(4, 2, name="reg")], loss_fn=nf.MSELoss(), workers=1)


X4 = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
Y3 = np.array([0, 1, 2, 0, 1, 2])


def table(prefix, exc, rows):
    """Rows ``(id, call, *needles)`` sharing one exception type."""
    for name, fn, *needles in rows:
        CASES.append(pytest.param(fn, exc, tuple(needles), id=f"{prefix}-{name}"))


# ------------------------------------------------------------------ Linear constructor
table("Linear", ValueError, [
    ("in0", lambda: nf.Linear(0, 10), "Linear", "input_shape", "positive"),
    ("out0", lambda: nf.Linear(10, 0), "Linear", "output_shape", "positive"),
    ("in-neg", lambda: nf.Linear(-3, 10), "Linear", "input_shape"),
    ("in-float", lambda: nf.Linear(4.7, 10), "Linear", "input_shape", "4.7"),
    ("out-float", lambda: nf.Linear(10, 2.5), "Linear", "output_shape", "2.5"),
    ("in-str", lambda: nf.Linear("10", 10), "Linear", "input_shape", "'10'"),
    ("in-bool", lambda: nf.Linear(True, 10), "Linear", "input_shape"),
    ("seed-form-in0", lambda: nf.Linear((5, 0), (5, 10)), "Linear", "input_shape", "(5, 0)"),
    ("seed-form-out0", lambda: nf.Linear((5, 10), (5, 0)), "Linear", "output_shape", "(5, 0)"),
    ("seed-form-float", lambda: nf.Linear((5, 7.5), (5, 10)), "Linear", "input_shape", "7.5"),
    ("no-output", lambda: nf.Linear(), "Linear", "output size"),
    ("one-shape", lambda: nf.Linear((5, 800)), "Linear", "one shape", "Linear(10)"),
    ("twice", lambda: nf.Linear(800, 10, out_features=10), "Linear", "output size is given twice"),
    ("images", lambda: nf.Linear((5, 2, 3), (5, 4)), "Linear", "vectors"),
    ("batch-float", lambda: nf.Linear((2.5, 10), (5, 4)), "Linear", "batch entry", "2.5"),
])
table("Linear", TypeError, [
    ("use_bias-str", lambda: nf.Linear(10, 5, use_bias="no"), "use_bias", "'no'"),
    ("dtype-int", lambda: nf.Linear(10, 5, dtype=np.int32), "dtype", "int32"),
    ("name-int", lambda: nf.Linear(10, 5, name=3), "name", "3"),
])

# ------------------------------------------------------------------ Convolution constructor
SEED = (50, 1, 28, 28)
table("Convolution", ValueError, [
    ("filters0", lambda: nf.Convolution(SEED, 3, output_layers=0), "output_layers", "0"),
    ("filters-neg", lambda: nf.Convolution(SEED, 3, output_layers=-2), "output_layers", "-2"),
    ("filters-missing", lambda: nf.Convolution(SEED, 3), "output_layers", "None"),
    ("filters-disagree", lambda: nf.Convolution(SEED, 3, output_layers=2, out_channels=3), "output_layers=2",
     "out_channels=3"),
    ("channels0-shape", lambda: nf.Convolution((50, 0, 28, 28), 3, 4), "Convolution", "input_shape", "(50, 0, 28, 28)"),
    ("channels0-arg", lambda: nf.Conv2D(0, 4, 3), "in_channels", "0"),
    ("spatial0", lambda: nf.Convolution((50, 1, 0, 28), 3, 4), "input_shape", "(50, 1, 0, 28)"),
    ("kernel0", lambda: nf.Convolution(SEED, 0, 4), "kernel_size", ">= 1"),
    ("kernel-too-few", lambda: nf.Convolution(SEED, (3,), 4), "kernel_size", "(3,)"),
    ("kernel-too-many", lambda: nf.Convolution(SEED, (3, 3, 3), 4), "kernel_size", "(3, 3, 3)"),
    ("kernel-too-big", lambda: nf.Convolution(SEED, 30, 4), "Convolution"),
    ("stride0", lambda: nf.Convolution(SEED, 3, 4, stride=0), "stride", ">= 1"),
    ("dilation0", lambda: nf.Convolution(SEED, 3, 4, dilation=0), "dilation", ">= 1"),
    ("padding-neg", lambda: nf.Convolution(SEED, 3, 4, padding=-1), "padding", "-1"),
    ("padding-word", lambda: nf.Convolution(SEED, 3, 4, padding="full"), "padding", "'full'"),
    ("padding-axes", lambda: nf.Convolution(SEED, 3, 4, padding=(1,)), "padding", "(1,)"),
    ("rank-1", lambda: nf.Convolution((50, 28), 3, 4), "Convolution input shape", "(50, 28)"),
    ("rank-6", lambda: nf.Convolution((50, 1, 4, 4, 4, 4), 3, 4), "Convolution input shape"),
    ("ndim4", lambda: nf.Convolution(in_channels=1, out_channels=4, kernel_size=3, ndim=4), "ndim", "4"),
    ("ndim0", lambda: nf.Convolution(in_channels=1, out_channels=4, kernel_size=3, ndim=0), "ndim", "0"),
    ("ndim-disagree", lambda: nf.Convolution(SEED, 3, 4, ndim=3), "ndim=3"),
    ("in-disagree", lambda: nf.Convolution(SEED, 3, 4, in_channels=3), "in_channels=3"),
    ("no-filters", lambda: nf.Convolution(kernel_size=3), "output_layers"),
    ("conv1d-stride-axes", lambda: nf.Conv1D(1, 4, 3, stride=(1, 1)), "stride", "(1, 1)"),
])
table("Convolution", TypeError, [
    ("filters-float", lambda: nf.Convolution(SEED, 3, output_layers=2.7), "output_layers", "2.7", "no rounding"),
    ("filters-str", lambda: nf.Convolution(SEED, 3, output_layers="4"), "output_layers", "'4'"),
    ("filters-bool", lambda: nf.Convolution(SEED, 3, output_layers=True), "output_layers", "True"),
    ("kernel-float", lambda: nf.Convolution(SEED, 2.5, 4), "kernel_size", "2.5"),
    ("kernel-str", lambda: nf.Convolution(SEED, "3", 4), "kernel_size", "'3'"),
    ("kernel-float-tuple", lambda: nf.Convolution(SEED, (3, 2.5), 4), "kernel_size", "2.5"),
    ("stride-float", lambda: nf.Convolution(SEED, 3, 4, stride=1.5), "stride", "1.5"),
    ("dilation-bool", lambda: nf.Convolution(SEED, 3, 4, dilation=True), "dilation", "True"),
    ("use_bias-str", lambda: nf.Convolution(SEED, 3, 4, use_bias="False"), "use_bias", "'False'"),
    ("in-float", lambda: nf.Conv2D(1.5, 4, 3), "in_channels", "1.5"),
    ("ndim-float", lambda: nf.Convolution(in_channels=1, out_channels=4, kernel_size=3, ndim=1.5), "ndim", "1.5"),
    ("dtype-int", lambda: nf.Convolution(SEED, 3, 4, dtype=np.int64), "dtype", "int64"),
])
table("Convolution", ValueError, [
    ("padding-float", lambda: nf.Convolution(SEED, 3, 4, padding=1.5), "padding", "1.5"),
])

# ------------------------------------------------------------------ pooling constructors
table("Pool", ValueError, [
    ("max-size0", lambda: nf.MaxPool(pool_size=0), "MaxPool", "pool_size", ">= 1"),
    ("max-axes", lambda: nf.MaxPool((50, 4, 26, 26), pool_size=(2,)), "MaxPool", "pool_size", "(2,)"),
    ("max-stride0", lambda: nf.MaxPool(pool_size=2, stride=0), "MaxPool", "stride"),
    ("max-padding-word", lambda: nf.MaxPool(pool_size=2, padding="full"), "MaxPool", "padding", "'full'"),
    ("max-padding-window", lambda: nf.MaxPool(pool_size=2, padding=2), "MaxPool", "padding", "smaller"),
    ("max-ndim4", lambda: nf.MaxPool(pool_size=2, ndim=4), "MaxPool", "ndim", "4"),
    ("max-rank", lambda: nf.MaxPool((50, 4), pool_size=2), "MaxPool", "input shape"),
    ("max-shape0", lambda: nf.MaxPool((50, 0, 26, 26)), "MaxPool", "shape", "(50, 0, 26, 26)"),
    ("avg-size0", lambda: nf.AvgPool(pool_size=0), "AvgPool", "pool_size"),
    ("avg-padding-neg", lambda: nf.AvgPool(pool_size=2, padding=-1), "AvgPool", "padding", "-1"),
    ("avg-window-too-big", lambda: nf.AvgPool((50, 4, 3, 3), pool_size=4), "AvgPool"),
])
table("Pool", TypeError, [
    ("max-size-float", lambda: nf.MaxPool(pool_size=2.5), "MaxPool", "pool_size", "2.5"),
    ("max-size-str", lambda: nf.MaxPool(pool_size="2"), "MaxPool", "pool_size", "'2'"),
    ("avg-stride-float", lambda: nf.AvgPool(pool_size=2, stride=1.5), "AvgPool", "stride", "1.5"),
    ("max-ndim-float", lambda: nf.MaxPool(pool_size=2, ndim=2.0), "MaxPool", "ndim", "2.0"),
])

# ------------------------------------------------------------------ parameter-free layers
table("Node", ValueError, [
    ("relu-shape0", lambda: nf.ReLU((50, 0, 26, 26)), "ReLU", "shape", "(50, 0, 26, 26)"),
    ("relu-shape-float", lambda: nf.ReLU(3.5), "ReLU", "shape", "3.5"),
    ("relu-shape-str", lambda: nf.ReLU("big"), "ReLU", "shape"),
    ("softmax-axis0", lambda: nf.Softmax(axis=0), "Softmax", "axis 0", "batch"),
    ("reshape-none", lambda: nf.Reshape(target_shape=None), "Reshape", "target_shape"),
    ("reshape-zero", lambda: nf.Reshape(target_shape=(0, 4)), "Reshape", "target_shape", "(0, 4)"),
    ("reshape-float", lambda: nf.Reshape(target_shape=(2.5,)), "Reshape", "target_shape", "2.5"),
    ("reshape-empty", lambda: nf.Reshape(target_shape=()), "Reshape", "target_shape"),
])
table("Node", TypeError, [
    ("softmax-axis-float", lambda: nf.Softmax(axis=1.5), "Softmax", "axis", "1.5"),
    ("reshape-int", lambda: nf.Reshape(target_shape=5), "Reshape", "target_shape", "5"),
    ("flatten-name", lambda: nf.Flatten(name=5), "Vectorization", "name", "5"),
    ("tanh-name", lambda: nf.Tanh(name=["t"]), "Tanh", "name"),
])


# ------------------------------------------------------------------ forward / backward
def fresh_linear():
    return nf.Linear(4, 3, name="fc")


table("forward", TypeError, [
    ("linear-list", lambda: fresh_linear().forward([[1, 2, 3, 4]]), "'fc'", "array", "list"),
    ("linear-none", lambda: fresh_linear().forward(None), "'fc'", "NoneType"),
    ("linear-complex", lambda: fresh_linear().forward(np.ones((2, 4), complex)), "'fc'", "complex128", "imaginary"),
    ("linear-object", lambda: fresh_linear().forward(np.array([[1, None, 2, 3]], dtype=object)), "'fc'", "object"),
    ("linear-str", lambda: fresh_linear().forward(np.array([["a"] * 4])), "'fc'", "<U1"),
    ("relu-complex", lambda: nf.ReLU(name="r").forward(np.ones((2, 3), complex)), "'r'", "complex"),
    ("sigmoid-object", lambda: nf.Sigmoid(name="s").forward(np.array([[None]], dtype=object)), "'s'", "object"),
    ("tanh-dates", lambda: nf.Tanh(name="t").forward(np.array([["2020-01-01"]], dtype="datetime64[D]")), "'t'",
     "datetime64"),
    ("conv-complex", lambda: nf.Conv2D(1, 2, 3, name="cv").forward(np.ones((1, 1, 5, 5), np.complex64)), "'cv'",
     "complex64"),
    ("pool-str", lambda: nf.MaxPool(pool_size=2, name="mp").forward(np.full((1, 1, 4, 4), "x")), "'mp'", "<U1"),
    ("softmax-complex", lambda: nf.Softmax(name="sm").forward(np.ones((2, 3), complex)), "'sm'", "complex"),
])
table("forward", nf.ShapeError, [
    ("linear-width", lambda: fresh_linear().forward(np.ones((2, 5))), "'fc'", "(N, 4)", "(2, 5)"),
    ("linear-1d", lambda: fresh_linear().forward(np.ones(4)), "'fc'", "(4,)"),
    ("conv-channels", lambda: nf.Conv2D(3, 2, 3, name="cv").forward(np.ones((1, 1, 5, 5))), "'cv'", "3 input channel"),
    ("conv-rank", lambda: nf.Conv2D(1, 2, 3, name="cv").forward(np.ones((1, 5, 5))), "'cv'", "4-d"),
    ("pool-rank", lambda: nf.MaxPool(pool_size=2, name="mp").forward(np.ones((4, 4))), "'mp'", "4-d"),
    ("relu-declared", lambda: nf.ReLU((5, 3), name="r").forward(np.ones((2, 4))), "'r'", "(N, 3)", "(2, 4)"),
])


def backward_after_forward(layer, x, g):
    layer.forward(x)
    return layer.backward(g)


table("backward", nf.ShapeError, [
    ("linear-upstream", lambda: backward_after_forward(fresh_linear(), np.ones((2, 4)), np.ones((2, 4))), "'fc'",
     "upstream", "(2, 3)", "(2, 4)"),
    ("relu-upstream", lambda: backward_after_forward(nf.ReLU(name="r"), np.ones((2, 3)), np.ones((3, 3))), "'r'",
     "upstream"),
    ("conv-upstream", lambda: backward_after_forward(nf.Conv2D(1, 2, 3, name="cv"), np.ones((1, 1, 5, 5)),
                                                     np.ones((1, 2, 2, 2))), "'cv'", "upstream", "(1, 2, 3, 3)"),
])
table("backward", NotReadyError, [
    ("linear-first", lambda: fresh_linear().backward(np.ones((2, 3))), "'fc'", "before forward"),
    ("pool-first", lambda: nf.MaxPool(pool_size=2, name="mp").backward(np.ones((1, 1, 2, 2))), "'mp'", "before"),
    ("loss-first", lambda: nf.SoftMaxLoss(name="ce").backward(), "'ce'"),
])

# ------------------------------------------------------------------ NeuralNetwork constructor
table("NeuralNetwork", ValueError, [
    ("no-layers", lambda: nf.NeuralNetwork([]), "at least one layer"),
    ("batch0", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], batch_size=0), "batch_size", "0"),
    ("workers0", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], workers=0), "workers", "0"),
    ("workers-str", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], workers="two"), "workers", "'two'"),
    ("duplicate-names", lambda: nf.NeuralNetwork([nf.Linear(4, 4, name="a"), nf.Linear(4, 3, name="a")]),
     "unique", "'a'"),
    ("n_input", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], n_input=5), "n_input=5"),
    ("neighbours", lambda: nf.NeuralNetwork([nf.Linear(4, 3, name="a"), nf.Linear(5, 2, name="b")]), "layer 1",
     "'b'"),
    ("optimizer-name", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], optimizer="sgdd"), "unknown optimizer", "'sgdd'"),
])
table("NeuralNetwork", TypeError, [
    ("batch-float", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], batch_size=2.5), "batch_size", "2.5"),
    ("layer-int", lambda: nf.NeuralNetwork([5]), "layers[0]", "int"),
    ("loss-is-layer", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], loss_fn=nf.ReLU()), "loss_fn", "ReLU"),
    ("loss-in-layers", lambda: nf.NeuralNetwork([nf.Linear(4, 3), nf.SoftMaxLoss()]), "layers[1]", "loss_fn="),
    ("name-int", lambda: nf.NeuralNetwork([nf.Linear(4, 3)], name=7), "name", "7"),
])

# ------------------------------------------------------------------ fit
table("fit", TypeError, [
    ("batch-float", lambda: mlp().fit(X4, Y3, batch_size=2.5, verbose=0), "fit", "batch_size", "2.5"),
    ("batch-str", lambda: mlp().fit(X4, Y3, batch_size="32", verbose=0), "fit", "batch_size", "'32'"),
    ("batch-bool", lambda: mlp().fit(X4, Y3, batch_size=True, verbose=0), "fit", "batch_size", "True"),
    ("epochs-float", lambda: mlp().fit(X4, Y3, epochs=2.7, verbose=0), "fit", "epochs", "2.7"),
    ("epochs-str", lambda: mlp().fit(X4, Y3, epochs="2", verbose=0), "fit", "epochs", "'2'"),
    ("n_epochs-float", lambda: mlp().fit(X4, Y3, n_epochs=1.5, verbose=0), "fit", "n_epochs", "1.5"),
    ("val-batch-float", lambda: mlp().fit(X4, Y3, validation_batch_size=2.5, verbose=0), "validation_batch_size"),
    ("shuffle-str", lambda: mlp().fit(X4, Y3, shuffle="yes", verbose=0), "fit", "shuffle", "'yes'"),
    ("verbose-str", lambda: mlp().fit(X4, Y3, verbose="loud"), "fit", "verbose", "'loud'"),
    ("seed-float", lambda: mlp().fit(X4, Y3, seed=2.5, verbose=0), "fit", "seed", "2.5"),
    ("nonfinite-str", lambda: mlp().fit(X4, Y3, stop_on_nonfinite="no", verbose=0), "stop_on_nonfinite"),
])
table("fit", ValueError, [
    ("batch0", lambda: mlp().fit(X4, Y3, batch_size=0, verbose=0), "fit", "batch_size", "0"),
    ("batch-neg", lambda: mlp().fit(X4, Y3, batch_size=-1, verbose=0), "fit", "batch_size", "-1"),
    ("epochs0", lambda: mlp().fit(X4, Y3, epochs=0, verbose=0), "fit", "epochs", "0"),
    ("epochs-neg", lambda: mlp().fit(X4, Y3, epochs=-1, verbose=0), "fit", "epochs", "-1"),
    ("epochs-disagree", lambda: mlp().fit(X4, Y3, epochs=2, n_epochs=3, verbose=0), "epochs=2", "n_epochs=3"),
    ("val-batch0", lambda: mlp().fit(X4, Y3, validation_batch_size=0, verbose=0), "validation_batch_size", "0"),
    ("seed-neg", lambda: mlp().fit(X4, Y3, seed=-1, verbose=0), "fit", "seed", "-1"),
    ("val-triple", lambda: mlp().fit(X4, Y3, validation_data=(X4,), verbose=0), "validation_data"),
    ("val-split", lambda: mlp().fit(X4, Y3, validation_split=1.5, verbose=0), "validation_split", "1.5"),
])
table("fit", nf.DataError, [
    ("X-complex", lambda: mlp().fit(X4.astype(complex), Y3, verbose=0), "fit", "X", "complex128", "imaginary"),
    ("X-object-None", lambda: mlp().fit(np.array([[1.0, None, 2.0, 3.0]] * 6, dtype=object), Y3, verbose=0), "fit",
     "object", "None"),
    ("X-str", lambda: mlp().fit(np.full((6, 4), "a"), Y3, verbose=0), "fit", "X", "<U1"),
    ("X-scalar", lambda: mlp().fit(np.float32(3.0), Y3, verbose=0), "fit", "0-d"),
    ("X-nan", lambda: mlp().fit(np.where(np.eye(6, 4) > 0, np.nan, X4), Y3, verbose=0), "fit", "NaN"),
    ("X-width", lambda: mlp().fit(np.ones((6, 5)), Y3, verbose=0), "fit", "'hidden'", "(4,)", "(6, 5)"),
    ("label-neg", lambda: mlp().fit(X4, np.array([0, 1, 2, 0, 1, -1]), verbose=0), "fit", "labels", "[-1, 2]"),
    ("label-high", lambda: mlp().fit(X4, np.array([0, 1, 7, 0, 1, 2]), verbose=0), "fit", "labels", "[0, 7]"),
    ("label-float", lambda: mlp().fit(X4, np.array([0, 1, 2.5, 0, 1, 2]), verbose=0), "fit", "labels"),
    ("label-str", lambda: mlp().fit(X4, np.array(list("abcabc")), verbose=0), "fit", "labels", "<U1"),
    ("label-count", lambda: mlp().fit(X4, Y3[:5], verbose=0), "fit", "6 samples", "5 labels"),
    ("onehot-zero-row", lambda: mlp().fit(X4, np.eye(3)[Y3] * (np.arange(6) != 2)[:, None], verbose=0), "fit",
     "one-hot", "sum to 1"),
    ("onehot-negative", lambda: mlp().fit(X4, np.eye(3)[Y3] - 0.5 * (np.arange(6) == 1)[:, None], verbose=0), "fit",
     "one-hot", ">= 0"),
    ("onehot-width", lambda: mlp().fit(X4, np.eye(4)[Y3], verbose=0), "fit", "one-hot", "(6, 4)"),
    ("onehot-nan", lambda: mlp().fit(X4, np.where(np.eye(6, 3) > 0, np.nan, np.eye(3)[Y3]), verbose=0), "fit",
     "labels", "NaN"),
    ("targets-shape", lambda: regression().fit(X4, np.ones((6, 3)), verbose=0), "fit", "targets", "(6, 3)"),
    ("targets-inf", lambda: regression().fit(X4, np.full((6, 2), np.inf), verbose=0), "fit", "targets", "Inf"),
    ("no-samples", lambda: mlp().fit(X4[:0], Y3[:0], verbose=0), "fit", "no samples"),
    ("val-X-nan", lambda: mlp().fit(X4, Y3, validation_data=(X4 * np.nan, Y3), verbose=0), "validation_data", "NaN"),
])

# ------------------------------------------------------------------ evaluate / predict
table("evaluate", ValueError, [
    ("batch-neg", lambda: mlp().evaluate(X4, Y3, batch_size=-1), "evaluate", "batch_size", "-1"),
    ("batch0", lambda: mlp().evaluate(X4, Y3, batch_size=0), "evaluate", "batch_size", "0"),
])
table("evaluate", TypeError, [
    ("batch-float", lambda: mlp().evaluate(X4, Y3, batch_size=2.5), "evaluate", "batch_size", "2.5"),
    ("return_dict-str", lambda: mlp().evaluate(X4, Y3, return_dict="yes"), "evaluate", "return_dict"),
])
table("evaluate", nf.DataError, [
    ("labels-high", lambda: mlp().evaluate(X4, np.array([0, 1, 3, 0, 1, 2])), "evaluate", "labels", "[0, 3]"),
    ("X-complex", lambda: mlp().evaluate(X4 + 1j, Y3), "evaluate", "complex"),
    ("onehot-zero", lambda: mlp().evaluate(X4, np.zeros((6, 3))), "evaluate", "one-hot", "sum to 1"),
    ("count", lambda: mlp().evaluate(X4, Y3[:4]), "evaluate", "6 samples", "4 labels"),
])
table("predict", ValueError, [
    ("batch0", lambda: mlp().predict(X4, batch_size=0), "predict", "batch_size", "0"),
    ("batch-neg", lambda: mlp().predict(X4, batch_size=-3), "predict", "batch_size", "-3"),
])
table("predict", TypeError, [
    ("batch-str", lambda: mlp().predict(X4, batch_size="x"), "predict", "batch_size", "'x'"),
    ("to_host-str", lambda: mlp().predict(X4, to_host="yes"), "predict", "to_host", "'yes'"),
    ("proba-mse", lambda: regression().predict(X4, probabilities=True), "predict", "probabilities", "MSELoss"),
])
table("predict", nf.DataError, [
    ("X-object", lambda: mlp().predict(np.array([[None] * 4], dtype=object)), "predict", "object"),
    ("X-complex", lambda: mlp().predict(X4.astype(np.complex64)), "predict", "complex64"),
    ("X-shape", lambda: mlp().predict(np.ones((2, 3))), "predict", "'hidden'", "(4,)", "(2, 3)"),
    ("X-nan", lambda: mlp().predict(X4 * np.nan), "predict", "NaN"),
    ("X-empty", lambda: mlp().predict(X4[:0]), "predict", "no samples"),
    ("layer_outputs-str", lambda: mlp().layer_outputs(np.full((2, 4), "q")), "layer_outputs", "<U1"),
])

# ------------------------------------------------------------------ train_step
table("train_step", nf.DataError, [
    ("label-neg", lambda: mlp().train_step(X4, np.array([0, 1, 2, 0, 1, -1])), "train_step", "labels", "[-1, 2]"),
    ("label-high", lambda: mlp().train_step(X4, np.array([0, 1, 7, 0, 1, 2])), "train_step", "labels", "[0, 7]"),
    ("label-count", lambda: mlp().train_step(X4, Y3[:4]), "train_step", "(6, 4)", "(4,)"),
    ("onehot-zero", lambda: mlp().train_step(X4, np.zeros((6, 3))), "train_step", "one-hot", "sum to 1"),
    ("X-complex", lambda: mlp().train_step(X4.astype(complex), Y3), "train_step", "complex"),
    ("label-str", lambda: mlp().train_step(X4, np.array(list("abcabc"))), "train_step", "labels"),
])
table("train_step", TypeError, [
    ("X-list", lambda: mlp().train_step(X4.tolist(), Y3), "train_step", "xb", "list"),
])
table("train_step", nf.ShapeError, [
    ("X-width", lambda: mlp().train_step(np.ones((6, 5), np.float32), Y3), "'hidden'", "(N, 4)", "(6, 5)"),
])

# ------------------------------------------------------------------ input_gradient
table("input_gradient", ValueError, [
    ("none", lambda: mlp().input_gradient(X4), "input_gradient", "exactly one"),
    ("two", lambda: mlp().input_gradient(X4, y=Y3, output_index=0), "input_gradient", "exactly one"),
    ("index-high", lambda: mlp().input_gradient(X4, output_index=5), "input_gradient", "output_index", "5", "(3,)"),
    ("index-float", lambda: mlp().input_gradient(X4, output_index=1.5), "input_gradient", "output_index", "1.5"),
    ("index-tuple", lambda: mlp().input_gradient(X4, output_index=(0, 0)), "input_gradient", "output_index"),
    ("upstream-shape", lambda: mlp().input_gradient(X4, upstream=np.ones((6, 4))), "upstream", "(6, 3)", "(6, 4)"),
])
table("input_gradient", nf.DataError, [
    ("labels", lambda: mlp().input_gradient(X4, y=np.array([0, 1, 2, 0, 1, 9])), "input_gradient", "labels"),
    ("X-complex", lambda: mlp().input_gradient(X4 * 1j, output_index=0), "input_gradient", "complex"),
])

# ------------------------------------------------------------------ optimizers
table("optimizer", ValueError, [
    ("sgd-lr-inf", lambda: nf.SGD(lr=np.inf), "GradientDescent", "learning rate", "finite", "inf"),
    ("sgd-lr-nan", lambda: nf.SGD(lr=np.nan), "GradientDescent", "learning rate", "nan"),
    ("sgd-lr0", lambda: nf.SGD(lr=0), "GradientDescent", "learning rate", "0"),
    ("sgd-lr-neg", lambda: nf.SGD(lr=-0.1), "GradientDescent", "learning rate", "-0.1"),
    ("sgd-momentum1", lambda: nf.SGD(momentum=1.0), "GradientDescent", "momentum", "1.0"),
    ("sgd-momentum-neg", lambda: nf.SGD(momentum=-0.1), "GradientDescent", "momentum", "-0.1"),
    ("sgd-decay-neg", lambda: nf.SGD(weight_decay=-1), "GradientDescent", "weight_decay", "-1"),
    ("adam-lr-inf", lambda: nf.Adam(lr=float("inf")), "Adam", "learning rate", "inf"),
    ("adam-beta1", lambda: nf.Adam(beta_1=1.0), "Adam", "beta_1", "1.0"),
    ("adam-beta2", lambda: nf.Adam(beta_2=-0.1), "Adam", "beta_2", "-0.1"),
    ("adam-eps0", lambda: nf.Adam(epsilon=0), "Adam", "epsilon", "0"),
    ("rms-rho1", lambda: nf.RMSProp(rho=1.0), "RMSProp", "rho", "1.0"),
    ("rms-momentum2", lambda: nf.RMSProp(momentum=2), "RMSProp", "momentum", "2"),
    ("rms-eps-neg", lambda: nf.RMSProp(epsilon=-1e-7), "RMSProp", "epsilon"),
    ("get-unknown", lambda: optimizers.get("adamm"), "unknown optimizer", "'adamm'"),
])
table("optimizer", TypeError, [
    ("sgd-lr-str", lambda: nf.SGD(lr="0.1"), "GradientDescent", "learning rate", "'0.1'"),
    ("sgd-lr-none", lambda: nf.SGD(lr=None), "GradientDescent", "learning rate", "None"),
    ("sgd-lr-bool", lambda: nf.SGD(lr=True), "GradientDescent", "learning rate", "True"),
    ("sgd-momentum-str", lambda: nf.SGD(momentum="0.9"), "GradientDescent", "momentum", "'0.9'"),
    ("sgd-nesterov-str", lambda: nf.SGD(momentum=0.9, nesterov="yes"), "GradientDescent", "nesterov", "'yes'"),
    ("sgd-decay-str", lambda: nf.SGD(weight_decay="x"), "GradientDescent", "weight_decay", "'x'"),
    ("adam-beta1-str", lambda: nf.Adam(beta_1="0.9"), "Adam", "beta_1", "'0.9'"),
    ("adam-amsgrad-int", lambda: nf.Adam(amsgrad=1), "Adam", "amsgrad", "1"),
    ("adam-eps-none", lambda: nf.Adam(epsilon=None), "Adam", "epsilon", "None"),
    ("rms-centered-str", lambda: nf.RMSProp(centered="no"), "RMSProp", "centered", "'no'"),
    ("rms-rho-bool", lambda: nf.RMSProp(rho=True), "RMSProp", "rho", "True"),
])


def step_without_backward():
    layer = nf.Linear(4, 3, name="fc")
    nf.SGD(0.1).step([layer])


table("optimizer", RuntimeError, [
    ("step-before-backward", step_without_backward, "'fc'", "no gradient", "'W'"),
])


# ------------------------------------------------------------------ save / load
@case("save-none", TypeError, "save", "path", "None")
def _():
    mlp().save(None)


@case("save-int", TypeError, "save", "path", "int")
def _():
    mlp().save(3)


@case("load-none", TypeError, "load", "path", "None")
def _():
    nf.NeuralNetwork.load(None)


@case("load-list", TypeError, "load", "path", "list")
def _():
    mlp().load(["m.npz"])


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@case("save-dir", IsADirectoryError, "it is a directory")
def _():
    os.mkdir("d")
    mlp().save("d")


@case("save-missing-dir", FileNotFoundError, "nowhere/m.npz")
def _():
    mlp().save("nowhere/m.npz")


@case("load-missing", ModelFileError, "no model file", "absent.npz")
def _():
    nf.NeuralNetwork.load("absent.npz")


@case("load-dir", ModelFileError, "directory")
def _():
    os.mkdir("e")
    nf.NeuralNetwork.load("e")


@case("load-text", ModelFileError, "notes.npz", "not a zip")
def _():
    with open("notes.npz", "w") as f:
        f.write("not a model")
    nf.NeuralNetwork.load("notes.npz")


@case("load-foreign-npz", ModelFileError, "other.npz", "not an nn_from_scratch model file")
def _():
    np.savez("other.npz", a=np.ones(3))
    nf.NeuralNetwork.load("other.npz")


@case("load-other-arch", ModelFileError, "m.npz", "another architecture")
def _():
    mlp().save("m.npz")
    regression().load("m.npz")


@case("load-other-sizes", ModelFileError, "m2.npz", "(5, 6)")
def _():
    nf.NeuralNetwork([nf.Linear(4, 6, name="hidden"), nf.ReLU(name="act"), nf.Linear(6, 3, name="out")]).save("m2.npz")
    nf.NeuralNetwork([nf.Linear(4, 7, name="hidden"), nf.ReLU(name="act"), nf.Linear(7, 3, name="out")]).load("m2.npz")


# ------------------------------------------------------------------ the cross-check (needs TensorFlow)
def crosscheck():
    return pytest.importorskip("nn_from_scratch.crosscheck", reason="the cross-check needs TensorFlow")


CC_X = np.ones((6, 4), np.float32)
table("crosscheck", ValueError, [
    ("compare-mode", lambda: crosscheck().compare(mlp(), CC_X, mode="bogus"), "compare", "mode", "'bogus'"),
    ("compare-loss-no-y", lambda: crosscheck().compare(mlp(), CC_X, loss=nf.SoftMaxLoss()), "compare", "y="),
    ("compare-rtol-neg", lambda: crosscheck().compare(mlp(), CC_X, rtol=-1), "rtol", "-1"),
    ("compare-rtol-dict", lambda: crosscheck().compare(mlp(), CC_X, rtol={"forward": "x"}), "rtol['forward']"),
    ("compare-rtol-kind", lambda: crosscheck().compare(mlp(), CC_X, rtol={"speed": 1.0}), "'speed'"),
    ("training-steps0", lambda: crosscheck().compare_training(mlp(), X4, Y3, steps=0), "compare_training", "steps"),
    ("training-batch0", lambda: crosscheck().compare_training(mlp(), X4, Y3, batch_size=0), "compare_training",
     "batch_size", "0"),
])
table("crosscheck", TypeError, [
    ("compare-rtol-str", lambda: crosscheck().compare(mlp(), CC_X, rtol="tight"), "rtol", "'tight'"),
    ("compare-str", lambda: crosscheck().compare("net", CC_X), "NeuralNetwork", "str"),
    ("compare-list-of-int", lambda: crosscheck().compare([nf.Linear(4, 3), 5], CC_X), "element 1", "int"),
    ("training-steps-float", lambda: crosscheck().compare_training(mlp(), X4, Y3, steps=2.5), "compare_training",
     "steps", "2.5"),
    ("to_keras-str", lambda: crosscheck().to_keras("x"), "NeuralNetwork", "str"),
])
table("crosscheck", nf.ShapeError, [
    ("compare-x-shape", lambda: crosscheck().compare(mlp(), np.ones((6, 5))), "'hidden'", "(5,)"),
])


# ------------------------------------------------------------------ dataset loaders (datasets.py, issue 21's)
def idx_bytes(array):
    """An IDX file of a uint8 array (magic 0x08 = unsigned byte, then the dims big-endian)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


def idx_dir(images, labels, name="d"):
    os.mkdir(name)
    for stem, data in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        with open(os.path.join(name, stem), "wb") as f:
            f.write(data if isinstance(data, bytes) else idx_bytes(data))
    return name


def mnist_npz(x, y=np.zeros(3, np.uint8)):
    np.savez("mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    return "mnist.npz"


def datasets():
    from nn_from_scratch.data import datasets as ds
    return ds


def dataset_error():
    return datasets().DatasetError


LOADER_ROWS = [
    ("idx-5x5", lambda: datasets().load_mnist_idx(idx_dir(np.zeros((3, 5, 5)), np.zeros(3))), "28, 28", "(3, 5, 5)"),
    ("idx-labels-10", lambda: datasets().load_mnist_idx(idx_dir(np.zeros((3, 28, 28)), np.array([0, 1, 10]))),
     "labels outside 0..9"),
    ("idx-count", lambda: datasets().load_mnist_idx(idx_dir(np.zeros((3, 28, 28)), np.zeros(2))), "3 images",
     "2 labels"),
    ("idx-truncated", lambda: datasets().load_mnist_idx(idx_dir(idx_bytes(np.zeros((3, 28, 28)))[:-10],
                                                                np.zeros(3))), "header announces"),
    ("idx-magic", lambda: datasets().load_mnist_idx(idx_dir(b"hello world!", np.zeros(3))), "not an IDX file"),
    ("idx-missing", lambda: datasets().load_mnist_idx("no-such-dir"), "no-such-dir"),
    ("npz-float-300", lambda: datasets().load_mnist_npz(mnist_npz(np.full((3, 28, 28), 300.0))), "300", "0..255"),
    ("npz-float-neg", lambda: datasets().load_mnist_npz(mnist_npz(np.full((3, 28, 28), -0.5))), "-0.5"),
    ("npz-nan", lambda: datasets().load_mnist_npz(mnist_npz(np.full((3, 28, 28), np.nan))), "NaN"),
    ("npz-missing", lambda: datasets().load_mnist_npz("absent-mnist.npz"), "absent-mnist.npz"),
]


def _loader_case(fn):
    def call():
        try:
            return fn()
        except ImportError as exc:              # pragma: no cover - datasets needs nothing optional here
            pytest.skip(str(exc))
    return call


for _name, _fn, *_needles in LOADER_ROWS:
    CASES.append(pytest.param(_loader_case(_fn), "DatasetError", tuple(_needles), id=f"datasets-{_name}"))
table("datasets", ValueError, [
    ("split", lambda: datasets().load_mnist("validation"), "split", "'validation'"),
    ("test_fraction", lambda: datasets().load_mnist("train", test_fraction=1.5), "test_fraction", "1.5"),
    ("npz-split", lambda: datasets().load_mnist_npz(mnist_npz(np.zeros((3, 28, 28), np.uint8)), split="val"),
     "split", "'val'"),
])


# ------------------------------------------------------------------ the table itself
@pytest.mark.parametrize("call,exc,needles", CASES)
def test_bad_input_is_refused_clearly(call, exc, needles):
    if exc == "DatasetError":                   # resolved late: datasets.py is imported on first use
        exc = dataset_error()
    with pytest.raises(exc) as err:
        call()
    assert type(err.value) is exc or issubclass(type(err.value), exc)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in the message: {msg}"


def test_the_table_is_large_and_its_rows_distinct():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 150, len(ids)
