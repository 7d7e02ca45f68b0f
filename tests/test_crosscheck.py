"""The Keras cross-check harness: every layer type against Keras, and proof that it catches bugs.

The reference is TensorFlow/Keras (nobody here wrote it).  Every layer type must
pass ``compare`` with a random upstream gradient; deliberately broken layers must
each be reported as failing at the right layer.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
pytestmark = pytest.mark.keras

import keras  # noqa: E402

from nn_from_scratch import (Adam, AvgPool1D, AvgPool2D, AvgPool3D, Convolution, Linear, MaxPool1D,
                             MaxPool2D, MaxPool3D, MSELoss, NeuralNetwork, Node, ReLU, Reshape, Sigmoid,
                             Softmax, SoftMaxLoss, Tanh, Vectorization)
from nn_from_scratch.data import datasets
from nn_from_scratch.checks.crosscheck import (TOLERANCES, compare, from_keras, from_keras_layout,
                                               keras_flatten_permutation, relative_error, to_keras,
                                               to_keras_layout)
from nn_from_scratch.checks.crosscheck.cli import main, seed_lab_cnn  # noqa: E402
from nn_from_scratch.checks.crosscheck.tolerances import measure  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist_batch():
    X, y = datasets.load_mnist("train")
    return X[:32], y[:32]


def _conv(nd, cin, cout, k, **kw):
    return Convolution(in_channels=cin, out_channels=cout, kernel_size=k, ndim=nd, seed=7, **kw)


# ------------------------------------------------------------------------------------------ import guard
@pytest.mark.parametrize("missing", ["tensorflow", "keras"])
def test_import_without_tensorflow_gives_install_message(missing):
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{missing!r}] = None          # simulate: not installed
        try:
            import nn_from_scratch.checks.crosscheck
        except ImportError as exc:
            print("MESSAGE:", exc)
        else:
            print("NO ERROR")
        import nn_from_scratch                   # the rest still works
        print("CORE OK", nn_from_scratch.Linear(2, 3).count_params())
    """)
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "MESSAGE:" in out.stdout, out.stdout + out.stderr
    assert 'pip install -e ".[keras]"' in out.stdout and "python3 dev.py test" in out.stdout
    assert "pip install nn_from_scratch[" not in out.stdout          # that name is someone else's project
    assert "pip install tensorflow-cpu" in out.stdout
    assert "CORE OK 9" in out.stdout


