"""Verdicts of the cross-check on a bank of correct and wrong networks (docs/CROSSCHECK.md, "Tolerances").

Correct networks pass in float32 and float64 (a convolution with a bias before a BatchNorm: its bias
gradient is zero in exact arithmetic, rounding noise in both frameworks); every planted bug fails, at
its layer.  The bugs are chosen to sit exactly where the rounding allowances act (bias-like gradients,
BatchNorm's outputs and gradients), so a loosening that hides them fails here.
"""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from nn_from_scratch.checks.crosscheck import compare, compare_training  # noqa: E402
from nn_from_scratch.layers.activations import ReLU  # noqa: E402
from nn_from_scratch.layers.losses import SoftMaxLoss  # noqa: E402
from nn_from_scratch.layers.normalization import BatchNorm  # noqa: E402
from nn_from_scratch.layers.reshape import Vectorization  # noqa: E402
from nn_from_scratch.layers.rectifiers import LeakyReLU  # noqa: E402
from nn_from_scratch.neurons import Convolution, Linear  # noqa: E402
from nn_from_scratch.training.network import NeuralNetwork  # noqa: E402

from planted_bugs import FlippedConvolution, ReLUNoMask, TransposedLinear  # noqa: E402


class BNInferenceBackward(BatchNorm):
    """Bug: the backward of inference mode (dy * gamma / sigma) in training mode (the mean terms forgotten)."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        return None if dx is None else dy * self._column(self._params["gamma"] * self._cache["inv"], dy)


class BNGammaWithoutXhat(BatchNorm):
    """Bug: dL/dgamma = sum dy (the xhat factor forgotten)."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        self._grads["gamma"] = self._grads["beta"].copy()
        return dx


class BNBetaMean(BatchNorm):
    """Bug: dL/dbeta = mean dy instead of sum dy."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        self._grads["beta"] = self._grads["beta"] / (dy.size // self.channels)
        return dx


class BNUnbiased(BatchNorm):
    """Bug: normalises with the unbiased variance (M - 1): a relative change of 1 / (2M) in the output."""

    def _forward(self, x):
        m = x.size // self.channels
        y = super()._forward(x)
        return y * self.dtype.type(np.sqrt((m - 1) / m))


class ConvBiasMean(Convolution):
    """Bug: dL/db = mean of dy instead of the sum (a bias gradient that does not cancel: no BatchNorm after)."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        self._grads["b"] = self._grads["b"] / (dy.size // dy.shape[1])
        return dx


def _mnist(n=64):
    from nn_from_scratch import datasets
    X, y = datasets.load_mnist("train")
    return X[:n].reshape(n, 1, 28, 28).astype(np.float32), y[:n]


def conv_bn(dtype, conv=Convolution, bn=BatchNorm, relu=ReLU, linear=Linear, side=28):
    return NeuralNetwork([conv((None, 1, side, side), 3, 4, seed=0, dtype=dtype),
                          bn((None, 4, side - 2, side - 2), dtype=dtype), relu(), Vectorization(),
                          linear((None, 4 * (side - 2) ** 2), 10, seed=1, dtype=dtype)], SoftMaxLoss())


@pytest.fixture(scope="module")
def mnist():
    return _mnist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("labels", [True, False])
def test_correct_conv_bias_batchnorm_relu_passes_compare(mnist, dtype, labels):
    X, y = mnist
    net = conv_bn(dtype)
    report = compare(net, X[:32].astype(dtype), y[:32] if labels else None)
    assert report.passed, str(report)
    # the bias gradient really is rounding noise against rounding noise: without the allowance it fails
    b = report.row(net.layers[0].name).checks["dL/db"]
    assert b.allowance > 0 and b.max_abs > 0
    assert b.max_abs / max(abs(b.keras), 1e-300) > 1e-3 or abs(b.keras) < b.allowance


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_correct_conv_bias_batchnorm_relu_passes_compare_training(mnist, dtype, optimizer):
    X, y = mnist
    report = compare_training(conv_bn(dtype), X.astype(dtype), y, steps=6, batch_size=16, optimizer=optimizer)
    assert report.passed, str(report)


def test_adam_through_a_float32_batchnorm_in_lockstep_for_30_steps(mnist):
    """Free runs may flip ReLU kinks after a BatchNorm (the report points at the jump); lockstep judges each update."""
    X, y = mnist
    report = compare_training(conv_bn(np.float32), X, y, steps=30, batch_size=16, optimizer="adam", lockstep=True)
    assert report.passed, str(report)