# ------------------------------------------------------------------------------------------ every layer
LAYER_CASES = {
    "linear": (lambda: [Linear(7, 5, bias_initializer="glorot_uniform", seed=1)], (4, 7)),
    "linear_no_bias": (lambda: [Linear(7, 5, use_bias=False, seed=1)], (4, 7)),
    "conv1d_stride2_same": (lambda: [_conv(1, 3, 4, 3, stride=2, padding="same")], (2, 3, 11)),
    "conv1d_pairs_dilation": (lambda: [_conv(1, 3, 4, 3, padding=((1, 2),), dilation=2)], (2, 3, 11)),
    "conv1d_stride_and_dilation": (lambda: [_conv(1, 3, 2, 3, stride=2, dilation=2, padding="same")], (2, 3, 13)),
    "conv2d_pad1_bias": (lambda: [_conv(2, 2, 3, 3, padding=1, bias_initializer="glorot_uniform")], (2, 2, 7, 6)),
    "conv2d_rect_stride2_same": (lambda: [_conv(2, 2, 3, (3, 2), stride=2, padding="same")], (2, 2, 9, 8)),
    "conv2d_pair_padding": (lambda: [_conv(2, 2, 3, 3, padding=((1, 0), (2, 1)))], (2, 2, 7, 6)),
    "conv2d_stride_and_dilation": (lambda: [_conv(2, 2, 3, 3, stride=(2, 1), dilation=(1, 2), padding="same")],
                                   (2, 2, 9, 10)),
    "conv2d_valid_dilated_strided": (lambda: [_conv(2, 2, 3, 2, stride=2, dilation=2)], (2, 2, 9, 10)),
    "conv3d_stride_pad": (lambda: [_conv(3, 2, 3, 2, stride=2, padding=1)], (2, 2, 5, 6, 4)),
    "conv3d_dilation_same": (lambda: [_conv(3, 2, 2, 3, dilation=2, padding="same")], (2, 2, 5, 6, 7)),
    "maxpool1d_explicit": (lambda: [MaxPool1D(3, stride=2, padding=1)], (2, 3, 9)),
    "maxpool2d": (lambda: [MaxPool2D(2)], (2, 3, 6, 7)),
    "maxpool2d_same": (lambda: [MaxPool2D(3, stride=2, padding="same")], (2, 3, 7, 8)),
    "maxpool2d_explicit_-inf": (lambda: [MaxPool2D(2, stride=2, padding=1)], (2, 3, 6, 7)),
    "maxpool3d": (lambda: [MaxPool3D(2)], (2, 2, 4, 5, 4)),
    "avgpool1d_explicit": (lambda: [AvgPool1D(3, stride=1, padding=2)], (2, 3, 9)),
    "avgpool2d": (lambda: [AvgPool2D(2)], (2, 3, 6, 7)),
    "avgpool2d_same": (lambda: [AvgPool2D(3, stride=2, padding="same")], (2, 3, 7, 8)),
    "avgpool2d_explicit": (lambda: [AvgPool2D(2, stride=2, padding=1)], (2, 3, 6, 7)),
    "avgpool3d_same": (lambda: [AvgPool3D(2, padding="same")], (2, 2, 5, 5, 3)),
    "relu": (lambda: [ReLU()], (3, 4, 5, 5)),
    "sigmoid": (lambda: [Sigmoid()], (3, 4, 5)),
    "tanh": (lambda: [Tanh()], (3, 7)),
    "softmax": (lambda: [Softmax()], (3, 7)),
    "softmax_channels": (lambda: [Softmax(axis=1)], (3, 4, 5, 5)),
    "softmax_spatial": (lambda: [Softmax(axis=2)], (3, 4, 5, 5)),
    "vectorization_2d": (lambda: [Vectorization()], (3, 4, 5, 6)),
    "vectorization_1d": (lambda: [Vectorization()], (3, 4, 5)),
    "vectorization_3d": (lambda: [Vectorization()], (3, 2, 3, 4, 5)),
    "reshape_then_conv": (lambda: [Reshape(target_shape=(2, 3, 4)), _conv(2, 2, 2, 2)], (3, 24)),
    "reshape_to_vector": (lambda: [Reshape(target_shape=(60,))], (3, 3, 4, 5)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_every_layer_type_matches_keras(case):
    make, shape = LAYER_CASES[case]
    layers = make()
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    report = compare(layers, x, seed=1)
    assert report.passed, str(report)
    row, layer = report.rows[-1], layers[-1]
    expected = {"output", "dL/dx"}
    if isinstance(layer, (Linear, Convolution)):
        expected |= {"dL/dW"} | ({"dL/db"} if isinstance(layer, Linear) or layer.use_bias else set())
    assert set(row.checks) == expected


def test_maxpool_after_relu_ties_route_like_tensorflow():
    # ReLU makes many exact zeros: a window of ties must send its gradient where TensorFlow does
    layers = [_conv(2, 1, 3, 3, padding="same"), ReLU(), MaxPool2D(2), Vectorization(), Linear(48, 4, seed=2)]
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32) - 1.0
    report = compare(layers, x, seed=2)
    assert report.passed, str(report)


@pytest.mark.parametrize("mode", ["auto", "chained", "isolated"])
def test_seed_lab_cnn_matches_keras(mnist_batch, mode):
    X, y = mnist_batch
    net = seed_lab_cnn(batch_size=32)
    report = compare(net, X, y, mode=mode)
    assert report.passed, str(report)
    assert [r.name for r in report.rows] == [layer.name for layer in net.layers] + [net.loss_fn.name]
    assert report.rows[-1].checks["output"].max_rel <= TOLERANCES["forward"]
    # the lab's own input layout (N, 28, 28) without the channel axis works too
    assert compare(net, X[:, 0], y, mode=mode).passed


@pytest.mark.parametrize("labels", ["sparse", "one_hot"])
def test_softmax_loss_matches_keras_crossentropy(labels):
    x = np.random.default_rng(0).standard_normal((6, 9)).astype(np.float32)
    y = np.array([0, 3, 2, 1, 4, 0])
    if labels == "one_hot":
        y = np.eye(5, dtype=np.float32)[y]
    report = compare([Linear(9, 5, seed=4)], x, y, loss=SoftMaxLoss())
    assert report.passed, str(report)
    assert report.rows[-1].kind == "SoftMaxLoss"


def test_mse_loss_matches_keras_on_images():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    t = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    report = compare([_conv(2, 2, 4, 3, padding="same")], x, t, loss=MSELoss())
    assert report.passed, str(report)


def test_float64_networks_agree_to_rounding():
    # in float64 the same harness holds ours to ~1e-15: tolerances 1e-12 still pass
    layers = [_conv(2, 3, 2, 3, padding="same").astype(np.float64), Tanh(), AvgPool2D(2, padding=1),
              Vectorization(), Linear(2 * 4 * 4, 3, seed=1, dtype=np.float64)]
    x = np.random.default_rng(0).standard_normal((4, 3, 7, 7))
    report = compare(layers, x, np.array([0, 2, 1, 1]), loss=SoftMaxLoss(), rtol=1e-12)
    assert report.passed and report.dtype == "float64", str(report)


def test_compare_does_not_touch_the_users_network(mnist_batch):
    X, y = mnist_batch
    net = seed_lab_cnn(batch_size=32)
    before = [{k: v.copy() for k, v in layer.params.items()} for layer in net.layers]
    compare(net, X, y)
    for layer, saved in zip(net.layers, before):
        assert not layer.grads and not layer._cache
        for k, v in saved.items():
            np.testing.assert_array_equal(layer.params[k], v)


# ------------------------------------------------------------------------------------------ broken layers
class FlippedKernelConvolution(Convolution):
    """Bug: true convolution (kernel flipped) instead of cross-correlation."""

    def _forward(self, x):
        W = self._params["W"]
        self._params["W"] = W[(slice(None), slice(None)) + (slice(None, None, -1),) * self.ndim].copy()
        try:
            return super()._forward(x)
        finally:
            self._params["W"] = W


class TransposedGradLinear(Linear):
    """Bug: dL/dW of a square layer transposed (same shape, so nothing crashes)."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        dW = self._grads["W"]
        dW[1:] = dW[1:].T.copy()
        return dx


class NoMeanSoftMaxLoss(SoftMaxLoss):
    """Bug: the gradient misses the 1/N of the batch mean (the loss value is right)."""

    def _backward(self, upstream):
        return super()._backward(upstream) * self._pred_shape[0]


class NHWCVectorization(Vectorization):
    """Bug: flattens in Keras's NHWC order although the data are NCHW."""

    def _forward(self, x):
        self._cache["x_shape"] = x.shape
        return x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)

    def _backward(self, dy):
        n, c, h, w = self._cache["x_shape"]
        return dy.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _lab_cnn_with(index, layer, loss=None):
    net = seed_lab_cnn(batch_size=32)
    layers = list(net.layers)
    layers[index] = layer
    return NeuralNetwork(layers, loss_fn=loss or SoftMaxLoss())