#: (network factory, dtype, labels?, expected failing layer index, expected quantity)
WRONG = {
    "bn inference backward": (lambda d: conv_bn(d, bn=BNInferenceBackward), np.float32, True, 1, "dL/dx"),
    "bn gamma without xhat": (lambda d: conv_bn(d, bn=BNGammaWithoutXhat), np.float32, True, 1, "dL/dgamma"),
    "bn beta mean": (lambda d: conv_bn(d, bn=BNBetaMean), np.float32, False, 1, "dL/dbeta"),
    "bn unbiased variance f64": (lambda d: conv_bn(d, bn=BNUnbiased), np.float64, True, 1, "output"),
    "conv bias mean, no bn": (lambda d: NeuralNetwork([ConvBiasMean((None, 1, 28, 28), 3, 4, seed=0, dtype=d),
                                                       ReLU(), Vectorization(), Linear((None, 2704), 10, seed=1,
                                                                                        dtype=d)],
                                                      SoftMaxLoss()), np.float32, True, 0, "dL/db"),
    "flipped conv before bn": (lambda d: conv_bn(d, conv=FlippedConvolution), np.float32, True, 0, "output"),
    "relu without mask after bn": (lambda d: conv_bn(d, relu=ReLUNoMask), np.float32, True, 2, "dL/dx"),
    "transposed linear after bn": (lambda d: NeuralNetwork(
        [Convolution((None, 1, 28, 28), 3, 1, seed=0, dtype=d), BatchNorm((None, 1, 26, 26), dtype=d), ReLU(),
         Vectorization(), Linear((None, 676), 10, seed=1, dtype=d), ReLU(), TransposedLinear((None, 10), 10,
                                                                                              seed=2, dtype=d)],
        SoftMaxLoss()), np.float32, True, 6, "dL/dW"),
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_every_planted_bug_still_fails_at_its_layer(mnist, name):
    make, dtype, labels, index, quantity = WRONG[name]
    X, y = mnist
    report = compare(make(dtype), X[:32].astype(dtype), y[:32] if labels else None)
    f = report.first_failure
    assert f is not None, f"{name} passed:\n{report}"
    assert (f.index, f.quantity) == (index, quantity), str(report)


def test_a_bias_gradient_bug_before_batchnorm_fails_in_training_where_it_matters(mnist):
    """A bias gradient with the wrong sign where it does not cancel (no BatchNorm) fails compare_training."""

    class SignFlippedBias(Convolution):
        def _backward(self, dy, need_input_grad=True):
            dx = super()._backward(dy, need_input_grad)
            self._grads["b"] = -self._grads["b"]
            return dx

    X, y = mnist
    net = NeuralNetwork([SignFlippedBias((None, 1, 28, 28), 3, 4, seed=0), ReLU(), Vectorization(),
                         Linear((None, 2704), 10, seed=1)], SoftMaxLoss())
    report = compare_training(net, X, y, steps=4, batch_size=16, optimizer="sgd")
    assert not report.passed, str(report)


# ----------------------------------------------------------------------------- the gradient check's upstream
class LeakyMaskFromDy(LeakyReLU):
    """Bug: the backward takes its mask from dy instead of x."""

    def _backward(self, dy):
        return np.where(dy > 0, dy, self.alpha * dy)


def test_mask_from_dy_fails_compare_on_the_readme_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    assert compare(LeakyReLU(0.1), x, input_shape=(3, 5, 5)).passed
    report = compare(LeakyMaskFromDy(0.1), x, input_shape=(3, 5, 5))
    assert not report.passed and report.first_failure.quantity == "dL/dx", str(report)


def test_from_keras_converts_batchnormalization_and_dropout():
    import keras

    from nn_from_scratch.checks.crosscheck import from_keras
    from nn_from_scratch.layers.dropout import Dropout
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(3, 3), keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-3), keras.layers.ReLU(), keras.layers.Dropout(0.25), keras.layers.Flatten(),
        keras.layers.Dense(4)])
    bn = model.layers[1]
    rng = np.random.default_rng(5)
    bn.gamma.assign(rng.uniform(0.5, 2, 3).astype(np.float32))
    bn.beta.assign(rng.standard_normal(3).astype(np.float32))
    bn.moving_mean.assign(rng.standard_normal(3).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2, 3).astype(np.float32))
    net = from_keras(model)
    kinds = [type(layer) for layer in net.layers]
    assert BatchNorm in kinds and Dropout in kinds
    ours_bn = net.layers[kinds.index(BatchNorm)]
    np.testing.assert_array_equal(ours_bn.buffers["moving_variance"], bn.moving_variance.numpy())
    assert ours_bn.momentum == pytest.approx(0.9) and net.layers[kinds.index(Dropout)].rate == 0.25
    x = rng.standard_normal((5, 8, 8, 2)).astype(np.float32)
    with net.inference():
        ours = net.predict(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    theirs = model(x, training=False).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