def test_flipped_kernel_is_caught_at_its_layer(mnist_batch):
    X, y = mnist_batch
    bad = FlippedKernelConvolution((None, 4, 26, 26), kernel_size=7, output_layers=2, use_bias=False, seed=5,
                                   name="flipped_conv")
    report = compare(_lab_cnn_with(2, bad), X, y)
    assert not report.passed
    ff = report.first_failure
    assert (ff.name, ff.index, ff.quantity) == ("flipped_conv", 2, "output")
    assert ff.check.max_rel > 1e-2
    # the layers before it compute the same outputs (their gradients differ: they get wrong upstream ones)
    assert report.rows[0].checks["output"].passed and report.rows[1].checks["output"].passed


def test_transposed_weight_gradient_is_caught_at_its_layer():
    layers = [_conv(2, 1, 2, 3), ReLU(), Vectorization(), Linear(72, 8, seed=1), Tanh(),
              TransposedGradLinear(8, 8, seed=2, name="transposed_grad"), Linear(8, 3, seed=3)]
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    report = compare(layers, x, seed=0)                       # random upstream gradient
    ff = report.first_failure
    assert ff is not None and (ff.name, ff.quantity) == ("transposed_grad", "dL/dW"), str(report)
    assert "W[" in ff.check.where
    # its forward, its dL/dx and everything below it are fine: the bug is only in dL/dW
    row = report.row("transposed_grad")
    assert row.checks["output"].passed and row.checks["dL/dx"].passed and row.checks["dL/db"].passed
    assert all(r.passed for r in report.rows[:5])


def test_loss_missing_one_over_n_is_caught_at_the_loss(mnist_batch):
    X, y = mnist_batch
    net = seed_lab_cnn(batch_size=32)
    net.loss_fn = NoMeanSoftMaxLoss(name="no_mean_loss")
    report = compare(net, X, y)
    ff = report.first_failure
    assert ff is not None and (ff.name, ff.quantity) == ("no_mean_loss", "dL/dx"), str(report)
    assert report.row("no_mean_loss").checks["output"].passed       # the value itself is right
    assert ff.check.max_rel == pytest.approx(len(y) - 1, rel=1e-3)   # N * g instead of g


def test_wrong_flatten_order_is_caught_although_the_seed_check_passes(mnist_batch):
    X, y = mnist_batch
    net = _lab_cnn_with(4, NHWCVectorization((None, 2, 20, 20), name="nhwc_flatten"))
    report = compare(net, X, y)
    ff = report.first_failure
    assert ff is not None and (ff.name, ff.index, ff.quantity) == ("nhwc_flatten", 4, "output"), str(report)
    assert all(report.rows[i].checks["output"].passed for i in range(4))
    # the seed notebook's check cannot fail: it still says "similar"
    ours = net.predict(X)
    theirs = to_keras(net)(to_keras_layout(X)).numpy()
    assert np.max((ours - theirs) < 2e-1)
    assert relative_error(ours, theirs) > 1e-2


def test_report_renders_text_and_html(mnist_batch):
    X, y = mnist_batch
    good = compare(seed_lab_cnn(batch_size=32), X, y)
    txt = str(good)
    assert "PASSED" in txt and "conv1 (Convolution)" in txt and "dL/dW" in txt
    assert "<table" in good._repr_html_() and good.first_failure is None
    good.assert_passed()
    bad = compare(_lab_cnn_with(4, NHWCVectorization((None, 2, 20, 20), name="nhwc_flat2")), X, y)
    assert "FAILED" in str(bad) and "first failure: layer 4 'nhwc_flat2'" in str(bad)
    assert "first failure" in bad._repr_html_()
    with pytest.raises(AssertionError, match="nhwc_flat2"):
        bad.assert_passed()


# ------------------------------------------------------------------------------------------ error measure
def test_relative_error_is_scale_aware_and_fails_on_nan():
    b = np.array([[10.0, -2.0], [0.0, 1e-9]])
    a = b.copy()
    a[1, 1] += 1e-3
    mabs, mrel, idx = measure(a, b)
    assert idx == (1, 1) and mabs == pytest.approx(1e-3) and mrel == pytest.approx(1e-4)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([1e-20, 0]), np.zeros(2)) > 1           # nonzero vs an all-zero reference
    assert relative_error(np.array([np.nan, 1.0]), np.ones(2)) == np.inf
    assert relative_error(np.ones(3), np.ones(4)) == np.inf


# ------------------------------------------------------------------------------------------ conversions
def test_layout_helpers_and_flatten_permutation():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert to_keras_layout(x).shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(from_keras_layout(to_keras_layout(x)), x)
    p = keras_flatten_permutation((3, 4, 5))
    keras_flat = to_keras_layout(x).reshape(2, -1)
    np.testing.assert_array_equal(keras_flat, x.reshape(2, -1)[:, p])


def _nets():
    return {
        "seed_lab_cnn": seed_lab_cnn(batch_size=8),
        "mlp_no_bias": NeuralNetwork([Vectorization((None, 1, 28, 28)), Linear(784, 16, use_bias=False, seed=0),
                                      Sigmoid(), Linear(16, 10, seed=1)]),
        "conv3d_pool": NeuralNetwork([_conv(3, 2, 4, 3, padding=1), ReLU(), MaxPool3D(2), Vectorization(),
                                      Linear(4 * 3 * 3 * 2, 5, seed=0)], input_shape=(2, 6, 6, 4)),
        "conv1d_avg": NeuralNetwork([_conv(1, 3, 6, 5, stride=2, dilation=2, padding="same"), Tanh(),
                                     AvgPool1D(2, padding=1), Vectorization(), Linear(6 * 7, 2, seed=0)],
                                    input_shape=(3, 25)),
    }


@pytest.mark.parametrize("which", ["seed_lab_cnn", "mlp_no_bias", "conv3d_pool", "conv1d_avg"])
def test_parameter_counts_equal_keras(which):
    net = _nets()[which]
    model = to_keras(net)
    assert net.count_params() == model.count_params()
    assert f"Total params: {model.count_params():,}" in net.summary(print_fn=None)
    if which == "seed_lab_cnn":
        assert model.count_params() == 8438   # the Keras summary printed in the seed notebook


def test_to_keras_model_predicts_like_ours_and_is_compiled(mnist_batch):
    X, y = mnist_batch
    net = seed_lab_cnn(batch_size=32)
    model = to_keras(net)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    out = model(to_keras_layout(X)).numpy()
    assert relative_error(net.predict(X), out) <= TOLERANCES["forward"]
    loss = model.evaluate(to_keras_layout(X), y, verbose=0)
    assert loss == pytest.approx(net.evaluate(X, y)[0], rel=1e-5)


def test_from_keras_of_a_native_keras_model():
    m = keras.Sequential([
        keras.Input((12, 11, 2)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.ZeroPadding2D(((1, 0), (0, 2))),
        keras.layers.Conv2D(3, 3, strides=2),
        keras.layers.Activation("tanh"),
        keras.layers.Flatten(),                  # channels-last order: the next Dense's rows get permuted
        keras.layers.Dense(6, activation="sigmoid"),
        keras.layers.Dense(5),
        keras.layers.Softmax(),
    ])
    m.compile(optimizer=keras.optimizers.Adam(2e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net = from_keras(m)
    assert [type(layer).__name__ for layer in net.layers] == [
        "Convolution", "ReLU", "MaxPool", "Convolution", "Tanh", "Vectorization", "Linear", "Sigmoid", "Linear",
        "Softmax"]
    assert net.layers[3].padding == ((1, 0), (0, 2))
    assert isinstance(net.optimizer, Adam) and net.optimizer.lr == 0.002
    assert isinstance(net.loss_fn, SoftMaxLoss)
    x = np.random.default_rng(0).standard_normal((3, 2, 12, 11)).astype(np.float32)
    assert relative_error(net.predict(x), m(to_keras_layout(x)).numpy()) <= TOLERANCES["forward"]
    assert net.count_params() == m.count_params()


def test_from_keras_conv1d_causal_and_errors():
    m = keras.Sequential([keras.Input((10, 3)), keras.layers.Conv1D(2, 3, padding="causal", dilation_rate=2),
                          keras.layers.Flatten(), keras.layers.Dense(3)])
    net = from_keras(m)
    x = np.random.default_rng(0).standard_normal((3, 3, 10)).astype(np.float32)
    assert relative_error(net.predict(x), m(to_keras_layout(x)).numpy()) <= TOLERANCES["forward"]
    with pytest.raises(ValueError, match="'reshape'.*3 channels"):
        from_keras(keras.Sequential([keras.Input((10, 3)), keras.layers.Reshape((30,), name="reshape")]))
    with pytest.raises(ValueError, match="'noise'.*no counterpart"):
        from_keras(keras.Sequential([keras.Input((4,)), keras.layers.GaussianNoise(0.5, name="noise")]))
    with pytest.raises(ValueError, match="zero padding before max pooling"):
        from_keras(keras.Sequential([keras.Input((6, 6, 1)), keras.layers.ZeroPadding2D(1),
                                     keras.layers.MaxPooling2D()]))


def test_round_trip_through_keras_keeps_every_weight():
    layers = [_conv(2, 1, 3, 3, stride=2, dilation=2, padding=((2, 1), (0, 3))), ReLU(),
              MaxPool2D(2, padding=1), AvgPool2D(2, stride=1, padding=1), Sigmoid(), Vectorization(),
              Linear(3 * 6 * 5, 4, seed=1), Softmax()]
    net = NeuralNetwork(layers, input_shape=(1, 16, 15))
    back = from_keras(to_keras(net))
    assert [type(a) for a in back.layers] == [type(b) for b in net.layers]
    for a, b in zip(back.layers, net.layers):
        for k in b.params:
            np.testing.assert_array_equal(a.params[k], b.params[k])
    assert back.layers[0].stride == (2, 2) and back.layers[0].dilation == (2, 2)
    assert back.layers[2].padding == ((1, 1), (1, 1)) and back.layers[3].padding == ((1, 1), (1, 1))
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 15)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    assert compare(net, x, seed=3).passed
    # reshapes: vector -> image -> conv -> vector
    net = NeuralNetwork([Linear(5, 24, seed=1), Reshape(target_shape=(2, 3, 4)), _conv(2, 2, 3, 2, padding="same"),
                         Reshape(target_shape=(36,)), Linear(36, 2, seed=2)])
    back = from_keras(to_keras(net))
    assert [type(a) for a in back.layers] == [type(b) for b in net.layers]
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    assert compare(net, x, seed=4).passed


def test_unsupported_layer_and_missing_shape_errors():
    class Doubling(Node):  # a layer the converter does not know
        def _forward(self, x):
            return 2 * x

        def _backward(self, dy):
            return 2 * dy

    with pytest.raises(NotImplementedError, match="doubling_custom"):
        to_keras([Doubling(name="doubling_custom")], input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape"):
        to_keras([_conv(2, 1, 2, 3)])


# ------------------------------------------------------------------------------------------ CLI
def test_cli_runs_the_seed_lab_cnn(capsys):
    code = main(["--steps", "3", "--optimizer", "adam", "--batch-size", "16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "conv2 (Convolution)" in out and "[adam]" in out and "ALL PASSED" in out


def test_cli_exit_code_is_1_when_a_layer_is_wrong(capsys, monkeypatch):
    import nn_from_scratch.checks.crosscheck.cli as cli

    def broken_lab_cnn(batch_size=50, seed=0):
        return _lab_cnn_with(4, NHWCVectorization((None, 2, 20, 20), name="nhwc_cli"))

    monkeypatch.setattr(cli, "seed_lab_cnn", broken_lab_cnn)
    code = main(["--steps", "2", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert code == 1 and "first failure: layer 4 'nhwc_cli'" in out and out.rstrip().endswith("FAILED")
